"""Schedule-Free AdamW through the registry: the optimizer against the authors' package (`schedulefree`, a test-only
oracle), the eval/train switch, the loop evaluating and saving at the averaged weights, resume, the schedule, and
refused settings."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from tiny_runs import metrics, pretrain_tiny, priced_table
from torch import nn

from ntng.errors import UsageError
from ntng.methods import build_method, check_method_class, find_method, studied_methods
from ntng.methods.schedule_free import AdamWScheduleFree, ScheduleFreeAdamW
from ntng.presets import PRESETS, get_preset
from ntng.training import loop as train
from ntng.training.optim import decay_groups
from ntng.training.records import RunDir
from ntng.training.spec import resolve

SMOKE = PRESETS["smoke"]
STEP_PRICE = 0.0077  # the test table's price of a Schedule-Free step: its own, so the breakdown shows it was charged
# a warm-up from 0 (the first step's weight is 0: c = 0), then a constant rate
LRS = (0.0, 0.002, 0.004, 0.006, 0.008, 0.01, 0.01, 0.01, 0.01, 0.01)


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))


def loss_of(model: nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    inputs, targets = torch.randn(32, 8, generator=generator), torch.randn(32, 4, generator=generator)
    return ((model(inputs) - targets) ** 2).mean()


def ours_and_oracle(ours_foreach: bool, oracle_foreach: bool, weight_decay: float = 0.1):
    """Our optimizer and schedulefree.AdamWScheduleFree on two copies of one model, the same decay groups."""
    schedulefree = pytest.importorskip("schedulefree")
    model, twin = small_model(), small_model()
    ours = AdamWScheduleFree(decay_groups(model, weight_decay), lr=LRS[0], betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=weight_decay, foreach=ours_foreach)
    oracle = schedulefree.AdamWScheduleFree(decay_groups(twin, weight_decay), lr=LRS[0], betas=(0.9, 0.999),
                                            eps=1e-8, weight_decay=weight_decay, warmup_steps=0,
                                            foreach=oracle_foreach)
    oracle.train()  # the package starts in eval mode; ours starts in train mode
    return model, twin, ours, oracle


def step_both(model, twin, ours, oracle, lr: float) -> None:
    """One step of each at `lr`, both fed the gradient taken at our y (the oracle divides its .grad in place)."""
    for optimizer in (ours, oracle):
        for group in optimizer.param_groups:
            group["lr"] = lr
    model.zero_grad()
    loss_of(model).backward()
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()
    ours.step()
    oracle.step()


def assert_same(model, twin) -> None:
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("ours_foreach, oracle_foreach", [(False, False), (False, True), (True, False), (True, True)])
def test_the_optimizer_matches_the_authors_package(ours_foreach, oracle_foreach):
    model, twin, ours, oracle = ours_and_oracle(ours_foreach, oracle_foreach)
    assert [g["weight_decay"] for g in ours.param_groups] == [0.1, 0.0]  # matrices decay; biases and norms do not
    assert len(ours.param_groups[1]["params"]) == 4  # the two linears' biases, the norm's weight and bias
    start = [p.detach().clone() for p in model.parameters()]
    for k, lr in enumerate(LRS):
        step_both(model, twin, ours, oracle, lr)
        assert_same(model, twin)  # y, in train mode
        if k == 5:  # an evaluation mid-run, as the loop makes: both to x and back
            ours.eval()
            oracle.eval()
            assert_same(model, twin)
            ours.train()
            oracle.train()
            assert_same(model, twin)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(ours.state[p]["z"], oracle.state[q]["z"], rtol=1e-6, atol=1e-8)
    ours.eval()
    oracle.eval()
    assert_same(model, twin)  # x, the averaged weights
    assert any(not torch.equal(p, s) for p, s in zip(model.parameters(), start, strict=True))  # it did move
    for ours_group, oracle_group in zip(ours.param_groups, oracle.param_groups, strict=True):
        assert ours_group["k"] == oracle_group["k"] == len(LRS)
        assert ours_group["weight_sum"] == pytest.approx(oracle_group["weight_sum"], rel=1e-12)


def test_without_weight_decay_too():
    model, twin, ours, oracle = ours_and_oracle(False, True, weight_decay=0.0)
    for lr in LRS:
        step_both(model, twin, ours, oracle, lr)
    ours.eval()
    oracle.eval()
    assert_same(model, twin)


def test_eval_and_train_switch_between_y_and_x():
    model, twin, ours, oracle = ours_and_oracle(False, False)
    for lr in LRS:
        step_both(model, twin, ours, oracle, lr)
    beta1 = 0.9
    y = [p.detach().clone() for p in model.parameters()]
    z = [ours.state[p]["z"].clone() for p in model.parameters()]
    ours.eval()
    assert [g["train_mode"] for g in ours.param_groups] == [False, False]
    assert all(g["train_mode"] is False for g in ours.state_dict()["param_groups"])  # a checkpoint records it
    for p, y_, z_ in zip(model.parameters(), y, z, strict=True):
        torch.testing.assert_close(p.detach(), (y_ - (1 - beta1) * z_) / beta1, rtol=1e-5, atol=1e-7)
        assert not torch.allclose(p.detach(), y_, rtol=1e-4, atol=0)  # x is not y
    x = [p.detach().clone() for p in model.parameters()]
    ours.eval()  # already at x: nothing changes
    assert all(torch.equal(p, x_) for p, x_ in zip(model.parameters(), x, strict=True))
    ours.train()
    for p, y_ in zip(model.parameters(), y, strict=True):
        torch.testing.assert_close(p.detach(), y_, rtol=1e-6, atol=1e-7)  # back to y, to float rounding
    ours.eval()
    # a step taken at x first puts y back, as train() does: a run resumed from a checkpoint written at x steps on
    import copy

    resumed = copy.deepcopy((model, ours))
    model.zero_grad()
    loss_of(model).backward()
    ours.train()
    ours.step()
    resumed_model, resumed_optimizer = resumed
    resumed_model.zero_grad()
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        q.grad = p.grad.clone()
    resumed_optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True))


def test_the_schedule_warms_up_then_stays_at_the_peak():
    method = build_method("schedule_free", "bert", SMOKE)
    assert method.options["warmup"] == 0.02
    assert method.lr_multiplier(0.0) == 0.0
    assert method.lr_multiplier(0.01) == pytest.approx(0.5)
    for fraction in (0.02, 0.1, 0.5, 0.9, 0.999, 1.0, 1.03):  # no decay, to the end and past it
        assert method.lr_multiplier(fraction) == 1.0
    assert build_method("schedule_free", "bert", SMOKE, warmup=0.0).lr_multiplier(0.0) == 1.0


def test_schedule_free_is_a_registry_entry_outside_the_papers_grid():
    assert find_method("schedule_free") is ScheduleFreeAdamW
    assert check_method_class(ScheduleFreeAdamW, "schedule_free") is ScheduleFreeAdamW  # its hooks take (run)
    assert "schedule_free" not in studied_methods("bert") and "schedule_free" not in studied_methods("t5")
    bert, t5 = build_method("schedule_free", "bert", SMOKE), build_method("schedule_free", "t5", SMOKE)
    assert bert.rst_optimizer == "schedule_free"
    assert (bert.options["lr"], bert.options["beta2"], bert.options["eps"], bert.options["weight_decay"]) == (
        SMOKE.bert_recipe.lr, SMOKE.bert_recipe.betas[1], SMOKE.bert_recipe.eps, SMOKE.bert_recipe.weight_decay)
    # T5's baseline peak is for RMS-scaled Adam steps: Schedule-Free starts from the preset's BERT AdamW peak
    assert t5.options["lr"] == SMOKE.bert_recipe.lr and t5.settings()["lr_from"] == "bert_recipe"
    untuned = replace(PRESETS["cpu"], method_options={})  # cpu before its tuning moved T5's peak
    assert build_method("schedule_free", "t5", untuned).options["lr"] == PRESETS["cpu"].bert_recipe.lr
    assert t5.options["beta2"] == SMOKE.t5_recipe.betas[1] and t5.options["eps"] == SMOKE.t5_recipe.eps
    assert bert.tuning() == {"lr": [SMOKE.bert_recipe.lr * f for f in (1.0, 0.5, 2.0)], "beta1": [0.9, 0.95, 0.98]}
    assert build_method("schedule_free", "bert", SMOKE, beta1=0.95).tuning()["beta1"] == [0.95, 0.9, 0.98]
    settings = bert.settings()
    assert settings["optimizer"] == "schedule_free_adamw" and settings["warmup"] == 0.02 and settings["r"] == 0.0
    json.dumps(settings)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"beta1": 0.0}, {"beta1": 1.0}, {"beta2": 1.0}, {"eps": 0.0},
                                 {"weight_decay": -0.1}, {"warmup": 1.0}, {"warmup": -0.1}, {"r": -1.0},
                                 {"weight_lr_power": -1.0}, {"momentum": 0.9}, {"lr": "big"}])
def test_bad_settings_are_refused_with_one_line(bad):
    with pytest.raises(UsageError, match="schedule_free") as caught:
        build_method("schedule_free", "bert", SMOKE, **bad)
    assert "\n" not in str(caught.value)


# --- in the loop -----------------------------------------------------------------------------------------------

def priced(tmp_path, model):
    return priced_table(tmp_path, model, {"schedule_free": STEP_PRICE}, "with-schedule-free")


def run(built, tmp_path, name="run", **kwargs):
    table = priced(tmp_path, kwargs.get("model", "bert"))
    return pretrain_tiny(built, tmp_path, name, **{"method": "schedule_free", "budget": "1s", "rst_table": table,
                                                   **kwargs})


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_the_loop_evaluates_and_saves_the_averaged_weights(built_fixture, tmp_path, model):
    summary = run(built_fixture, tmp_path, model=model)
    assert summary["status"] == "complete" and summary["steps"] >= 4
    assert summary["final_val_loss"] < summary["evals"][0]["val_loss"]
    assert summary["rst_breakdown"]["optimizer"] == pytest.approx(summary["steps"] * STEP_PRICE, rel=1e-9)
    # the schedule: warm-up, then the peak held to the last step (each step's lr set from the RST used before it)
    peak = build_method("schedule_free", model, get_preset("tiny")).options["lr"]
    rows = metrics(tmp_path / "run")[1:]
    previous = 0.0
    for row in rows:
        fraction = previous / summary["budget_rst_s"]
        # metrics.csv holds 7 significant digits: the lr, and the rst_s it is recomputed from (near the end
        # of a decay, a rounded fraction moves the lr by up to its slope x 5e-7 of the peak)
        assert float(row["lr"]) == pytest.approx(peak * min(fraction / 0.02, 1.0), rel=1e-6,
                                                 abs=4e-6 * peak)
        previous = float(row["rst_s"])
    assert float(rows[-1]["lr"]) == peak
    # the final checkpoint holds x: its loss is the one recorded, and the weights the gradients were taken at (y)
    # give another
    state = RunDir(tmp_path / "run").load_checkpoint()
    groups = state["optimizer"]["param_groups"]
    assert all(g["train_mode"] is False and g["k"] == summary["steps"] for g in groups)
    spec = resolve(model, "schedule_free", "1s", "tiny", 0, tmp_path / "run", resume=True,
                   rst_table=priced(tmp_path, model), data_dir=built_fixture[0])
    trainer = train.Trainer(spec, log=lambda m: None)
    trainer.run.model.load_state_dict(state["model"])
    trainer.run.optimizer.load_state_dict(state["optimizer"])
    assert trainer.evaluate() == pytest.approx(summary["final_val_loss"], rel=1e-6)
    assert all("z" in trainer.run.optimizer.state[p] for p in trainer.run.model.parameters())  # every one trained
    trainer.run.optimizer.train()  # to y = x + (1 - beta1)(z - x)
    assert abs(trainer.evaluate() - summary["final_val_loss"]) > 1e-4


def test_an_interrupted_run_resumes_to_the_same_result(built_fixture, tmp_path):
    whole = run(built_fixture, tmp_path, name="whole", budget="1.5s")
    assert whole["steps"] >= 6
    spec = resolve("bert", "schedule_free", "1.5s", "tiny", 0, tmp_path / "cut",
                   rst_table=priced(tmp_path, "bert"), data_dir=built_fixture[0])
    partial = train.Trainer(spec, log=lambda m: None).train(stop_after_steps=3)  # "killed" after step 3
    assert partial["status"] == "running"
    kept = RunDir(tmp_path / "cut").load_checkpoint()  # written at x, mid-run: the resume starts from it
    assert 0 < kept["step"] <= 3
    assert all(g["train_mode"] is False for g in kept["optimizer"]["param_groups"])
    resumed = run(built_fixture, tmp_path, name="cut", budget="1.5s", resume=True)
    assert (resumed["steps"], resumed["rst_s"], resumed["evals"]) == (whole["steps"], whole["rst_s"], whole["evals"])
    assert [dict(r, wall_s=None) for r in metrics(tmp_path / "cut")] == [
        dict(r, wall_s=None) for r in metrics(tmp_path / "whole")]
    ends = [RunDir(tmp_path / name).load_checkpoint() for name in ("whole", "cut")]
    assert all(torch.equal(ends[0]["model"][k], ends[1]["model"][k]) for k in ends[0]["model"])
