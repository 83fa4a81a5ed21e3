"""ntng.book.report: reading run records (damaged ones listed, never raised) and the aggregations, against numbers
computed by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import synthetic_results as syn

from ntng.book import report, run_table, statistics
from ntng.training.records import Unreadable, read_metrics_checked


def test_rst_to_reach_hand_computed_curves():
    rst, loss = [0, 10, 20], [10.0, 6.0, 4.0]
    assert statistics.rst_to_reach(rst, loss, 5.0) == pytest.approx(15.0)  # 10 + (6-5)/(6-4) * 10
    assert statistics.rst_to_reach(rst, loss, 6.0) == pytest.approx(10.0)  # exactly at an evaluation
    assert statistics.rst_to_reach(rst, loss, 10.0) == 0.0  # already there at the start
    assert statistics.rst_to_reach(rst, loss, 8.0) == pytest.approx(5.0)  # halfway down the first segment
    assert math.isnan(statistics.rst_to_reach(rst, loss, 3.9))  # never that low
    assert statistics.rst_to_reach([20, 0, 10], [4.0, 10.0, 6.0], 5.0) == pytest.approx(15.0)  # order does not matter
    # not monotone: the *first* crossing counts (10 -> 5 crosses 6 at 8), not the later one
    assert statistics.rst_to_reach([0, 10, 20, 30], [10.0, 5.0, 7.0, 4.0], 6.0) == pytest.approx(8.0)
    assert math.isnan(statistics.rst_to_reach([], [], 1.0))


def _frames(method_final: float, method_rst: float = 10.0):
    keys = {"model": "bert", "budget": "10s", "budget_rst_s": 10.0, "seed": 0}
    runs = pd.DataFrame([{**keys, "method": "baseline", "status": "complete", "rst_s": 10.0, "final_val_loss": 5.0},
                         {**keys, "method": "lion", "status": "complete", "rst_s": method_rst,
                          "final_val_loss": method_final}])
    evals = pd.DataFrame([{**keys, "method": "baseline", "status": "complete", "rst_s": r, "val_loss": v}
                          for r, v in ((0, 8.0), (5, 6.0), (10, 5.0))])
    return runs, evals


def test_time_to_target_speedup_and_lower_bound():
    runs, evals = _frames(5.5)
    row = statistics.time_to_target(runs, evals).iloc[0]
    assert row["reached"] and row["baseline_rst"] == pytest.approx(7.5)  # 5 + (6 - 5.5)/(6 - 5) * 5
    assert row["speedup"] == pytest.approx(0.75)
    runs, evals = _frames(4.0, method_rst=8.0)  # below anything the baseline reached
    row = statistics.time_to_target(runs, evals).iloc[0]
    assert not row["reached"] and math.isnan(row["speedup"])
    assert row["speedup_at_least"] == pytest.approx(10.0 / 8.0)


def test_mean_ci_is_a_student_t_interval():
    mean, low, high, n = statistics.mean_ci([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / math.sqrt(3)  # sd 1, t(0.975, 2) = 4.303
    assert (mean, n) == (2.0, 3) and low == pytest.approx(2 - half) and high == pytest.approx(2 + half)
    assert math.isnan(statistics.mean_ci([4.0])[1]) and statistics.mean_ci([4.0, float("nan")])[3] == 1
    assert statistics.t_quantile_975(40) == pytest.approx(2.0211, abs=2e-4)
    assert statistics.t_quantile_975(120) == pytest.approx(1.9799, abs=2e-4)


def test_paired_difference_and_verdicts():
    keys = {"model": "bert", "budget": "10s", "budget_rst_s": 10.0}
    runs = pd.DataFrame([{**keys, "method": m, "seed": s, "status": "complete", "final_val_loss": v}
                         for m, s, v in (("baseline", 0, 5.0), ("baseline", 1, 5.2), ("sophia", 0, 5.5),
                                         ("sophia", 1, 5.6), ("sophia", 2, 4.0))])  # seed 2 has no baseline
    pairs = statistics.paired_differences(runs)
    assert list(pairs["difference"]) == pytest.approx([0.5, 0.4])
    row = statistics.difference_to_baseline(runs).iloc[0]
    assert row["seeds"] == 2 and row["mean"] == pytest.approx(0.45)
    half = 12.706 * math.sqrt(0.005) / math.sqrt(2)  # sd of (0.5, 0.4) = sqrt(0.005)
    assert row["ci_low"] == pytest.approx(0.45 - half) and row["verdict"] == "no clear difference"
    assert statistics.verdict(-0.2, -0.3, -0.1, 3) == "better" and statistics.verdict(0.2, 0.1, 0.3, 3) == "worse"
    assert statistics.verdict(-0.2, math.nan, math.nan, 1).startswith("one seed")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    written = syn.write_results(root)
    return root, written, run_table.load_runs(root, syn.PRESET)


def test_load_runs_keeps_failures_and_lists_damaged_records(synthetic):
    root, written, table = synthetic
    statuses = table.runs.groupby("status").size().to_dict()
    assert statuses == {"complete": 42, "diverged": 1, "failed": 1}
    listed = {(str(Path(d).relative_to(root / syn.PRESET)), f) for d, f, _ in table.unreadable}
    assert listed == set(written["unreadable"].items())
    reasons = {f: r for _, f, r in table.unreadable}
    assert "truncated" in reasons["metrics.csv"] and "invalid JSON" in reasons["summary.json"]
    assert reasons["config.json"] == "missing"
    failed = table.not_complete()
    assert set(failed["status"]) == {"diverged", "failed"} and failed["error"].str.len().min() > 0


def test_final_loss_table_matches_the_summaries(synthetic):
    root, _, table = synthetic
    finals = statistics.final_loss_table(table.runs).set_index(["model", "method", "budget"])
    for method in ("baseline", "layer_stacking", "lion"):
        for budget, budget_s in syn.BUDGETS.items():
            losses = [json.loads((root / syn.PRESET / "bert" / method / budget / f"seed{s}" / "summary.json")
                                 .read_text())["final_val_loss"] for s in (0, 1)]
            row = finals.loc[("bert", method, budget)]
            assert row["mean"] == pytest.approx(sum(losses) / 2)
            assert row["mean"] == pytest.approx(syn.final_loss(method, budget_s, 0) + 0.01)
    rho = finals.loc[("bert", "rho_loss", "5s")]
    assert rho["complete"] == 0 and rho["not_complete"] == "1 diverged, 1 failed" and math.isnan(rho["mean"])


def test_the_collapse_shrinks_with_the_budget_in_the_synthetic_grid(synthetic):
    _, _, table = synthetic
    diffs = statistics.difference_to_baseline(table.runs)
    stacking = diffs[(diffs["model"] == "bert") & (diffs["method"] == "layer_stacking")]
    assert list(stacking["mean"]) == pytest.approx([-0.1, -0.05, -0.025])  # DELTA * 5 / B for B = 5, 10, 20
    text = " ".join(report.trend_sentences(table, ["layer_stacking"]))
    # every seed gains the same, so the interval is the point itself
    assert "at 5s it ends 0.100 (0.100 to 0.100) nats below the baseline" in text
    assert "narrows from 0.100 to 0.025 nats as the budget grows 4x" in text
    assert "stacking" not in " ".join(report.trend_sentences(table, ["layer_stacking"], exclude_seeds={0, 1}))


def test_the_gap_sentence_says_narrows_widens_stays_and_a_change_of_side():
    assert report.gap_trend(-0.1, -0.025, 4) == "The gap narrows from 0.100 to 0.025 nats as the budget grows 4x."
    assert report.gap_trend(-0.033, -0.048, 4) == "The gap widens from 0.033 to 0.048 nats as the budget grows 4x."
    # equal as printed: 0.0151 and 0.0149 both read 0.015
    assert report.gap_trend(-0.0151, -0.0149, 4) == "The gap stays at 0.015 nats as the budget grows 4x."
    assert report.gap_trend(-0.039, 0.001, 4) == (
        "The mean goes from 0.039 nats below the baseline to 0.001 above it as the budget grows 4x.")
    assert report.gap_trend(-0.015, 0.015, 2) == (
        "The mean goes from 0.015 nats below the baseline to 0.015 above it as the budget grows 2x.")
    # a crossing too small to print is no crossing
    assert report.gap_trend(-0.0004, 0.02, 4) == "The gap widens from 0.000 to 0.020 nats as the budget grows 4x."


def test_finetune_results_and_a_damaged_one(synthetic):
    _, _, table = synthetic
    scores = statistics.finetune_table(table.finetune).set_index(["model", "task", "method", "budget"])
    assert scores.loc[("bert", "spam_ham", "baseline", "20s")]["mean"] == pytest.approx(0.925)
    assert scores.loc[("bert", "spam_ham", "layer_stacking", "20s")]["floor"] == pytest.approx(0.6)
    assert any(f == "finetune/brown_genre.json" for _, f, _ in table.unreadable)


def test_metrics_checks(tmp_path):
    run = syn.write_run(tmp_path, "bert", "baseline", "5s", 0)
    path = run / "metrics.csv"
    assert len(read_metrics_checked(path, steps=20)) == 21
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))  # whole rows lost: only the summary's step count can tell
    with pytest.raises(Unreadable, match="summary.json says 20 steps"):
        read_metrics_checked(path, steps=20)
    path.write_text("".join(lines)[:-4])
    with pytest.raises(Unreadable, match="cut short"):
        read_metrics_checked(path)
    path.write_text("step,rst\n1,2\n")
    with pytest.raises(Unreadable, match="header"):
        read_metrics_checked(path)
    path.write_text("".join(lines[:2]) + "3,x,1,1,1,1,1,,\n")
    with pytest.raises(Unreadable, match="not a number"):
        read_metrics_checked(path)
    # a record made before the evaluation set had a floor of its own: eight columns, read with val_floor empty
    path.write_text("step,rst_s,wall_s,tokens,train_loss,lr,active_layers,val_loss\n0,0,0,0,,,,7.5\n1,1,1,8,7.4,0.1,4,\n")
    legacy = read_metrics_checked(path, steps=1)
    assert list(legacy["val_loss"].dropna()) == [7.5] and legacy["val_floor"].isna().all()
    path.write_text("step,rst_s,wall_s,tokens,train_loss,lr,active_layers,val_loss\n0,0,0,0,,,,7.5,6.5\n")
    with pytest.raises(Unreadable, match="row 1 has 9 of 8"):
        read_metrics_checked(path)


def test_empty_results_give_empty_tables(tmp_path):
    table = run_table.load_runs(tmp_path, "smoke")
    assert table.runs.empty and not table.unreadable
    assert report.results_table(table).empty and statistics.final_loss_table(table.runs).empty
    assert "No runs of dynamic architectures" in report.family_overview(table, "dynamic")
    assert "no readable runs" in report.overview_text(table)


def test_a_variant_is_reported_beside_its_method(synthetic):
    """The ablation selective_backprop+free_scoring: its own rows, labelled, in the selection family, compared
    with the baseline like any method (its gap at 10 s is DELTA x 5 / 10 by construction)."""
    _, _, table = synthetic
    rows = table.runs[table.runs["method"] == syn.VARIANT]
    assert len(rows) == 2 and set(rows["base_method"]) == {"selective_backprop"} and set(rows["family"]) == {"selection"}
    assert run_table.label(syn.VARIANT) == "selective backprop (free scoring)"
    assert run_table.family_methods(table, "selection") == ["selective_backprop", syn.VARIANT, "rho_loss"]
    diffs = statistics.difference_to_baseline(table.runs).set_index(["model", "method", "budget"])
    assert diffs.loc[("bert", syn.VARIANT, "10s"), "mean"] == pytest.approx(syn.DELTA[syn.VARIANT] * 5 / 10)
    ordered = list(dict.fromkeys(run_table.sort_frame(table.runs)["method"]))
    assert ordered.index(syn.VARIANT) == ordered.index("selective_backprop") + 1


def test_what_a_method_reports_is_a_row_per_quantity_and_a_column_per_cell(synthetic):
    _, _, table = synthetic
    text = report.method_stats_text(table, ["selective_backprop", "sophia"])
    lines = text.splitlines()
    assert "| mean over the runs | BERT 5s | BERT 10s | BERT 20s |" in lines
    assert "| runs | 2 | 2 | 2 |" in lines
    assert "| keep rate | 0.505 | 0.505 | 0.505 |" in lines  # 0.50 and 0.51: a mean with decimals
    assert "| hessian updates | 2 | 2 | 2 |" in lines  # a count: no decimals
    assert "| clip fraction | 0.300 | 0.300 | 0.300 |" in lines
    assert text.index("**selective backprop**") < text.index("**Sophia**")


def test_the_downstream_chapter_says_where_fine_tuning_ends_below_its_floor():
    def cell(model, task, method, mean, floor):
        return {"model": model, "task": task, "method": method, "budget": "8m", "mean": mean, "floor": floor}

    scores = pd.DataFrame([cell("bert", "spam_ham", "baseline", 0.70, 0.24), cell("bert", "sotu_party", "lion", 0.48, 0.49),
                           cell("t5", "spam_ham", "baseline", 0.05, 0.84), cell("t5", "sotu_party", "lion", 0.47, 0.59),
                           cell("t5", "brown_genre", "baseline", 0.03, float("nan"))])
    text = report.below_floor_text(scores)
    assert "BERT: 1 of 2 fine-tuned cells end below their floor (Lion on sotu_party at 8m)." in text
    assert "**T5: every fine-tuned cell ends below its floor** (2 of 2" in text  # a cell without a floor: not counted
    assert report.below_floor_text(scores[scores["model"] == "bert"].assign(floor=0.1)) == ""


def test_how_far_the_baseline_ends_below_its_floor():
    runs = pd.DataFrame({"model": ["bert"] * 3 + ["t5"] * 2, "method": "baseline", "status": "complete",
                         "budget_rst_s": [60.0, 60.0, 120.0, 60.0, 60.0], "floor": [6.0, 6.0, 6.0, 5.0, 5.0],
                         "final_val_loss": [5.4, 5.6, 5.2, 5.1, 5.05]})
    below = statistics.baseline_below_floor(runs).set_index(["model", "budget"])
    # bert 1m: 0.6 and 0.4 -> mean 0.5, interval 0.5 -+ 12.706 * 0.1414 / sqrt(2) = 0.5 -+ 1.2706
    assert below.loc[("bert", "1m"), "mean"] == pytest.approx(0.5)
    assert below.loc[("bert", "1m"), "ci_high"] == pytest.approx(0.5 + 12.706 * 0.1)
    assert below.loc[("t5", "1m"), "mean"] == pytest.approx(-0.075)
    text = report.floor_text(statistics.baseline_below_floor(runs))
    assert "bert 1m 0.500 [-0.771, 1.771]; 2m 0.800" in text
    assert "At t5 at 1m the baseline ends at or above the floor" in text and "bert at" not in text


def test_optimizer_steps_charged_by_estimate_are_listed_with_their_measured_times(tmp_path):
    root = tmp_path / "results"
    for seed in (1, 2):
        run = syn.write_run(root, "bert", "lion", "5s", seed)
        summary = json.loads((run / "summary.json").read_text())
        # as ntng.training.pricing records it: the table's AdamW step (0.002 s) x the measured ratio
        summary["rst_estimates"] = {"lion": {"seconds": 0.003, "ratio": 1.5, "estimate": True, "of": "adamw",
                                             "table": "smoke-bert-AMD_EPYC", "measured_on": "2026-12-03",
                                             "measured": {"ratio": 1.5, "adamw_s": 0.0012, "candidate_s": 0.0018}}}
        (run / "summary.json").write_text(json.dumps(summary))
    syn.write_run(root, "bert", "baseline", "5s", 1)
    runs = run_table.load_runs(root, syn.PRESET).runs
    frame = report.estimated_step_prices(runs)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (row["model"], row["optimizer step"], row["runs"]) == ("bert", "`lion`", 2)
    assert (row["AdamW step (RST s)"], row["charged (RST s)"], row["x AdamW"]) == ("0.002", "0.003", "1.50")
    assert (row["measured AdamW (wall ms)"], row["measured step (wall ms)"]) == ("1.2", "1.8")
    assert (row["measured on"], row["ratio from"]) == ("2026-12-03", "measured by the first run")
    assert "rst_estimates" in report.estimated_steps_text(runs)
    for run in root.glob(f"{syn.PRESET}/bert/lion/5s/seed*"):  # as a ratio the package ships is recorded
        summary = json.loads((run / "summary.json").read_text())
        summary["rst_estimates"]["lion"]["shipped"] = True
        (run / "summary.json").write_text(json.dumps(summary))
    shipped = report.estimated_step_prices(run_table.load_runs(root, syn.PRESET).runs).iloc[0]
    assert (shipped["ratio from"], shipped["x AdamW"]) == ("shipped with the table", "1.50")
    run = root / syn.PRESET / "bert" / "lion" / "5s" / "seed2"  # one run paid another price: a row of its own
    summary = json.loads((run / "summary.json").read_text())
    summary["rst_estimates"]["lion"].update(seconds=0.004, ratio=2.0, shipped=False)
    (run / "summary.json").write_text(json.dumps(summary))
    two = report.estimated_step_prices(run_table.load_runs(root, syn.PRESET).runs)
    assert sorted(zip(two["x AdamW"], two["ratio from"], two["runs"], strict=True)) == [
        ("1.50", "shipped with the table", 1), ("2.00", "measured by the first run", 1)]
    plain = run_table.load_runs(tmp_path / "none", syn.PRESET).runs
    assert report.estimated_steps_text(plain).startswith("*Every optimizer step")
    baseline_only = runs[runs["method"] == "baseline"].dropna(axis=1, how="all")
    assert report.estimated_step_prices(baseline_only).empty


def test_a_budget_only_the_baseline_ran_at_gets_no_panel_and_no_glance_column(tmp_path, monkeypatch):
    """Baseline runs of a budget no method ran at (held against a claim about a run part-way) are records like any
    other, but an empty panel in every chapter and an empty column in the glance would say nothing."""
    from ntng.book import figures, verdicts

    root = tmp_path / "results"
    syn.write_results(root)
    monkeypatch.setitem(syn.BUDGETS, "40s", 40.0)
    for seed in (0, 1):
        syn.write_run(root, "bert", "baseline", "40s", seed)
    table = run_table.load_runs(root, syn.PRESET)
    assert 40.0 in set(table.runs["budget_rst_s"])
    titles = [ax.get_title() for ax in figures.loss_curves(table.evals, ["lion"]).axes if ax.get_title()]
    assert "bert, budget 20s" in titles and not any("40s" in t for t in titles)
    header = next(line for line in verdicts.glance(root, syn.PRESET).splitlines() if line.startswith("| method"))
    assert "| 20s |" in header and "40s" not in header
    layers = [ax.get_title() for ax in figures.active_layers(table.metrics(["baseline", "layer_stacking"])).axes]
    assert "bert, budget 20s" in layers and not any("40s" in t for t in layers)
    ticks = {t for ax in figures.final_loss(statistics.final_loss_table(table.runs), table.runs, ["lion"]).axes
             for t in ax.get_xticks()}
    assert 20.0 in ticks and 40.0 not in ticks
    assert set(report.results_table(table, ["lion"])["budget"]) == {"5s", "10s", "20s"}
    assert "40s" in set(report.results_table(table)["budget"])  # the table of every cell keeps it


def test_the_runs_outside_the_default_grid_get_the_sweeps_that_make_them():
    # preset cpu: budgets 2m 4m 8m, seeds 1 2 3; the default grid has no Muon, no variants, no 6m
    rows = [("bert", "baseline", 120.0, 1), ("bert", "baseline", 360.0, 1), ("bert", "baseline", 360.0, 2),
            ("t5", "baseline", 360.0, 1), ("t5", "baseline", 360.0, 2)]
    rows += [(model, "muon", b, s) for model in ("bert", "t5") for b in (120.0, 240.0) for s in (1, 2)]
    rows += [("bert", "sophia+free_hessian", 240.0, 1), ("bert", "muon", 480.0, 3)]
    rows += [(model, "schedule_free", b, s) for model in ("bert", "t5") for b in (120.0, 240.0) for s in (1, 2)]
    runs = pd.DataFrame(rows, columns=["model", "method", "budget_rst_s", "seed"])
    head = ".venv/bin/ntng sweep --preset cpu --results R"
    assert sorted(report.extra_sweep_commands(runs, "cpu", "R")) == sorted([
        f"{head} --models bert t5 --methods baseline --budgets 6m --seeds 1 2",
        f"{head} --models bert t5 --methods muon schedule_free --budgets 2m 4m --seeds 1 2",  # one product
        f"{head} --models bert --methods muon --budgets 8m --seeds 3",
        f"{head} --models bert --methods sophia+free_hessian --budgets 4m --seeds 1"])
    assert report.extra_sweep_commands(runs, "no_such_preset", "R") == []


def test_the_legend_names_a_method_that_ran_at_some_budgets_only(synthetic):
    # the free-scoring variant ran at 10s alone: the first panel (5s) has no line of it, the legend must still say it
    from ntng.book import figures

    _, _, table = synthetic
    fig = figures.loss_curves(table.evals, ["selective_backprop", syn.VARIANT])
    names = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert names[:2] == ["baseline", "selective backprop"]
    assert "selective backprop (free scoring)" in names and len(names) == len(set(names))


def test_a_legend_of_two_sections_keeps_them_in_order(synthetic):
    # wall against RST: seaborn's "method" and "status" headings each head their own entries, across both panels
    from ntng.book import figures

    _, _, table = synthetic
    names = [t.get_text() for legend in figures.wall_vs_rst(table.runs).legends for t in legend.get_texts()]
    assert names[0] == "method" and names.index("status") > names.index("baseline")
    assert names.index("complete") > names.index("status") and len(names) == len(set(names))
