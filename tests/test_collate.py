"""BERT masking and T5 span corruption: rates, invariants, exact reconstruction, shapes."""

import pytest
import torch

from ntng.data.collate import (
    BertMLMCollator,
    T5SpanCollator,
    compute_t5_lengths,
    corrupted_lengths,
    mask_tokens,
    random_spans_noise_mask,
    random_spans_noise_masks,
)
from ntng.data.vocab import BERT_CLS, BERT_MASK, BERT_PAD, BERT_SEP, N_SENTINELS, T5_EOS, T5_PAD, sentinel_id
from ntng.errors import UsageError

BERT_VOCAB = 8192
T5_VOCAB = 512


def packed_bert_windows(generator, batch=16, length=128, vocab=BERT_VOCAB):
    ids = torch.randint(5, vocab, (batch, length), generator=generator)
    ids[:, 0] = BERT_CLS
    ids[:, -1] = BERT_SEP
    return ids


# ------------------------------------------------------------------------------------------------------------ BERT


def test_masking_rate_and_80_10_10_split():
    g = torch.Generator().manual_seed(1)
    collator = BertMLMCollator(BERT_VOCAB, 0.15, seed=7)
    selected = maskable = to_mask = kept = randomised = 0
    for _ in range(40):
        ids = packed_bert_windows(g)
        out = collator(ids)
        after = out["input_ids"].gather(1, out["mlm_positions"])
        selected += out["mlm_positions"].numel()
        maskable += (ids >= 5).sum().item()
        to_mask += (after == BERT_MASK).sum().item()
        kept += (after == out["mlm_labels"]).sum().item()
        randomised += ((after != BERT_MASK) & (after != out["mlm_labels"])).sum().item()
    assert abs(selected / maskable - 0.15) <= 0.01
    assert abs(to_mask / selected - 0.8) <= 0.02
    assert abs(kept / selected - 0.1) <= 0.015
    assert abs(randomised / selected - 0.1) <= 0.015


def test_fixed_count_per_sequence():
    out = BertMLMCollator(BERT_VOCAB, seed=0)(packed_bert_windows(torch.Generator().manual_seed(0), 4, 128))
    assert out["mlm_positions"].shape == out["mlm_labels"].shape == (4, round(0.15 * 126))
    assert out["input_ids"].shape == out["attention_mask"].shape == (4, 128)
    assert out["attention_mask"].eq(1).all()


def test_never_masks_specials_and_positions_match_input():
    g = torch.Generator().manual_seed(2)
    collator = BertMLMCollator(100, 0.3, seed=3)
    for _ in range(20):
        ids = packed_bert_windows(g, batch=8, length=40, vocab=100)
        # documents packed back to back: separators in the middle, and padding at the end of one row
        ids[:, 13] = BERT_SEP
        ids[:, 14] = BERT_CLS
        ids[0, -6:] = BERT_PAD
        out = collator(ids)
        positions, labels, masked = out["mlm_positions"], out["mlm_labels"], out["input_ids"]
        assert (ids.gather(1, positions) >= 5).all(), "a special token was selected"
        assert (positions.diff(dim=1) > 0).all(), "positions must be sorted and distinct"
        assert torch.equal(labels, ids.gather(1, positions))
        untouched = torch.ones_like(ids, dtype=torch.bool).scatter_(1, positions, False)
        assert torch.equal(masked[untouched], ids[untouched])
        assert ((masked >= 5) | (masked == ids) | (masked == BERT_MASK)).all()
        assert masked.max() < 100
        assert torch.equal(out["attention_mask"], (ids != BERT_PAD).long())
    assert not torch.equal(out["input_ids"], ids)


def test_masking_is_deterministic_given_seed_and_leaves_input_alone():
    ids = packed_bert_windows(torch.Generator().manual_seed(0), 4, 64)
    before = ids.clone()
    a, b, c = (
        BertMLMCollator(BERT_VOCAB, seed=5),
        BertMLMCollator(BERT_VOCAB, seed=5),
        BertMLMCollator(BERT_VOCAB, seed=6),
    )
    out_a, out_b, out_c = a(ids), b(ids), c(ids)
    assert torch.equal(ids, before)
    assert all(torch.equal(out_a[k], out_b[k]) for k in out_a)
    assert not torch.equal(out_a["mlm_positions"], out_c["mlm_positions"])
    # a restored generator state replays the stream
    state = a.state_dict()
    first = a(ids)
    a.load_state_dict(state)
    assert torch.equal(a(ids)["input_ids"], first["input_ids"])


def test_mask_tokens_rejects_bad_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        mask_tokens(torch.tensor([[BERT_CLS, BERT_SEP]]), 100, 0.15, g)  # nothing maskable
    with pytest.raises(ValueError):
        mask_tokens(torch.tensor([5, 6, 7]), 100, 0.15, g)  # not [B, L]
    with pytest.raises(UsageError):
        BertMLMCollator(100, 1.5)


# -------------------------------------------------------------------------------------------------------------- T5


@pytest.mark.parametrize(
    "input_len, density, mean_span, expected",
    [
        (512, 0.15, 3.0, (568, 114)),  # T5's own numbers
        # 141 * .15 = 21.15 -> 21 noise, 7 spans: 120 kept + 7 sentinels + EOS = 128; 21 + 7 + 1 = 29.
        (128, 0.15, 3.0, (141, 29)),
        # 17 * .15 = 2.55 -> 3 noise, 1 span: 14 + 1 + 1 = 16; 3 + 1 + 1 = 5.
        (16, 0.15, 3.0, (17, 5)),
        # 693 * .3 = 207.9 -> 208 noise, 26 spans: 485 + 26 + 1 = 512; 208 + 26 + 1 = 235. 694 kept tokens -> 513.
        (512, 0.3, 8.0, (693, 235)),
    ],
)
def test_compute_t5_lengths_known_cases(input_len, density, mean_span, expected):
    assert compute_t5_lengths(input_len, density, mean_span) == expected


