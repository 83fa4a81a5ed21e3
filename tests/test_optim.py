"""AdamWScale against an independent numpy statement of its rule; parameter groups on real tiny BERT and T5."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ntng.models.pretraining import build_model
from ntng.presets import PRESETS
from ntng.training.optim import AdamWScale, build_optimizer, decay_groups

SMOKE = PRESETS["smoke"]


# ---------------------------------------------------------------------------------------- numpy reference


class ReferenceAdamWScale:
    """The rule as written in the paper / nanoT5, one numpy array per parameter, float64 throughout.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr * sqrt(1 - b2^t) / (1 - b1^t) * max(floor, RMS(p)) * m / (sqrt(v) + eps)
    p <- p * (1 - lr * wd)        (decoupled, after the step, on the updated p)

    (Decaying before or after the step is the same rule here while RMS(p) > floor: the step scales with RMS(p).)
    """

    def __init__(self, params, betas, eps, floor=1e-3, use_wd=True, bias_correction=True):
        self.p = [np.array(x, dtype=np.float64) for x in params]
        self.m = [np.zeros_like(x) for x in self.p]
        self.v = [np.zeros_like(x) for x in self.p]
        self.t = [0] * len(self.p)
        self.b1, self.b2 = betas
        self.eps, self.floor, self.use_wd, self.bias_correction = eps, floor, use_wd, bias_correction

    def step(self, grads, lrs, wds):
        for i, g in enumerate(grads):
            if g is None:  # no gradient: the parameter and its state are left alone
                continue
            lr, wd, p = lrs[i], wds[i], self.p[i]
            self.t[i] += 1
            t = self.t[i]
            self.m[i] = self.b1 * self.m[i] + (1.0 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1.0 - self.b2) * g * g
            rms = math.sqrt(float(np.mean(p * p)))
            correction = math.sqrt(1.0 - self.b2**t) / (1.0 - self.b1**t) if self.bias_correction else 1.0
            size = lr * correction * max(self.floor, rms)
            p = p - size * self.m[i] / (np.sqrt(self.v[i]) + self.eps)
            if self.use_wd:
                p = p * (1.0 - lr * wd)
            self.p[i] = p


def _initial_tensors(rng):
    return [
        rng.normal(size=(6, 5)),           # a matrix, RMS ~ 1
        rng.normal(size=(7,)) * 0.3,       # a vector
        rng.normal(size=(4, 3)) * 1e-5,    # tiny RMS: the 1e-3 floor binds throughout
        rng.normal(size=(3, 2, 2)) * 2.0,  # a 3-d tensor
    ]


def _run(steps=36, dtype=torch.float64, foreach=None, **reference_options):
    """Run torch AdamWScale and the numpy reference side by side; return both final parameter lists."""
    rng = np.random.default_rng(1234)
    initial = _initial_tensors(rng)
    params = [nn.Parameter(torch.tensor(x, dtype=dtype)) for x in initial]
    betas, eps = (0.9, 0.999), 1e-6
    # two groups: the first decays (wd > 0), the second (holding the tiny tensor) does not
    optimizer = AdamWScale([{"params": params[:2], "weight_decay": 0.1}, {"params": params[2:]}],
                           lr=2e-2, betas=betas, eps=eps, weight_decay=0.0, foreach=foreach)
    reference = ReferenceAdamWScale(initial, betas, eps, **reference_options)
    group_of = [0, 0, 1, 1]
    for step in range(steps):
        if step == steps // 2:  # an lr change mid-run, different per group
            optimizer.param_groups[0]["lr"] = 5e-3
            optimizer.param_groups[1]["lr"] = 3e-2
        grads = []
        for i, p in enumerate(params):
            if i == 1 and step % 7 == 3:  # sometimes no gradient at all for one tensor
                p.grad = None
                grads.append(None)
                continue
            g = rng.normal(size=p.shape) * (1e-4 if i == 2 else 1.0)
            p.grad = torch.tensor(g, dtype=dtype)
            grads.append(g)
        lrs = [optimizer.param_groups[group_of[i]]["lr"] for i in range(len(params))]
        wds = [optimizer.param_groups[group_of[i]]["weight_decay"] for i in range(len(params))]
        optimizer.step()
        reference.step(grads, lrs, wds)
    return [p.detach().double().numpy() for p in params], reference, optimizer, initial


@pytest.mark.parametrize("foreach", [False, True])  # tensor by tensor (CPU default), all at once (CUDA default)
def test_adamw_scale_matches_the_reference_rule(foreach):
    got, reference, optimizer, initial = _run(foreach=foreach)
    for ours, theirs, start in zip(got, reference.p, initial, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-12)
        assert not np.allclose(ours, start)  # the run actually moved every tensor
    # the tiny tensor stayed under the floor for the whole run, so it really tested the floor
    assert math.sqrt(float(np.mean(reference.p[2] ** 2))) < 1e-3
    # state: the step counts skip the steps without a gradient
    states = [optimizer.state[p] for group in optimizer.param_groups for p in group["params"]]
    assert [s["step"] for s in states] == [36, 36 - 5, 36, 36]
    assert reference.t == [36, 31, 36, 36]
    for state, m, v in zip(states, reference.m, reference.v, strict=True):
        np.testing.assert_allclose(state["exp_avg"].numpy(), m, rtol=1e-6, atol=1e-15)
        np.testing.assert_allclose(state["exp_avg_sq"].numpy(), v, rtol=1e-6, atol=1e-18)


def test_the_comparison_can_tell_the_floor_the_decay_and_the_bias_correction_apart():
    got, reference, _, _ = _run()
    np.testing.assert_allclose(got[2], reference.p[2], rtol=1e-6, atol=1e-12)
    # without the floor the tiny tensor would barely move: a reference without it disagrees with the optimizer
    assert not np.allclose(got[2], _reference_only(floor=0.0)[2], rtol=1e-3, atol=0)
    # without weight decay the decayed tensors come out elsewhere
    assert not np.allclose(got[0], _reference_only(use_wd=False)[0], rtol=1e-3, atol=0)
    # without Adam's bias correction every tensor comes out elsewhere
    no_correction = _reference_only(bias_correction=False)
    for ours, theirs in zip(got, no_correction, strict=True):
        assert not np.allclose(ours, theirs, rtol=1e-4, atol=0)


def _reference_only(**kwargs):
    _, reference, _, _ = _run(**kwargs)
    return reference.p


@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_scale_in_float32_tracks_the_reference(foreach):
    got, reference, _, _ = _run(dtype=torch.float32, foreach=foreach)
    for ours, theirs in zip(got, reference.p, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=2e-4, atol=1e-9)


@pytest.mark.parametrize("foreach", [False, True])
def test_adamw_scale_first_step_by_hand(foreach):
    # t = 1: m = 0.1 g and v = 0.001 g^2, so m / sqrt(v) = sign(g) * 0.1 / sqrt(0.001), which the bias correction
    # sqrt(0.001) / 0.1 cancels: the first step moves every element by lr * RMS(p) against its gradient
    p = nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))  # RMS = sqrt(12.5)
    p.grad = torch.tensor([0.5, -2.0], dtype=torch.float64)
    AdamWScale([p], lr=0.01, betas=(0.9, 0.999), eps=1e-300, weight_decay=0.5, foreach=foreach).step()
    rms = math.sqrt(12.5)
    step = 0.01 * rms
    expected = (np.array([3.0, -4.0]) - step * np.array([1.0, -1.0])) * (1 - 0.01 * 0.5)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12)


def test_adamw_scale_closure_and_bad_settings():
    p = nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = AdamWScale([p], lr=1e-2)

    def closure():
        optimizer.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    assert optimizer.step(closure).item() == 3.0
    assert torch.all(p < 1.0)
    for kwargs in ({"lr": 0.0}, {"lr": -1.0}, {"eps": 0.0}, {"weight_decay": -0.1}, {"betas": (0.9, 1.0)},
                   {"betas": (-0.1, 0.99)}):
        with pytest.raises(ValueError):
            AdamWScale([nn.Parameter(torch.ones(2))], **kwargs)


# ----------------------------------------------------------------------------------------- parameter groups


@pytest.fixture(scope="module", params=["bert", "t5"])
def model(request):
    torch.manual_seed(0)
    return build_model(request.param, SMOKE, vocab_size=512)


def _named(model):
    return {id(p): name for name, p in model.named_parameters()}


def _expected_no_decay(model) -> set[int]:
    """Independent statement: a bias, any parameter of a layer-norm module (LayerNorm, T5LayerNorm), or a scalar
    gain (the crammed BERT's position scale)."""
    out = set()
    for module in model.modules():
        is_norm = isinstance(module, nn.LayerNorm) or type(module).__name__ in ("T5LayerNorm", "LayerNorm")
        for name, p in module.named_parameters(recurse=False):
            if name == "bias" or is_norm or name == "position_scale":
                out.add(id(p))
    return out


def test_every_trainable_parameter_is_in_exactly_one_group(model):
    groups = decay_groups(model, 0.01)
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


def test_biases_and_norms_do_not_decay_matrices_and_embeddings_do(model):
    decay, no_decay = decay_groups(model, 0.01)
    names = _named(model)
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {id(p) for p in no_decay["params"]} == _expected_no_decay(model)
    # for these architectures the split is exactly: 1-d tensors (biases, norm gains) do not decay, the rest do
    assert all(p.ndim == 1 for p in no_decay["params"])
    assert all(p.ndim >= 2 for p in decay["params"])
    for name in no_decay_names:
        assert name.endswith(("bias", "position_scale")) or "norm" in name.lower(), name
    for name in decay_names:
        assert name.endswith("weight") and not name.endswith("bias"), name
    norms = [m for m in model.modules() if "norm" in type(m).__name__.lower()]
    assert norms
    for module in norms:
        for p in module.parameters(recurse=False):
            assert id(p) in {id(q) for q in no_decay["params"]}
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert embeddings
    for module in embeddings:
        assert id(module.weight) in {id(q) for q in decay["params"]}


def test_bert_groups_by_name():
    torch.manual_seed(0)
    bert = build_model("bert", SMOKE, vocab_size=512)
    decay, no_decay = decay_groups(bert, 0.01)
    names = _named(bert)
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "embeddings.word.weight" in decay_names
    assert "embeddings.position_scale" in no_decay_names  # the scaled sinusoid's one learned gain
    assert "layers.0.attn.qkv.weight" in decay_names
    assert "layers.3.ffn.dense_out.weight" in decay_names
    assert "embeddings.norm.weight" in no_decay_names and "embeddings.norm.bias" in no_decay_names
    assert "layers.2.norm1.weight" in no_decay_names and "final_norm.bias" in no_decay_names
    # the crammed BERT has no biases outside its LayerNorms: 4 blocks x 2 LayerNorms, the embeddings' and the
    # final one, each a weight and a bias; and the position scale
    assert len(no_decay_names) == 2 * (2 * 4 + 2) + 1


def test_t5_layer_norms_have_no_bias_and_do_not_decay():
    torch.manual_seed(0)
    t5 = build_model("t5", SMOKE, vocab_size=512)
    decay, no_decay = decay_groups(t5, 0.01)
    names = _named(t5)
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    t5_norms = [m for m in t5.modules() if type(m).__name__ == "T5LayerNorm"]
    # per stack of 4 blocks: encoder 2 norms per block + final, decoder 3 per block + final
    assert len(t5_norms) == (2 * 4 + 1) + (3 * 4 + 1)
    assert all(dict(m.named_parameters(recurse=False)).keys() == {"weight"} for m in t5_norms)
    assert len(no_decay_names) == len(t5_norms)
    assert all(n.endswith("layer_norm.weight") for n in no_decay_names)
    assert "hf.encoder.block.0.layer.0.layer_norm.weight" in no_decay_names
    assert "hf.decoder.final_layer_norm.weight" in no_decay_names
    for name in ("hf.shared.weight", "hf.lm_head.weight", "hf.encoder.block.1.layer.1.DenseReluDense.wi_0.weight",
                 "hf.decoder.block.1.layer.1.EncDecAttention.o.weight",
                 "hf.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"):
        assert name in decay_names, name


def test_frozen_parameters_are_left_out():
    torch.manual_seed(0)
    bert = build_model("bert", SMOKE, vocab_size=512)
    frozen = bert.embeddings.word.weight
    frozen.requires_grad_(False)
    frozen_norm = bert.embeddings.norm.bias
    frozen_norm.requires_grad_(False)
    ids = {id(p) for g in decay_groups(bert, 0.01) for p in g["params"]}
    assert id(frozen) not in ids and id(frozen_norm) not in ids
    assert ids == {id(p) for p in bert.parameters() if p.requires_grad}


def test_build_optimizer_adamw_has_the_two_groups():
    torch.manual_seed(0)
    bert = build_model("bert", SMOKE, vocab_size=512)
    optimizer = build_optimizer("adamw", bert, lr=1e-3, betas=[0.9, 0.98], eps=1e-12, weight_decay=0.01)
    assert type(optimizer) is torch.optim.AdamW
    assert len(optimizer.param_groups) == 2
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    for group in optimizer.param_groups:
        assert group["lr"] == 1e-3 and group["betas"] == (0.9, 0.98) and group["eps"] == 1e-12
    expected = decay_groups(bert, 0.01)
    assert [id(p) for p in decay["params"]] == [id(p) for p in expected[0]["params"]]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in expected[1]["params"]]

    # behaviour: with zero gradients Adam's step is 0, so only the decoupled decay acts, and only on group 0
    before = {id(p): p.detach().clone() for p in bert.parameters()}
    for p in bert.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p in decay["params"]:
        torch.testing.assert_close(p.detach(), before[id(p)] * (1 - 1e-3 * 0.01), rtol=1e-6, atol=0)
    for p in no_decay["params"]:
        assert torch.equal(p.detach(), before[id(p)])


