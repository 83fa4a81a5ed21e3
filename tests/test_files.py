"""The one atomic writer (ntng.files), the one number formatter (ntng.book.numbers) and the cost chapter's checks."""

from __future__ import annotations

import math

import pytest

from ntng.book.numbers import fmt, fmt_ci
from ntng.files import atomic_path, remove_temporaries, write_text_atomic


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed half-way")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "packed"
    target.mkdir()
    (target / "stale.arrow").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "data.arrow").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["data.arrow"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["packed"]


def test_what_killed_writers_left_is_dropped(tmp_path):
    (tmp_path / "sub").mkdir()
    for leftover in (tmp_path / ".config.json.tmp-12", tmp_path / "sub" / ".metrics.csv.tmp-7"):
        leftover.write_text("half")
    (tmp_path / "keep.json").write_text("{}")
    remove_temporaries(tmp_path)
    assert (tmp_path / "sub" / ".metrics.csv.tmp-7").exists() and not (tmp_path / ".config.json.tmp-12").exists()
    remove_temporaries(tmp_path, recursive=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["keep.json", "sub"]


def test_numbers_are_written_one_way():
    assert fmt(6.12549) == "6.125" and fmt("4.5", 1) == "4.5" and fmt(-0.0304, signed=True) == "-0.030"
    assert fmt(0.25, 2, signed=True) == "+0.25"
    assert [fmt(v) for v in (None, math.nan, math.inf, "n/a")] == ["-"] * 4
    assert fmt(None, missing="") == ""
    assert fmt_ci(6.125, 6.1, 6.15) == "6.125 [6.100, 6.150]"
    assert fmt_ci(-0.2, -0.31, -0.09, signed=True) == "-0.200 [-0.310, -0.090]"
    assert fmt_ci(6.125, math.nan, math.nan) == "6.125" and fmt_ci(math.nan, 1, 2) == "-"


def test_the_cost_chapter_checks_each_target_and_explains_a_missing_benchmark(tmp_path):
    from ntng.book import cost

    bench = {"speedup_vs_hf_default": 2.5, "bert_mfu": 0.41, "t5_mfu": 0.39,
             "wall_over_rst": {"baseline": 1.04, "lion": 0.93}, "wall_over_rst_t5": {"baseline": 1.08},
             "clock_overhead_fraction": 0.004, "loader_wait_fraction": 0.03}
    rows = cost.targets(bench).set_index("target")
    assert list(rows["verdict"]) == ["**not met**", "**not met**", "met", "-", "met", "**not met**"]
    assert rows["measured"].tolist()[:3] == ["2.50x", "41.0% / 39.0%", "0.93 .. 1.08"]
    bench["wall_over_rst_relative"] = {"baseline": 1.0, "lion": 1.12}
    assert cost.targets(bench)["verdict"][3] == "**not met**"
    # where the numbers come from, as a reader of the published book finds it: relative to the checkout
    from ntng.resources import CHECKOUT, shown_path

    assert shown_path(CHECKOUT / "benchmarks" / "reference" / "bench.json") == "benchmarks/reference/bench.json"
    assert shown_path(tmp_path / "bench.json") == str(tmp_path / "bench.json")
    assert "From `benchmarks/reference/bench.json`." in cost.measured_on(
        cost.read_bench(CHECKOUT / "benchmarks" / "reference" / "bench.json")[0],
        CHECKOUT / "benchmarks" / "reference" / "bench.json")
    # the reproduce page's commands name the committed records as a reader's checkout has them
    from ntng.book import report, run_table

    records = run_table.load_runs(CHECKOUT / "results", "cpu")
    commands = report.reproduce_text(records)
    assert str(CHECKOUT) not in commands
    # and the RST page's pointer to this machine's tables (none here: the records hold no calibration)
    tables_text = report.rst_tables_text(*report.rst_tables("cpu", records.results), records)
    assert "`results/cpu/calibration`" in tables_text and str(CHECKOUT) not in tables_text
    assert "--preset cpu --results results " in commands and "--out results/cpu/" in commands
    missing, why = cost.read_bench(tmp_path / "bench.json")
    assert missing is None and "run `make bench`" in why
    (tmp_path / "bench.json").write_text("{half")
    assert "cannot be read" in cost.read_bench(tmp_path / "bench.json")[1]


def test_a_record_is_not_written_into_a_folder_that_is_gone(tmp_path):
    from ntng.files import write_bytes_atomic

    with pytest.raises(FileNotFoundError):  # a run directory removed under a running run: an error, no new folder
        write_bytes_atomic(tmp_path / "run" / "summary.json", b"{}")
    assert not (tmp_path / "run").exists()
    write_text_atomic(tmp_path / "data" / "manifest.json", "{}\n", make_parent=True)  # the data folder is made
    assert (tmp_path / "data" / "manifest.json").read_text() == "{}\n"


# --- metrics.csv at the writer's precision ---------------------------------------------------------------------

HEADER = "step,rst_s,wall_s,tokens,train_loss,lr,active_layers,val_loss,val_floor\n"


def test_metric_rows_carry_seven_significant_digits(tmp_path):
    from ntng.training.records import RunDir

    run = RunDir(tmp_path)
    run.start_metrics()
    run.append_metrics({"step": 1, "rst_s": 0.08927956000000001, "wall_s": 0.2132014499984507, "tokens": 2048,
                        "train_loss": 8.99004077911377, "lr": 2.9759851e-06, "active_layers": 4.0})
    run.append_metrics({"step": 2, "rst_s": 480.00012, "wall_s": 3012.345678, "tokens": 4096,
                        "train_loss": float("nan"), "lr": 0.0, "active_layers": 3.5, "val_loss": 6.2176012345,
                        "val_floor": 6.865694223676591})
    assert (tmp_path / "metrics.csv").read_text() == HEADER + (
        "1,0.08927956,0.2132014,2048,8.990041,2.975985e-06,4,,\n"
        "2,480.0001,3012.346,4096,nan,0,3.5,6.217601,6.865694\n")


def test_old_full_precision_metrics_are_compacted_to_what_the_writer_writes_and_damaged_ones_are_left(tmp_path):
    from ntng.training.records import Unreadable, compact_metrics

    path = tmp_path / "metrics.csv"
    path.write_text(HEADER + "0,0.0,0.0,0,,,,8.996898821815886,6.865694223676591\n"
                    "1,0.08927956000000001,0.2132014499984507,2048,8.99004077911377,0.0,4.0,,\n")
    assert compact_metrics(path) is True
    assert path.read_text() == HEADER + "0,0,0,0,,,,8.996899,6.865694\n1,0.08927956,0.2132014,2048,8.990041,0,4,,\n"
    assert compact_metrics(path) is False  # already compact: not rewritten
    damaged = HEADER + "0,0.0,0.0,0,,,,8.996898821815886,6.865694223676591\n1,0.0892795600"
    path.write_text(damaged)
    with pytest.raises(Unreadable, match="truncated"):
        compact_metrics(path)
    assert path.read_text() == damaged and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_the_committed_records_hold_one_metrics_format():
    """Every committed metrics.csv is at the writer's precision (tools/compact_metrics.py brings older ones there):
    no number with more than seven significant digits. Runs still going in this checkout are not committed: skipped."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run(["git", "ls-files", "results/*metrics.csv"], cwd=repo, capture_output=True, text=True)
    files = [repo / name for name in listed.stdout.split()] if listed.returncode == 0 else []
    if not files:
        pytest.skip("no committed records in this checkout")
    offenders = []
    for path in files:
        for line in path.read_text().splitlines()[1:]:
            long = [c for c in line.split(",") if "." in c and len(_significant_digits(c)) > 7]
            if long:
                offenders.append(f"{path.relative_to(repo)}: {long[0]}")
                break
    assert not offenders, f"{len(offenders)} files, e.g. {offenders[:3]}"


def _significant_digits(cell: str) -> str:
    return cell.split("e")[0].replace("-", "").replace(".", "").lstrip("0")
