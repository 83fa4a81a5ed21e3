"""Our block loops against Hugging Face's own forward, layer subsets, gradients, and layer stacking."""

import copy
import json
import math

import pytest
import torch

from ntng.collate import BertMLMCollator, T5SpanCollator
from ntng.errors import UsageError
from ntng.models import (
    BertMLM,
    T5SpanModel,
    build_model,
    count_parameters,
    model_config_dict,
    stack_blocks,
)
from ntng.presets import PRESETS
from ntng.vocab import BERT_CLS, BERT_SEP, N_SENTINELS, T5_DECODER_START, T5_EOS, T5_PAD

SMOKE = PRESETS["smoke"]
VOCAB = 512
DEPTH = SMOKE.bert.num_layers
assert DEPTH == SMOKE.t5.num_layers == 4


def make_model(name, num_layers=None, seed=0):
    torch.manual_seed(seed)
    return build_model(name, SMOKE, vocab_size=VOCAB, num_layers=num_layers)


def bert_batch(seed=0, batch=3, length=32):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = BERT_CLS, BERT_SEP
    return BertMLMCollator(VOCAB, seed=seed)(ids)


def t5_batch(seed=0, batch=3, input_len=32):
    collator = T5SpanCollator(VOCAB, input_len, seed=seed)
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(3, VOCAB - N_SENTINELS, (batch, collator.raw_len), generator=g)
    return collator(raw)


BATCHES = {"bert": bert_batch, "t5": t5_batch}


def stacks(model):
    return [model.blocks()] if isinstance(model, BertMLM) else list(model.blocks())


# ----------------------------------------------------------------------------------------- agreement with HF


def test_bert_loss_equals_hf_dense_loss():
    model, batch = make_model("bert"), bert_batch()
    ours = model(batch)
    dense_labels = torch.full_like(batch["input_ids"], -100)
    dense_labels.scatter_(1, batch["mlm_positions"], batch["mlm_labels"])
    reference = model.hf(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=dense_labels
    )
    assert abs(ours["loss"].item() - reference.loss.item()) < 1e-5
    assert ours["per_example_loss"].shape == (3,)
    assert torch.allclose(ours["per_example_loss"].mean(), ours["loss"])
    # the head ran on the masked positions only
    assert ours["logits"].shape == (*batch["mlm_positions"].shape, VOCAB)


def test_t5_loss_equals_hf_loss():
    model, batch = make_model("t5"), t5_batch()
    ours = model(batch)
    reference = model.hf(input_ids=batch["input_ids"], labels=batch["labels"])
    assert abs(ours["loss"].item() - reference.loss.item()) < 1e-5
    assert torch.allclose(ours["logits"], reference.logits, atol=1e-5)
    assert ours["per_example_loss"].shape == (3,)
    assert torch.allclose(ours["per_example_loss"].mean(), ours["loss"])


def test_configs_follow_the_paper_setup():
    bert, t5 = make_model("bert"), make_model("t5")
    assert bert.config.hidden_dropout_prob == bert.config.attention_probs_dropout_prob == 0.0
    assert bert.config.max_position_embeddings == SMOKE.bert.seq_len
    assert bert.hf.cls.predictions.decoder.weight is bert.hf.bert.embeddings.word_embeddings.weight
    assert t5.config.dropout_rate == 0.0 and t5.config.is_gated_act and not t5.config.scale_decoder_outputs
    assert (t5.config.pad_token_id, t5.config.eos_token_id) == (T5_PAD, T5_EOS)
    assert t5.config.decoder_start_token_id == T5_DECODER_START
    # v1.1: one shared input embedding, a separate output projection
    assert t5.hf.encoder.embed_tokens.weight is t5.hf.shared.weight is t5.hf.decoder.embed_tokens.weight
    assert t5.hf.lm_head.weight is not t5.hf.shared.weight
    assert t5.hf.lm_head.weight.data_ptr() != t5.hf.shared.weight.data_ptr()
    for model in (bert, t5):
        assert model.config._attn_implementation == "sdpa"
        assert model.num_layers == DEPTH
        description = model_config_dict(model)
        json.dumps(description)
        assert description["num_layers"] == DEPTH
        assert description["num_parameters"] == count_parameters(model) > 0
    assert model_config_dict(t5)["hf_config"]["tie_word_embeddings"] is False


