"""What the loop's tests share: a short run at preset `tiny` on the fixture data, a shipped RST table with the
optimizer step prices a test sets, and a run's metrics rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ntng.training import loop, rst


def priced_table(tmp_path: Path, model: str, step_prices: dict[str, float], name: str) -> Path:
    """The shipped smoke table of `model` with `step_prices` (optimizer -> RST s per step) added: a shipped table may
    lack a new optimizer's step, and distinct prices show in the breakdown which one was charged."""
    raw = json.loads(rst.shipped_table_path("smoke", model).read_text())
    raw["units"]["optimizer"].update(step_prices)
    raw["name"] = f"smoke-{model}-{name}"
    path = tmp_path / f"{model}-table.json"
    path.write_text(json.dumps(raw))
    return path


def pretrain_tiny(built, tmp_path: Path, name: str = "run", **kwargs) -> dict:
    """`ntng.pretrain` at preset `tiny` on the fixture data (`built`: the built_fixture), quietly, into
    tmp_path/name; kwargs override the defaults (BERT baseline, 3 s of RST, seed 0)."""
    data_dir, _ = built
    options = {"model": "bert", "method": "baseline", "budget": "3s", "preset": "tiny", "seed": 0,
               "out_dir": tmp_path / name, "data_dir": data_dir, "log": lambda m: None}
    options.update(kwargs)
    return loop.pretrain(**options)


def metrics(run_dir: Path) -> list[dict]:
    """metrics.csv of a run, one dict per row."""
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))