def test_build_optimizer_adamw_scale_and_unknown():
    torch.manual_seed(0)
    t5 = build_model("t5", SMOKE, vocab_size=512)
    optimizer = build_optimizer("adamw_scale", t5, lr=2e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    assert type(optimizer) is AdamWScale
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.0]
    assert all(g["lr"] == 2e-2 and g["eps"] == 1e-6 and g["betas"] == (0.9, 0.999) for g in optimizer.param_groups)
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        build_optimizer("lion", t5, lr=1e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)


def test_adamw_scale_picks_tensor_by_tensor_on_cpu():
    optimizer = AdamWScale([nn.Parameter(torch.ones(2))], lr=1e-2)
    assert not optimizer._uses_foreach()  # measured faster on CPU; CUDA parameters pick foreach
    assert AdamWScale([nn.Parameter(torch.ones(2))], lr=1e-2, foreach=True)._uses_foreach()


def test_build_optimizer_adamw_is_fused_and_matches_the_per_tensor_rule():
    """The baseline's fused AdamW against torch's for-loop AdamW on the same gradients."""
    torch.manual_seed(0)
    model = build_model("bert", SMOKE)
    twin = build_model("bert", SMOKE)
    twin.load_state_dict(model.state_dict())
    fused = build_optimizer("adamw", model, 1e-3, (0.9, 0.98), 1e-12, 0.01)
    plain = torch.optim.AdamW(decay_groups(twin, 0.01), lr=1e-3, betas=(0.9, 0.98), eps=1e-12, foreach=False)
    assert fused.defaults["fused"]
    for _ in range(3):
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        fused.step()
        plain.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
