"""The Lion and Sophia methods in the one loop, on the fixture corpus (`tiny` preset, like tests/test_train.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_runs import metrics, pretrain_tiny, priced_table

from ntng.errors import UsageError
from ntng.methods import build_method
from ntng.methods.sophia import hessian_due, sampled_label_loss, tokens_per_batch
from ntng.presets import PRESETS, get_preset
from ntng.training import loop as train
from ntng.training import rst
from ntng.training.optim import Lion, SophiaG
from ntng.training.spec import resolve

# the optimizer steps' prices in the test tables: distinct, so the breakdown shows which one was charged
LION_STEP, SOPHIA_STEP = 0.0071, 0.0093


def priced(tmp_path, model):
    return priced_table(tmp_path, model, {"lion": LION_STEP, "sophia": SOPHIA_STEP}, "with-lion-sophia")


def run(built, tmp_path, name="run", **kwargs):
    model = kwargs.get("model", "bert")
    table = priced(tmp_path, model)
    return pretrain_tiny(built, tmp_path, name, **{"method": "sophia", "budget": "4s", "rst_table": table, **kwargs})


@pytest.fixture(scope="module")
def bert_sophia(built_fixture, tmp_path_factory):
    """One complete BERT Sophia run (4 s RST), shared by the tests that compare against it."""
    tmp = tmp_path_factory.mktemp("sophia")
    return run(built_fixture, tmp, name="whole", budget="4s"), tmp / "whole"


def expected_hessian_updates(model: str, steps: int, interval: int = 10) -> int:
    # BERT's code estimates before updates 1, 11, 21, ...; T5's before updates 11, 21, ... (after every 10th)
    return sum(hessian_due(s, interval, at_start=(model == "bert")) for s in range(steps))


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_lion_completes_and_is_charged_its_step(built_fixture, tmp_path, model):
    summary = run(built_fixture, tmp_path, model=model, method="lion", budget="3s")
    assert summary["status"] == "complete" and summary["steps"] > 10
    assert summary["rst_breakdown"]["optimizer"] == pytest.approx(summary["steps"] * LION_STEP, rel=1e-9)
    assert summary["rst_breakdown"]["hessian"] == summary["rst_breakdown"]["scoring"] == 0.0
    assert summary["final_val_loss"] < summary["evals"][0]["val_loss"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    settings = config["method_settings"]
    paper = {"bert": (7e-4, 0.1), "t5": (7.5e-4, 0.0)}[model]  # Appendix C.5: lr, weight decay
    assert settings["optimizer"] == "lion" and (settings["lr"], settings["weight_decay"]) == paper
    assert settings["rms_scale"] == (model == "t5")
    assert "replace" in config["method_card"] and "optimization" in config["method_card"]
    rows = metrics(tmp_path / "run")[1:]
    assert max(float(r["lr"]) for r in rows) <= paper[0]  # the schedule multiplies the Lion peak


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_sophia_charges_its_hessian_passes_at_full_depth(built_fixture, bert_sophia, tmp_path, model):
    if model == "bert":
        summary, run_dir = bert_sophia
    else:
        summary, run_dir = run(built_fixture, tmp_path, model=model, budget="4s"), tmp_path / "run"
    assert summary["status"] == "complete"
    table = rst.load_table(priced(tmp_path, model))
    preset = get_preset("tiny")
    shape = preset.shape(model)
    stats = summary["method_stats"]
    breakdown = summary["rst_breakdown"]
    assert stats["hessian_updates"] == expected_hessian_updates(model, summary["steps"]) > 0
    per_update = 1 if model == "bert" else shape.grad_accum  # BERT: half of 2 micro-batches; T5: the whole batch
    assert stats["hessian_micro_batches"] == stats["hessian_updates"] * per_update
    assert summary["rst_units"]["hessian"] == stats["hessian_micro_batches"]
    assert breakdown["hessian"] > 0
    assert breakdown["hessian"] == pytest.approx(
        stats["hessian_micro_batches"] * table.train_seconds(shape.num_layers), rel=1e-9)
    assert breakdown["optimizer"] == pytest.approx(summary["steps"] * SOPHIA_STEP, rel=1e-9)
    assert sum(breakdown.values()) == pytest.approx(summary["rst_s"], rel=1e-12)
    assert 0.0 <= stats["clip_fraction"] <= 1.0
    assert summary["final_val_loss"] < summary["evals"][0]["val_loss"]
    # the Hessian estimate is in the optimizer state, and it is not zero
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["optimizer"]["state"]
    assert any(float(s["hessian"].abs().sum()) > 0 for s in state.values())
    settings = json.loads((run_dir / "config.json").read_text())["method_settings"]
    # bs: BERT the tokens per batch; T5 the paper's T5 code's 5120, whatever the batch (Appendix C.6)
    assert tokens_per_batch(model, preset) == shape.batch * (32 if model == "t5" else 128)
    assert settings["bs"] == (5120 if model == "t5" else shape.batch * 128)


def steps_to_exhaust(budget: float, step_cost: float, hessian_cost: float, interval: int, at_start: bool) -> int:
    """Closed form of the loop's stopping rule: the first n whose RST (n steps plus the estimates made before
    them) reaches the budget."""
    n, spent = 0, 0.0
    while spent < budget:
        spent += hessian_cost * hessian_due(n, interval, at_start) + step_cost
        n += 1
    return n


def test_free_hessian_costs_nothing_and_buys_more_steps(built_fixture, tmp_path):
    options = {"hessian_interval": 3}  # estimates often enough that they cost several steps of a short budget
    paid = run(built_fixture, tmp_path, name="paid", budget="2s", method_options=options)
    free = run(built_fixture, tmp_path, name="free", budget="2s", method_options=options, free_hessian=True)
    table = rst.load_table(priced(tmp_path, "bert"))
    shape = get_preset("tiny").bert
    step_cost = shape.grad_accum * table.train_seconds(4) + SOPHIA_STEP
    assert free["rst_breakdown"]["hessian"] == 0.0 and free["rst_units"]["hessian"] > 0
    assert free["method_stats"]["hessian_updates"] == expected_hessian_updates("bert", free["steps"], 3)
    assert paid["rst_breakdown"]["hessian"] > 0
    assert free["steps"] == steps_to_exhaust(2.0, step_cost, 0.0, 3, True)
    assert paid["steps"] == steps_to_exhaust(2.0, step_cost, table.train_seconds(4), 3, True)
    assert free["steps"] > paid["steps"]


def test_a_table_without_the_optimizer_charges_an_estimate(built_fixture, tmp_path):
    """Not refused (a user's table may predate a method): the step is priced at the table's AdamW step times the
    ratio measured here, and the summary says it was an estimate (ntng.training.pricing)."""
    raw = json.loads(rst.shipped_table_path("smoke", "bert").read_text())
    raw["units"]["optimizer"].pop("lion")
    raw["name"] = "no-lion"
    table = tmp_path / "no-lion.json"
    table.write_text(json.dumps(raw))
    summary = run(built_fixture, tmp_path, name="priced", method="lion", rst_table=table, budget="1s")
    price = summary["rst_estimates"]["lion"]
    assert summary["status"] == "complete" and price["estimate"] is True and price["table"] == "no-lion"
    assert summary["rst_breakdown"]["optimizer"] == pytest.approx(summary["steps"] * price["seconds"])


def test_sophia_resumes_to_the_same_result(built_fixture, bert_sophia, tmp_path):
    data_dir, _ = built_fixture
    table = priced(tmp_path, "bert")
    whole, whole_dir = bert_sophia
    assert whole["steps"] > 15
    spec = resolve("bert", "sophia", "4s", "tiny", 0, tmp_path / "cut", data_dir=data_dir, rst_table=table)
    partial = train.Trainer(spec, log=lambda m: None).train(stop_after_steps=15)  # between two estimates
    assert partial["status"] == "running"
    resumed = run(built_fixture, tmp_path, name="cut", budget="4s", resume=True)
    assert (resumed["steps"], resumed["rst_s"]) == (whole["steps"], whole["rst_s"])
    assert resumed["method_stats"] == whole["method_stats"]
    assert resumed["rst_breakdown"] == whole["rst_breakdown"]
    assert metrics(tmp_path / "cut") == [dict(r, wall_s=c["wall_s"]) for r, c in
                                         zip(metrics(whole_dir), metrics(tmp_path / "cut"), strict=True)]


# ------------------------------------------------------------------------------------------- settings, units


@pytest.mark.parametrize("method", ["lion", "sophia"])
def test_settings_are_validated_when_the_method_is_built(method):
    preset = PRESETS["smoke"]
    for bad in ({"lr": 0.0}, {"lr": -1e-3}, {"weight_decay": -0.1}, {"betas": (0.9, 1.0)}, {"betas": [0.9]},
                {"lr": "fast"}, {"lr": float("nan")}, {"momentum": 0.9}):
        with pytest.raises(UsageError, match=method):
            build_method(method, "bert", preset, **bad)
    built = build_method(method, "t5", preset, lr=2e-3)
    assert built.settings()["lr"] == 2e-3 and built.rst_optimizer == method
    if method == "sophia":
        for bad in ({"rho": 0.0}, {"hessian_interval": 0}, {"hessian_sequences": 0},
                    {"hessian_interval": 2.5}):
            with pytest.raises(UsageError, match="sophia"):
                build_method(method, "bert", preset, **bad)


def test_method_optimizers_use_the_decay_groups_and_the_recipe():
    torch.manual_seed(0)
    from ntng.models.pretraining import build_model

    preset = PRESETS["smoke"]
    bert = build_model("bert", preset, vocab_size=512)
    lion = build_method("lion", "bert", preset).build_optimizer(bert)
    sophia = build_method("sophia", "bert", preset).build_optimizer(bert)
    assert type(lion) is Lion and type(sophia) is SophiaG
    assert [g["weight_decay"] for g in lion.param_groups] == [0.1, 0.0]
    assert [g["weight_decay"] for g in sophia.param_groups] == [0.015, 0.0]  # Appendix C.6: BERT Sophia weight decay 0.015
    assert sophia.bs == 32 * 128 and sophia.param_groups[0]["rho"] == 0.01  # C.6
    assert lion.param_groups[0]["betas"] == (0.9, 0.99) and sophia.param_groups[0]["betas"] == (0.965, 0.99)
    t5_sophia = build_method("sophia", "t5", preset)
    assert t5_sophia.settings()["rho"] == 0.01 and t5_sophia.settings()["hessian_sequences"] == 16
    assert t5_sophia.settings()["rms_scale"] is True and t5_sophia.settings()["weight_decay"] == 0.0


def test_sampled_label_loss_draws_labels_from_the_model():
    torch.manual_seed(0)
    # a model certain of its answer: the sampled labels are that answer, so the loss is ~0 and so is its gradient
    certain = torch.full((2, 3, 5), -30.0)
    certain[..., 2] = 30.0
    certain.requires_grad_(True)
    loss = sampled_label_loss(certain)
    loss.backward()
    assert float(loss.detach()) < 1e-6 and float(certain.grad.abs().max()) < 1e-6
    # a uniform model: labels spread over the vocabulary, loss is log V whatever was drawn
    uniform = torch.zeros(64, 5, requires_grad=True)
    assert float(sampled_label_loss(uniform).detach()) == pytest.approx(math.log(5), rel=1e-6)
    # in expectation the gradient of the sampled loss is zero (E over y ~ p of (p - onehot(y)) = 0)
    logits = torch.randn(1, 4000, 7)
    logits = logits[:, :1].expand(1, 4000, 7).clone().requires_grad_(True)
    sampled_label_loss(logits).backward()
    assert float(logits.grad.sum(dim=1).abs().max()) < 0.05  # p - the labels' frequencies: ~1/sqrt(4000) noise


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_calibration_prices_every_optimizer_step_and_the_loop_accepts_it(built_fixture, tmp_path, model):
    from ntng.training.calibration import calibrate

    out = tmp_path / "table.json"
    raw = calibrate("tiny", model, out=out, repeats=1, warmup=1, log=lambda m: None)
    # every optimizer a built-in method steps with is measured: AdamW, Lion, Sophia, Muon's Newton-Schulz step and
    # Schedule-Free AdamW's
    assert set(raw["units"]["optimizer"]) == {"adamw", "lion", "sophia", "muon", "schedule_free"}
    assert all(v > 0 for v in raw["units"]["optimizer"].values())
    assert set(raw["measured"]["optimizer"]) == {"adamw", "lion", "sophia", "muon", "schedule_free"}
    summary = run(built_fixture, tmp_path, model=model, method="lion", budget="0.5s", rst_table=out)
    assert summary["status"] == "complete"
    assert summary["rst_breakdown"]["optimizer"] == pytest.approx(
        summary["steps"] * raw["units"]["optimizer"]["lion"], rel=1e-9)


def test_a_hessian_estimate_costs_the_papers_share_of_a_batch_of_one_micro_batch():
    """The paper's BERT estimate takes 768 of 1536 sequences every 10 steps (5% of the training passes). At `cpu` a
    batch is one micro-batch of 16, so the estimate is 8 sequences charged half a micro-batch, not a whole one."""
    from ntng.data.batches import BatchStream, make_collator
    from ntng.methods.base import Run
    from ntng.methods.sophia import hessian_pass
    from ntng.models.pretraining import build_model
    from ntng.training.rst import RSTClock, RSTTable

    cpu = PRESETS["cpu"]
    sophia = build_method("sophia", "bert", cpu)
    assert cpu.bert.batch == 16 and sophia.settings()["hessian_sequences"] == 8
    assert build_method("sophia", "bert", PRESETS["paper"]).settings()["hessian_sequences"] == 768
    torch.manual_seed(0)
    model = build_model("bert", cpu, vocab_size=512)
    layers = cpu.bert.num_layers
    table = RSTTable(name="by-hand", model="bert", preset="cpu", num_layers=layers,
                     train=tuple(float(i + 1) for i in range(layers)), forward=tuple(0.1 * (i + 1) for i in range(layers)),
                     optimizer={"sophia": 0.5})
    windows = torch.randint(5, 512, (64, 128), generator=torch.Generator().manual_seed(1)).numpy()
    windows[:, 0], windows[:, -1] = 2, 3
    stream = BatchStream(torch.arange(64).numpy(), windows, 16, make_collator("bert", cpu, 512, seed=0), seed=0)
    run = Run(model=model, optimizer=sophia.build_optimizer(model), clock=RSTClock(table, 100.0), batches=stream,
              preset=cpu, model_name="bert")
    assert hessian_pass(run, 8, grad_clip=0.0) == 1
    assert run.clock.breakdown["hessian"] == pytest.approx(0.5 * layers)  # half the full-depth micro-batch
    assert stream.cursor == 8
    assert any(float(s["hessian"].abs().sum()) > 0 for s in run.optimizer.state.values())
    assert hessian_pass(run, 40, grad_clip=0.0) == 3  # 16 + 16 + 8 sequences
    assert run.clock.breakdown["hessian"] == pytest.approx(0.5 * layers + 2.5 * layers)
