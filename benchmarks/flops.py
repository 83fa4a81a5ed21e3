"""Model FLOPs per training token, counted by hand from the shapes (the MFU numerator of benchmarks/bench.py).

A matmul of an [m, k] by a [k, n] operand costs 2 m k n FLOPs forward and twice that backward (the gradients of both
operands), so a training pass costs 3x its forward matmuls: the familiar "6 x parameters" per token for the weights.
Embedding lookups, LayerNorms, activations, softmax and the optimizer are not counted (they are not matmuls), as in
the usual MFU convention (Chowdhery et al. 2022, appendix B).

The crammed BERT (ntng.models.bert; sparse masked-LM head), per sequence of S tokens with k masked positions, L blocks,
hidden h, FFN width i, vocab V:
    weights    = 6 x [ S x L x (4 h^2 + 1.5 h i)  +  k x h V ]   (QKVO + the gated FFN, h -> i then i/2 -> h, on every
                                                                  token; the tied decoder, no head transform, on
                                                                  masked ones)
    attention  = 6 x   L x 2 S^2 h                                (Q K^T and P V, all heads together)
Hugging Face's BertForMaskedLM (arch="hf", the bench's default path): FFN h -> i -> h (2 h i) and a head transform
(h^2) before the decoder, which runs on every position: k = S there.

T5 v1.1 (gated-GELU FFN, untied head), per sequence of N encoder and T decoder tokens, L blocks in each stack,
d_model d, attention width a = heads x d_kv, FFN f:
    weights    = 6 x [ N L (4 d a + 3 d f)                   encoder: QKVO, wi_0, wi_1, wo
                     + T L (6 d a + 3 d f) + N L (2 d a)     decoder: self QKVO, cross Q and O on T tokens, cross K
                                                             and V on the N encoder outputs, FFN
                     + T d V ]                               lm_head on every decoder position
    attention  = 6 x L x (N^2 a + T^2 a + T N a)             encoder self, decoder self, cross
FLOPs per token divide by the tokens a sequence is counted as in the loop's `tokens` (BERT: S; T5: N, the encoder
input), so FLOPs/token x tokens/s is the FLOP rate.
"""

from __future__ import annotations


def bert_flops_per_sequence(shape, vocab_size: int, masked_per_sequence: int, layers: int | None = None,
                            arch: str = "crammed") -> dict:
    s, h, i, k = shape.seq_len, shape.hidden, shape.intermediate, masked_per_sequence
    depth = shape.num_layers if layers is None else layers
    if arch == "crammed":
        weights = 6 * (s * depth * (4 * h * h + 3 * h * i // 2) + k * h * vocab_size)
    elif arch == "hf":
        weights = 6 * (s * depth * (4 * h * h + 2 * h * i) + k * (h * h + h * vocab_size))
    else:
        raise ValueError(f"unknown BERT architecture {arch!r} (crammed | hf)")
    attention = 6 * depth * 2 * s * s * h
    return {"weights": weights, "attention": attention, "total": weights + attention, "tokens": s}


def t5_flops_per_sequence(shape, vocab_size: int, target_len: int, layers: int | None = None) -> dict:
    n, t, d, f = shape.input_len, target_len, shape.d_model, shape.d_ff
    a = shape.heads * shape.d_kv
    depth = shape.num_layers if layers is None else layers
    weights = 6 * (n * depth * (4 * d * a + 3 * d * f) + t * depth * (6 * d * a + 3 * d * f)
                   + n * depth * 2 * d * a + t * d * vocab_size)
    attention = 6 * depth * (n * n * a + t * t * a + t * n * a)
    return {"weights": weights, "attention": attention, "total": weights + attention, "tokens": n}


def flops_per_token(counts: dict) -> float:
    return counts["total"] / counts["tokens"]
