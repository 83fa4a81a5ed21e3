"""What the batch-selection methods share: a charged, no-grad scoring pass and a queue of chosen examples.

Selective backprop and RHO-LOSS both score candidate micro-batches with a forward pass of the current model (one
loss per sequence, charged to the RST clock at forward-only cost, kind "scoring"), keep some of the examples, and
hand the loop full micro-batches of kept examples. A kept example is trained with the very tokens (masks, spans)
it was scored with.
"""

from __future__ import annotations

import torch

from ntng.data.batches import concat_batches, take_rows

from .base import Run


def score_examples(run: Run, batch: dict) -> torch.Tensor:
    """Per-sequence losses [B] (float32, CPU) of the current model at full depth, charged as one scoring pass."""
    return run.forward(batch, kind="scoring")["per_example_loss"].float().cpu()


class ExampleQueue:
    """Chosen examples (collated rows, CPU) waiting to be trained on, first in first out."""

    def __init__(self):
        self.rows: dict | None = None

    def __len__(self) -> int:
        return 0 if self.rows is None else int(self.rows["input_ids"].shape[0])

    def push(self, batch: dict) -> None:
        if batch["input_ids"].shape[0] == 0:
            return
        self.rows = batch if self.rows is None else concat_batches([self.rows, batch])

    def pop(self, count: int) -> dict:
        assert 0 < count <= len(self), (count, len(self))
        out = take_rows(self.rows, range(count))
        rest = len(self) - count
        self.rows = take_rows(self.rows, range(count, count + rest)) if rest else None
        return out

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = state["rows"]


class SelectionCounters:
    """Running sums for method_stats: how many examples were scored and kept, and their mean losses."""

    def __init__(self):
        self.scored = 0
        self.kept = 0
        self.scoring_passes = 0
        self.scored_loss_sum = 0.0
        self.kept_loss_sum = 0.0

    def add(self, losses: torch.Tensor, kept: torch.Tensor) -> None:
        """`losses` of one scored micro-batch and the boolean mask of the examples kept from it."""
        self.scoring_passes += 1
        self.scored += int(losses.numel())
        self.kept += int(kept.sum())
        self.scored_loss_sum += float(losses.sum())
        self.kept_loss_sum += float(losses[kept].sum())

    def stats(self) -> dict:
        return {"keep_rate": self.kept / self.scored if self.scored else None,
                "scored_examples": self.scored, "kept_examples": self.kept, "scoring_passes": self.scoring_passes,
                "scored_mean_loss": self.scored_loss_sum / self.scored if self.scored else None,
                "selected_mean_loss": self.kept_loss_sum / self.kept if self.kept else None}

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