def test_build_model_rejects_bad_settings():
    with pytest.raises(UsageError):
        build_model("gpt", SMOKE)
    with pytest.raises(UsageError):
        build_model("bert", SMOKE, num_layers=0)
    with pytest.raises(UsageError):
        build_model("t5", SMOKE, vocab_size=50)


# ------------------------------------------------------------------------------------------------ layer subsets


def count_block_calls(model):
    calls = {}
    handles = []
    for stack_index, stack in enumerate(stacks(model)):
        for block_index, block in enumerate(stack):
            key = (stack_index, block_index)
            calls[key] = 0

            def hook(module, args, output, key=key):
                calls[key] += 1

            handles.append(block.register_forward_hook(hook))
    return calls, handles


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_subset_runs_only_those_blocks_and_changes_output(name):
    model, batch = make_model(name), BATCHES[name]()
    calls, handles = count_block_calls(model)
    with torch.no_grad():
        full = model(batch)
        assert all(count == 1 for count in calls.values())
        calls.update({key: 0 for key in calls})
        partial = model(batch, active_layers=[0, 2])
    for handle in handles:
        handle.remove()
    assert calls == {(s, b): int(b in (0, 2)) for (s, b) in calls}
    assert not torch.allclose(full["logits"], partial["logits"])
    # None and the full list are the same thing
    with torch.no_grad():
        explicit = model(batch, active_layers=range(DEPTH))
    assert torch.equal(full["logits"], explicit["logits"])


def hf_model_of_blocks(model_name, model, kept):
    """A plain HF model holding only blocks `kept` of `model` (block 0's T5 position table carried over)."""
    small = make_model(model_name, num_layers=len(kept), seed=321)
    state = model.state_dict()
    mapped = {}
    for key in small.state_dict():
        source = key
        for prefix in ("encoder.layer.", "encoder.block.", "decoder.block."):
            if prefix in key:
                head, tail = key.split(prefix)
                index, rest = tail.split(".", 1)
                source_index = 0 if is_shared_position_table(rest) else kept[int(index)]
                source = f"{head}{prefix}{source_index}.{rest}"
        mapped[key] = state[source]
    small.load_state_dict(mapped, strict=True)
    return small


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_skipping_block_zero_equals_a_model_without_it(name):
    # With block 0 skipped, T5 must still use block 0's relative position bias in the blocks that run.
    model, batch = make_model(name), BATCHES[name]()
    kept = [1, 3]
    reference = hf_model_of_blocks(name, model, kept)
    with torch.no_grad():
        ours = model(batch, active_layers=kept)
        if name == "bert":
            dense = torch.full_like(batch["input_ids"], -100).scatter_(
                1, batch["mlm_positions"], batch["mlm_labels"]
            )
            theirs = reference.hf(input_ids=batch["input_ids"], labels=dense).loss
        else:
            theirs = reference.hf(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    assert abs(ours["loss"].item() - theirs.item()) < 1e-5


def is_shared_position_table(name):
    # T5's relative position bias lives in block 0 and is used by every block that runs, so it gets a gradient
    # even when block 0 itself is skipped.
    return "relative_attention_bias" in name


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_backward_with_every_number_of_active_layers(name):
    model, batch = make_model(name), BATCHES[name]()
    rng = torch.Generator().manual_seed(0)
    for size in range(1, DEPTH + 1):
        active = sorted(torch.randperm(DEPTH, generator=rng)[:size].tolist())
        model.zero_grad(set_to_none=True)
        out = model(batch, active_layers=active)
        assert math.isfinite(out["loss"].item())
        out["loss"].backward()
        for stack in stacks(model):
            for index, block in enumerate(stack):
                for param_name, param in block.named_parameters():
                    if index in active:
                        assert param.grad is not None and torch.isfinite(param.grad).all(), (
                            size,
                            index,
                            param_name,
                        )
                    elif not is_shared_position_table(param_name):
                        assert param.grad is None, (active, index, param_name)
        embeddings = model.hf.get_input_embeddings().weight
        assert embeddings.grad is not None and torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("name", ["bert", "t5"])
@pytest.mark.parametrize(
    "bad", [[], [1, 0], [0, 0], [-1], [DEPTH], [0, DEPTH + 2], ["0"], [True], [0.5], 3, "01"]
)
def test_invalid_active_layers_raise(name, bad):
    model, batch = (
        make_model(name),
        BATCHES[name](batch=1, **({"length": 8} if name == "bert" else {"input_len": 16})),
    )
    with pytest.raises(ValueError):
        model(batch, active_layers=bad)


# -------------------------------------------------------------------------------------------------- stacking


def test_stack_blocks_copies_in_order():
    blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)])
    for block in blocks:
        block.weight.grad = torch.ones_like(block.weight)
    grown = stack_blocks(blocks)
    assert len(grown) == 6
    for i in range(3):
        assert grown[i] is blocks[i]
        copy = grown[i + 3]
        assert copy is not blocks[i] and torch.equal(copy.weight, blocks[i].weight)
        assert copy.weight.data_ptr() != blocks[i].weight.data_ptr()
        assert copy.weight.grad is None


