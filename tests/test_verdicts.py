"""Verdicts: the rules that hold a claim against paired seeds, on evidence stated by hand."""

import json
import math

import pandas as pd
import pytest

from ntng.book.verdicts import (
    HELD,
    INCONCLUSIVE,
    NOT_HELD,
    Cell,
    claim_rows,
    judge,
    loss_at_budget,
    paired_cells,
    tuning_seeds,
)
from ntng.methods import Claim

M = 60.0  # one minute of RST


def cell(budget_min, mean, low, high, seeds=3):
    return Cell(budget_min * M, mean, low, high, seeds)


def runs_frame(rows):
    """rows: (model, method, budget minutes, seed, final loss)."""
    return pd.DataFrame([{"model": m, "method": v, "base_method": v.split("+")[0], "budget_rst_s": b * M,
                          "seed": s, "status": "complete", "final_val_loss": x} for m, v, b, s, x in rows])


def test_paired_cells_pair_by_seed_and_leave_out_the_tuning_seed():
    # differences 0.01, 0.02, 0.03 over seeds 1-3: mean 0.02, sd 0.01, half-width t(0.975, 2) 0.01 / sqrt(3)
    rows = [("bert", "baseline", 2, s, 6.0 + s) for s in (0, 1, 2, 3)]
    rows += [("bert", "lion", 2, s, 6.0 + s + d) for s, d in ((0, -1.0), (1, 0.01), (2, 0.02), (3, 0.03))]
    cells = paired_cells(runs_frame(rows), "bert", "lion", "baseline", exclude_seeds={0})
    assert len(cells) == 1
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert cells[0].seeds == 3
    assert cells[0].mean == pytest.approx(0.02)
    assert (cells[0].low, cells[0].high) == (pytest.approx(0.02 - half, abs=1e-5), pytest.approx(0.02 + half, abs=1e-5))
    with_tuning_seed = paired_cells(runs_frame(rows), "bert", "lion", "baseline")
    assert with_tuning_seed[0].seeds == 4 and with_tuning_seed[0].mean == pytest.approx((0.06 - 1.0) / 4)


def test_a_seed_without_its_pair_does_not_count():
    rows = [("bert", "baseline", 2, 1, 6.0), ("bert", "lion", 2, 1, 6.1), ("bert", "lion", 2, 2, 6.2)]
    cells = paired_cells(runs_frame(rows), "bert", "lion", "baseline")
    assert [c.seeds for c in cells] == [1]
    assert judge("worse", cells)[0] == INCONCLUSIVE  # one seed has no interval


@pytest.mark.parametrize("cells,verdict", [
    ([cell(2, -0.01, -0.03, 0.01), cell(4, 0.0, -0.02, 0.02)], HELD),  # no gain of 0.05 possible anywhere
    ([cell(2, -0.04, -0.06, -0.02), cell(4, 0.0, -0.02, 0.02)], NOT_HELD),  # a reliable gain at 2m
    ([cell(2, -0.01, -0.09, 0.07), cell(4, 0.0, -0.02, 0.02)], INCONCLUSIVE),  # 2m still allows a gain of 0.09
])
def test_not_better(cells, verdict):
    assert judge("not_better", cells)[0] == verdict


@pytest.mark.parametrize("cells,verdict", [
    ([cell(2, 0.1, 0.05, 0.15), cell(4, 0.1, 0.05, 0.15), cell(8, 0.0, -0.02, 0.02)], HELD),  # worse at 2 of 3
    ([cell(2, 0.1, 0.05, 0.15), cell(4, 0.0, -0.02, 0.02), cell(8, 0.0, -0.02, 0.02)], INCONCLUSIVE),  # 1 of 3
    ([cell(2, 0.1, 0.05, 0.15), cell(4, 0.1, 0.05, 0.15), cell(8, -0.1, -0.15, -0.05)], NOT_HELD),  # better at 8m
])
def test_worse(cells, verdict):
    assert judge("worse", cells)[0] == verdict


@pytest.mark.parametrize("cells,verdict", [
    ([cell(4, -0.02, -0.03, -0.01)], HELD),
    ([cell(4, -0.02, -0.05, 0.01)], INCONCLUSIVE),
    ([cell(4, 0.02, 0.01, 0.03)], NOT_HELD),
])
def test_better(cells, verdict):
    assert judge("better", cells)[0] == verdict


