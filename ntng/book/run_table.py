"""The run records of a sweep as DataFrames (no training, no torch).

`load_runs(results, preset)` walks `results/<preset>/<model>/<method>/<budget>/seed<k>/` and returns a `RunTable`:
one row per run directory whose records can be read (whatever its status: diverged and failed runs stay in, marked
as such), its evaluation curve, its metrics, its fine-tuning results, and the list of directories whose records
cannot be read, each with the file and the reason. A damaged record never raises here: the book lists it.

What a method is (label, family, the survey's component and action) is what its records say (config.json
`method_meta`, written by the method itself): the book can show a method this checkout cannot import.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ntng.presets import format_budget
from ntng.training.records import METRIC_COLUMNS, Unreadable, read_metrics_checked
from ntng.training.variants import base_method, describe

KEYS = ["model", "method", "budget", "budget_rst_s", "seed"]
RST_PARTS = ("train", "scoring", "hessian", "optimizer")

# The book's chapters by family, in the study's order; a family the records name but this does not know is a chapter
# of its own under "Other methods". What a method is (label, family, survey component and action) is read from the
# records' config.json `method_meta`, written by the method itself (ntng.methods.base.Method.meta).
FAMILY_NAMES = {"dynamic": "dynamic architectures", "selection": "batch selection",
                "optimizers": "efficient optimizers"}
OTHER_METHODS = "Other methods"
# what the records loaded last say about each method (run name -> method_meta); filled by `load_runs`
METHOD_META: dict[str, dict] = {}


def method_meta(method: str) -> dict:
    """What the records say about a method (or the method a variant varies); {} when they say nothing."""
    return METHOD_META.get(method) or METHOD_META.get(base_method(method)) or {}


def family_of(method: str) -> str | None:
    """The family of a method or of a variant of it (`sophia+free_hessian` is an efficient optimizer)."""
    return method_meta(method).get("family") or None


def family_name(family: str) -> str:
    return FAMILY_NAMES.get(family, f"{OTHER_METHODS}: {family.replace('_', ' ')}")


def label(method: str) -> str:
    """A method's label; a variant's adds its settings: 'selective backprop (free scoring)'."""
    base = base_method(method)
    settings = describe(method) if method != base else ""
    return (method_meta(base).get("label") or base.replace("_", " ")) + (f" ({settings})" if settings else "")


def method_order(method: str) -> tuple:
    """Sort key: the built-in methods in the registry's order (the study's first, in its order), then others by
    name; a variant after its method."""
    from ntng.methods import BUILTINS  # the registry (and torch) load on the first sort, not on import

    order = list(BUILTINS)
    base = base_method(method)
    return (order.index(base) if base in order else len(order), base, method != base, method)


def families_present(table) -> list[str]:
    """The families of the methods in the records: the study's first, in its order, then the others by name."""
    found = {family_of(m) for m in (set(table.runs["method"]) if len(table.runs) else ())} - {None}
    known = [f for f in FAMILY_NAMES if f in found]
    return known + sorted(found - set(FAMILY_NAMES))


def family_methods(table, family: str) -> list[str]:
    """A family's methods and their variants, as the records name them, in `method_order`."""
    present = set(table.runs["method"]) if len(table.runs) else set()
    return sorted((m for m in present if family_of(m) == family), key=method_order)