def explicit_repeat(model_name, small, depth):
    """A model of `depth` blocks whose block i is loaded from `small`'s block i % len(small)."""
    big = make_model(model_name, num_layers=depth, seed=123)
    small_state = small.state_dict()
    small_depth = small.num_layers
    state = {}
    for key in big.state_dict():
        source = key
        for prefix in ("encoder.layer.", "encoder.block.", "decoder.block."):
            if prefix in key:
                head, tail = key.split(prefix)
                index, rest = tail.split(".", 1)
                source = f"{head}{prefix}{int(index) % small_depth}.{rest}"
        state[key] = small_state[source].clone()
    big.load_state_dict(state, strict=True)
    return big


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_stacking_equals_explicitly_repeated_blocks(name):
    model, batch = make_model(name, num_layers=DEPTH // 4), BATCHES[name]()
    original = copy.deepcopy(model)
    assert model.num_layers == 1
    known = {id(p) for p in model.parameters()}
    for expected_depth in (2, 4):  # [A] -> [A A] -> [A A A A]
        before = count_parameters(model)
        new_parameters = model.stack_layers()
        assert model.num_layers == expected_depth
        assert not any(id(p) in known for p in new_parameters), "old parameters keep their identity"
        assert {id(p) for p in new_parameters} == {
            id(p)
            for stack in stacks(model)
            for block in stack[expected_depth // 2 :]
            for p in block.parameters()
        }
        assert count_parameters(model) == before + sum(p.numel() for p in new_parameters)
        known |= {id(p) for p in new_parameters}
    config = model.config
    assert (config.num_hidden_layers if name == "bert" else config.num_layers) == DEPTH
    if name == "t5":
        assert config.num_decoder_layers == DEPTH
        assert model.hf.encoder.config.num_layers == model.hf.decoder.config.num_layers == DEPTH

    # weights copied exactly, storage not shared, and no copy carries its own T5 position table
    for stack in stacks(model):
        reference = {n: p for n, p in stack[0].named_parameters() if not is_shared_position_table(n)}
        for block in stack[1:]:
            copied = dict(block.named_parameters())
            assert copied.keys() == reference.keys()
            for key, value in copied.items():
                assert torch.equal(value, reference[key]) and value.data_ptr() != reference[key].data_ptr()

    explicit = explicit_repeat(name, original, DEPTH)
    with torch.no_grad():
        grown_out, explicit_out = model(batch), explicit(batch)
    assert torch.allclose(grown_out["logits"], explicit_out["logits"], atol=1e-6)
    assert abs(grown_out["loss"].item() - explicit_out["loss"].item()) < 1e-6
    # the grown model trains: a backward step reaches the copies
    model(batch)["loss"].backward()
    assert all(p.grad is not None for p in new_parameters)


def test_stacking_a_four_block_model_gives_abcdabcd():
    model, batch = make_model("t5"), t5_batch()
    explicit = explicit_repeat("t5", model, 2 * DEPTH)
    model.stack_layers()
    assert model.num_layers == 2 * DEPTH
    assert isinstance(model, T5SpanModel)
    with torch.no_grad():
        assert torch.allclose(model(batch)["logits"], explicit(batch)["logits"], atol=1e-6)
