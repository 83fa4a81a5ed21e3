"""Pre-training objectives as batch transforms: BERT masked-language-modelling and T5 span corruption.

Both operate on packed, full-length int64 token windows, so nothing is ever padded: every batch of a run has the
same shapes, which keeps the step cost constant (the paper's budgets are wall-clock) and lets BERT's sparse MLM head
work on a fixed number of masked positions per sequence.

All randomness comes from an explicit `torch.Generator`, so a collator seeded the same way produces the same batches;
`state_dict()`/`load_state_dict()` let a resumed run continue the same stream.
"""

from __future__ import annotations

import torch

from ntng.data.vocab import BERT_MASK, BERT_PAD, BERT_SPECIALS, N_SENTINELS, T5_EOS, T5_SPECIALS
from ntng.errors import UsageError

FIRST_ORDINARY_BERT_ID = len(BERT_SPECIALS)  # ids below this are [PAD] [UNK] [CLS] [SEP] [MASK]

# BERT's split of the selected positions: 80% [MASK], 10% a random token, 10% left unchanged.
MASK_FRACTION = 0.8
RANDOM_FRACTION = 0.1


def _make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None:
        return generator
    made = torch.Generator()
    made.manual_seed(0 if seed is None else int(seed))
    return made


def _check_token_batch(tokens: torch.Tensor, what: str) -> None:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(
            f"{what} expects a [batch, length] tensor, got {getattr(tokens, 'shape', type(tokens))}"
        )
    if tokens.dtype != torch.long:
        raise ValueError(f"{what} expects int64 token ids, got {tokens.dtype}")


# ----------------------------------------------------------------------------------------------------------- BERT


def num_masked_positions(num_maskable: int, mlm_probability: float) -> int:
    """How many positions of a sequence with `num_maskable` ordinary tokens get selected (at least one)."""
    if num_maskable < 1:
        raise ValueError("a sequence has no maskable (ordinary) token")
    return min(num_maskable, max(1, round(mlm_probability * num_maskable)))


