"""Verdicts: the rules that hold a claim against paired seeds, on evidence stated by hand."""

import json
import math

import pandas as pd
import pytest

from ntng.methods import Claim
from ntng.verdicts import HELD, INCONCLUSIVE, NOT_HELD, Cell, claim_rows, judge, paired_cells, tuning_seeds

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
