"""Warmup-stable-decay through the registry: the schedule by hand, and the loop following it."""

from __future__ import annotations

import csv
import math

import pytest

from ntng.errors import UsageError
from ntng.methods import build_method, find_method, studied_methods
from ntng.methods.warmup_stable_decay import wsd_multiplier
from ntng.presets import PRESETS, get_preset
from ntng.train import pretrain


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
        assert float(row["lr"]) == pytest.approx(peak * wsd_multiplier(fraction, 0.1, 0.2, False), rel=1e-9)
        previous = float(row["rst_s"])
    assert any(float(r["lr"]) == pytest.approx(peak) for r in rows)  # the stable phase holds the peak
