"""Training batches: endless, seeded epochs over the packed windows, collated on the fly, resumable.

A batch is a dict of tensors: the collator's output plus `example_ids` [B] (the stable ids batch-selection methods
key on). The stream's position (epoch, cursor) and the collator's generator are the whole state.
"""

from __future__ import annotations

import numpy as np
import torch

from ntng.data.collate import BertMLMCollator, T5SpanCollator, narrow_masked_positions
from ntng.presets import Preset


def epoch_order(num_windows: int, seed: int, epoch: int) -> np.ndarray:
    """The order of windows in `epoch`: a permutation fixed by (seed, epoch) alone."""
    return np.random.default_rng([seed, epoch]).permutation(num_windows)


def make_collator(model: str, preset: Preset, vocab_size: int, seed: int):
    if model == "bert":
        return BertMLMCollator(vocab_size, preset.bert.mlm_probability, seed=seed)
    return T5SpanCollator(vocab_size, preset.t5.input_len, preset.t5.noise_density, preset.t5.mean_span, seed=seed)


def take_rows(batch: dict, rows) -> dict:
    """The sub-batch of the given rows (every tensor in a batch is indexed by row first)."""
    index = torch.as_tensor(rows, dtype=torch.long)
    return {k: v.index_select(0, index) for k, v in batch.items()}


def concat_batches(batches: list[dict]) -> dict:
    """One batch of the rows of several. Masked-LM batches of different masked widths are first narrowed to the
    smallest (`narrow_masked_positions`)."""
    if "mlm_positions" in batches[0]:
        width = min(b["mlm_positions"].shape[1] for b in batches)
        batches = [narrow_masked_positions(b, width) for b in batches]
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


class BatchStream:
    def __init__(self, example_ids: np.ndarray, windows: np.ndarray, batch_size: int, collator, seed: int):
        if len(windows) < batch_size:
            raise ValueError(f"only {len(windows)} training windows for a micro-batch of {batch_size}")
        self.example_ids = torch.from_numpy(np.ascontiguousarray(example_ids, dtype=np.int64))
        self.windows = torch.from_numpy(np.ascontiguousarray(windows)).long()
        self.batch_size = batch_size
        self.collator = collator
        self.seed = seed
        self.epoch = 0
        self.cursor = 0  # next position in this epoch's order
        self._order = epoch_order(len(windows), seed, 0)

    def next(self, batch_size: int | None = None) -> dict:
        size = batch_size or self.batch_size
        if self.cursor + size > len(self._order):  # drop the epoch's ragged tail, start the next epoch
            self.epoch += 1
            self.cursor = 0
            self._order = epoch_order(len(self.windows), self.seed, self.epoch)
        rows = torch.from_numpy(self._order[self.cursor:self.cursor + size])
        self.cursor += size
        batch = self.collator(self.windows.index_select(0, rows))
        batch["example_ids"] = self.example_ids.index_select(0, rows)
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "collator": self.collator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = epoch_order(len(self.windows), self.seed, self.epoch)
        self.collator.load_state_dict(state["collator"])
