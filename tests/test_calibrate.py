"""`ntng calibrate`: a real measurement on this machine, written as a table the loop accepts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ntng import cli
from ntng.training import calibration as cal
from ntng.training import rst


def test_fit_is_exact_on_linear_data_and_monotone_on_noise():
    counts = [1, 2, 3, 4]
    fitted, fit = cal.monotone_fit(counts, [0.03, 0.05, 0.07, 0.09])
    assert fitted == pytest.approx([0.03, 0.05, 0.07, 0.09]) and fit["b"] == pytest.approx(0.02)
    noisy, fit = cal.monotone_fit(counts, [0.05, 0.04, 0.045, 0.041])  # no per-layer signal at all
    assert fit["rule"].startswith("running maximum") and noisy == [0.05, 0.05, 0.05, 0.05]


def test_time_rounds_reports_median_and_spread():
    calls = []
    stats = cal.time_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                            device=cal.pick_device(), repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # interleaved: one of each per round, warm-up round first
    assert set(stats) == {"a", "b"} and all(s["min"] <= s["median"] <= s["max"] for s in stats.values())


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_calibration_writes_a_valid_table_the_loop_accepts(tmp_path, model, capsys):
    out = tmp_path / f"{model}.json"
    assert cli.main(["calibrate", "--preset", "tiny", "--model", model, "--out", str(out), "--repeats", "2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    raw = json.loads(out.read_text())
    table = rst.load_table(out)
    layers = 4
    assert table.num_layers == layers and table.model == model
    assert list(table.train) == sorted(table.train) and all(v > 0 for v in table.train)
    assert list(table.forward) == sorted(table.forward) and all(v > 0 for v in table.forward)
    medians = [raw["measured"]["train"][str(n)]["median"] for n in range(1, layers + 1)]
    fitted, _ = cal.monotone_fit(list(range(1, layers + 1)), medians)  # the table charges the fit of its medians
    assert list(table.train) == pytest.approx([float(f"{v:.6g}") for v in fitted], rel=1e-9)
    assert set(raw["measured"]["train"]) == {str(n) for n in range(1, layers + 1)}
    assert raw["micro_batch"]["sequences"] == 16 and raw["machine"] and raw["precision"] in ("float32", "bfloat16")
    assert table.optimizer_seconds("adamw") > 0


def test_calibrate_refuses_an_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["calibrate", "--preset", "tiny", "--model", "bert", "--out", str(blocker / "t.json")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_calibrate_notebook_runs_under_papermill(tmp_path):
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "calibrate.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(notebook), str(tmp_path / "out.ipynb"),
                           "-p", "preset", "tiny", "-p", "model", "t5", "-p", "out", str(tmp_path / "t5.json"),
                           "-p", "repeats", "1", "--kernel", "python3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert rst.load_table(tmp_path / "t5.json").model == "t5"
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    assert any("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