@pytest.mark.parametrize("cells,verdict", [
    ([cell(2, -0.05, -0.07, -0.03), cell(8, -0.01, -0.03, 0.01)], HELD),  # ahead early, level late
    ([cell(2, -0.05, -0.07, -0.03), cell(8, -0.1, -0.12, -0.08)], NOT_HELD),  # a gain over 0.05 persists
    ([cell(2, 0.05, 0.03, 0.07), cell(8, 0.0, -0.01, 0.01)], NOT_HELD),  # behind at the smallest budget
    ([cell(2, -0.05, -0.07, 0.01), cell(8, 0.0, -0.01, 0.01)], INCONCLUSIVE),  # not reliably ahead early
    ([cell(2, -0.05, -0.07, -0.03)], INCONCLUSIVE),  # one budget cannot show a gap closing
])
def test_gap_closes(cells, verdict):
    assert judge("gap_closes", cells)[0] == verdict


@pytest.mark.parametrize("cells,verdict", [
    ([cell(2, 0.01, -0.03, 0.04), cell(4, 0.0, -0.02, 0.02)], HELD),  # no loss of 0.05 possible anywhere
    ([cell(2, 0.04, 0.02, 0.06), cell(4, 0.0, -0.02, 0.02)], NOT_HELD),  # a reliable loss at 2m
    ([cell(2, 0.01, -0.07, 0.09), cell(4, -0.1, -0.12, -0.08)], INCONCLUSIVE),  # 2m still allows a loss of 0.09
])
def test_not_worse(cells, verdict):
    assert judge("not_worse", cells)[0] == verdict


@pytest.mark.parametrize("cells,verdict", [
    ([cell(2, -0.03, -0.05, -0.01), cell(4, -0.02, -0.04, 0.0)], HELD),  # as good as k-fold budgets at both
    ([cell(2, -0.03, -0.05, -0.01), cell(4, 0.03, 0.01, 0.05)], NOT_HELD),  # behind the 4m run given 8m
    ([cell(2, -0.03, -0.05, -0.01), cell(4, 0.0, -0.02, 0.02)], INCONCLUSIVE),  # 4m could be short of k-fold
])
def test_speedup(cells, verdict):
    assert judge("speedup", cells)[0] == verdict


def test_loss_at_a_budget_is_read_linearly_in_log_budget():
    losses = {120.0: 6.3, 240.0: 6.2, 480.0: 6.1}
    assert loss_at_budget(losses, 240.0) == 6.2
    # 1.35 x 2m = 162 s: log2(162 / 120) = 0.4330 of the way from 2m to 4m -> 6.3 - 0.1 x 0.4330
    assert loss_at_budget(losses, 162.0) == pytest.approx(6.3 - 0.1 * math.log2(1.35), abs=1e-12)
    assert loss_at_budget(losses, 960.0) is None and loss_at_budget(losses, 60.0) is None  # no extrapolation


def test_a_speedup_claim_pairs_each_budget_with_the_baseline_at_its_multiple():
    rows = []
    for s, base in ((1, 6.3), (2, 6.32), (3, 6.31)):
        rows += [("bert", "baseline", b, s, base - 0.1 * k) for k, b in enumerate((2, 4, 8))]
        rows += [("bert", "muon", b, s, base - 0.1 * k - 0.1 + 0.01 * s) for k, b in enumerate((2, 4, 8))]
    cells = paired_cells(runs_frame(rows), "bert", "muon", "baseline", factor=2.0)
    # muon at B minus the baseline at 2B: (base - 0.1k - 0.1 + 0.01 s) - (base - 0.1(k+1)) = 0.01 s; none at 8m
    assert [c.budget for c in cells] == ["2m", "4m"]
    assert all(c.mean == pytest.approx(0.02) and c.seeds == 3 for c in cells)
    assert cells[0].text().startswith("2m (against 4m): +0.020 [")
    halfway = paired_cells(runs_frame(rows), "bert", "muon", "baseline", factor=1.5)
    # the baseline at 3m: half a doubling past 2m, linearly in log budget -> base - 0.1 log2(1.5)
    assert halfway[0].mean == pytest.approx(-0.1 + 0.02 + 0.1 * math.log2(1.5))


