"""Dynamic architectures: layer stacking and progressive layer dropping, their rules and their runs."""

from __future__ import annotations

import csv
import dataclasses

import pytest
import torch

from ntng.errors import UsageError
from ntng.methods import build_method
from ntng.methods.base import Run
from ntng.methods.layer_dropping import (
    LayerDropping,
    drop_probabilities,
    expected_depth,
    keep_probability,
    sample_active_layers,
)
from ntng.methods.layer_stacking import LayerStacking, stacking_depth
from ntng.models.pretraining import build_model
from ntng.presets import PRESETS, get_preset
from ntng.training import loop as train
from ntng.training.optim import build_optimizer
from ntng.training.rst import RSTClock, shipped_table
from ntng.training.spec import resolve

SMOKE = PRESETS["smoke"]


def pretrain(built, tmp_path, name, **kwargs):
    data_dir, _ = built
    options = {"model": "bert", "method": "baseline", "budget": "4s", "preset": "tiny", "seed": 0,
               "out_dir": tmp_path / name, "data_dir": data_dir, "log": lambda m: None, **kwargs}
    return train.pretrain(**options)


def rows(run_dir):
    with open(run_dir / "metrics.csv") as fh:
        return [r for r in csv.DictReader(fh) if r["train_loss"]]


# --- stacking --------------------------------------------------------------------------------------------

def test_stacking_schedule_by_budget_fraction():
    assert [stacking_depth(f, 16) for f in (0.0, 0.1249, 0.125, 0.2999, 0.3, 1.0, 1.2)] == [4, 4, 8, 8, 16, 16, 16]
    assert [stacking_depth(f, 12) for f in (0.0, 0.2, 0.5)] == [3, 6, 12]  # T5-base: 3 -> 6 -> 12


def test_stacking_settings_are_checked_when_the_method_is_built():
    odd = dataclasses.replace(SMOKE, bert=dataclasses.replace(SMOKE.bert, num_layers=6))
    with pytest.raises(UsageError, match="6 blocks"):
        build_method("layer_stacking", "bert", odd)
    with pytest.raises(UsageError, match="doubling points"):
        LayerStacking("bert", SMOKE, points=(0.3, 0.125))


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_doubling_copies_blocks_and_keeps_old_optimizer_state(model):
    torch.manual_seed(0)
    net = build_model(model, SMOKE, vocab_size=512)
    method = LayerStacking(model, SMOKE)
    clock = RSTClock(shipped_table("smoke", model), budget_s=10.0)
    run = Run(model=net, optimizer=None, clock=clock, batches=None, preset=SMOKE, model_name=model)
    method.bind(run)
    assert net.num_layers == 1
    run.optimizer = method.build_optimizer(net)
    for p in net.parameters():  # one real optimizer step so the old blocks have state
        p.grad = torch.randn_like(p)
    run.optimizer.step()
    old_params = list(net.parameters())
    old_state = {id(p): {k: v.clone() for k, v in run.optimizer.state[p].items() if torch.is_tensor(v)}
                 for p in old_params}

    clock.breakdown["train"] = 1.25  # 12.5% of the budget
    method.begin_step(run)
    assert net.num_layers == 2
    stacks = net.blocks() if isinstance(net.blocks(), tuple) else (net.blocks(),)
    for stack in stacks:
        a, b = stack[0].state_dict(), stack[1].state_dict()
        shared = [k for k in a if "relative_attention_bias" not in k]
        assert shared and all(torch.equal(a[k], b[k]) for k in shared)  # block 1 is a copy of block 0
        assert {id(p) for p in stack[1].parameters()}.isdisjoint(id(p) for p in stack[0].parameters())
    for p in old_params:  # the optimizer kept the old blocks' state, untouched
        for k, v in old_state[id(p)].items():
            assert torch.equal(run.optimizer.state[p][k], v)
    new = [p for p in net.parameters() if id(p) not in {id(q) for q in old_params}]
    optimized = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
    assert new and all(id(p) in optimized and not run.optimizer.state[p] for p in new)  # fresh state
    no_decay = [g for g in run.optimizer.param_groups[2:] if g["weight_decay"] == 0.0]
    assert no_decay or model == "t5"  # new biases / LayerNorms join a no-decay group (T5's wd is 0 anyway)

    clock.breakdown["train"] = 3.0  # 30%
    method.begin_step(run)
    assert net.num_layers == 4 and [g["depth"] for g in method.growth] == [2, 4]


