"""Our block loops against Hugging Face's own forward, layer subsets, gradients, and layer stacking."""

import copy
import json
import math

import pytest
import torch

from ntng.data.collate import BertMLMCollator, T5SpanCollator
from ntng.data.vocab import BERT_CLS, BERT_SEP, N_SENTINELS, T5_DECODER_START, T5_EOS, T5_PAD
from ntng.errors import UsageError
from ntng.models.pretraining import (
    BertMLM,
    T5SpanModel,
    build_model,
    count_parameters,
    model_config_dict,
    stack_blocks,
)
from ntng.presets import PRESETS

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


# ------------------------------------------------------------------------------- the crammed BERT, by hand


def reference_crammed_bert(model, batch):
    """The crammed BERT's forward written out with plain tensor ops from the official bert-c5 config: scaled
    sinusoid + LayerNorm embeddings, pre-LN blocks (softmax attention by hand, GELU-gated FFN), final LayerNorm,
    tied decoder on the masked positions. Returns the masked-position logits."""
    F = torch.nn.functional
    state = model.state_dict()
    ids = batch["input_ids"]
    hidden_size, heads = model.config.hidden, model.config.heads
    length = ids.shape[1]
    position = torch.arange(length, dtype=torch.float32)[:, None]
    table = torch.zeros(length, hidden_size)
    for i in range(0, hidden_size, 2):
        angle = position[:, 0] / 10000 ** (i / hidden_size)
        table[:, i], table[:, i + 1] = torch.sin(angle), torch.cos(angle)

    def norm(x, prefix):
        return F.layer_norm(x, (hidden_size,), state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps=1e-12)

    x = state["embeddings.word.weight"][ids] + state["embeddings.position_scale"] * table
    x = norm(x, "embeddings.norm")
    for index in range(model.num_layers):
        block = f"layers.{index}"
        h = norm(x, f"{block}.norm1")
        q, k, v = (h @ state[f"{block}.attn.qkv.weight"].T).chunk(3, dim=-1)
        split = lambda t: t.view(*t.shape[:2], heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        weights = torch.softmax(q @ k.transpose(-1, -2) / (hidden_size // heads) ** 0.5, dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(x.shape)
        x = x + attended @ state[f"{block}.attn.out.weight"].T
        h = norm(x, f"{block}.norm2") @ state[f"{block}.ffn.dense_in.weight"].T
        value, gate = h.chunk(2, dim=-1)
        x = x + (F.gelu(gate) * value) @ state[f"{block}.ffn.dense_out.weight"].T
    x = norm(x, "final_norm")
    masked = x.gather(1, batch["mlm_positions"][..., None].expand(-1, -1, hidden_size))
    return masked @ state["embeddings.word.weight"].T


def test_crammed_bert_equals_its_forward_written_by_hand():
    model, batch = make_model("bert"), bert_batch()
    with torch.no_grad():
        for parameter in model.parameters():  # move LayerNorms and the position scale off their init values
            parameter.add_(0.05 * torch.randn_like(parameter))
        ours = model(batch)
        logits = reference_crammed_bert(model, batch)
    assert torch.allclose(ours["logits"], logits, atol=1e-4)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch["mlm_labels"].reshape(-1))
    assert abs(ours["loss"].item() - expected.item()) < 1e-5
    assert ours["per_example_loss"].shape == (3,)
    assert ours["logits"].shape == (*batch["mlm_positions"].shape, VOCAB)  # the head ran on masked positions only


def test_crammed_bert_is_the_papers_architecture():
    """bert-c5.yaml, by hand: 16 x 768, 12 heads, intermediate 3072 (gated halves of 1536), vocabulary 32768."""
    torch.manual_seed(0)
    paper = build_model("bert", PRESETS["paper"])
    V, H, FFN, L = 32768, 768, 3072, 16
    per_block = 3 * H * H + H * H + H * FFN + (FFN // 2) * H + 4 * H  # qkv, out, dense_in, dense_out, two LayerNorms
    assert count_parameters(paper) == V * H + 1 + 2 * H + L * per_block + 2 * H == 119_589_889
    assert paper.config.heads == 12 and paper.num_layers == 16
    linears = [m for m in paper.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.bias is None for m in linears)  # use_bias: False, qkv_bias: False
    norms = [m for m in paper.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 1 + 2 * L + 1 and all(m.eps == 1e-12 for m in norms)  # embeddings, 2 per block, final
    assert paper.decoder_weight() is paper.embeddings.word.weight  # tied, no decoder bias
    assert abs(paper.embeddings.position_scale.item() - 1 / math.sqrt(768)) < 1e-7
    weights = torch.cat([m.weight.flatten() for m in linears] + [paper.embeddings.word.weight[1:].flatten()])
    assert abs(weights.std().item() - 0.02) < 2e-4 and abs(weights.mean().item()) < 1e-4  # normal(0, 0.02)


def test_crammed_bert_blocks_are_pre_layernorm():
    # pre-LN: with its two output projections zeroed a block is the identity (the residual stream is never
    # normalised inside a block); a post-LN block would still normalise its output
    model = make_model("bert")
    block = model.blocks()[0]
    with torch.no_grad():
        block.attn.out.weight.zero_()
        block.ffn.dense_out.weight.zero_()
        x = 3.0 * torch.randn(2, 8, SMOKE.bert.hidden) + 1.0
        assert torch.equal(block(x), x)


def test_crammed_bert_padding_is_not_attended():
    model = make_model("bert")
    ids = torch.randint(5, VOCAB, (2, 10))
    with torch.no_grad():
        short = model.encode(ids[:, :6])
        padded = model.encode(ids, torch.tensor([[1] * 6 + [0] * 4] * 2))
    assert torch.allclose(short, padded[:, :6], atol=1e-5)


# ------------------------------------------------------------------------------------------- T5 against HF


def test_t5_loss_equals_hf_loss_when_the_blocks_share_one_position_table():
    model, batch = make_model("t5"), t5_batch()
    with torch.no_grad():
        mine = model(batch)
        for stack in model.blocks():  # HF's own forward uses block 0's table in every block
            for block in stack[1:]:
                block.layer[0].SelfAttention.relative_attention_bias.weight.copy_(
                    stack[0].layer[0].SelfAttention.relative_attention_bias.weight)
        ours = model(batch)
        reference = model.hf(input_ids=batch["input_ids"], labels=batch["labels"])
    assert abs(ours["loss"].item() - reference.loss.item()) < 1e-5
    assert torch.allclose(ours["logits"], reference.logits, atol=1e-5)
    assert not torch.allclose(mine["logits"], ours["logits"])  # with their own tables, the blocks differ
    assert ours["per_example_loss"].shape == (3,)
    assert torch.allclose(ours["per_example_loss"].mean(), ours["loss"])


def test_t5_has_a_position_table_per_block_and_a_std_one_lm_head():
    """nanoT5 `share_positional_bias: False`; nanoT5 / HF init the untied lm_head at std 1.0."""
    torch.manual_seed(0)
    t5 = build_model("t5", PRESETS["paper"])
    tables = [b.layer[0].SelfAttention.relative_attention_bias.weight for s in t5.blocks() for b in s]
    assert len(tables) == 24 and len({t.data_ptr() for t in tables}) == 24
    assert abs(t5.hf.lm_head.weight.std().item() - 1.0) < 0.01


def test_configs_follow_the_paper_setup():
    bert, t5 = make_model("bert"), make_model("t5")
    assert bert.config.max_seq_len == SMOKE.bert.seq_len
    assert t5.config.dropout_rate == 0.0 and t5.config.is_gated_act and not t5.config.scale_decoder_outputs
    assert (t5.config.pad_token_id, t5.config.eos_token_id) == (T5_PAD, T5_EOS)
    assert t5.config.decoder_start_token_id == T5_DECODER_START
    # v1.1: one shared input embedding, a separate output projection
    assert t5.hf.encoder.embed_tokens.weight is t5.hf.shared.weight is t5.hf.decoder.embed_tokens.weight
    assert t5.hf.lm_head.weight is not t5.hf.shared.weight
    assert t5.hf.lm_head.weight.data_ptr() != t5.hf.shared.weight.data_ptr()
    assert t5.config._attn_implementation == "sdpa"
    for model in (bert, t5):
        assert model.num_layers == DEPTH
        description = model_config_dict(model)
        json.dumps(description)
        assert description["num_layers"] == DEPTH
        assert description["num_parameters"] == count_parameters(model) > 0
    assert model_config_dict(t5)["hf_config"]["tie_word_embeddings"] is False
    assert model_config_dict(bert)["architecture"]["architecture"] == "crammed-bert"


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


def model_of_blocks(model_name, model, kept):
    """A model holding only blocks `kept` of `model` (each with its own weights, T5 position tables included)."""
    small = make_model(model_name, num_layers=len(kept), seed=321)
    state = model.state_dict()
    mapped = {}
    for key in small.state_dict():
        source = key
        for prefix in BLOCK_PREFIXES:
            if key.startswith(prefix) or f".{prefix}" in key:
                head, tail = key.split(prefix, 1)
                index, rest = tail.split(".", 1)
                source = f"{head}{prefix}{kept[int(index)]}.{rest}"
        mapped[key] = state[source]
    small.load_state_dict(mapped, strict=True)
    return small


BLOCK_PREFIXES = ("layers.", "encoder.block.", "decoder.block.")


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_skipping_block_zero_equals_a_model_without_it(name):
    model, batch = make_model(name), BATCHES[name]()
    kept = [1, 3]
    reference = model_of_blocks(name, model, kept)
    with torch.no_grad():
        ours, theirs = model(batch, active_layers=kept), reference(batch)
    assert abs(ours["loss"].item() - theirs["loss"].item()) < 1e-5


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
                    else:  # a skipped block, its own T5 position table included, gets no gradient
                        assert param.grad is None, (active, index, param_name)
        embeddings = model.embeddings.word.weight if name == "bert" else model.hf.get_input_embeddings().weight
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
        for prefix in BLOCK_PREFIXES:
            if key.startswith(prefix) or f".{prefix}" in key:
                head, tail = key.split(prefix, 1)
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
    assert config.num_layers == DEPTH
    if name == "t5":
        assert config.num_decoder_layers == DEPTH
        assert model.hf.encoder.config.num_layers == model.hf.decoder.config.num_layers == DEPTH

    # weights copied exactly (T5 position tables too), storage not shared
    for stack in stacks(model):
        reference = dict(stack[0].named_parameters())
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
