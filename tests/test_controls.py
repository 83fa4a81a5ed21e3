"""The two controls (ntng.book.controls): RHO-LOSS held against the baseline on its own 80% split as well as the
full-data baseline, and the optimizers' claims at 4x the batch beside the preset's batch. Values by hand: three
seeds, t(0.975, 2) = 4.303."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ntng.book import controls

SPLIT = "baseline+data_split=rho_main"


def _runs(losses: dict[str, list[float]], budget_s: float = 120.0, model: str = "bert", run_dirs=None) -> pd.DataFrame:
    rows = []
    for method, values in losses.items():
        for seed, loss in enumerate(values, start=1):
            rows.append({"model": model, "method": method, "base_method": method.split("+")[0],
                         "budget_rst_s": budget_s, "seed": seed, "status": "complete", "final_val_loss": loss,
                         "run_dir": (run_dirs or {}).get((method, seed), "")})
    return pd.DataFrame(rows)


def test_the_split_control_can_change_a_verdict():
    base = [6.00, 6.10, 6.20]
    runs = _runs({"baseline": base, SPLIT: [b + 0.1 for b in base],
                  "rho_loss": [6.03, 6.12, 6.24]})  # +0.03, +0.02, +0.04 over the full-data baseline
    table, sentences = controls.split_control(runs)
    rows = {r["difference"]: r for _, r in table.iterrows()}
    split = controls.label(SPLIT)
    # what the 80% costs the baseline: +0.1 at every seed
    assert rows[f"{split} minus baseline"]["per budget, mean [95% interval]"] == "2m: +0.100 [+0.100, +0.100]"
    # against all the data: mean +0.03, interval 0.03 -+ 4.303 * 0.01 / sqrt(3) = [+0.005, +0.055]: no gain of
    # 0.05 is possible, so "no gain" holds
    rho = controls.label("rho_loss")
    full = rows[f"{rho} minus baseline"]
    assert full["verdict"] == "held" and full["per budget, mean [95% interval]"] == "2m: +0.030 [+0.005, +0.055]"
    # against its own split: -0.07, -0.08, -0.06: [-0.095, -0.045], a reliable gain, so "no gain" is not held
    own = rows[f"{rho} minus {split}"]
    assert own["verdict"] == "not held" and own["per budget, mean [95% interval]"] == "2m: -0.070 [-0.095, -0.045]"
    assert sentences == [s for s in sentences if "changes the verdict" in s] and len(sentences) == 1


def test_the_split_control_without_its_runs_says_it_cannot_decide():
    runs = _runs({"baseline": [6.0, 6.1, 6.2], "rho_loss": [6.03, 6.12, 6.24]})
    table, sentences = controls.split_control(runs)
    assert table[table["difference"].str.endswith(controls.label(SPLIT))]["verdict"].tolist() == ["no runs"]
    assert "has no runs paired" in sentences[0]


def test_the_batch_control_holds_the_optimizer_claim_at_both_batches(tmp_path):
    dirs = {}
    for method, lr in (("lion", 3e-3), ("baseline", 1.6e-2)):
        for seed in (1, 2, 3):
            d = tmp_path / method / f"seed{seed}"
            d.mkdir(parents=True)
            settings = {"lr": lr} if method == "lion" else {}
            (d / "config.json").write_text(json.dumps({"method_settings": settings, "recipe": {"lr": lr}}))
            dirs[(method, seed)] = str(d)
    base = [5.0, 5.1, 5.2]
    small = pd.concat([_runs({"baseline": base, "lion": [b + d for b, d in zip(base, (0.3, 0.2, 0.4), strict=True)]},
                             budget_s=240.0),
                       _runs({"baseline": base, "lion": [b + 0.5 for b in base]}, budget_s=120.0)])
    large = _runs({"baseline": base, "lion": [b + d for b, d in zip(base, (-0.01, 0.01, 0.0), strict=True)]},
                  budget_s=240.0, run_dirs=dirs)
    table, sentences = controls.batch_control(small, large, batch_sizes={"bert": (16, 64)})
    at16, at64 = (table[table["sequences a step"] == n].iloc[0] for n in (16, 64))
    assert len(table) == 2 and {r["method"] for _, r in table.iterrows()} == {controls.label("lion")}
    evidence = "minus baseline at 4m, mean [95% interval]"  # the control's budget only: the 2m runs do not count
    # +0.3 +- 4.303 * 0.1 / sqrt(3) = [+0.052, +0.548]: wholly above 0 at its one budget, "worse" holds
    assert at16[evidence] == "+0.300 [+0.052, +0.548]" and at16["verdict (worse)"] == "held"
    assert at64["verdict (worse)"] == "inconclusive"
    assert at64["peak lr (method / baseline)"] == "0.003 / 0.016"
    assert at16["peak lr (method / baseline)"] == "- / -"  # the preset's runs here have no config to read
    assert "at 16 a step, *inconclusive* at 64 a step" in sentences[0]
    assert "the larger batch changes the verdict" in sentences[0]
    # one seed at 4x (the rest still running): no interval, so nothing is changed yet
    _, early = controls.batch_control(small, large[large["seed"] == 1])
    assert "cannot be judged yet" in early[0] and "changes" not in early[0] and "the control's" in early[0]


def test_the_baseline_at_both_batches_says_where_it_ends_against_its_floor():
    small = _runs({"baseline": [5.0, 5.1, 5.2]}, budget_s=240.0)
    # the tuning seed 0 is left out: 5.30, 5.31, 5.32 -> mean 5.31, 5.31 -+ 4.303 * 0.01 / sqrt(3) = [5.285, 5.335]
    large = pd.concat([_runs({"baseline": [5.30, 5.31, 5.32]}, budget_s=240.0),
                       _runs({"baseline": [9.0]}, budget_s=240.0).assign(seed=0)])
    [sentence] = controls.baseline_at_both_batches(small, large, control_exclude_seeds={0},
                                                   batch_sizes={"bert": (16, 64)}, floors={"bert": 5.25})
    # 5.1 -+ 4.303 * 0.1 / sqrt(3) = [4.852, 5.348] at 16; the 64 mean is at or above the floor 5.25
    assert "5.100 [4.852, 5.348] at 16 a step and 5.310 [5.285, 5.335] at 64 a step" in sentence
    assert "floor is 5.250, so at 64 a step it has not left the floor" in sentence
    [below] = controls.baseline_at_both_batches(small, large, control_exclude_seeds={0}, floors={"bert": 6.0})
    assert "not left" not in below and "at the control's" in below
    assert controls.baseline_at_both_batches(small, pd.DataFrame()) == []


def test_no_control_records_give_an_empty_table():
    table, sentences = controls.batch_control(_runs({"baseline": [5.0]}), pd.DataFrame())
    assert table.empty and sentences == []


@pytest.mark.parametrize("settings,recipe,expected", [({"lr": 0.003}, {"lr": 0.01}, 0.003), ({}, {"lr": 0.01}, 0.01)])
def test_peak_lr_is_the_methods_own_else_the_recipes(tmp_path, settings, recipe, expected):
    (tmp_path / "config.json").write_text(json.dumps({"method_settings": settings, "recipe": recipe}))
    assert controls.peak_lr(tmp_path) == expected
    assert controls.peak_lr(tmp_path / "missing") is None
