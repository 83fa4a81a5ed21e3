"""The one training loop on the fixture corpus (`tiny` preset: smoke models at a 400-token vocabulary)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import metrics, pretrain_tiny

from ntng.errors import RunError, UsageError
from ntng.training import loop as train
from ntng.training import rst, schedules
from ntng.training.records import METRIC_COLUMNS, RunDir
from ntng.training.spec import resolve

run = pretrain_tiny


def step_cost(model: str, preset: str = "smoke") -> float:
    """RST of one baseline optimizer step: every micro-batch at full depth, plus the optimizer step."""
    from ntng.presets import get_preset

    table = rst.shipped_table(preset, model)
    shape = get_preset(preset).shape(model)
    return shape.grad_accum * table.train_seconds(shape.num_layers) + table.optimizer_seconds("adamw")


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_baseline_completes_within_one_step_of_the_budget(built_fixture, tmp_path, model):
    summary = run(built_fixture, tmp_path, model=model, budget="4s")
    run_dir = tmp_path / "run"
    assert summary["status"] == "complete"
    cost = step_cost(model)
    assert 4.0 <= summary["rst_s"] < 4.0 + cost
    assert summary["steps"] == math.ceil(4.0 / cost - 1e-9)  # the closed form: RST is counted, not timed
    assert sum(summary["rst_breakdown"].values()) == pytest.approx(summary["rst_s"], rel=1e-12)
    assert summary["rst_breakdown"]["scoring"] == summary["rst_breakdown"]["hessian"] == 0.0
    assert summary["final_val_loss"] < summary["evals"][0]["val_loss"]
    assert len(summary["evals"]) >= 9 and summary["evals"][-1]["rst_s"] == summary["rst_s"]

    rows = metrics(run_dir)
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [int(r["step"]) for r in rows] == list(range(summary["steps"] + 1))
    assert all(r["wall_s"] != "" and r["rst_s"] != "" for r in rows)
    assert sum(r["val_loss"] != "" for r in rows) == len(summary["evals"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["budget_rst_s"] == 4.0 and config["rst_table"]["name"].startswith("smoke-")
    assert config["versions"]["torch"] and config["machine"]["cpu_count"]
    assert config["recipe"]["lr"] == (1e-3 if model == "bert" else 2e-2)
    assert (run_dir / "checkpoint.pt").exists()


def test_schedule_columns_follow_the_budget_fraction(built_fixture, tmp_path):
    for model, schedule in (("bert", schedules.one_cycle), ("t5", schedules.cosine_budget)):
        summary = run(built_fixture, tmp_path, name=model, model=model, budget="6s")
        rows = metrics(tmp_path / model)[1:]
        peak = 1e-3 if model == "bert" else 2e-2
        rst_before = [0.0] + [float(r["rst_s"]) for r in rows[:-1]]  # lr is set from the RST at the step's start
        for r, t in zip(rows, rst_before, strict=True):
            # metrics.csv holds 7 significant digits: the lr, and the rst_s it is recomputed from (near the end
            # of a decay, a rounded fraction moves the lr by up to its slope x 5e-7 of the peak)
            assert float(r["lr"]) == pytest.approx(peak * schedule(t / summary["budget_rst_s"]), rel=1e-6,
                                                     abs=4e-6 * peak)
    lrs = [float(r["lr"]) for r in metrics(tmp_path / "bert")[1:]]
    top = lrs.index(max(lrs))
    assert abs(top / len(lrs) - 0.5) < 0.1 and lrs[-1] < 0.1 * max(lrs)  # one-cycle: peak mid-way, ends near 0


def test_a_table_twice_as_slow_gives_half_the_steps(built_fixture, tmp_path):
    raw = json.loads(rst.shipped_table_path("smoke", "bert").read_text())
    for unit in ("train", "forward"):
        raw["units"][unit] = {k: 2 * v for k, v in raw["units"][unit].items()}
    raw["units"]["optimizer"] = {k: 2 * v for k, v in raw["units"]["optimizer"].items()}
    raw["name"] = "twice-as-slow"
    slow = tmp_path / "slow.json"
    slow.write_text(json.dumps(raw))
    normal = run(built_fixture, tmp_path, name="normal", budget="4s")
    halved = run(built_fixture, tmp_path, name="slow", budget="4s", rst_table=slow)
    assert halved["steps"] == math.ceil(4.0 / (2 * step_cost("bert")) - 1e-9)
    assert abs(halved["steps"] - normal["steps"] / 2) <= 1


def test_steps_do_not_depend_on_machine_speed(built_fixture, tmp_path, monkeypatch):
    fast = run(built_fixture, tmp_path, name="fast", budget="2s")
    from ntng.models.pretraining import BertMLM

    original = BertMLM.forward

    def slow_forward(self, *args, **kwargs):
        time.sleep(0.02)  # a machine several times slower
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BertMLM, "forward", slow_forward)
    slow = run(built_fixture, tmp_path, name="slowmachine", budget="2s")
    assert slow["steps"] == fast["steps"] and slow["rst_s"] == fast["rst_s"]
    assert slow["wall_s"] >= 0.02 * slow["micro_steps"]  # the slowness is real, yet the work done is the same


def test_same_seed_same_losses_other_seed_other_losses(built_fixture, tmp_path):
    run(built_fixture, tmp_path, name="a", budget="2s", model="t5")
    run(built_fixture, tmp_path, name="b", budget="2s", model="t5")
    run(built_fixture, tmp_path, name="c", budget="2s", model="t5", seed=1)
    losses = {n: [(r["train_loss"], r["val_loss"]) for r in metrics(tmp_path / n)] for n in "abc"}
    assert losses["a"] == losses["b"]
    assert losses["a"] != losses["c"]


def test_interrupted_run_resumes_to_the_same_result(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    whole = run(built_fixture, tmp_path, name="whole", budget="5s")
    spec = resolve("bert", "baseline", "5s", "tiny", 0, tmp_path / "cut", data_dir=data_dir)
    partial = train.Trainer(spec, log=lambda m: None).train(stop_after_steps=17)  # "killed" after step 17
    assert partial["status"] == "running" and json.loads((tmp_path / "cut" / "summary.json").read_text())[
        "status"] == "running"
    resumed = run(built_fixture, tmp_path, name="cut", budget="5s", resume=True)
    assert (resumed["steps"], resumed["rst_s"]) == (whole["steps"], whole["rst_s"])
    assert metrics(tmp_path / "cut") == [dict(r, wall_s=c["wall_s"]) for r, c in
                                         zip(metrics(tmp_path / "whole"), metrics(tmp_path / "cut"), strict=True)]


def test_nan_loss_stops_the_run_as_diverged(built_fixture, tmp_path, monkeypatch):
    from ntng.models.pretraining import BertMLM

    original = BertMLM.forward
    calls = {"n": 0}

    def poisoned(self, batch, active_layers=None):
        out = original(self, batch, active_layers)
        if self.training:
            calls["n"] += 1
            if calls["n"] > 9:
                out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(BertMLM, "forward", poisoned)
    summary = run(built_fixture, tmp_path, budget="5s")
    assert summary["status"] == "diverged" and "non-finite" in summary["error"]
    assert summary["steps"] == 5  # micro-batches 10 and 11 make step 5 (2 micro-batches a step)
    assert RunDir(tmp_path / "run").read_summary()["status"] == "diverged"


def test_bad_runs_are_refused_before_anything_is_written(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    out = tmp_path / "never"
    cases = [
        dict(model="gpt"), dict(method="adam"), dict(budget="10"), dict(budget="-1s"), dict(preset="huge"),
        dict(seed=-3), dict(rst_table=tmp_path / "missing.json"),
        dict(rst_table=rst.shipped_table_path("smoke", "t5")),  # a T5 table for BERT
        dict(rst_table=rst.shipped_table_path("paper", "bert")),  # prices 128-sequence micro-batches
        dict(data_dir=tmp_path / "no-data"), dict(method="rho_loss", data_split="full"),
        dict(data_split="most"), dict(method="selective_backprop", method_options={"scale": 0.0}),
        dict(method="rho_loss", method_options={"il_budget_s": -1.0}),
    ]
    for case in cases:
        options = {"model": "bert", "method": "baseline", "budget": "3s", "preset": "tiny", "out_dir": out,
                   "data_dir": data_dir, **case}
        with pytest.raises(UsageError):
            train.pretrain(log=lambda m: None, **options)
        assert not out.exists(), case


def test_existing_run_needs_resume_and_resume_needs_the_same_config(built_fixture, tmp_path):
    run(built_fixture, tmp_path, budget="1s")
    with pytest.raises(UsageError, match="already holds a run"):
        run(built_fixture, tmp_path, budget="1s")
    with pytest.raises(UsageError, match="different config.*budget_rst_s"):
        run(built_fixture, tmp_path, budget="2s", resume=True)
    before = (tmp_path / "run" / "summary.json").read_text()
    again = run(built_fixture, tmp_path, budget="1s", resume=True)  # resuming a complete run changes nothing
    assert again["status"] == "complete" and json.loads(before)["steps"] == again["steps"]


def test_resume_of_a_run_that_never_started_starts_it(built_fixture, tmp_path):
    """A job killed before its run directory existed, submitted again with --resume, just runs."""
    assert not (tmp_path / "run").exists()
    summary = run(built_fixture, tmp_path, budget="1s", resume=True)
    assert summary["status"] == "complete" and (tmp_path / "run" / "config.json").is_file()


def test_corrupt_checkpoint_is_a_clear_error(built_fixture, tmp_path):
    run(built_fixture, tmp_path, budget="1s")
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"\x00garbage")
    with pytest.raises(RunError, match="corrupt .*checkpoint.pt"):
        run(built_fixture, tmp_path, budget="1s", resume=True)


def test_papermill_notebook_writes_a_complete_run_directory(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "pretrain.ipynb"
    out = tmp_path / "executed.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(notebook), str(out), "-p", "budget", "2s",
                           "-p", "model", "bert", "-p", "preset", "tiny", "-p", "data_dir", str(data_dir),
                           "--cwd", str(tmp_path), "--kernel", "python3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = tmp_path / "results" / "tiny" / "bert" / "baseline" / "2s" / "seed0"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"
    for name in ("config.json", "metrics.csv", "checkpoint.pt"):
        assert (run_dir / name).exists()
    executed = json.loads(out.read_text())
    assert any("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))


def test_clock_charges_before_each_micro_step(built_fixture, tmp_path, monkeypatch):
    """The counter moves before the work: at the first forward the step's first micro-batch is already paid."""
    from ntng.models.pretraining import BertMLM

    seen = []
    original = BertMLM.forward
    clocks = []
    original_init = rst.RSTClock.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        clocks.append(self)

    def forward(self, batch, active_layers=None):
        if self.training:
            seen.append(clocks[-1].breakdown["train"])
        return original(self, batch, active_layers)

    monkeypatch.setattr(rst.RSTClock, "__init__", init)
    monkeypatch.setattr(BertMLM, "forward", forward)
    run(built_fixture, tmp_path, budget="1s")
    per_micro = rst.shipped_table("smoke", "bert").train_seconds(4)
    assert seen[:3] == pytest.approx([per_micro, 2 * per_micro, 3 * per_micro])
    assert torch.get_num_threads() >= 1