def mask_tokens(
    input_ids: torch.Tensor,
    vocab_size: int,
    mlm_probability: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Apply BERT's masking to a batch of [CLS] ... [SEP] windows; the input tensor is not modified.

    Exactly k positions per sequence are selected among ordinary tokens (ids >= 5), k = round(p * maskable count) of
    the sequence with the fewest ordinary tokens (all of them in a packed batch), so `mlm_positions` has a static
    width. Each selected token independently becomes [MASK] (80%), a random ordinary token (10%) or stays (10%).
    """
    _check_token_batch(input_ids, "mask_tokens")
    batch, length = input_ids.shape
    maskable = input_ids >= FIRST_ORDINARY_BERT_ID
    k = num_masked_positions(int(maskable.sum(dim=1).min()), mlm_probability)

    # A uniformly random k-subset of the maskable positions: the k largest of i.i.d. uniform scores, specials
    # pushed below every real score so they can never win.
    scores = torch.rand(batch, length, generator=generator)
    scores.masked_fill_(~maskable, -1.0)
    positions = scores.topk(k, dim=1).indices.sort(dim=1).values
    labels = input_ids.gather(1, positions)

    action = torch.rand(batch, k, generator=generator)
    random_tokens = torch.randint(FIRST_ORDINARY_BERT_ID, vocab_size, (batch, k), generator=generator)
    replacement = torch.where(action < MASK_FRACTION, torch.full_like(labels, BERT_MASK), labels)
    replacement = torch.where(
        (action >= MASK_FRACTION) & (action < MASK_FRACTION + RANDOM_FRACTION), random_tokens, replacement
    )

    masked = input_ids.clone()
    masked.scatter_(1, positions, replacement)
    return {
        "input_ids": masked,
        "attention_mask": (input_ids != BERT_PAD).long(),  # all ones for packed windows; kept for generality
        "mlm_positions": positions,
        "mlm_labels": labels,
    }


def narrow_masked_positions(batch: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """The batch with `width` of each row's k masked positions (k >= width) still masked: a uniformly random subset,
    fixed by the row's example id (its row index without ids), the others given back their original token.

    Micro-batches collated apart may have different k (k follows the fewest maskable tokens in a batch); batch
    selection joins rows of several, and a batch needs one width.
    """
    positions, labels = batch["mlm_positions"], batch["mlm_labels"]
    rows, k = positions.shape
    assert 0 < width <= k, (width, k)
    if width == k:
        return batch
    keys = batch["example_ids"] if "example_ids" in batch else torch.arange(rows)
    keep = torch.stack([torch.randperm(k, generator=torch.Generator().manual_seed(int(key) % (1 << 63)))[:width]
                        for key in keys]).sort(dim=1).values
    dropped = torch.ones(rows, k, dtype=torch.bool)
    dropped.scatter_(1, keep, False)
    input_ids = batch["input_ids"].clone()
    input_ids[torch.arange(rows)[:, None].expand(rows, k)[dropped], positions[dropped]] = labels[dropped]
    return {**batch, "input_ids": input_ids, "mlm_positions": positions.gather(1, keep),
            "mlm_labels": labels.gather(1, keep)}


class BertMLMCollator:
    """Turns packed [CLS] ... [SEP] windows into a sparse-MLM batch (see `mask_tokens`)."""

    def __init__(
        self,
        vocab_size: int,
        mlm_probability: float = 0.15,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        if not 0.0 < mlm_probability < 1.0:
            raise UsageError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
        if vocab_size <= FIRST_ORDINARY_BERT_ID:
            raise UsageError(
                f"vocab_size {vocab_size} leaves no ordinary token after the {len(BERT_SPECIALS)} specials"
            )
        self.vocab_size = vocab_size
        self.mlm_probability = mlm_probability
        self.generator = _make_generator(generator, seed)

    def __call__(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return mask_tokens(input_ids, self.vocab_size, self.mlm_probability, self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


# ------------------------------------------------------------------------------------------------ T5 span corruption


def noise_and_span_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a raw window of `length` tokens.

    noise = round(length * density) kept in [1, length - 1] so both kinds of segment exist; spans =
    round(noise / mean_span), at least 1 and at most what the two counts can split into non-empty segments.
    """
    if length < 2:
        raise ValueError(f"span corruption needs at least 2 tokens, got {length}")
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    num_spans = max(1, round(num_noise / mean_span))
    num_spans = min(num_spans, num_noise, length - num_noise)
    return num_noise, num_spans


def corrupted_lengths(raw_len: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(encoder input length, target length) that span corruption turns a raw window of `raw_len` into."""
    num_noise, num_spans = noise_and_span_counts(raw_len, noise_density, mean_span)
    input_len = (raw_len - num_noise) + num_spans + 1  # kept tokens, one sentinel per span, EOS
    target_len = num_noise + num_spans + 1  # one sentinel per span, the span's tokens, EOS
    return input_len, target_len


def _check_span_settings(noise_density: float, mean_span: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise UsageError(f"noise_density must be in (0, 1), got {noise_density}")
    if mean_span < 1.0:
        raise UsageError(f"mean_span must be at least 1, got {mean_span}")


def compute_t5_lengths(input_len: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(raw_len, target_len): the longest raw window whose corrupted input is exactly `input_len` tokens.

    As in the T5 recipe the raw window is longer than the model input, since noise spans collapse into one sentinel
    each. Growing the raw window by one token grows the corrupted input by 0 or 1, so the largest raw length that
    fits lands exactly on `input_len`. (512, 0.15, 3.0) -> (568, 114).
    """
    _check_span_settings(noise_density, mean_span)
    if input_len < 3:
        raise UsageError(f"input_len must be at least 3 (a token, a sentinel and EOS), got {input_len}")
    raw_len = 2
    while corrupted_lengths(raw_len + 1, noise_density, mean_span)[0] <= input_len:
        raw_len += 1
    fitted_input, target_len = corrupted_lengths(raw_len, noise_density, mean_span)
    # Only possible for tiny inputs or extreme settings, where the span-count clamps make the length jump by 2.
    if fitted_input != input_len:
        raise UsageError(f"no raw window corrupts to exactly {input_len} tokens (density {noise_density})")
    return raw_len, target_len


def _random_segment_lengths(
    batch: int, total: int, num_segments: int, generator: torch.Generator
) -> torch.Tensor:
    """[batch, num_segments] lengths >= 1 summing to `total`: a uniformly random composition per row."""
    if num_segments == 1:
        return torch.full((batch, 1), total, dtype=torch.long)
    # num_segments - 1 distinct cut points among the total - 1 gaps between items.
    cuts = torch.rand(batch, total - 1, generator=generator).argsort(dim=1)[:, : num_segments - 1] + 1
    cuts = cuts.sort(dim=1).values
    bounds = torch.cat(
        [torch.zeros(batch, 1, dtype=torch.long), cuts, torch.full((batch, 1), total, dtype=torch.long)],
        dim=1,
    )
    return bounds.diff(dim=1)


def random_spans_noise_masks(
    batch: int, length: int, noise_density: float, mean_span: float, generator: torch.Generator
) -> torch.Tensor:
    """[batch, length] bool noise masks, each with the same noise and span counts (see `random_spans_noise_mask`)."""
    num_noise, num_spans = noise_and_span_counts(length, noise_density, mean_span)
    keep_lengths = _random_segment_lengths(batch, length - num_noise, num_spans, generator)
    noise_lengths = _random_segment_lengths(batch, num_noise, num_spans, generator)
    # Segments alternate keep_0, noise_0, keep_1, noise_1, ...: noise span j starts after j+1 keep segments and j
    # noise segments. Mark +1 at each noise start and -1 at each end; the running sum is the mask.
    span_starts = keep_lengths.cumsum(dim=1) + noise_lengths.cumsum(dim=1) - noise_lengths
    span_ends = span_starts + noise_lengths
    marks = torch.zeros(batch, length + 1, dtype=torch.long)
    marks.scatter_add_(1, span_starts, torch.ones_like(span_starts))
    marks.scatter_add_(1, span_ends, -torch.ones_like(span_ends))
    return marks.cumsum(dim=1)[:, :length] > 0


def random_spans_noise_mask(
    length: int, noise_density: float, mean_span: float, generator: torch.Generator
) -> torch.Tensor:
    """[length] bool mask with exactly round(length * density) noise tokens (kept in [1, length - 1]).

    The noise is cut into max(1, round(noise / mean_span)) non-empty spans and the rest into as many non-empty
    segments, both at random; the two interleave starting with a non-noise segment (so a window ends with noise).
    """
    return random_spans_noise_masks(1, length, noise_density, mean_span, generator)[0]


def corrupt_spans(
    tokens: torch.Tensor, noise_mask: torch.Tensor, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder inputs and decoder labels for windows `tokens` [B, n] with noise masks [B, n].

    Inputs: each noise span becomes one sentinel (<extra_id_0>, <extra_id_1>, ... in order, i.e. ids vocab_size-1,
    vocab_size-2, ...), then EOS. Labels: each span's sentinel followed by its tokens, then EOS. All rows must have
    the same noise and span counts (true for masks from `random_spans_noise_masks`), so no padding is needed.
    """
    batch = tokens.shape[0]
    previous_is_noise = torch.nn.functional.pad(noise_mask[:, :-1], (1, 0), value=False)
    span_start = noise_mask & ~previous_is_noise
    span_index = span_start.long().cumsum(dim=1) - 1
    sentinels = (vocab_size - 1) - span_index

    # Inputs keep non-noise tokens and the first token of each span, which is swapped for the span's sentinel.
    keep_in_input = ~noise_mask | span_start
    input_values = torch.where(span_start, sentinels, tokens)
    # Labels keep the noise tokens plus the token just before each span (never noise: spans are separated and the
    # window starts with non-noise), which is swapped for the sentinel of the span that follows it.
    next_starts_span = torch.nn.functional.pad(span_start[:, 1:], (0, 1), value=False)
    next_sentinels = torch.nn.functional.pad(sentinels[:, 1:], (0, 1), value=0)
    keep_in_labels = noise_mask | next_starts_span
    label_values = torch.where(next_starts_span, next_sentinels, tokens)

    eos = torch.full((batch, 1), T5_EOS, dtype=tokens.dtype)
    inputs = torch.cat([input_values[keep_in_input].view(batch, -1), eos], dim=1)
    labels = torch.cat([label_values[keep_in_labels].view(batch, -1), eos], dim=1)
    return inputs, labels


class T5SpanCollator:
    """Turns raw windows [B, raw_len] into span-corrupted `input_ids` [B, input_len] and `labels` [B, target_len]."""

    def __init__(
        self,
        vocab_size: int,
        input_len: int,
        noise_density: float = 0.15,
        mean_span: float = 3.0,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ):
        self.raw_len, self.target_len = compute_t5_lengths(input_len, noise_density, mean_span)
        num_spans = noise_and_span_counts(self.raw_len, noise_density, mean_span)[1]
        if num_spans > N_SENTINELS:
            raise UsageError(f"{num_spans} noise spans per window but only {N_SENTINELS} sentinels")
        if vocab_size < len(T5_SPECIALS) + N_SENTINELS + 1:
            raise UsageError(
                f"vocab_size {vocab_size} cannot hold the T5 specials, {N_SENTINELS} sentinels and text"
            )
        self.vocab_size = vocab_size
        self.input_len = input_len
        self.noise_density = noise_density
        self.mean_span = mean_span
        self.generator = _make_generator(generator, seed)

    def __call__(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_token_batch(raw, "T5SpanCollator")
        if raw.shape[1] != self.raw_len:
            raise ValueError(
                f"T5SpanCollator expects raw windows of {self.raw_len} tokens (corrupting to {self.input_len}), "
                f"got {raw.shape[1]}"
            )
        noise = random_spans_noise_masks(
            raw.shape[0], self.raw_len, self.noise_density, self.mean_span, self.generator
        )
        inputs, labels = corrupt_spans(raw, noise, self.vocab_size)
        assert inputs.shape[1] == self.input_len and labels.shape[1] == self.target_len, (
            inputs.shape,
            labels.shape,
        )
        return {"input_ids": inputs, "labels": labels}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