@pytest.mark.parametrize(
    "density, mean_span", [(0.15, 3.0), (0.3, 3.0), (0.5, 2.0), (0.25, 1.0), (0.15, 8.0)]
)
def test_compute_t5_lengths_matches_its_definition(density, mean_span):
    # The definition, with the one clamp that matters at these sizes: a window always has at least one span.
    def counts(raw):
        noise = round(raw * density)
        return noise, max(1, round(noise / mean_span))

    def input_length(raw):
        noise, spans = counts(raw)
        return raw - noise + spans + 1

    for input_len in range(24, 700, 29):
        raw, target = compute_t5_lengths(input_len, density, mean_span)
        noise, spans = counts(raw)
        assert input_length(raw) == input_len
        assert input_length(raw + 1) > input_len, "not the largest raw length"
        assert target == noise + spans + 1
        assert corrupted_lengths(raw, density, mean_span) == (input_len, target)


def test_noise_mask_counts_and_layout():
    g = torch.Generator().manual_seed(0)
    for length in (2, 3, 10, 141, 568):
        for _ in range(5):
            mask = random_spans_noise_mask(length, 0.15, 3.0, g)
            noise = min(max(round(length * 0.15), 1), length - 1)
            assert mask.shape == (length,) and mask.dtype == torch.bool
            assert int(mask.sum()) == noise
            starts = int((mask & ~torch.cat([torch.tensor([False]), mask[:-1]])).sum())
            assert starts == min(max(1, round(noise / 3.0)), noise, length - noise)
            assert not mask[0], "a window starts with non-noise"
            assert mask[-1], "and ends with noise"


def span_lengths(mask_row):
    lengths, run = [], 0
    for is_noise in mask_row.tolist() + [False]:
        if is_noise:
            run += 1
        elif run:
            lengths.append(run)
            run = 0
    return lengths


def test_noise_density_and_mean_span_over_many_samples():
    g = torch.Generator().manual_seed(3)
    masks = random_spans_noise_masks(400, 568, 0.15, 3.0, g)
    assert abs(masks.float().mean().item() - 0.15) < 0.005
    lengths = [n for row in masks for n in span_lengths(row)]
    assert abs(sum(lengths) / len(lengths) - 3.0) < 0.1
    assert max(lengths) > 6 and min(lengths) == 1, "span lengths should vary"
    # noise lands everywhere except the very first token
    per_position = masks.float().mean(dim=0)
    assert per_position[0] == 0 and per_position[1:].min() > 0


def test_span_corruption_shapes_sentinels_and_reconstruction():
    input_len = 64
    collator = T5SpanCollator(T5_VOCAB, input_len, 0.15, 3.0, seed=11)
    raw_len, target_len = compute_t5_lengths(input_len, 0.15, 3.0)
    assert (collator.raw_len, collator.target_len) == (raw_len, target_len)
    g = torch.Generator().manual_seed(5)
    first_text_id, last_text_id = 3, T5_VOCAB - N_SENTINELS
    for _ in range(10):
        raw = torch.randint(first_text_id, last_text_id, (8, raw_len), generator=g)
        out = collator(raw)
        inputs, labels = out["input_ids"], out["labels"]
        assert inputs.shape == (8, input_len) and labels.shape == (8, target_len)
        assert inputs.dtype == labels.dtype == torch.long
        assert (inputs != T5_PAD).all() and (labels != T5_PAD).all(), "no padding"
        assert (inputs[:, -1] == T5_EOS).all() and (labels[:, -1] == T5_EOS).all()
        assert (inputs[:, :-1] != T5_EOS).all() and (labels[:, :-1] != T5_EOS).all()
        assert (labels[:, 0] == sentinel_id(0, T5_VOCAB)).all(), "labels start with <extra_id_0>"
        for row_raw, row_in, row_lab in zip(raw, inputs, labels, strict=True):
            in_sentinels = row_in[row_in >= last_text_id].tolist()
            lab_sentinels = row_lab[row_lab >= last_text_id].tolist()
            expected = [sentinel_id(k, T5_VOCAB) for k in range(len(in_sentinels))]
            assert in_sentinels == expected == lab_sentinels, "sentinels in order, ids decreasing"
            assert torch.equal(reconstruct(row_in, row_lab), row_raw)


def reconstruct(inputs, labels):
    """Undo span corruption: each sentinel in the inputs is replaced by what follows it in the labels."""
    spans, current = {}, None
    for token in labels.tolist()[:-1]:
        if token >= T5_VOCAB - N_SENTINELS:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    out = []
    for token in inputs.tolist()[:-1]:
        out.extend(spans.get(token, [token]))
    return torch.tensor(out)


def test_span_collator_deterministic_and_rejects_wrong_width():
    raw = torch.randint(
        3, 400, (4, compute_t5_lengths(32, 0.15, 3.0)[0]), generator=torch.Generator().manual_seed(0)
    )
    a, b = T5SpanCollator(T5_VOCAB, 32, seed=1), T5SpanCollator(T5_VOCAB, 32, seed=1)
    assert torch.equal(a(raw)["input_ids"], b(raw)["input_ids"])
    with pytest.raises(ValueError, match="raw windows of"):
        a(raw[:, :-1])
    with pytest.raises(ValueError):
        a(raw[0])
    with pytest.raises(UsageError):
        T5SpanCollator(T5_VOCAB, 32, noise_density=1.2)
