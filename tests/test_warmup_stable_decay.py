"""Warmup-stable-decay through the registry: the schedule by hand, and the loop following it."""

from __future__ import annotations

import csv
import math

import pytest

from ntng.errors import UsageError
from ntng.methods import build_method, find_method, studied_methods
from ntng.methods.warmup_stable_decay import wsd_multiplier
from ntng.presets import PRESETS, get_preset
from ntng.training.loop import pretrain


def test_the_schedule_by_hand():
    # warm-up 10%, cool-down over the last 20%
    assert wsd_multiplier(0.0, 0.1, 0.2, True) == 0.0
    assert wsd_multiplier(0.05, 0.1, 0.2, True) == pytest.approx(0.5)
    assert wsd_multiplier(0.1, 0.1, 0.2, True) == 1.0 == wsd_multiplier(0.8, 0.1, 0.2, True)
    assert wsd_multiplier(0.85, 0.1, 0.2, False) == pytest.approx(0.75)  # a quarter into the cool-down, linear
    assert wsd_multiplier(0.85, 0.1, 0.2, True) == pytest.approx(1 - math.sqrt(0.25))  # 0.5 with 1 - sqrt
    assert wsd_multiplier(1.0, 0.1, 0.2, True) == 0.0 == wsd_multiplier(1.03, 0.1, 0.2, False)  # decays fully


def test_wsd_is_a_registry_entry_outside_the_papers_grid():
    assert find_method("warmup_stable_decay").name == "warmup_stable_decay"
    assert "warmup_stable_decay" not in studied_methods("bert")
    method = build_method("warmup_stable_decay", "bert", PRESETS["smoke"], decay=0.1)
    assert method.lr_multiplier(0.95) == pytest.approx(1 - math.sqrt(0.5))
    assert build_method("baseline", "bert", PRESETS["smoke"]).lr_multiplier(0.5) is None  # the recipe's schedule
    for bad in ({"decay": 0.0}, {"warmup": 0.9, "decay": 0.2}, {"warmup": -0.1}):
        with pytest.raises(UsageError, match="warmup_stable_decay"):
            build_method("warmup_stable_decay", "bert", PRESETS["smoke"], **bad)


def test_the_loop_follows_the_methods_schedule(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    summary = pretrain(model="bert", method="warmup_stable_decay+sqrt_decay=false", budget="3s", preset="tiny",
                       out_dir=tmp_path / "run", data_dir=data_dir, log=lambda m: None)
    assert summary["status"] == "complete"
    peak = get_preset("tiny").bert_recipe.lr
    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))[1:]
    previous = 0.0
    for row in rows:  # each step's lr is set from the RST used before it
        fraction = previous / summary["budget_rst_s"]
        # metrics.csv holds 7 significant digits: the lr, and the rst_s it is recomputed from (near the end
        # of a decay, a rounded fraction moves the lr by up to its slope x 5e-7 of the peak)
        assert float(row["lr"]) == pytest.approx(peak * wsd_multiplier(fraction, 0.1, 0.2, False), rel=1e-6,
                                                 abs=4e-6 * peak)
        previous = float(row["rst_s"])
    assert any(float(r["lr"]) == pytest.approx(peak) for r in rows)  # the stable phase holds the peak


def test_a_branch_follows_the_longer_runs_warm_up_then_cools_down_over_its_own_last_share():
    # horizon 4: a quarter of the longer run's budget; its warm-up (10% of the longer budget) is 40% of this one
    assert wsd_multiplier(0.2, 0.1, 0.2, True, horizon=4) == pytest.approx(0.5)  # 5% of the longer run
    assert wsd_multiplier(0.4, 0.1, 0.2, True, horizon=4) == 1.0 == wsd_multiplier(0.8, 0.1, 0.2, True, horizon=4)
    assert wsd_multiplier(0.9, 0.1, 0.2, False, horizon=4) == pytest.approx(0.5)  # half-way through its cool-down
    assert wsd_multiplier(1.0, 0.1, 0.2, True, horizon=4) == 0.0
    with pytest.raises(UsageError, match="horizon"):  # would cool down before the longer run's warm-up ends
        build_method("warmup_stable_decay", "bert", PRESETS["smoke"], horizon=9)
    with pytest.raises(UsageError, match="horizon"):
        build_method("warmup_stable_decay", "bert", PRESETS["smoke"], horizon=0.5)


def test_a_branched_run_is_the_longer_run_until_its_cool_down(built_fixture, tmp_path):
    """Same seed, same batches: a run of half the budget with horizon 2 takes the longer run's steps, bit for bit,
    until its cool-down starts (the last 20% of its own budget), then parts from it."""
    data_dir, _ = built_fixture
    options = dict(model="bert", preset="tiny", data_dir=data_dir, log=lambda m: None)
    longer = pretrain(method="warmup_stable_decay", budget="2s", out_dir=tmp_path / "longer", **options)
    branch = pretrain(method="warmup_stable_decay+horizon=2", budget="1s", out_dir=tmp_path / "branch", **options)
    assert longer["status"] == branch["status"] == "complete"

    def steps(run):
        with open(tmp_path / run / "metrics.csv") as fh:
            return [(float(r["rst_s"]), r["train_loss"], r["lr"]) for r in list(csv.DictReader(fh))[1:]]

    ours, theirs = steps("branch"), steps("longer")
    start = 0.8 * branch["budget_rst_s"]  # the branch's cool-down: its lr is set from the RST before each step
    before = [i for i, (rst_s, _, _) in enumerate(ours) if i == 0 or ours[i - 1][0] <= start]
    assert 2 <= len(before) < len(ours)
    assert [ours[i] for i in before] == [theirs[i] for i in before]  # the same losses and lrs, as text
    assert ours[len(before)][2] != theirs[len(before)][2]  # then it cools down, the longer run does not


def test_the_branching_saving_is_read_from_the_records(tmp_path):
    import json

    import pandas as pd

    from ntng.methods.warmup_stable_decay import branching_saving

    rows = []
    for method, budget, loss, settings in (("warmup_stable_decay", 120.0, 6.30, {}),
                                           ("warmup_stable_decay", 240.0, 6.20, {}),
                                           ("warmup_stable_decay", 480.0, 6.10, {}),
                                           ("warmup_stable_decay+horizon=4", 120.0, 6.32, {"horizon": 4}),
                                           ("warmup_stable_decay+horizon=2", 240.0, 6.19, {"horizon": 2})):
        run_dir = tmp_path / method / str(budget)
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({"method_settings": {"decay": 0.2, "horizon": 1, **settings}}))
        rows.append({"model": "bert", "method": method, "base_method": "warmup_stable_decay", "budget_rst_s": budget,
                     "seed": 1, "status": "complete", "rst_s": budget + 0.1, "final_val_loss": loss,
                     "run_dir": str(run_dir)})
    table = branching_saving(pd.DataFrame(rows))
    row = table.iloc[0]
    assert row["budgets"] == "2m + 4m + 8m"
    assert row["separate_rst_s"] == pytest.approx(840.3)  # 120.1 + 240.1 + 480.1
    # the 8m run, plus each branch's cool-down: 20% of 2m and of 4m, and the 0.1 s each ran past its budget
    assert row["branched_rst_s"] == pytest.approx(480.1 + 24.1 + 48.1)
    assert row["saved"] == pytest.approx(1 - 552.3 / 840.3)
    assert row["gap at 2m"] == pytest.approx(0.02) and row["gap at 4m"] == pytest.approx(-0.01)
    assert branching_saving(pd.DataFrame(rows), exclude_seeds={1}).empty
