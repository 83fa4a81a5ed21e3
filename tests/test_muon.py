"""Muon through the registry: which parameters it takes, one update against a hand computation, and a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ntng.errors import UsageError
from ntng.methods import build_method, find_method, studied_methods
from ntng.presets import PRESETS
from ntng.training.loop import pretrain

SMOKE = PRESETS["smoke"]


def model_of(name: str):
    from ntng.models.pretraining import build_model

    torch.manual_seed(0)
    return build_model(name, SMOKE, vocab_size=512)


@pytest.mark.parametrize("name", ["bert", "t5"])
def test_muon_takes_the_block_matrices_and_the_baseline_optimizer_the_rest(name):
    model = model_of(name)
    optimizer = build_method("muon", name, SMOKE).build_optimizer(model)
    muon_ids = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    rest_ids = {id(p) for g in optimizer.rest.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert not muon_ids & rest_ids and muon_ids | rest_ids == set(names)  # every parameter once
    muon_names = sorted(names[i] for i in muon_ids)
    assert all(model.get_parameter(n).ndim == 2 for n in muon_names)
    if name == "bert":  # qkv, out, dense_in, dense_out in each of the 4 blocks
        assert len(muon_names) == 4 * SMOKE.bert.num_layers
        assert "embeddings.word.weight" in {names[i] for i in rest_ids}
        assert type(optimizer.rest) is torch.optim.AdamW
    else:  # q, k, v, o, wi_0, wi_1, wo in every encoder block; + cross-attention q, k, v, o in the decoder's
        assert len(muon_names) == 7 * SMOKE.t5.num_layers + 11 * SMOKE.t5.num_layers
        rest = {names[i] for i in rest_ids}
        assert "hf.lm_head.weight" in rest and any("relative_attention_bias" in n for n in rest)
        assert not any("relative_attention_bias" in n or "lm_head" in n or "shared" in n for n in muon_names)
    # the loop's schedule reaches both optimizers through param_groups
    assert len(optimizer.param_groups) == len(optimizer.muon.param_groups) + len(optimizer.rest.param_groups)


def newton_schulz_by_hand(update: np.ndarray) -> np.ndarray:
    """Keller Jordan's quintic iteration written out in float64: X = U / |U|_F (on the wide orientation), then five
    times X <- 3.4445 X + (-4.7750 A + 2.0315 A^2) X with A = X X^T."""
    x = update.T if update.shape[0] > update.shape[1] else update
    x = x / np.linalg.norm(x)
    for _ in range(5):
        a = x @ x.T
        x = 3.4445 * x + (-4.7750 * a + 2.0315 * a @ a) @ x
    return x.T if update.shape[0] > update.shape[1] else x


def test_one_muon_step_matches_the_update_computed_by_hand():
    model = model_of("bert")
    method = build_method("muon", "bert", SMOKE, lr=0.02, weight_decay=0.1, momentum=0.9)
    optimizer = method.build_optimizer(model)
    weight = model.layers[0].ffn.dense_in.weight  # a tall matrix (512 x 128): the transposed orientation
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    # columns of very different scales: a gradient whose singular values spread over more than a factor of 10
    grad = torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) * torch.logspace(-1, 1, 128)
    weight.grad.copy_(grad)
    before = weight.detach().double().numpy().copy()
    optimizer.step()
    g = grad.double().numpy()
    buffer = (1 - 0.9) * g  # momentum buffer from zero: lerp towards g by 1 - momentum
    nesterov = g + 0.9 * (buffer - g)  # g.lerp(buffer, momentum)
    adjusted_lr = 0.02 * 0.2 * np.sqrt(max(weight.shape))  # "match_rms_adamw"
    expected = before * (1 - 0.02 * 0.1) - adjusted_lr * newton_schulz_by_hand(nesterov)
    after = weight.detach().double().numpy()
    step = expected - before
    # torch runs the iteration in bf16: agreement to a few per cent of the step (in Frobenius norm); a step that
    # skipped the orthogonalisation (the plain Nesterov direction, rescaled to the same norm) misses by far more
    assert np.linalg.norm(after - expected) < 0.03 * np.linalg.norm(step)
    plain = -nesterov / np.linalg.norm(nesterov) * np.linalg.norm(step)
    assert np.linalg.norm(plain - step) > 0.3 * np.linalg.norm(step)
    # orthogonalised: the update's singular values sit near 1 (the quintic's band, about 0.7-1.2), not g's spread
    singular = np.linalg.svd((before * (1 - 0.002) - after) / adjusted_lr, compute_uv=False)
    assert singular.min() > 0.5 and singular.max() < 1.3
    assert np.linalg.svd(g, compute_uv=False).max() / np.linalg.svd(g, compute_uv=False).min() > 10


def test_muon_is_a_registry_entry_outside_the_papers_grid():
    assert find_method("muon").name == "muon"
    assert "muon" not in studied_methods("bert") and "muon" not in studied_methods("t5")
    for bad in ({"lr": 0.0}, {"momentum": 1.0}, {"weight_decay": -1.0}, {"ns_steps": 0}):
        with pytest.raises(UsageError, match="muon"):
            build_method("muon", "bert", SMOKE, **bad)


def test_a_muon_run_trains_and_its_step_is_priced(built_fixture, tmp_path, monkeypatch):
    """Priced by a shipped ratio (4x AdamW's step), as the reference tables price it: a ratio measured on this host
    would follow its bf16 support (an AVX2-only host emulates Muon's bf16 Newton-Schulz at ~2000x the tiny AdamW
    step, leaving a 3 s budget one step)."""
    import json

    from ntng.training import pricing
    from ntng.training.rst import shipped_table

    table = shipped_table("smoke", "bert")
    (tmp_path / f"{table.name}.json").write_text(json.dumps({"table": table.name, "optimizers": {
        "muon": {"ratio": 4.0, "of": "adamw"}}}))
    monkeypatch.setattr(pricing, "shipped_path", lambda name: tmp_path / f"{name}.json")
    data_dir, _ = built_fixture
    summary = pretrain(model="bert", method="muon", budget="3s", preset="tiny", out_dir=tmp_path / "run",
                       data_dir=data_dir, log=lambda m: None)
    assert summary["status"] == "complete"
    assert summary["final_val_loss"] < summary["evals"][0]["val_loss"] - 0.05
    price = summary["rst_estimates"]["muon"]
    assert price["estimate"] and price["seconds"] == pytest.approx(4.0 * table.optimizer_seconds("adamw"))
    assert summary["rst_breakdown"]["optimizer"] == pytest.approx(summary["steps"] * price["seconds"], rel=1e-9)


def test_nn_linear_outside_a_stack_is_not_a_block_matrix():
    from ntng.methods.muon import block_matrices

    net = nn.Sequential(nn.Linear(4, 4), nn.ModuleList([nn.Linear(4, 8), nn.LayerNorm(8)]))
    assert [tuple(p.shape) for p in block_matrices(net)] == [(8, 4)]
