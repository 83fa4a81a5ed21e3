"""`ntng compare`: the statistics by hand on the synthetic grid (whose gaps are known exactly), the claim test
against Student-t quantiles, and one real comparison through the grid."""

from __future__ import annotations

import math

import pytest
import synthetic_results as syn

from ntng.book import comparison as cmp
from ntng.book import run_table
from ntng.errors import UsageError


def test_student_t_tail_matches_the_tables():
    # one-sided 5% and 2.5% points of t: df 5 -> 2.015, df 1 -> 12.706, df 4 -> 2.776
    assert cmp.t_sf(2.015048, 5) == pytest.approx(0.05, abs=1e-6)
    assert cmp.t_sf(12.7062, 1) == pytest.approx(0.025, abs=1e-6)
    assert cmp.t_sf(2.7764, 4) == pytest.approx(0.025, abs=1e-5)
    assert cmp.t_sf(0.0, 3) == 0.5 and cmp.t_sf(-2.015048, 5) == pytest.approx(0.95, abs=1e-6)


def test_claims_parse_and_test():
    assert cmp.parse_claim("2x") == 2.0 and cmp.parse_claim("1.5X") == 1.5 and cmp.parse_claim(None) is None
    for bad in ("2", "x", "-1x", "0x", "fast"):
        with pytest.raises(UsageError):
            cmp.parse_claim(bad)
    # log speed-ups 1.0, 1.2, 1.4 (mean 1.2, sd 0.2, n 3) against log 2 = 0.693: t = 0.507 / (0.2 / sqrt 3)
    speedups = [math.exp(1.0), math.exp(1.2), math.exp(1.4)]
    t = (1.2 - math.log(2)) / (0.2 / math.sqrt(3))
    assert cmp.claim_test(speedups, 2.0) == pytest.approx(cmp.t_sf(t, 2), rel=1e-9)
    assert cmp.claim_test(speedups, 1.2) < 0.01 < cmp.claim_test(speedups, 2.0)  # t 8.8 vs 4.4 at 2 df
    assert math.isnan(cmp.claim_test([3.0], 2.0))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    syn.write_results(root)
    return root, run_table.load_runs(root, syn.PRESET)


def test_verdicts_on_the_synthetic_grid(synthetic):
    """Gaps are DELTA x 5 / B on every seed: the interval is that point, so the verdict is certain."""
    _, table = synthetic
    stacking = {r.budget: r for r in cmp.summarise(table.runs, table.evals, "layer_stacking", None)
                if r.model == "bert"}
    lion = {r.budget: r for r in cmp.summarise(table.runs, table.evals, "lion", None) if r.model == "bert"}
    for budget, budget_s in syn.BUDGETS.items():
        assert stacking[budget].difference == pytest.approx(syn.DELTA["layer_stacking"] * 5 / budget_s)
        assert stacking[budget].verdict == "faster" and lion[budget].verdict == "slower"
        assert stacking[budget].seeds == 2 and stacking[budget].detectable == pytest.approx(0.0, abs=1e-9)
        # stacking reaches the baseline's final loss before the end of the budget: faster than 1x; Lion never
        # does, so its speed-up is counted at its bound, 1x
        assert stacking[budget].speedup > 1 and stacking[budget].speedup_bounded == 0
        assert lion[budget].speedup == 1.0 and lion[budget].speedup_bounded == 2
    assert cmp.verdict_of(-0.1, 0.2, 3) == "no detectable difference at 3 seeds"
    assert cmp.verdict_of(math.nan, math.nan, 1).startswith("one seed")


def test_a_twice_as_fast_method_supports_a_2x_claim():
    """Five seeds where the method reaches the baseline's final loss at half the budget (its curve by hand):
    speed-up 2x on every seed, so a 1.5x claim is supported and a 3x claim is not."""
    import pandas as pd

    rows, evals = [], []
    for seed in range(5):
        base_final = 6.0 + 0.01 * seed
        for method, curve in (("baseline", [(0, 8.0), (50, 7.0), (100, base_final)]),
                              ("fast", [(0, 8.0), (50, base_final - 0.001 * (seed + 1)), (100, base_final - 0.3)])):
            rows.append({"model": "bert", "method": method, "budget": "100s", "budget_rst_s": 100.0, "seed": seed,
                         "status": "complete", "final_val_loss": curve[-1][1], "rst_s": 100.0})
            evals += [{"model": "bert", "method": method, "budget": "100s", "budget_rst_s": 100.0, "seed": seed,
                       "status": "complete", "rst_s": t, "val_loss": v} for t, v in curve]
    (fast,) = cmp.summarise(pd.DataFrame(rows), pd.DataFrame(evals), "fast", 1.5)
    assert fast.verdict == "faster" and fast.speedup == pytest.approx(2.0, rel=0.01) and fast.speedup_bounded == 0
    assert fast.claim_supported is True
    (again,) = cmp.summarise(pd.DataFrame(rows), pd.DataFrame(evals), "fast", 3.0)
    assert again.claim_supported is False