def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise Unreadable(path.name, "missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Unreadable(path.name, f"invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise Unreadable(path.name, "not a JSON object")
    return obj


def _flatten(prefix: str, obj, out: dict) -> None:
    """Scalar values of nested dicts as prefix.key columns (lists are left out: they are not table cells)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), value, out)
    elif isinstance(obj, (bool, int, float, str)) or obj is None:
        out[prefix] = obj


def finite(value) -> float:
    """A record's number as a float; NaN for a missing, non-numeric or non-finite value."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def read_run(run_dir: Path) -> tuple[dict, list[dict], pd.DataFrame]:
    """(row, evals, metrics) of one run directory; raises Unreadable naming the first damaged file."""
    config = _read_json(run_dir / "config.json")
    summary = _read_json(run_dir / "summary.json")
    for key in ("model", "method", "budget_rst_s", "seed"):
        if key not in config:
            raise Unreadable("config.json", f"no {key!r}")
    status = summary.get("status")
    if status not in ("running", "complete", "diverged", "failed"):
        raise Unreadable("summary.json", f"unknown status {status!r}")
    evals = summary.get("evals")
    if not isinstance(evals, list) or not all(isinstance(e, dict) and "rst_s" in e and "val_loss" in e for e in evals):
        raise Unreadable("summary.json", "evals is not a list of {rst_s, val_loss}")
    metrics = read_metrics_checked(run_dir / "metrics.csv", summary.get("steps") if status == "complete" else None)
    budget_s = float(config["budget_rst_s"])
    # a variant (ntng.training.variants) is reported as a method of its own, beside the method it varies
    row = {"model": config["model"], "method": config.get("variant") or config["method"],
           "base_method": config["method"], "budget": format_budget(budget_s),
           "budget_rst_s": budget_s, "seed": int(config["seed"]), "status": status,
           "family": (config.get("method_meta") or {}).get("family") or None,
           "rst_s": finite(summary.get("rst_s")),
           "wall_s": finite(summary.get("wall_s")), "steps": summary.get("steps"), "tokens": summary.get("tokens"),
           "final_val_loss": finite(summary.get("final_val_loss")) if status == "complete" else math.nan,
           "error": summary.get("error") or "", "rst_table": (config.get("rst_table") or {}).get("name", ""),
           # the floor on exactly the targets evaluated (ntng.training.evaluation); records made before it had one: the
           # packing's floor over the whole split
           "floor": finite((config.get("evaluation") or {}).get("floor", (config.get("data") or {}).get("floor"))),
           "free_scoring": bool(config.get("free_scoring")), "free_hessian": bool(config.get("free_hessian")),
           "method_card": config.get("method_card") or "", "method_meta": config.get("method_meta") or {},
           "run_dir": str(run_dir),
           "has_notebook": (run_dir / "notebook.ipynb").is_file(),
           "data_split": summary.get("data_split") or config.get("data_split") or "full"}
    il_model = summary.get("il_model")  # RHO-LOSS: its IL model's own cost, reported apart from the budget
    row["il_rst_s"] = (finite(il_model.get("rst_s")) + finite(il_model.get("scoring_rst_s", 0.0))
                       if isinstance(il_model, dict) else math.nan)
    breakdown = summary.get("rst_breakdown") or {}
    for part in RST_PARTS:
        row[f"rst_{part}"] = finite(breakdown.get(part, 0.0))
    stats: dict = {}
    _flatten("", summary.get("method_stats") or {}, stats)
    row.update({f"stat.{k}": v for k, v in stats.items()})
    # optimizer steps the run's table does not price, charged at an estimated price (ntng.training.pricing)
    estimates: dict = {}
    _flatten("", summary.get("rst_estimates") or {}, estimates)
    row.update({f"estimate.{k}": v for k, v in estimates.items()})
    curve = [{**{k: row[k] for k in KEYS}, "status": status, "rst_s": finite(e["rst_s"]),
              "val_loss": finite(e["val_loss"])} for e in evals]
    return row, curve, metrics


def _read_finetune(run_dir: Path, keys: dict) -> tuple[list[dict], list[tuple[str, str, str]]]:
    rows, bad = [], []
    folder = run_dir / "finetune"
    if not folder.is_dir():
        return rows, bad
    for path in sorted(folder.glob("*.json")):
        name = f"finetune/{path.name}"
        try:
            obj = _read_json(path)
            floor = obj.get("floor") or {}
            rows.append({**keys, "task": obj["task"], "suite": obj.get("suite", ""), "metric": obj["metric"],
                         "best_dev_score": finite(obj["best_dev_score"]), "best_epoch": obj.get("best_epoch"),
                         "floor_score": finite(floor.get("best_dev_score")) if isinstance(floor, dict) else math.nan,
                         "epochs": len(obj.get("epochs") or []), "wall_s": finite(obj.get("wall_s"))})
        except Unreadable as exc:
            bad.append((str(run_dir), name, exc.reason))
        except (KeyError, TypeError) as exc:
            bad.append((str(run_dir), name, f"no field {exc}"))
    return rows, bad


def _run_dirs(root: Path) -> list[Path]:
    """Directories at <model>/<method>/<budget>/seed<k> under the preset's results folder."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/*/*/seed*") if p.is_dir())


@dataclass
class RunTable:
    results: Path
    preset: str
    runs: pd.DataFrame  # one row per readable run directory
    evals: pd.DataFrame  # KEYS + status, rst_s, val_loss: every evaluation of every readable run
    finetune: pd.DataFrame  # KEYS + task, metric, best_dev_score, floor_score...
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # (run_dir, file, reason)
    _metrics: dict = field(default_factory=dict, repr=False)

    @property
    def root(self) -> Path:
        return Path(self.results) / self.preset

    @property
    def complete(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "complete"] if len(self.runs) else self.runs

    def metrics(self, methods=None) -> pd.DataFrame:
        """metrics.csv of the readable runs (of `methods`, if given) in one long frame with the run keys."""
        frames = []
        for _, run in self.runs.iterrows():
            if methods is not None and run["method"] not in methods:
                continue
            frame = self._metrics[run["run_dir"]].copy()
            for key in (*KEYS, "status"):
                frame[key] = run[key]
            frame["budget_fraction"] = frame["rst_s"] / run["budget_rst_s"]
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*METRIC_COLUMNS, *KEYS])

    def unreadable_frame(self) -> pd.DataFrame:
        root = Path(self.results)
        rows = [{"run": _relative(d, root), "file": f, "reason": r} for d, f, r in self.unreadable]
        return pd.DataFrame(rows, columns=["run", "file", "reason"])

    def not_complete(self) -> pd.DataFrame:
        if self.runs.empty:
            return pd.DataFrame(columns=[*KEYS, "status", "error"])
        out = self.runs[self.runs["status"] != "complete"][[*KEYS, "status", "error"]]
        return sort_frame(out).reset_index(drop=True)

    def methods_present(self, methods=None) -> list[str]:
        present = set(self.runs["method"]) if len(self.runs) else set()
        return sorted((m for m in present if methods is None or m in methods), key=method_order)


def _relative(path: str | Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def sort_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in the study's order: model, method (`method_order`), budget, seed."""
    if frame.empty:
        return frame
    cols = [c for c in ("model", "method", "budget_rst_s", "seed", "task") if c in frame.columns]
    order = {m: i for i, m in enumerate(sorted(set(frame["method"]), key=method_order))} if "method" in cols else {}
    return frame.sort_values(cols, key=lambda s: s.map(order) if s.name == "method" else s, kind="stable")


def load_runs(results: str | Path = "results", preset: str = "smoke") -> RunTable:
    """Every run directory of `results/<preset>/`; damaged ones go to `unreadable`, never raise."""
    results = Path(results)
    rows, curves, finetune, bad, metrics = [], [], [], [], {}
    for run_dir in _run_dirs(results / preset):
        try:
            row, curve, frame = read_run(run_dir)
        except Unreadable as exc:
            bad.append((str(run_dir), exc.file, exc.reason))
            continue
        rows.append(row)
        if row["method_meta"]:
            METHOD_META[row["base_method"]] = row["method_meta"]
        curves.extend(curve)
        metrics[row["run_dir"]] = frame
        ft_rows, ft_bad = _read_finetune(run_dir, {k: row[k] for k in KEYS})
        finetune.extend(ft_rows)
        bad.extend(ft_bad)
    runs = sort_frame(pd.DataFrame(rows, columns=None if rows else [*KEYS, "status", "final_val_loss", "run_dir"]))
    evals = pd.DataFrame(curves, columns=[*KEYS, "status", "rst_s", "val_loss"])
    ft = pd.DataFrame(finetune, columns=[*KEYS, "task", "suite", "metric", "best_dev_score", "best_epoch",
                                         "floor_score", "epochs", "wall_s"])
    return RunTable(results=results, preset=preset, runs=runs.reset_index(drop=True), evals=evals,
                    finetune=sort_frame(ft).reset_index(drop=True), unreadable=bad, _metrics=metrics)


def load_book_runs() -> RunTable:
    """The records the book is built from: $NTNG_BOOK_RESULTS / $NTNG_BOOK_PRESET (set by `ntng book`)."""
    return load_runs(os.environ.get("NTNG_BOOK_RESULTS", "results"), os.environ.get("NTNG_BOOK_PRESET", "smoke"))