def test_a_claim_about_a_run_part_way_reads_its_evaluation_there():
    rows, evals = [], []
    for s in (1, 2, 3):
        rows += [("bert", "baseline", 2, s, 6.4), ("bert", "baseline", 4, s, 6.3),
                 ("bert", "schedule_free", 4, s, 6.25)]
        # evaluations of the 4m run every 30 s of RST (a little past each point), the one nearest 2m at 121 s
        evals += [{"model": "bert", "method": "schedule_free", "budget_rst_s": 240.0, "seed": s, "rst_s": t + 1.0,
                   "val_loss": 6.6 - t / 1000 + (0.01 * s if t == 120 else 0.0)} for t in range(0, 241, 30)]
    claim = Claim("no stopping time", "Defazio et al. 2024", "not_worse", at_fraction=0.5)
    out = claim_rows(runs_frame(rows), lambda m: (claim,) if m == "schedule_free" else (),
                     evals=pd.DataFrame(evals))
    # at 121 s: 6.6 - 0.12 + 0.01 s = 6.48 + 0.01 s against the 2m baseline's 6.4 -> 0.09 .. 0.11, mean 0.1
    assert out.iloc[0]["evidence"].startswith("2m (at 50% of 4m): +0.100 [")
    assert out.iloc[0]["verdict"] == NOT_HELD


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown rule"):
        judge("faster", [cell(2, 0.0, -0.1, 0.1)])


def test_claim_rows_follow_a_claims_settings_and_what_it_is_held_against():
    rows = []
    for s in (1, 2, 3):
        rows += [("bert", "baseline", 4, s, 6.2), ("bert", "baseline+data_split=rho_main", 4, s, 6.25 + 0.001 * s),
                 ("bert", "rho_loss", 4, s, 6.21 + 0.002 * s), ("bert", "rho_loss+free_scoring", 4, s, 6.1 + 0.001 * s)]
    claims = {"rho_loss": (Claim("no gain", "paper", "not_better"),
                           Claim("no gain on its split", "paper", "not_better", against="baseline+data_split=rho_main"),
                           Claim("free: better", "paper", "better", settings="free_scoring"),
                           Claim("not run here", "paper", "worse", settings="free_hessian"))}
    out = claim_rows(runs_frame(rows), lambda m: claims.get(m, ()))
    assert list(out["claim"]) == ["no gain", "no gain on its split", "free: better"]
    assert list(out["method"]) == ["rho_loss", "rho_loss", "rho_loss+free_scoring"]
    # rho_loss - baseline = 0.01 + 0.002 s: a loss, no gain possible -> held; against its split: -0.04 + 0.001 s,
    # a reliable gain -> not held; free scoring: -0.1 + 0.001 s -> held
    assert list(out["verdict"]) == [HELD, NOT_HELD, HELD]
    # -0.039, -0.038, -0.037: mean -0.038, half-width 4.303 x 0.001 / sqrt(3) = 0.0025
    assert out.iloc[1]["evidence"] == "4m: -0.038 [-0.040, -0.036]"


def test_the_tuning_seed_is_read_from_the_tuning_plan(tmp_path):
    assert tuning_seeds(tmp_path, "cpu") == set()
    (tmp_path / "tuning" / "cpu").mkdir(parents=True)
    (tmp_path / "tuning" / "cpu" / "tuning.json").write_text(json.dumps({"seed": 0, "budget": "2m"}))
    assert tuning_seeds(tmp_path, "cpu") == {0}


def test_a_claim_in_a_few_words_tells_claims_of_one_rule_apart():
    from ntng.book.verdicts import claim_words

    def row(expects, number="", at_fraction=1.0, against="baseline"):
        return {"expects": expects, "number": number, "at_fraction": at_fraction, "against": against}

    assert claim_words(row("speedup", "1.35x")) == "speed-up 1.35x"
    assert claim_words(row("speedup")) == "k-fold speed-up"  # a speed-up claim without its own figure
    assert claim_words(row("not_worse", at_fraction=0.25)) == "matches or beats at 25% of a run"
    # held against another run than the baseline (a name without recorded metadata reads as itself)
    assert claim_words(row("not_worse", against="my_method")) == "matches or beats vs my method"
