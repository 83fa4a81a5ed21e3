"""Special-token conventions shared by the tokenizers, the collators and the models.

Ids are fixed by position so that collators and models never need a tokenizer object to know them.
"""

BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4
BERT_PAD, BERT_UNK, BERT_CLS, BERT_SEP, BERT_MASK = range(5)

T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0..2, as in the original T5 vocabulary
T5_PAD, T5_EOS, T5_UNK = range(3)
T5_DECODER_START = T5_PAD  # T5 starts decoding from the pad token; transformers 5 no longer defaults it
N_SENTINELS = 100  # <extra_id_0> .. <extra_id_99>


def sentinel_id(k: int, vocab_size: int) -> int:
    """Id of <extra_id_k>: the sentinels occupy the top of the vocabulary, <extra_id_0> the very last id."""
    assert 0 <= k < N_SENTINELS, k
    return vocab_size - 1 - k


def sentinel_token(k: int) -> str:
    return f"<extra_id_{k}>"
