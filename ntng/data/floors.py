"""Context-free loss floors: the validation loss of a model that ignores context, per packing.

A model that has learned nothing but token frequencies predicts every target with the training set's unigram
distribution p (add-one smoothed over the tokens a target can be). Its expected loss on the validation windows is
the cross-entropy H(q, p) = -sum_t q(t) log p(t), q the validation frequencies of those tokens:

- BERT: the masked targets are drawn uniformly from a window's ordinary tokens (ids >= the specials), so the floor
  is H(q, p) over ordinary tokens;
- T5: a target sequence is one sentinel per span, the spans' tokens and EOS. Sentinels and the final EOS follow from
  position (a context-free model can predict them exactly: loss 0); the span tokens come at unigram frequency. The
  loss is a mean over target tokens, so the floor is H(q, p) x num_noise / target_len for the preset's lengths.

(Where the intermediate sentinels fall depends on the random span lengths, so a model that truly ignores context
could not place them exactly: this floor is a little below the true context-free loss, which makes "below the
floor" a conservative reading.) A run's loss below its floor is what it has learned beyond frequencies ("nats below the floor"). `ntng data` stores
the floors in data/manifest.json under each packing (`floor`).
"""

from __future__ import annotations

import math

import numpy as np

from ntng.data.collate import compute_t5_lengths, noise_and_span_counts
from ntng.data.vocab import BERT_SPECIALS, N_SENTINELS


def unigram_cross_entropy(train_tokens: np.ndarray, val_tokens: np.ndarray, low: int, high: int) -> float:
    """H(q, p) in nats over token ids [low, high): p from `train_tokens` add-one smoothed, q from `val_tokens`."""
    train = np.bincount(train_tokens[(train_tokens >= low) & (train_tokens < high)].ravel() - low,
                        minlength=high - low).astype(np.float64)
    val = np.bincount(val_tokens[(val_tokens >= low) & (val_tokens < high)].ravel() - low,
                      minlength=high - low).astype(np.float64)
    p = (train + 1.0) / (train.sum() + (high - low))
    q = val / val.sum()
    return float(-(q[q > 0] * np.log(p[q > 0])).sum())


def context_free_floor(model: str, preset, vocab_size: int, train_windows: np.ndarray,
                       val_windows: np.ndarray) -> dict:
    """The floor of one packing (see the module docstring): {"loss", "unigram_cross_entropy", "rule", ...}."""
    if model == "bert":
        h = unigram_cross_entropy(train_windows, val_windows, len(BERT_SPECIALS), vocab_size)
        return {"loss": h, "unigram_cross_entropy": h,
                "rule": "unigram cross-entropy of the masked targets (ordinary tokens) under training frequencies"}
    shape = preset.t5
    raw_len, target_len = compute_t5_lengths(shape.input_len, shape.noise_density, shape.mean_span)
    num_noise, _ = noise_and_span_counts(raw_len, shape.noise_density, shape.mean_span)
    # the tokens a span can hold: every id but pad (0) and the sentinels (EOS separates documents in a window)
    h = unigram_cross_entropy(train_windows, val_windows, 1, vocab_size - N_SENTINELS)
    loss = h * num_noise / target_len
    if not math.isfinite(loss):
        raise ValueError(f"no finite floor for {model}")
    return {"loss": loss, "unigram_cross_entropy": h, "span_tokens_per_target": num_noise / target_len,
            "rule": "span tokens at unigram frequency; sentinels and EOS exact (loss 0), averaged over the target"}
