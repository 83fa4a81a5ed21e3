"""Lion and Sophia-G against independent implementations: `lion_pytorch.Lion` and the `sophia-opt` package's SophiaG (a
copy of the official one). Test-only oracles: the package never imports them.

Same initial parameters, the same gradient sequence (random, and real backward passes of a tiny BERT), weight
decay > 0 on one group, the learning rate changed on both before every step: parameters agree within 1e-6 in fp32.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from lion_pytorch import Lion as OracleLion
from sophia_opt import SophiaG as OracleSophiaG
from torch import nn

from ntng.data.batches import make_collator
from ntng.methods.sophia import sampled_label_loss
from ntng.models.pretraining import build_model
from ntng.presets import PRESETS
from ntng.training.optim import Lion, SophiaG, decay_groups

STEPS = 60
TOL = 1e-6
BS = 1000  # Sophia's tokens per batch: with the gradients below, some coordinates are clipped and some are not


def lr_at(step: int, peak: float) -> float:
    """A schedule that changes the lr before every step (triangle up then down, never 0 past step 0)."""
    fraction = (step + 1) / STEPS
    return peak * (fraction / 0.5 if fraction <= 0.5 else (1.0 - fraction) / 0.5 + 0.01)


def random_params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, generator=g), torch.randn(7, generator=g) * 0.3, torch.randn(4, 3, 2, generator=g),
            torch.randn(9, generator=g) * 2.0]


def as_groups(params: list[nn.Parameter], wd: float) -> list[dict]:
    return [{"params": params[:2], "weight_decay": wd}, {"params": params[2:], "weight_decay": 0.0}]


def set_lr(optimizers, step: int, peak: float) -> None:
    for optimizer in optimizers:
        for k, group in enumerate(optimizer.param_groups):
            group["lr"] = lr_at(step, peak) * (1.0 if k == 0 else 0.5)  # the groups' lrs differ too


def assert_same(ours, theirs) -> None:
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=0, atol=TOL)


# ------------------------------------------------------------------------------------------- random gradients


@pytest.mark.parametrize("foreach", [False, True])  # tensor by tensor (CPU default), all at once (CUDA default)
def test_lion_matches_lion_pytorch_on_random_gradients(foreach):
    start = random_params()
    ours = [nn.Parameter(t.clone()) for t in start]
    theirs = [nn.Parameter(t.clone()) for t in start]
    ours_opt = Lion(as_groups(ours, 0.1), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, foreach=foreach)
    theirs_opt = OracleLion(as_groups(theirs, 0.1), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        set_lr((ours_opt, theirs_opt), step, 1e-2)
        for a, b in zip(ours, theirs, strict=True):
            if a is ours[1] and step % 9 == 4:  # sometimes no gradient for one tensor: skipped by both
                a.grad = b.grad = None
                continue
            grad = torch.randn(a.shape, generator=g)
            a.grad, b.grad = grad.clone(), grad.clone()
        ours_opt.step()
        theirs_opt.step()
        assert_same(ours, theirs)
    for a, t in zip(ours, start, strict=True):
        assert not torch.allclose(a.detach(), t, atol=1e-3)  # every tensor moved
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(ours_opt.state[a]["exp_avg"], theirs_opt.state[b]["exp_avg"], rtol=0, atol=TOL)


def test_lion_without_weight_decay_or_with_it_differs():
    """The comparison can tell weight decay apart: decaying p is not a no-op at these settings."""
    start = random_params()
    runs = []
    for wd in (0.0, 0.1):
        params = [nn.Parameter(t.clone()) for t in start]
        optimizer = Lion(as_groups(params, wd), lr=1e-2, weight_decay=wd)
        g = torch.Generator().manual_seed(1)
        for _ in range(10):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            optimizer.step()
        runs.append(params)
    assert (runs[0][0] - runs[1][0]).abs().max() > 10 * TOL
    assert torch.equal(runs[0][2], runs[1][2])  # the no-decay group is the same either way


def _sophia_pair(start, wd=0.05, rho=0.04, bs_in_constructor=True, foreach=None):
    ours = [nn.Parameter(t.clone()) for t in start]
    theirs = [nn.Parameter(t.clone()) for t in start]
    kwargs = ({"bs": BS} if bs_in_constructor else {}) | {"foreach": foreach}
    ours_opt = SophiaG(as_groups(ours, wd), lr=1e-2, betas=(0.965, 0.99), rho=rho, weight_decay=wd, **kwargs)
    theirs_opt = OracleSophiaG(as_groups(theirs, wd), lr=1e-2, betas=(0.965, 0.99), rho=rho, weight_decay=wd)
    return ours, theirs, ours_opt, theirs_opt


def _oracle_clip_fraction(optimizer, params, rho, bs) -> float:
    clipped = total = 0
    for p in params:
        state = optimizer.state[p]
        ratio = state["exp_avg"].abs() / (rho * bs * state["hessian"] + 1e-15)
        clipped += int((ratio > 1).sum())
        total += ratio.numel()
    return clipped / total


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("bs_in_constructor", [True, False])
def test_sophia_matches_the_official_sophiag_on_random_gradients(bs_in_constructor, foreach):
    start = random_params(2)
    ours, theirs, ours_opt, theirs_opt = _sophia_pair(start, bs_in_constructor=bs_in_constructor, foreach=foreach)
    g = torch.Generator().manual_seed(3)
    fractions = []
    for step in range(STEPS):
        if step % 10 == 5:  # the Hessian schedule, the same on both: fold a "sampled-label" gradient in
            for a, b in zip(ours, theirs, strict=True):
                hess_grad = torch.randn(a.shape, generator=g) * 0.5
                a.grad, b.grad = hess_grad.clone(), hess_grad.clone()
            ours_opt.update_hessian()
            theirs_opt.update_hessian()
        set_lr((ours_opt, theirs_opt), step, 1e-2)
        for a, b in zip(ours, theirs, strict=True):
            grad = torch.randn(a.shape, generator=g) * (0.05 if a is ours[3] else 1.0)
            a.grad, b.grad = grad.clone(), grad.clone()
        if bs_in_constructor:
            ours_opt.step()
        else:
            ours_opt.step(bs=BS)
        theirs_opt.step(bs=BS)
        assert_same(ours, theirs)
        assert ours_opt.last_clip_fraction == pytest.approx(_oracle_clip_fraction(theirs_opt, theirs, 0.04, BS))
        fractions.append(ours_opt.last_clip_fraction)
    for a, b in zip(ours, theirs, strict=True):
        for key in ("exp_avg", "hessian"):
            torch.testing.assert_close(ours_opt.state[a][key], theirs_opt.state[b][key], rtol=0, atol=TOL)
        assert ours_opt.state[a]["step"] == int(theirs_opt.state[b]["step"]) == STEPS
    # before the first Hessian update every coordinate is clipped (h = 0); after it, the clip binds only partly,
    # so both branches of min(., 1) were compared
    assert fractions[:5] == [1.0] * 5
    assert all(0.0 < f < 1.0 for f in fractions[6:]) and max(fractions[6:]) > 0.3


# ------------------------------------------------------------------------------------------- a real tiny model


def _bert_pair(seed=0):
    torch.manual_seed(seed)
    model = build_model("bert", PRESETS["smoke"], vocab_size=512)
    return model, copy.deepcopy(model)


def _batches(n: int, seed: int = 0):
    collator = make_collator("bert", PRESETS["smoke"], 512, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        tokens = torch.randint(5, 512, (4, 128), generator=g)
        tokens[:, 0], tokens[:, -1] = 2, 3
        yield collator(tokens)


def assert_moved(model: nn.Module, start: list[torch.Tensor]) -> None:
    """Every matrix moved by far more than the tolerance: the comparison is not between two idle models."""
    for p, s in zip(model.parameters(), start, strict=True):
        if p.ndim >= 2:
            assert (p.detach() - s).abs().max() > 1000 * TOL


def _copy_grads(source: nn.Module, target: nn.Module) -> None:
    for a, b in zip(source.parameters(), target.parameters(), strict=True):
        b.grad = None if a.grad is None else a.grad.clone()


def test_lion_matches_lion_pytorch_on_a_real_tiny_bert():
    ours_model, theirs_model = _bert_pair()
    ours_opt = Lion(decay_groups(ours_model, 0.1), lr=1e-3, weight_decay=0.1)
    theirs_opt = OracleLion(decay_groups(theirs_model, 0.1), lr=1e-3, weight_decay=0.1)
    start = [p.detach().clone() for p in ours_model.parameters()]
    for step, batch in enumerate(_batches(STEPS)):
        set_lr((ours_opt, theirs_opt), step, 1e-3)
        ours_opt.zero_grad(set_to_none=False)
        ours_model(batch)["loss"].backward()  # a real backward pass; the oracle gets the very same gradient
        _copy_grads(ours_model, theirs_model)
        ours_opt.step()
        theirs_opt.step()
    assert_same(list(ours_model.parameters()), list(theirs_model.parameters()))
    assert_moved(ours_model, start)


def test_sophia_matches_the_official_sophiag_on_a_real_tiny_bert():
    ours_model, theirs_model = _bert_pair(1)
    bs = 4 * 128
    ours_opt = SophiaG(decay_groups(ours_model, 0.01), lr=1e-3, rho=0.04, weight_decay=0.01, bs=bs)
    theirs_opt = OracleSophiaG(decay_groups(theirs_model, 0.01), lr=1e-3, rho=0.04, weight_decay=0.01)
    torch.manual_seed(5)
    batches = _batches(STEPS + STEPS // 10 + 1, seed=1)
    start = [p.detach().clone() for p in ours_model.parameters()]
    for step in range(STEPS):
        if step % 10 == 0:  # the BERT schedule: an estimate before updates 1, 11, 21, ... from sampled labels
            ours_opt.zero_grad(set_to_none=False)
            sampled_label_loss(ours_model(next(batches))["logits"]).backward()
            _copy_grads(ours_model, theirs_model)
            ours_opt.update_hessian()
            theirs_opt.update_hessian()
        set_lr((ours_opt, theirs_opt), step, 1e-3)
        ours_opt.zero_grad(set_to_none=False)
        ours_model(next(batches))["loss"].backward()
        _copy_grads(ours_model, theirs_model)
        ours_opt.step()
        theirs_opt.step(bs=bs)
        assert 0.0 < ours_opt.last_clip_fraction < 1.0
    assert_same(list(ours_model.parameters()), list(theirs_model.parameters()))
    for a, b in zip(ours_model.parameters(), theirs_model.parameters(), strict=True):
        torch.testing.assert_close(ours_opt.state[a]["hessian"], theirs_opt.state[b]["hessian"], rtol=0, atol=TOL)
    assert_moved(ours_model, start)


# ------------------------------------------------------------------------------- the paper's T5 variant, state


@pytest.mark.parametrize("foreach", [False, True])
def test_rms_scaled_steps_follow_the_papers_t5_code(foreach):
    """`rms_scale=True`: Lion's lr (decay and step) and Sophia's step (not its decay) are multiplied by
    max(1e-3, RMS(p)) - RMS before the step for Lion, after the decay for Sophia - stated here in numpy."""
    p0 = np.array([0.3, -0.2, 0.5, 0.1], dtype=np.float64)
    tiny0 = np.array([1e-5, -2e-5], dtype=np.float64)  # RMS under the floor: the 1e-3 floor applies
    g = np.array([0.5, -1.0, 0.25, 0.0])
    g_tiny = np.array([1.0, -1.0])
    lr, wd = 1e-2, 0.1
    rms = lambda x: math.sqrt(float(np.mean(x * x)))  # noqa: E731

    p, tiny = nn.Parameter(torch.tensor(p0)), nn.Parameter(torch.tensor(tiny0))
    lion = Lion([p, tiny], lr=lr, weight_decay=wd, rms_scale=True, foreach=foreach)
    p.grad, tiny.grad = torch.tensor(g), torch.tensor(g_tiny)
    lion.step()
    lr_p = lr * max(1e-3, rms(p0))
    expected = p0 * (1 - lr_p * wd) - lr_p * np.sign(0.1 * g)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12)
    # 1e-5 - 1e-5 (1 - 1e-6) cancels to ~1e-11: compare to the rounding of the terms, not of the difference
    np.testing.assert_allclose(tiny.detach().numpy(), tiny0 * (1 - lr * 1e-3 * wd) - lr * 1e-3 * np.sign(g_tiny),
                               rtol=1e-12, atol=1e-20)

    p = nn.Parameter(torch.tensor(p0))
    sophia = SophiaG([p], lr=lr, rho=0.04, weight_decay=wd, bs=10, rms_scale=True, foreach=foreach)
    p.grad = torch.tensor(g)
    sophia.update_hessian()  # h = 0.01 g^2
    sophia.step()
    decayed = p0 * (1 - lr * wd)
    m = 0.035 * g
    h = 0.01 * g * g
    ratio = np.minimum(np.abs(m) / (0.04 * 10 * h + 1e-15), 1.0)
    expected = decayed - lr * max(1e-3, rms(decayed)) * np.sign(m) * ratio
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("kind", ["lion", "sophia"])
def test_state_dict_round_trip_continues_identically(kind):
    def make(params):
        if kind == "lion":
            return Lion(as_groups(params, 0.1), lr=1e-2, weight_decay=0.1)
        return SophiaG(as_groups(params, 0.1), lr=1e-2, weight_decay=0.1, bs=BS)

    start = random_params(4)
    a = [nn.Parameter(t.clone()) for t in start]
    opt_a = make(a)
    g = torch.Generator().manual_seed(7)
    grads = [[torch.randn(t.shape, generator=g) for t in start] for _ in range(20)]

    def run(params, optimizer, steps):
        for step in steps:
            for p, grad in zip(params, grads[step], strict=True):
                p.grad = grad.clone()
            if kind == "sophia" and step % 10 == 0:
                optimizer.update_hessian()
            optimizer.step()

    run(a, opt_a, range(10))
    saved = copy.deepcopy(opt_a.state_dict())
    b = [nn.Parameter(p.detach().clone()) for p in a]
    opt_b = make(b)
    opt_b.load_state_dict(saved)
    run(a, opt_a, range(10, 20))
    run(b, opt_b, range(10, 20))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_bad_settings_are_refused():
    p = [nn.Parameter(torch.ones(2))]
    for kwargs in ({"lr": 0.0}, {"lr": -1.0}, {"lr": 1e-3, "weight_decay": -0.1}, {"lr": 1e-3, "betas": (0.9, 1.0)}):
        with pytest.raises(ValueError):
            Lion(p, **kwargs)
    for kwargs in ({"lr": 0.0}, {"lr": 1e-3, "rho": -1.0}, {"lr": 1e-3, "bs": 0}, {"lr": 1e-3, "betas": (1.0, 0.9)}):
        with pytest.raises(ValueError):
            SophiaG(p, **kwargs)
