"""The evaluation set: which validation windows a run is evaluated on, masked once, and the floor on those targets.

Every run of a packing is evaluated on the same targets: the validation windows the recipe asks for (all of them
when `Recipe.eval_sequences` is None, else that many spread evenly over the split, never a prefix: the validation
documents are packed source by source, so a prefix would be one source), collated once with `EVAL_MASK_SEED`.
The loss is the mean over every target of the set (micro-batch means weighted by their targets), and the
context-free floor (`ntng.data.floors`) is computed on exactly those targets, so "nats below the floor" compares a run
with a frequency-only model on the same tokens. The set's fingerprint (a hash of its inputs and targets) goes into
config.json: a run evaluated on another set does not compare with this one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from ntng.data.collate import FIRST_ORDINARY_BERT_ID
from ntng.data.vocab import N_SENTINELS, T5_PAD

EVAL_MASK_SEED = 20230711  # one fixed masking of the validation windows, shared by every run: losses compare
# how the windows are chosen; recorded, and part of what a run's evaluation must match to compare with another
SELECTION_RULE = "evenly spaced over the validation split (all windows when eval_sequences is None)"


def eval_window_indices(total: int, wanted: int | None) -> np.ndarray:
    """The validation windows to evaluate: all `total` when `wanted` is None or at least `total`, else `wanted`
    indices spread evenly over the split (index floor(i * total / wanted), i = 0 .. wanted - 1)."""
    if total < 1:
        raise ValueError("the validation split has no windows")
    if wanted is None or wanted >= total:
        return np.arange(total)
    if wanted < 1:
        raise ValueError(f"eval_sequences must be >= 1, got {wanted}")
    return (np.arange(wanted, dtype=np.int64) * total) // wanted


def batch_targets(batch: dict) -> torch.Tensor:
    """The target token ids a batch is scored on (BERT: the masked positions' labels; T5: the decoder targets)."""
    return batch["mlm_labels"] if "mlm_labels" in batch else batch["labels"]


def unigram_log_probs(model: str, vocab_size: int, train_windows: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(log p over ids [low, high), low, high): the training frequencies of the ids a target can be, add-one
    smoothed, as `ntng.data.floors` defines the context-free model (BERT: ordinary tokens; T5: all but pad and the
    sentinels)."""
    low, high = (FIRST_ORDINARY_BERT_ID, vocab_size) if model == "bert" else (T5_PAD + 1, vocab_size - N_SENTINELS)
    tokens = np.asarray(train_windows).ravel()
    counts = np.bincount(tokens[(tokens >= low) & (tokens < high)] - low, minlength=high - low).astype(np.float64)
    return np.log((counts + 1.0) / (counts.sum() + (high - low))), low, high


def target_floor_losses(model: str, targets: torch.Tensor, log_p: np.ndarray, low: int, high: int) -> np.ndarray:
    """The context-free model's loss on each target of a [rows, width] batch. BERT: -log p(token). T5: a sentinel
    and the final EOS follow from position (loss 0, as `ntng.data.floors` rules), every other target -log p(token)."""
    ids = targets.numpy()
    inside = (ids >= low) & (ids < high)
    losses = np.where(inside, -log_p[np.clip(ids - low, 0, high - low - 1)], 0.0)
    if model == "t5":
        losses[:, -1] = 0.0  # the EOS that closes every target sequence
    return losses


@dataclass
class EvalSet:
    batches: list[dict]  # collated micro-batches with `example_ids`
    windows: int  # validation windows evaluated
    of_windows: int  # validation windows in the split
    targets: int  # target tokens scored
    fingerprint: str  # hash of the windows' inputs and targets
    floor: float  # the context-free loss on exactly these targets (nats per target)

    def describe(self) -> dict:
        """What config.json records about the set."""
        return {"windows": self.windows, "of_windows": self.of_windows, "targets": self.targets,
                "selection": SELECTION_RULE, "mask_seed": EVAL_MASK_SEED, "fingerprint": self.fingerprint,
                "floor": self.floor,
                "floor_rule": "context-free (unigram, training frequencies) loss on exactly the targets evaluated"}


def build_eval_set(model: str, collator, micro_batch: int, val_windows: np.ndarray, val_ids: np.ndarray,
                   wanted: int | None, train_windows: np.ndarray, vocab_size: int) -> EvalSet:
    """Collate the chosen validation windows once (`collator` seeded with EVAL_MASK_SEED) into micro-batches of
    `micro_batch` (the last may be smaller), with their fingerprint and floor."""
    chosen = eval_window_indices(len(val_windows), wanted)
    stream = torch.from_numpy(np.ascontiguousarray(val_windows[chosen])).long()
    ids = torch.from_numpy(np.ascontiguousarray(val_ids[chosen]))
    log_p, low, high = unigram_log_probs(model, vocab_size, train_windows)
    digest = hashlib.sha256()
    batches, targets, floor_sum = [], 0, 0.0
    for start in range(0, len(stream), micro_batch):
        batch = collator(stream[start:start + micro_batch])
        batch["example_ids"] = ids[start:start + micro_batch]
        for key in sorted(batch):
            digest.update(key.encode())
            digest.update(batch[key].numpy().tobytes())
        target = batch_targets(batch)
        targets += target.numel()
        floor_sum += float(target_floor_losses(model, target, log_p, low, high).sum())
        batches.append(batch)
    return EvalSet(batches=batches, windows=len(chosen), of_windows=len(val_windows), targets=targets,
                   fingerprint=digest.hexdigest()[:16], floor=floor_sum / targets)


@torch.no_grad()
def mean_loss(model: torch.nn.Module, batches: list[dict], device: torch.device, amp_dtype) -> float:
    """The mean loss over every target of `batches`: each micro-batch's mean weighted by its targets (the last
    micro-batch of a split may be smaller). The model is put in eval mode and back in train mode."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for batch in batches:
        moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss = model(moved)["loss"].double()
        n = batch_targets(batch).numel()
        total += loss * n
        count += n
    model.train()
    return float(total / count)
