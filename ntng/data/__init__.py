"""The data wing: sources -> corpus and tasks -> tokenizers -> packed windows -> batches (collated)."""