def test_grown_model_equals_the_explicit_abab_model():
    torch.manual_seed(1)
    net = build_model("bert", SMOKE, vocab_size=512, num_layers=2)
    batch = {"input_ids": torch.randint(5, 512, (2, 16)), "mlm_positions": torch.tensor([[1, 5], [2, 9]]),
             "mlm_labels": torch.randint(5, 512, (2, 2))}
    explicit = build_model("bert", SMOKE, vocab_size=512, num_layers=4)
    state = net.state_dict()
    for k, v in list(state.items()):
        if k.startswith(("layers.0.", "layers.1.")):
            state[k.replace("layers.0.", "layers.2.").replace("layers.1.", "layers.3.")] = v
    explicit.load_state_dict(state)
    net.stack_layers()
    assert torch.allclose(net(batch)["loss"], explicit(batch)["loss"], atol=1e-6)


def test_stacking_run_switches_depth_at_the_schedule_points(built_fixture, tmp_path):
    base = pretrain(built_fixture, tmp_path, "base", budget="6s")
    summary = pretrain(built_fixture, tmp_path, "stack", budget="6s", method="layer_stacking")
    assert summary["status"] == "complete" and summary["rst_s"] < 6.0 + 0.2
    steps = rows(tmp_path / "stack")
    started = [0.0] + [float(r["rst_s"]) for r in steps[:-1]]  # the depth is chosen at the start of a step
    depths = [(t / 6.0, float(r["active_layers"])) for t, r in zip(started, steps, strict=True)]
    first_2 = min(f for f, d in depths if d == 2)
    first_4 = min(f for f, d in depths if d == 4)
    assert {d for _, d in depths} == {1.0, 2.0, 4.0}
    assert 0.125 <= first_2 < 0.125 + 0.02 and 0.3 <= first_4 < 0.3 + 0.02
    assert all(d == 1 for f, d in depths if f < 0.125) and all(d == 4 for f, d in depths if f >= 0.3)
    assert summary["steps"] > base["steps"]  # shallow steps are cheaper, so more of them fit
    assert [g["depth"] for g in summary["method_stats"]["doublings"]] == [2, 4]