def test_compare_reads_the_records_and_prints_one_table_per_model(synthetic, monkeypatch):
    from ntng.experiments import grid

    root, _ = synthetic
    monkeypatch.setattr(grid, "sweep", lambda **kwargs: [])  # every run is there already
    result = cmp.compare("layer_stacking", models=["bert"], budgets=list(syn.BUDGETS), seeds=[0, 1],
                         preset=syn.PRESET, results=root, claim="1.01x", log=lambda m: None)
    text = cmp.format_comparison(result)
    assert "bert:" in text and text.count("faster") == 3
    assert "claim 1.01x at bert/5s" in text
    with pytest.raises(UsageError):
        cmp.compare("baseline", preset=syn.PRESET, results=root)
    with pytest.raises(UsageError):
        cmp.compare("lion", models=["gpt"], preset=syn.PRESET, results=root)


def test_a_real_comparison_runs_what_is_missing(built_fixture, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = cmp.compare("lion", models=["t5"], budgets=["2s"], seeds=[0, 1], preset="tiny", settings=["lr=0.001"],
                         results=tmp_path / "results", data_dir=built_fixture[0], jobs=2, log=lambda m: None)
    assert {r["status"] for r in result.runs} == {"complete"} and len(result.runs) == 4
    assert result.method == "lion+lr=0.001"
    (row,) = result.results
    assert row.model == "t5" and row.seeds == 2 and math.isfinite(row.difference)
    assert (tmp_path / "results" / "tiny" / "t5" / "lion+lr=0.001" / "2s" / "seed1" / "summary.json").is_file()


def test_the_tutorial_notebook_runs_its_method_against_the_baseline(built_fixture, tmp_path):
    """notebooks/your_method.ipynb through papermill, as `ntng book` runs it: it writes its method to a module of
    its own, runs ntng.compare, and its runs land under the method's own name with its metadata."""
    import json
    import os
    import subprocess
    import sys

    from ntng.book.build import ROOT, TUTORIAL

    params = {"preset": "tiny", "budgets": "1s", "seeds": "0,1", "results": str(tmp_path / "results"),
              "data_dir": str(built_fixture[0])}
    out = tmp_path / "work" / TUTORIAL
    out.parent.mkdir()
    proc = subprocess.run([sys.executable, "-m", "papermill", str(ROOT / "notebooks" / TUTORIAL), str(out), "-y",
                           json.dumps(params), "--kernel", "python3", "--no-progress-bar", "--cwd", str(out.parent)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert "freeze_embeddings against the baseline at preset tiny" in text
    config = json.loads((tmp_path / "results" / "tiny" / "bert" / "freeze_embeddings" / "1s" / "seed1" /
                         "config.json").read_text())
    assert config["method_meta"]["family"] == "warm_start" and config["method_spec"] == "my_method:FreezeEmbeddings"


def test_a_cell_the_sweep_failed_is_left_out_of_the_verdict(tmp_path, monkeypatch):
    """A run made before a tuned default changed stays on disk, complete, but the sweep fails its cell: the
    comparison counts only the other seed."""
    import ntng.experiments.grid

    syn.write_results(tmp_path)
    stale = tmp_path / syn.PRESET / "bert" / "lion" / "5s" / "seed1"
    monkeypatch.setattr(ntng.experiments.grid, "sweep", lambda **kw: [
        {"status": "failed", "run_dir": str(stale), "error": "made with other settings"}])
    out = cmp.compare("lion", models=["bert"], budgets=["5s"], seeds=[0, 1], preset=syn.PRESET, results=tmp_path)
    (row,) = out.results
    assert row.seeds == 1
    monkeypatch.setattr(ntng.experiments.grid, "sweep", lambda **kw: [])
    (row,) = cmp.compare("lion", models=["bert"], budgets=["5s"], seeds=[0, 1], preset=syn.PRESET,
                         results=tmp_path).results
    assert row.seeds == 2
