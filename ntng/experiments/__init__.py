"""The experiments wing: grids of runs (local or Ray), tuning on equal terms, the scale probe, fine-tuning."""