def test_stacked_run_resumes_after_a_doubling(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    whole = pretrain(built_fixture, tmp_path, "whole", budget="4s", method="layer_stacking", model="t5")
    spec = resolve("t5", "layer_stacking", "4s", "tiny", 0, tmp_path / "cut", data_dir=data_dir)
    trainer = train.Trainer(spec, log=lambda m: None)
    trainer.train(stop_after_steps=int(whole["steps"] * 0.5))  # past the second doubling and a checkpoint
    resumed = pretrain(built_fixture, tmp_path, "cut", budget="4s", method="layer_stacking", model="t5", resume=True)
    assert (resumed["steps"], resumed["rst_s"], resumed["final_val_loss"]) == (
        whole["steps"], whole["rst_s"], whole["final_val_loss"])


# --- dropping --------------------------------------------------------------------------------------------

def test_keep_probability_schedule():
    assert keep_probability(0.0, 100.0, 100.0) == 1.0
    assert keep_probability(1.0, 100.0, 100.0) == pytest.approx(0.5 + 0.5 * torch.exp(torch.tensor(-1.0)).item())
    assert keep_probability(100.0, 100.0, 100.0) == pytest.approx(0.5, abs=1e-12)
    assert drop_probabilities(0.5, 4).tolist() == [0.125, 0.25, 0.375, 0.5]


def test_drop_frequency_increases_with_depth_and_mean_depth_matches():
    gen = torch.Generator().manual_seed(0)
    L, n = 8, 20000
    counts = torch.zeros(L)
    depth_end = 0
    for _ in range(n):
        active = sample_active_layers(0.5, L, gen)
        counts[active] += 1
        depth_end += len(active)
    run_fraction = counts / n
    assert all(a > b for a, b in zip(run_fraction[:-1], run_fraction[1:], strict=True))
    assert run_fraction.tolist() == pytest.approx([1 - 0.5 * i / L for i in range(1, L + 1)], abs=0.015)
    # the rule as the paper's code has it (block i of L, 1-based, skipped with probability (1 - theta) i / L)
    assert depth_end / n == pytest.approx(expected_depth(0.5, L), abs=0.03)
    assert expected_depth(0.5, L) == pytest.approx((3 * L - 1) / 4 + L * 0.5 ** L * 40320 / 8**8, rel=1e-9)
    starts = [len(sample_active_layers(keep_probability(0.0, 1.0, 100.0), L, gen)) for _ in range(200)]
    assert set(starts) == {L}  # at the start every block runs


def test_when_every_block_would_be_skipped_all_run():
    gen = torch.Generator().manual_seed(3)
    # theta 0: block L is always skipped and block 1 with probability 1/L; all skipped happens, then all run
    draws = [sample_active_layers(0.0, 2, gen) for _ in range(2000)]
    assert [0, 1] in draws and all(d in ([0], [0, 1]) for d in draws)
    assert sum(d == [0, 1] for d in draws) / 2000 == pytest.approx(0.5, abs=0.04)  # P(all skipped) = 1/2 x 1


def test_dropping_settings_are_checked_when_built():
    with pytest.raises(UsageError, match="theta_bar"):
        LayerDropping("bert", SMOKE, theta_bar=0.0)
    with pytest.raises(UsageError, match="gamma_factor"):
        LayerDropping("t5", SMOKE, gamma_factor=-1)
    assert LayerDropping("t5", SMOKE).gamma_factor == 20.0 and LayerDropping("bert", SMOKE).gamma_factor == 100.0


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_dropping_run_is_cheaper_per_step_and_ends_near_the_expected_depth(built_fixture, tmp_path, model):
    base = pretrain(built_fixture, tmp_path, "base", model=model, budget="6s")
    summary = pretrain(built_fixture, tmp_path, "drop", model=model, budget="6s", method="layer_dropping")
    stats = summary["method_stats"]
    assert summary["status"] == "complete" and summary["steps"] > base["steps"]
    L = get_preset("tiny").shape(model).num_layers
    assert stats["expected_depth_end"] == pytest.approx(expected_depth(0.5, L))
    # the mean depth over the last fifth's draws, within 3 standard errors of its expectation: each block is an
    # independent coin with P(skip) = (1 - theta) i / L, so a draw's variance is sum p (1 - p)
    depths = [float(r["active_layers"]) for r in rows(tmp_path / "drop")]
    started = [0.0] + [float(r["rst_s"]) for r in rows(tmp_path / "drop")[:-1]]
    draws_per_step = 1 if model == "t5" else get_preset("tiny").shape(model).grad_accum
    late_draws = draws_per_step * sum(t >= 0.8 * 6.0 for t in started)
    skip = [0.5 * i / L for i in range(1, L + 1)]
    standard_error = (sum(p * (1 - p) for p in skip) / late_draws) ** 0.5
    assert stats["mean_depth_last_fifth"] == pytest.approx(stats["expected_depth_end"], abs=3 * standard_error)
    assert stats["block_run_fraction"][0] > stats["block_run_fraction"][-1]
    # the first draw is at t = 0, where theta = 1: T5's first step (one draw a step) and BERT's first micro-batch
    # (one draw each; the step's mean is over its 2 micro-batches) run every block
    assert (depths[0] >= (L + 1) / 2 if model == "bert" else depths[0] == L) and min(depths) < L
    # RST is charged at the depth that ran: the train part equals the per-depth table summed over micro-batches
    assert summary["rst_breakdown"]["train"] < base["rst_breakdown"]["train"] * summary["micro_steps"] / base[
        "micro_steps"]


def test_idle_blocks_are_left_out_of_the_update():
    torch.manual_seed(0)
    net = build_model("bert", SMOKE, vocab_size=512)
    optimizer = build_optimizer("adamw", net, 1e-3, (0.9, 0.98), 1e-12, 0.01)
    method = LayerDropping("bert", SMOKE)
    method.used_in_step = {0, 1}  # blocks 2 and 3 sat out the whole step
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    run = Run(model=net, optimizer=optimizer, clock=None, batches=None, preset=SMOKE, model_name="bert")
    method.before_update(run)
    optimizer.step()
    for name, p in net.named_parameters():
        idle = name.startswith(("layers.2.", "layers.3."))
        assert torch.equal(p, before[name]) == idle, name
