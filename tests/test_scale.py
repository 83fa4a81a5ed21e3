"""Choosing the CPU scale: the probe's candidates, its records, the tuning plan and its choice, the reference
preset. Expected values are stated by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic_results as syn

from ntng.book import scale_report
from ntng.errors import UsageError
from ntng.experiments import probe, tuning
from ntng.methods import build_method
from ntng.presets import BERT_PAPER_RECIPE, T5_PAPER_RECIPE, get_preset, load_custom_presets, parse_budget
from ntng.training.variants import canonical_method, parse_variant


def test_shapes_are_parsed_and_refused_in_one_line():
    assert probe.parse_shape("bert", "8x192") == probe.Shape("bert", 8, 192)
    for bad in ("3x128", "4x100", "4x96", "4by128", "x128", "0x0"):
        with pytest.raises(UsageError):
            probe.parse_shape("bert", bad)
    assert probe.parse_shape("t5", "4x96").width == 96  # T5's heads are 32 wide


def test_candidates_become_presets_the_loader_accepts(tmp_path):
    cands = probe.candidates(["bert", "t5"], ["8x192"], [16, 64], micro_batch=32)
    assert [(c.shape.model, c.batch, c.micro_batch) for c in cands] == [("bert", 16, 16), ("bert", 64, 32),
                                                                         ("t5", 16, 16), ("t5", 64, 32)]
    path = tmp_path / "presets.json"
    path.write_text(json.dumps(probe.preset_entries(cands, "smoke")))
    presets = load_custom_presets(path)
    bert = presets["probe-bert-8x192-b64"]
    assert (bert.bert.num_layers, bert.bert.hidden, bert.bert.heads, bert.bert.intermediate) == (8, 192, 3, 768)
    assert (bert.bert.micro_batch, bert.bert.grad_accum, bert.bert.batch) == (32, 2, 64)
    assert bert.bert_recipe.eval_sequences == probe.PROBE_EVAL_SEQUENCES
    t5 = presets["probe-t5-8x192-b16"].t5
    assert (t5.num_layers, t5.d_model, t5.d_kv, t5.heads, t5.d_ff, t5.micro_batch, t5.grad_accum) == \
        (8, 192, 32, 6, 384, 16, 1)
    with pytest.raises(UsageError, match="micro-batches"):
        probe.candidates(["bert"], ["4x128"], [48], micro_batch=32)


def test_a_probe_refuses_to_reuse_candidates_derived_from_another_base(tmp_path):
    cands = probe.candidates(["bert"], ["4x128"], [32], micro_batch=32)
    path = tmp_path / "presets.json"
    path.write_text(json.dumps(probe.preset_entries(cands, "smoke")))
    more = probe.candidates(["bert"], ["4x128", "8x128"], [32], micro_batch=32)
    assert [e["name"] for e in probe.merged_entries(path, probe.preset_entries(more, "smoke"))] == \
        ["probe-bert-4x128-b32", "probe-bert-8x128-b32"]
    with pytest.raises(UsageError, match="another base preset"):
        probe.merged_entries(path, probe.preset_entries(cands, "mini"))


def test_probe_rows_and_the_lowest_candidate(tmp_path):
    syn.write_probe(tmp_path)
    rows = probe.probe_rows(tmp_path / "probe")
    assert len(rows) == len(syn.PROBE)
    row = next(r for r in rows if r["model"] == "bert" and r["batch"] == 16 and r["lr"] == 0.004)
    assert row["layers"] == 4 and row["width"] == 64 and row["parameters"] == 256_000
    assert row["below_floor"] == pytest.approx(6.5 - 6.12)
    assert row["tokens_per_rst_s"] == pytest.approx(100 * 16 * 128 / 60)
    best = scale_report.best_probe_rows(rows)
    assert (best["bert", 60.0]["final_val_loss"], best["t5", 60.0]["final_val_loss"]) == (6.12, 5.55)
    (tmp_path / "probe" / "t5" / "4x64-b16" / "1m" / "lr0.04" / "summary.json").write_text("{oops")
    unreadable = []
    rows = probe.probe_rows(tmp_path / "probe", unreadable)
    assert len(rows) == len(syn.PROBE) - 1 and len(unreadable) == 1 and "4x64-b16/1m/lr0.04" in unreadable[0][0]
    text = scale_report.probe_markdown(rows, unreadable)
    assert "**6.120**" in text and "**5.550**" in text and "cannot be read" in text
    assert sum("**" in line for line in text.splitlines() if line.startswith("| ")) == 2  # one lowest per model


def test_a_tiny_probe_runs_and_continues_where_it_stopped(tmp_path, built_fixture, monkeypatch):
    monkeypatch.setenv("NTNG_DATA_DIR", str(built_fixture[0]))  # the fixture corpus, for the `tiny` preset
    command = [sys.executable, "-m", "ntng.cli", "probe", "--models", "bert", "--shapes", "4x64", "--batches", "8",
               "--bert-lrs", "0.004", "--budget", "2s", "--repeats", "1", "--base", "tiny", "--results", str(tmp_path)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    table = json.loads((tmp_path / "tables" / "bert-4x64-m8.json").read_text())
    assert table["machine"].find("torch_threads=1") >= 0  # the reference system of a CPU preset: one core
    summary = json.loads((tmp_path / "bert" / "4x64-b8" / "2s" / "lr0.004" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["budget_rst_s"] == 2.0
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "calibrating" not in again.stdout
    assert json.loads((tmp_path / "bert" / "4x64-b8" / "2s" / "lr0.004" / "summary.json").read_text()) == summary
    bad = subprocess.run(command + ["--shapes", "3x64"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "multiple of 4" in bad.stderr


def test_a_probe_table_ships_as_a_presets_table_unchanged_but_for_its_label(tmp_path):
    from ntng.training.rst import load_table

    src = tmp_path / "t.json"
    raw = json.loads((Path(__file__).resolve().parent.parent / "ntng" / "tables" / "cpu-bert.json").read_text())
    raw["preset"] = "probe-bert-4x64-b16"
    src.write_text(json.dumps(raw))
    shipped = probe.ship_table(src, "cpu", tmp_path / "cpu-bert.json")
    assert shipped["preset"] == "cpu" and shipped["units"] == raw["units"] and "probe-bert-4x64-b16" in shipped["notes"][-1]
    assert load_table(tmp_path / "cpu-bert.json").train == load_table(src).train


def test_the_methods_own_peaks_keep_the_paper_ratios():
    from dataclasses import replace

    from ntng.methods import build_method

    smoke = get_preset("smoke")
    # 4x the paper's BERT peak of 1e-3, half its T5 peak of 2e-2
    moved = replace(smoke, bert_recipe=replace(BERT_PAPER_RECIPE, lr=4e-3), t5_recipe=replace(T5_PAPER_RECIPE, lr=1e-2))

    def peak(method, model, preset=moved):
        return build_method(method, model, preset).settings()["lr"]

    # Appendix C: Lion 7e-4 / 7.5e-4, Sophia 4e-4 / 1e-3, T5 layer dropping 1e-2 (BERT's: the baseline's)
    assert (peak("lion", "bert"), peak("sophia", "bert"), peak("layer_dropping", "bert")) == (
        pytest.approx(2.8e-3), pytest.approx(1.6e-3), 4e-3)
    assert (peak("lion", "t5"), peak("sophia", "t5"), peak("layer_dropping", "t5")) == (
        pytest.approx(3.75e-4), pytest.approx(5e-4), pytest.approx(5e-3))
    assert (peak("lion", "bert", smoke), peak("sophia", "t5", smoke)) == (7e-4, 1e-3)  # the paper's, at its peaks


def test_every_method_declares_what_the_paper_tuned():
    smoke = get_preset("smoke")
    grids = {m: build_method(m, "bert", smoke).tuning() for m in
             ("baseline", "layer_stacking", "layer_dropping", "selective_backprop", "rho_loss", "lion", "sophia")}
    assert grids["baseline"] == {"recipe.lr": [1e-3, 5e-4, 2e-3]}
    assert grids["layer_stacking"] == {"points": [[0.125, 0.3], [0.0625, 0.15], [0.25, 0.6]]}
    assert grids["layer_dropping"] == {"gamma_factor": [100.0, 50.0, 200.0]}
    assert grids["selective_backprop"] == {"scale": [1.0, 0.5, 2.0]}
    assert grids["rho_loss"] == {"mega_batch_factor": [2, 4, 8]}
    assert grids["lion"] == {"lr": [7e-4, 3.5e-4, 1.4e-3], "weight_decay": [0.1, 0.05, 0.2]}
    assert grids["sophia"] == {"lr": [4e-4, 2e-4, 8e-4], "rho": [0.01, 0.005, 0.02]}
    t5 = {m: build_method(m, "t5", smoke).tuning() for m in ("layer_dropping", "lion")}
    assert t5["layer_dropping"] == {"gamma_factor": [20.0, 10.0, 40.0], "lr": [1e-2, 5e-3, 2e-2]}
    assert t5["lion"]["weight_decay"] == [0.0, 0.01, 0.1]


def test_the_tuning_plan_goes_one_axis_at_a_time_on_the_papers_scope():
    plan = tuning.plan_tuning("smoke")
    assert plan["budget"] == "3s" and plan["seed"] == 0
    methods = {m: {parse_variant(r).method for r in plan["runs"][m]} for m in ("bert", "t5")}
    assert methods["bert"] == {"baseline", "layer_stacking", "layer_dropping", "selective_backprop", "rho_loss",
                               "lion", "sophia"}
    assert methods["t5"] == {"baseline", "layer_stacking", "layer_dropping", "lion", "sophia"}  # the paper's T5
    lion = [r for r in plan["runs"]["bert"] if r.startswith("lion")]
    # 2 keys x 3 values around one centre: 1 + 2 x 2 runs
    assert lion == ["lion+lr=0.0007+weight_decay=0.1", "lion+lr=0.00035+weight_decay=0.1",
                    "lion+lr=0.0014+weight_decay=0.1", "lion+lr=0.0007+weight_decay=0.05",
                    "lion+lr=0.0007+weight_decay=0.2"]
    assert all(canonical_method(r) == r for rs in plan["runs"].values() for r in rs)
    assert len(plan["runs"]["bert"]) == 3 + 3 + 3 + 3 + 3 + 5 + 5 and len(plan["runs"]["t5"]) == 3 + 3 + 5 + 5 + 5
    axis = next(a for a in plan["axes"] if a["model"] == "t5" and a["method"] == "baseline")
    assert axis["paper"] == 2e-2 and axis["centre"] == 2e-2


def test_tuning_rows_choose_the_lowest_complete_loss(tmp_path):
    syn.write_tuning(tmp_path)
    rows = tuning.tuning_rows(tmp_path / "tuning", syn.PRESET)
    assert len(rows) == 1 and rows[0]["chosen"] == 0.00035 and rows[0]["settled"]
    assert not rows[0]["complete"] and rows[0]["beyond"] == 0.000175  # at the edge: one step beyond is due
    assert "0.00035 (so far)" in tuning.format_tuning(rows)
    assert tuning.tuned_presets(tmp_path / "tuning") == [syn.PRESET]
    best = tmp_path / "tuning" / syn.PRESET / "bert" / "lion+lr=0.00035" / "5s" / "seed0" / "summary.json"
    best.write_text(json.dumps({"status": "complete", "final_val_loss": 6.20 - 0.009}))  # within the noise margin
    assert tuning.tuning_rows(tmp_path / "tuning", syn.PRESET)[0]["chosen"] == 0.0007  # the centre stays
    best.write_text(json.dumps({"status": "complete", "final_val_loss": 6.20 - 0.011}))
    assert tuning.tuning_rows(tmp_path / "tuning", syn.PRESET)[0]["chosen"] == 0.00035
    best.write_text(json.dumps({"status": "diverged", "final_val_loss": None}))
    rows = tuning.tuning_rows(tmp_path / "tuning", syn.PRESET)
    assert rows[0]["chosen"] == 0.0007 and rows[0]["complete"]  # a diverged trial is final: too large a value
    best.unlink()  # not run yet
    rows = tuning.tuning_rows(tmp_path / "tuning", syn.PRESET)
    assert rows[0]["chosen"] == 0.0007 and not rows[0]["complete"]
    assert "0.0007 (so far)" in tuning.format_tuning(rows)


def test_an_interrupted_tuning_continues_its_own_plan(tmp_path, monkeypatch):
    import ntng.experiments.grid

    calls = []
    monkeypatch.setattr(ntng.experiments.grid, "sweep", lambda **kw: calls.append(kw) or [])
    syn.write_tuning(tmp_path)
    tuning.tune(syn.PRESET, results=tmp_path / "tuning", jobs=2, log=lambda m: None)
    # the plan on disk (lion), not a new one made from today's defaults; its chosen 0.00035 is the smallest value
    # tried, so one more run beyond it follows (its record is not written here, so no further one)
    beyond = "lion+lr=0.000175"
    assert [(c["models"], c["methods"], c["budgets"], c["seeds"], c["jobs"]) for c in calls] == \
        [(["bert"], list(syn.TUNING_LOSSES), ["5s"], [0], 2),
         (["bert"], [beyond], ["5s"], [0], 2)]  # then only the run added
    plan = json.loads((tmp_path / "tuning" / syn.PRESET / "tuning.json").read_text())
    assert plan["axes"][0]["values"][-1] == 0.000175 and plan["axes"][0]["extended"] == 1
    calls.clear()
    with pytest.raises(UsageError, match="methods differ"):  # another tuning is refused, not silently ignored
        tuning.tune(syn.PRESET, methods=["lion", "sophia"], results=tmp_path / "tuning", log=lambda m: None)
    with pytest.raises(UsageError, match="budget differ"):
        tuning.tune(syn.PRESET, budget="10s", results=tmp_path / "tuning", log=lambda m: None)
    with pytest.raises(UsageError, match="budget differ"):  # a method joins only on the plan's terms
        tuning.tune(syn.PRESET, methods=["sophia"], budget="10s", results=tmp_path / "tuning", log=lambda m: None)
    assert calls == []
    # a method the plan does not hold joins it: its axes and runs are added, and only its runs are swept
    tuning.tune(syn.PRESET, methods=["sophia"], results=tmp_path / "tuning", log=lambda m: None)
    plan = json.loads((tmp_path / "tuning" / syn.PRESET / "tuning.json").read_text())
    sophia = [r for a in plan["axes"] if a["method"] == "sophia" for r in a["runs"]]
    assert {a["method"] for a in plan["axes"]} == {"lion", "sophia"} and plan["joined"][0]["methods"] == ["sophia"]
    assert sophia and {r for c in calls for r in c["methods"]} == set(sophia)
    assert plan["axes"][0]["extended"] == 1 and beyond in plan["runs"]["bert"]  # the earlier plan is kept
    calls.clear()
    tuning.tune(syn.PRESET, methods=["sophia"], results=tmp_path / "tuning", log=lambda m: None)  # continues
    assert {r for c in calls for r in c["methods"]} == set(sophia)
    calls.clear()
    fresh = tmp_path / "fresh"
    tuning.tune("smoke", models=["t5"], methods=["lion"], results=fresh, log=lambda m: None)
    plan = json.loads((fresh / "smoke" / "tuning.json").read_text())
    assert calls[0]["methods"] == plan["runs"]["t5"] and len(plan["runs"]["t5"]) == 5


def test_a_value_chosen_at_the_edge_is_followed_outward():
    assert tuning.value_beyond([0.0056, 0.0028, 0.0112], 0.0028) == 0.0014  # halved again
    assert tuning.value_beyond([0.0056, 0.0028, 0.0112], 0.0112) == 0.0224
    assert tuning.value_beyond([0.01, 0.005, 0.02, 0.0025], 0.0025) == 0.00125
    assert tuning.value_beyond([0.0, 0.01, 0.1], 0.1) == 1.0  # a factor of ten, like its neighbours
    assert tuning.value_beyond([0.0056, 0.0028, 0.0112], 0.0056) is None  # inside: nothing to follow
    assert tuning.value_beyond([0.0, 0.01, 0.1], 0.0) is None  # no value below zero
    assert tuning.value_beyond([2, 4, 8], 2) is None  # a whole number (mega-batch factor) stays on its grid
    assert tuning.value_beyond([[0.125, 0.3], [0.0625, 0.15]], [0.0625, 0.15]) is None


def test_the_edge_is_followed_at_most_twice_and_stops_when_the_edge_loses(tmp_path):
    syn.write_tuning(tmp_path)
    root = tmp_path / "tuning" / syn.PRESET
    plan = json.loads((root / "tuning.json").read_text())

    def finish(run, loss, status="complete"):
        run_dir = root / "bert" / run / "5s" / "seed0"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"status": status, "final_val_loss": loss}))

    assert tuning.extend_plan(plan, tuning.rows_for_plan(tmp_path / "tuning", plan)) == \
        [("bert", "lion+lr=0.000175")]
    assert tuning.extend_plan(plan, tuning.rows_for_plan(tmp_path / "tuning", plan)) == []  # waits for its run
    finish("lion+lr=0.000175", 6.00)  # better still: one more
    assert tuning.extend_plan(plan, tuning.rows_for_plan(tmp_path / "tuning", plan)) == \
        [("bert", "lion+lr=8.75e-05")]
    finish("lion+lr=8.75e-05", 5.90)
    rows = tuning.rows_for_plan(tmp_path / "tuning", plan)
    assert rows[0]["chosen"] == 8.75e-05 and rows[0]["extended"] == tuning.MAX_EXTENSIONS
    assert tuning.extend_plan(plan, rows) == []  # at most twice
    fresh = tmp_path / "again"
    syn.write_tuning(fresh)
    root = fresh / "tuning" / syn.PRESET
    plan = json.loads((root / "tuning.json").read_text())
    tuning.extend_plan(plan, tuning.rows_for_plan(fresh / "tuning", plan))
    finish("lion+lr=0.000175", None, status="diverged")  # the step beyond diverged: 0.00035 is inside now
    rows = tuning.rows_for_plan(fresh / "tuning", plan)
    assert rows[0]["chosen"] == 0.00035 and rows[0]["complete"]
    assert tuning.extend_plan(plan, rows) == []
    (root / "bert" / "lion+lr=0.000175" / "5s" / "seed0" / "summary.json").write_text(
        json.dumps({"status": "complete", "final_val_loss": 6.05 - 0.009}))  # beyond, but within the noise margin
    rows = tuning.rows_for_plan(fresh / "tuning", plan)
    assert rows[0]["chosen"] == 0.00035 and rows[0]["complete"]  # noise does not lead the grid outward
    assert tuning.extend_plan(plan, rows) == []


def test_a_tuning_refused_before_it_ran_leaves_no_plan(tmp_path, monkeypatch):
    import ntng.experiments.grid

    def refuse(**kw):
        raise UsageError("no packed data")

    monkeypatch.setattr(ntng.experiments.grid, "sweep", refuse)
    with pytest.raises(UsageError):
        tuning.tune("smoke", models=["bert"], methods=["lion"], results=tmp_path, log=lambda m: None)
    assert not (tmp_path / "smoke" / "tuning.json").exists()


def test_the_reference_preset():
    cpu = get_preset("cpu")
    budgets = [parse_budget(b) for b in cpu.budgets]
    assert budgets[1] == 2 * budgets[0] and budgets[2] == 4 * budgets[0]  # the paper's 1:2:4
    assert cpu.seeds == (1, 2, 3) and cpu.ray_cpus == 1.0
    for model in ("bert", "t5"):
        from ntng.training.rst import shipped_table
        table = shipped_table("cpu", model)
        assert "torch_threads=1" in table.machine  # one cell per core
        assert table.micro_batch["sequences"] == cpu.shape(model).micro_batch
    # one seed of the reference grid: BERT's seven methods and T5's five at three budgets, three ablations and
    # one irreducible-loss model at the middle budget
    rst = scale_report.grid_rst_seconds(cpu, {"bert": ["m"] * 7, "t5": ["m"] * 5}, ablations=3)
    assert rst == 12 * (120 + 240 + 480) + 4 * 240


def test_a_presets_method_options_are_the_methods_defaults_under_a_runs_settings(tmp_path):
    path = tmp_path / "presets.json"
    path.write_text(json.dumps([{"name": "tuned", "base": "smoke",
                                 "method_options": {"bert": {"layer_dropping": {"gamma_factor": 50.0}}}}]))
    tuned = load_custom_presets(path)["tuned"]
    assert build_method("layer_dropping", "bert", tuned).gamma_factor == 50.0
    assert build_method("layer_dropping", "bert", tuned, gamma_factor=25.0).gamma_factor == 25.0
    assert build_method("layer_dropping", "t5", tuned).gamma_factor == 20.0  # T5: the paper's
    path.write_text(json.dumps([{"name": "bad", "base": "smoke", "method_options": {"bert": [1]}}]))
    with pytest.raises(UsageError, match="method_options"):
        load_custom_presets(path)


def test_a_batch_size_control_names_the_preset_it_controls(tmp_path, monkeypatch):
    from ntng.presets import PRESETS_FILE_ENV, batch_control_for

    assert batch_control_for("cpu") == "cpu_batch64" and batch_control_for("smoke") is None
    path = tmp_path / "presets.json"
    # built on cpu_batch64 without saying so: not cpu's control; a user's own control of smoke
    path.write_text(json.dumps([{"name": "mine", "base": "cpu_batch64"},
                                {"name": "smoke_x4", "base": "smoke", "bert": {"grad_accum": 8},
                                 "batch_control_of": "smoke"}]))
    loaded = load_custom_presets(path)
    assert loaded["mine"].batch_control_of is None and loaded["smoke_x4"].batch_control_of == "smoke"
    monkeypatch.setenv(PRESETS_FILE_ENV, str(path))
    assert batch_control_for("smoke") == "smoke_x4" and batch_control_for("cpu") == "cpu_batch64"
    for target in ("nowhere", "self"):
        path.write_text(json.dumps([{"name": "self", "base": "smoke", "batch_control_of": target}]))
        with pytest.raises(UsageError, match="batch_control_of must name another preset"):
            load_custom_presets(path)


@pytest.mark.parametrize("preset", ["cpu", "cpu_batch64"])
def test_the_reference_presets_defaults_are_what_its_committed_tuning_chose(preset):
    """The reference preset and its batch-size control: once a tuning is committed, the preset holds its choices."""
    results = Path(__file__).resolve().parent.parent / "results" / "tuning"
    rows = [r for r in tuning.tuning_rows(results, preset) if r["complete"] and r["chosen"] is not None]
    spec = get_preset(preset)
    for r in rows:  # every axis whose trials are all in: the preset's current value is the one chosen
        current = build_method(r["method"], r["model"], spec).tuning()[r["key"]][0]
        assert current == pytest.approx(r["chosen"]), (r["model"], r["method"], r["key"])


def test_the_book_rebuilds_its_pages_when_a_probe_or_tuning_record_changes(tmp_path):
    from ntng.book.build import records_fingerprint

    before = records_fingerprint(tmp_path, "smoke")
    syn.write_probe(tmp_path)
    after_probe = records_fingerprint(tmp_path, "smoke")
    syn.write_tuning(tmp_path)
    assert len({before, after_probe, records_fingerprint(tmp_path, "smoke")}) == 3
    # the controls page reads the batch-size control's records beside the preset's own
    cpu = records_fingerprint(tmp_path, "cpu")
    (tmp_path / "cpu_batch64" / "bert").mkdir(parents=True)
    (tmp_path / "cpu_batch64" / "bert" / "summary.json").write_text("{}")
    assert records_fingerprint(tmp_path, "cpu") != cpu


def test_the_budget_a_baseline_would_need_is_extrapolated_per_doubling():
    # 0.8 nats at 4 min, 1.0 at 8 min: 0.2 per doubling, 1.5 needs 2.5 more doublings: 8 x 2^2.5 min
    assert scale_report.budget_to_reach([(120, 0.5), (240, 0.8), (480, 1.0)], 1.5) == pytest.approx(480 * 2 ** 2.5)
    assert scale_report.budget_to_reach([(240, 0.8), (480, 0.7)], 1.5) is None  # no gain: no extrapolation
    assert scale_report.budget_to_reach([(480, 1.0)], 1.5) is None


def test_a_presets_method_options_join_the_run_identity_unless_the_run_sets_them(tmp_path, built_fixture):
    from dataclasses import replace

    from ntng.training.spec import resolve

    data = built_fixture[0]
    tuned = replace(get_preset("tiny"), method_options={"bert": {"layer_dropping": {"gamma_factor": 50.0}}})
    spec = resolve("bert", "layer_dropping", "3s", tuned, out_dir=tmp_path / "a", data_dir=data)
    assert spec.identity()["preset_method_options"] == {"gamma_factor": 50.0}
    own = resolve("bert", "layer_dropping+gamma_factor=25.0", "3s", tuned, out_dir=tmp_path / "b", data_dir=data)
    assert "preset_method_options" not in own.identity()  # the run's own setting is what ran
    plain = resolve("bert", "layer_dropping", "3s", "tiny", out_dir=tmp_path / "c", data_dir=data)
    assert "preset_method_options" not in plain.identity()  # identities of earlier runs are unchanged


def test_a_presets_recipe_value_for_a_method_is_the_recipe_it_runs_with_unless_the_run_sets_it(tmp_path, built_fixture):
    """A schedule that reuses the baseline's optimizer (warmup-stable-decay) is tuned on `recipe.lr`; the peak chosen
    for it sits in method_options as `recipe.lr`, which moves that method's recipe only: what resolve hands the loop,
    what the tuning grid is centred on and what the stale-run check compares."""
    from dataclasses import replace

    from ntng.training.spec import resolve, settings_in_force

    data = built_fixture[0]
    tiny = get_preset("tiny")
    peak = tiny.bert_recipe.lr / 2
    tuned = replace(tiny, method_options={"bert": {"warmup_stable_decay": {"recipe.lr": peak}}})
    spec = resolve("bert", "warmup_stable_decay", "3s", tuned, out_dir=tmp_path / "a", data_dir=data)
    assert spec.preset.bert_recipe.lr == peak and spec.variant == "warmup_stable_decay"
    assert spec.identity()["preset_method_options"] == {"recipe.lr": peak}
    assert build_method("warmup_stable_decay", "bert", tuned).tuning()["recipe.lr"] == [peak, peak / 2, peak * 2]
    assert settings_in_force("bert", "warmup_stable_decay", tuned)["recipe"]["lr"] == peak
    # the baseline and the other model keep the preset's recipe
    assert resolve("bert", "baseline", "3s", tuned, out_dir=tmp_path / "b",
                   data_dir=data).preset.bert_recipe.lr == tiny.bert_recipe.lr
    assert build_method("warmup_stable_decay", "t5", tuned).recipe.lr == tiny.t5_recipe.lr
    # a run's own peak is what runs (a tuning trial), and its identity is the one it had before the preset moved
    own = resolve("bert", "warmup_stable_decay+recipe.lr=0.0005", "3s", tuned, out_dir=tmp_path / "c", data_dir=data)
    assert own.preset.bert_recipe.lr == 0.0005 and "preset_method_options" not in own.identity()
    assert settings_in_force("bert", "warmup_stable_decay+recipe.lr=0.0005", tuned)["recipe"]["lr"] == 0.0005
    with pytest.raises(UsageError, match=r"recipe.lr is not a method option: name it in the method"):
        resolve("bert", "warmup_stable_decay", "3s", tuned, out_dir=tmp_path / "e", data_dir=data,
                method_options={"recipe.lr": 0.0005})
    bad = replace(tiny, method_options={"bert": {"warmup_stable_decay": {"recipe.lr": -1.0}}})
    with pytest.raises(UsageError, match=r"recipe.lr = -1.0 is out of range"):
        resolve("bert", "warmup_stable_decay", "3s", bad, out_dir=tmp_path / "d", data_dir=data)


def test_the_edge_is_not_followed_out_of_the_methods_range(tmp_path):
    """Muon's momentum chosen at 0.98 of (0.95, 0.9, 0.98): one factor further, 0.98 x 0.98 / 0.95 = 1.011, is not a
    momentum (Muon refuses it), so the axis ends at its edge; the plan may also be restricted to some keys."""
    plan = tuning.plan_tuning("smoke", models=["bert"], methods=["muon"], keys=["momentum"])
    assert [a["key"] for a in plan["axes"]] == ["momentum"] and plan["keys"] == ["momentum"]
    axis = plan["axes"][0]
    assert axis["values"] == [0.95, 0.9, 0.98]
    for run, loss in zip(axis["run_dirs"], (6.1, 6.2, 5.9), strict=True):
        run_dir = tmp_path / "smoke" / "bert" / run / plan["budget"] / "seed0"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"status": "complete", "final_val_loss": loss}))
    rows = tuning.rows_for_plan(tmp_path, plan)
    assert rows[0]["chosen"] == 0.98 and rows[0]["beyond"] == pytest.approx(0.98 * 0.98 / 0.95)
    assert tuning.extend_plan(plan, rows) == []
    with pytest.raises(UsageError, match="no method to tune has a hyper-parameter named nothing"):
        tuning.plan_tuning("smoke", models=["bert"], methods=["muon"], keys=["nothing"])
