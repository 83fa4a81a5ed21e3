"""Reading the run records of a sweep and aggregating them for the book (no training, no torch).

`load_runs(results, preset)` walks `results/<preset>/<model>/<method>/<budget>/seed<k>/` and returns a `RunTable`:
one row per run directory whose records can be read (whatever its status: diverged and failed runs stay in, marked
as such), its evaluation curve, its metrics, its fine-tuning results, and the list of directories whose records
cannot be read, each with the file and the reason. A damaged record never raises here: the book lists it.

The aggregations are pure functions of those DataFrames:
- `final_loss_table`: final validation loss per model x method x budget, mean and a 95% t-interval over seeds;
- `difference_to_baseline`: method minus baseline, paired by seed (same model, budget, seed);
- `time_to_target`: how much RST the baseline needs to reach a method's final loss (see `rst_to_reach`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ntng.errors import UsageError
from ntng.presets import format_budget, get_preset
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

# two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30; beyond that a Cornish-Fisher expansion
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


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


def t_quantile_975(df: int) -> float:
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the mean and its 95% t-interval over the finite values (NaN bounds for n < 2)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan, math.nan, 1
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half, n


# --- reading -------------------------------------------------------------------------------------------------

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


def _finite(value) -> float:
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
           "rst_s": _finite(summary.get("rst_s")),
           "wall_s": _finite(summary.get("wall_s")), "steps": summary.get("steps"), "tokens": summary.get("tokens"),
           "final_val_loss": _finite(summary.get("final_val_loss")) if status == "complete" else math.nan,
           "error": summary.get("error") or "", "rst_table": (config.get("rst_table") or {}).get("name", ""),
           # the floor on exactly the targets evaluated (ntng.training.evaluation); records made before it had one: the
           # packing's floor over the whole split
           "floor": _finite((config.get("evaluation") or {}).get("floor", (config.get("data") or {}).get("floor"))),
           "free_scoring": bool(config.get("free_scoring")), "free_hessian": bool(config.get("free_hessian")),
           "method_card": config.get("method_card") or "", "method_meta": config.get("method_meta") or {},
           "run_dir": str(run_dir),
           "has_notebook": (run_dir / "notebook.ipynb").is_file(),
           "data_split": summary.get("data_split") or config.get("data_split") or "full"}
    il_model = summary.get("il_model")  # RHO-LOSS: its IL model's own cost, reported apart from the budget
    row["il_rst_s"] = (_finite(il_model.get("rst_s")) + _finite(il_model.get("scoring_rst_s", 0.0))
                       if isinstance(il_model, dict) else math.nan)
    breakdown = summary.get("rst_breakdown") or {}
    for part in RST_PARTS:
        row[f"rst_{part}"] = _finite(breakdown.get(part, 0.0))
    stats: dict = {}
    _flatten("", summary.get("method_stats") or {}, stats)
    row.update({f"stat.{k}": v for k, v in stats.items()})
    curve = [{**{k: row[k] for k in KEYS}, "status": status, "rst_s": _finite(e["rst_s"]),
              "val_loss": _finite(e["val_loss"])} for e in evals]
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
                         "best_dev_score": _finite(obj["best_dev_score"]), "best_epoch": obj.get("best_epoch"),
                         "floor_score": _finite(floor.get("best_dev_score")) if isinstance(floor, dict) else math.nan,
                         "epochs": len(obj.get("epochs") or []), "wall_s": _finite(obj.get("wall_s"))})
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


# --- aggregation -------------------------------------------------------------------------------------------

def final_loss_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model x method x budget: runs, complete runs, other statuses, and the final validation loss of the
    complete runs (mean and 95% t-interval over seeds)."""
    cols = ["model", "method", "budget", "budget_rst_s", "runs", "complete", "not_complete", "mean", "ci_low",
            "ci_high"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for (model, method, budget_s), group in runs.groupby(["model", "method", "budget_rst_s"], sort=False):
        done = group[group["status"] == "complete"]
        mean, low, high, _ = mean_ci(done["final_val_loss"])
        others = group[group["status"] != "complete"]["status"].value_counts()
        out.append({"model": model, "method": method, "budget": format_budget(budget_s), "budget_rst_s": budget_s,
                    "runs": len(group), "complete": len(done),
                    "not_complete": ", ".join(f"{n} {s}" for s, n in sorted(others.items())),
                    "mean": mean, "ci_low": low, "ci_high": high})
    return sort_frame(pd.DataFrame(out, columns=cols)).reset_index(drop=True)


def paired_differences(runs: pd.DataFrame) -> pd.DataFrame:
    """Per complete non-baseline run: its final loss minus the final loss of the complete baseline run with the
    same model, budget and seed (negative: the method is better). Runs without such a baseline are left out."""
    cols = [*KEYS, "val_loss", "baseline_val_loss", "difference"]
    done = runs[runs["status"] == "complete"] if not runs.empty else runs
    if done.empty:
        return pd.DataFrame(columns=cols)
    base = done[done["method"] == "baseline"].set_index(["model", "budget_rst_s", "seed"])["final_val_loss"]
    rows = []
    for _, run in done[done["method"] != "baseline"].iterrows():
        key = (run["model"], run["budget_rst_s"], run["seed"])
        if key in base.index:
            b = float(base.loc[key])
            rows.append({**{k: run[k] for k in KEYS}, "val_loss": run["final_val_loss"], "baseline_val_loss": b,
                         "difference": run["final_val_loss"] - b})
    return sort_frame(pd.DataFrame(rows, columns=cols)).reset_index(drop=True)


def difference_to_baseline(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model x method x budget: mean paired difference to the baseline with its 95% t-interval over seeds,
    and a verdict: 'better' / 'worse' when the interval excludes 0, 'no clear difference' when it contains 0,
    'one seed' when there is no interval."""
    cols = ["model", "method", "budget", "budget_rst_s", "seeds", "mean", "ci_low", "ci_high", "verdict"]
    pairs = paired_differences(runs)
    if pairs.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for (model, method, budget_s), group in pairs.groupby(["model", "method", "budget_rst_s"], sort=False):
        mean, low, high, n = mean_ci(group["difference"])
        out.append({"model": model, "method": method, "budget": format_budget(budget_s), "budget_rst_s": budget_s,
                    "seeds": n, "mean": mean, "ci_low": low, "ci_high": high, "verdict": verdict(mean, low, high, n)})
    return sort_frame(pd.DataFrame(out, columns=cols)).reset_index(drop=True)


def verdict(mean: float, low: float, high: float, n: int) -> str:
    if n < 2:
        return "one seed: " + ("lower loss" if mean < 0 else "higher loss" if mean > 0 else "equal")
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "no clear difference"


def rst_to_reach(curve_rst, curve_loss, target: float) -> float:
    """The RST at which a validation curve first reaches `target` (loss <= target), reading the curve as straight
    lines between its evaluations (sorted by RST). NaN if it never does. A curve that starts at or below the target
    reaches it at its first point."""
    points = sorted((float(r), float(v)) for r, v in zip(curve_rst, curve_loss, strict=True)
                    if math.isfinite(float(r)) and math.isfinite(float(v)))
    if not points or not math.isfinite(target):
        return math.nan
    if points[0][1] <= target:
        return points[0][0]
    for (r0, v0), (r1, v1) in zip(points, points[1:], strict=False):
        if v1 <= target:  # v0 > target >= v1: the crossing lies on this segment
            return r0 + (v0 - target) / (v0 - v1) * (r1 - r0)
    return math.nan


def time_to_target(runs: pd.DataFrame, evals: pd.DataFrame) -> pd.DataFrame:
    """AlgoPerf-style speed-up of each complete non-baseline run. Target: the run's final validation loss. The
    baseline run of the same model, budget and seed is read as a curve (its evaluations, straight lines between
    them); `baseline_rst` is the RST at which that curve first reaches the target (`rst_to_reach`), and
    speedup = baseline_rst / the run's own RST. speedup > 1: the baseline needs more RST than the method to reach
    the method's loss. When the baseline's curve never gets that low, `reached` is False, `speedup` is NaN and
    `speedup_at_least` = baseline's total RST / the run's RST, a lower bound."""
    cols = [*KEYS, "target", "rst_s", "baseline_rst", "reached", "speedup", "speedup_at_least"]
    done = runs[runs["status"] == "complete"] if not runs.empty else runs
    if done.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for _, run in done[done["method"] != "baseline"].iterrows():
        match = done[(done["method"] == "baseline") & (done["model"] == run["model"])
                     & (done["budget_rst_s"] == run["budget_rst_s"]) & (done["seed"] == run["seed"])]
        if match.empty:
            continue
        base = match.iloc[0]
        curve = evals[(evals["method"] == "baseline") & (evals["model"] == run["model"])
                      & (evals["budget_rst_s"] == run["budget_rst_s"]) & (evals["seed"] == run["seed"])]
        t = rst_to_reach(curve["rst_s"], curve["val_loss"], run["final_val_loss"])
        reached = math.isfinite(t)
        own = run["rst_s"] if run["rst_s"] > 0 else math.nan
        rows.append({**{k: run[k] for k in KEYS}, "target": run["final_val_loss"], "rst_s": run["rst_s"],
                     "baseline_rst": t, "reached": reached, "speedup": t / own if reached else math.nan,
                     "speedup_at_least": math.nan if reached else base["rst_s"] / own})
    return sort_frame(pd.DataFrame(rows, columns=cols)).reset_index(drop=True)


def wall_per_rst(runs: pd.DataFrame) -> pd.DataFrame:
    """Wall seconds per RST second, per model x method (mean over its runs with RST > 0): how much slower (> 1) or
    faster this machine ran the work than the reference table charges, method by method."""
    cols = ["model", "method", "runs", "wall_per_rst"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    ok = runs[(runs["rst_s"] > 0) & runs["wall_s"].notna()]
    out = [{"model": m, "method": meth, "runs": len(g), "wall_per_rst": float((g["wall_s"] / g["rst_s"]).mean())}
           for (m, meth), g in ok.groupby(["model", "method"], sort=False)]
    return sort_frame(pd.DataFrame(out, columns=cols)).reset_index(drop=True)


def finetune_table(finetune: pd.DataFrame) -> pd.DataFrame:
    """Per model x task x method x budget: best dev score (mean and 95% t-interval over seeds) and the floor."""
    cols = ["model", "task", "metric", "method", "budget", "budget_rst_s", "seeds", "mean", "ci_low", "ci_high",
            "floor"]
    if finetune.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for (model, task, method, budget_s), g in finetune.groupby(["model", "task", "method", "budget_rst_s"],
                                                                sort=False):
        mean, low, high, n = mean_ci(g["best_dev_score"])
        out.append({"model": model, "task": task, "metric": g["metric"].iloc[0], "method": method,
                    "budget": format_budget(budget_s), "budget_rst_s": budget_s, "seeds": n, "mean": mean,
                    "ci_low": low, "ci_high": high, "floor": float(g["floor_score"].mean())})
    return sort_frame(pd.DataFrame(out, columns=cols)).reset_index(drop=True)


# --- RST tables ------------------------------------------------------------------------------------------

def calibration_dir(results: str | Path, preset: str) -> Path:
    """Where `ntng book` keeps the tables it measured on this machine (`ntng calibrate` output)."""
    return Path(results) / preset / "calibration"


def rst_tables(preset_name: str, results: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Seconds per unit of work by active layers, long form (table, source, model, unit, active_layers, seconds),
    for the shipped tables of the preset (and the paper's) and this machine's tables under `calibration_dir`;
    plus a list of tables that could not be read (file: reason)."""
    from ntng.errors import NtngError
    from ntng.training.rst import load_table, shipped_table_path

    rows, problems = [], []
    try:
        rst_preset = get_preset(preset_name).rst_preset
    except NtngError:
        rst_preset = preset_name
    sources = []
    for preset in dict.fromkeys((rst_preset, "paper")):
        for model in ("bert", "t5"):
            sources.append(("shipped", shipped_table_path(preset, model)))
    if results is not None:
        folder = calibration_dir(results, preset_name)
        sources += [("this machine", p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    for source, path in sources:
        try:
            table = load_table(path)
        except NtngError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        for unit in ("train", "forward"):
            for layers, seconds in enumerate(getattr(table, unit), start=1):
                rows.append({"table": table.name, "source": source, "model": table.model, "preset": table.preset,
                             "unit": unit, "active_layers": layers, "seconds": seconds,
                             "machine": table.machine, "file": path.name})
    return pd.DataFrame(rows, columns=["table", "source", "model", "preset", "unit", "active_layers", "seconds",
                                       "machine", "file"]), problems


# --- text for the pages ------------------------------------------------------------------------------------

def fmt(value, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def fmt_ci(mean, low, high, digits: int = 3, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if not math.isfinite(float(mean)):
        return "-"
    text = f"{float(mean):{sign}.{digits}f}"
    if math.isfinite(float(low)) and math.isfinite(float(high)):
        text += f" [{float(low):{sign}.{digits}f}, {float(high):{sign}.{digits}f}]"
    return text


# Where a line must not break inside a number: between a number and its interval ("6.125 [6.100, 6.150]"), inside
# the interval, and after a budget's colon ("2m: -0.012"). Text around them still wraps.
_NUMBER_SPACES = re.compile(r"(?<=\d) (?=\[)|(?<=,) (?=[-+\u2212]?\d)|(?<=:) (?=[-+\u2212]?\d)")


def keep_numbers_whole(text: str) -> str:
    """`text` with the spaces inside each number and its interval made non-breaking (a table never wraps a
    number over two lines)."""
    return _NUMBER_SPACES.sub("\u00a0", text)


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table (cells escaped, numbers kept whole): the pages print these as generated Markdown."""
    if frame.empty:
        return ""
    def cell(v):
        return keep_numbers_whole(str(v).replace("|", "\\|").replace("\n", " "))
    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def floors(runs: pd.DataFrame) -> dict[str, float]:
    """model -> the context-free loss floor its runs recorded (ntng.data.floors; config.json data.floor)."""
    if runs.empty or "floor" not in runs.columns:
        return {}
    known = runs.dropna(subset=["floor"])
    return {m: float(g["floor"].iloc[0]) for m, g in known.groupby("model")}


def results_table(table: RunTable, methods=None) -> pd.DataFrame:
    """The book's result table: per model x method x budget, final validation loss (mean [95% CI], complete runs
    of all runs), the paired difference to the baseline and its verdict, the time-to-target speed-up."""
    runs = table.runs if methods is None else table.runs[table.runs["method"].isin(["baseline", *methods])]
    finals = final_loss_table(runs)
    if finals.empty:
        return pd.DataFrame()
    diffs = difference_to_baseline(runs).set_index(["model", "method", "budget_rst_s"])
    speed = time_to_target(runs, table.evals)
    floor_of = floors(table.runs)  # nats below the context-free floor: what the runs learned beyond frequencies
    out = []
    for _, row in finals.iterrows():
        if methods is not None and row["method"] not in methods and row["method"] != "baseline":
            continue
        key = (row["model"], row["method"], row["budget_rst_s"])
        d = diffs.loc[key] if key in diffs.index else None
        s = speed[(speed["model"] == row["model"]) & (speed["method"] == row["method"])
                  & (speed["budget_rst_s"] == row["budget_rst_s"])]
        runs_text = f"{row['complete']}/{row['runs']}" + (f" ({row['not_complete']})" if row["not_complete"] else "")
        floor = floor_of.get(row["model"], math.nan)
        out.append({"model": row["model"], "method": label(row["method"]),
                    "budget": row["budget"], "complete/runs": runs_text,
                    "final val loss [95% CI]": fmt_ci(row["mean"], row["ci_low"], row["ci_high"]),
                    "below floor": fmt(floor - row["mean"]),
                    "vs baseline [95% CI]": "-" if row["method"] == "baseline" or d is None
                    else fmt_ci(d["mean"], d["ci_low"], d["ci_high"], signed=True),
                    "verdict": "" if row["method"] == "baseline" or d is None else d["verdict"],
                    "speed-up": "" if row["method"] == "baseline" else speedup_text(s)})
    return pd.DataFrame(out)


def speedup_text(speed: pd.DataFrame) -> str:
    if speed.empty:
        return "-"
    reached = speed[speed["reached"]]
    parts = []
    if len(reached):
        parts.append(f"{reached['speedup'].mean():.2f}x")
    if len(reached) < len(speed):
        bound = speed[~speed["reached"]]["speedup_at_least"].min()
        parts.append(f"{len(speed) - len(reached)} seed(s) > {bound:.2f}x")
    return "; ".join(parts)


def _difference_words(row) -> str:
    """One budget's paired difference to the baseline in words, with its 95% interval."""
    mean, low, high, n = row["mean"], row["ci_low"], row["ci_high"], row["seeds"]
    if n < 2:
        return f"at {row['budget']} {mean:+.3f} (one seed)"
    if high < 0:
        return f"at {row['budget']} it ends {-mean:.3f} ({-high:.3f} to {-low:.3f}) nats below the baseline"
    if low > 0:
        return f"at {row['budget']} {mean:.3f} ({low:.3f} to {high:.3f}) nats above it"
    return f"at {row['budget']} the difference is {mean:+.3f} ({low:+.3f} to {high:+.3f}), within noise"


def trend_sentences(table: RunTable, methods, exclude_seeds=()) -> list[str]:
    """One generated sentence per model x method: its final validation loss against the baseline's at each budget
    (paired by seed, mean and 95% interval over the seeds not in `exclude_seeds`), and whether the gap narrows as
    the budget grows."""
    runs = table.runs[~table.runs["seed"].isin(list(exclude_seeds))] if len(table.runs) else table.runs
    diffs = difference_to_baseline(runs)
    out = []
    for (model, method), g in diffs[diffs["method"].isin(methods)].groupby(["model", "method"], sort=False):
        g = g.sort_values("budget_rst_s")
        steps = "; ".join(_difference_words(r) for _, r in g.iterrows())
        first, last = g.iloc[0]["mean"], g.iloc[-1]["mean"]
        trend = ""
        if len(g) > 1:
            narrows = abs(last) < abs(first)
            trend = (f" The gap {'narrows' if narrows else 'does not narrow'} from {abs(first):.3f} to "
                     f"{abs(last):.3f} nats as the budget grows {g.iloc[-1]['budget_rst_s'] / g.iloc[0]['budget_rst_s']:g}x.")
        seeds = "-".join(map(str, sorted({int(g["seeds"].min()), int(g["seeds"].max())})))
        out.append(f"**{label(method)}, {model}** ({seeds} seeds; 95% intervals): {steps}.{trend}")
    return out


def taxonomy_table(table: RunTable) -> pd.DataFrame:
    """The methods in the records (not their variants), as they describe themselves: family, the survey's component
    and action, what they do, and how many runs each has here."""
    counts = table.runs["method"].value_counts() if len(table.runs) else pd.Series(dtype=int)
    bad = pd.Series([Path(d).parts[-3] for d, f, _ in table.unreadable if not f.startswith("finetune/")],
                    dtype=object).value_counts()
    rows = []
    methods = sorted({base_method(m) for m in counts.index}, key=method_order)
    for method in methods:
        meta = method_meta(method)
        runs = int(counts.get(method, 0))
        rows.append({"family": family_name(meta["family"]) if meta.get("family") else "baseline",
                     "method": label(method), "component": meta.get("component", "-"),
                     "action": meta.get("action", "-"), "what it does": meta.get("summary", ""),
                     "runs here": f"{runs}" + (f" (+{int(bad[method])} unreadable)" if method in bad.index else "")})
    return pd.DataFrame(rows)


def overview_text(table: RunTable) -> str:
    """Generated: which results these are (preset, folder, models, budgets, seeds)."""
    where = f"`{table.root}`"
    if table.runs.empty:
        return (f"There are no readable runs under {where} yet: run `ntng sweep --preset {table.preset} "
                f"--results {table.results}` (or `ntng book`, which runs the grid when it is missing).")
    budgets = sorted(set(table.runs["budget_rst_s"]))
    seeds = sorted(set(table.runs["seed"]))
    return (f"These results are preset `{table.preset}`, read from {where}: models "
            f"{', '.join(sorted(set(table.runs['model'])))}; budgets "
            f"{', '.join(format_budget(b) for b in budgets)} of RST; seeds {', '.join(map(str, seeds))}.")


def records_html(table: RunTable, methods=None) -> str:
    """Runs that are not complete (with their recorded error) and run directories whose records cannot be read,
    as HTML inside `div.ntng-record` (the place where recorded failures are meant to be shown)."""
    parts = []
    other = table.not_complete()
    if methods is not None:
        other = other[other["method"].isin(methods)]
    if len(other):
        frame = other.assign(budget=other["budget"], error=other["error"].fillna(""))[
            ["model", "method", "budget", "seed", "status", "error"]]
        parts.append(f"<p>{len(frame)} run(s) did not complete; they are counted in the tables above but have no "
                     "final loss:</p>" + frame.to_html(index=False, border=0, classes="ntng-not-complete"))
    else:
        parts.append("<p>Every readable run completed.</p>")
    bad = table.unreadable_frame()
    if methods is not None and len(bad):
        bad = bad[[Path(r).parts[1] in methods if len(Path(r).parts) > 1 else False for r in bad["run"]]]
    if len(bad):
        parts.append(f"<p>{len(bad)} record(s) could not be read and are left out of every table and figure "
                     f"(paths under {table.results}):</p>" + bad.to_html(index=False, border=0,
                                                                            classes="ntng-unreadable"))
    elif methods is None:
        parts.append("<p>Every record could be read.</p>")
    return '<div class="ntng-record">' + "".join(parts) + "</div>"


def family_overview(table: RunTable, family: str) -> str:
    """Generated opening of a family chapter: what ran, or plainly that nothing did; the methods' cards."""
    methods = family_methods(table, family)
    if not methods:
        return (f"**No runs of {family_name(family)} under `{table.root}`**, so this chapter has no results. Run "
                f"them with `ntng sweep --preset {table.preset} --results {table.results}`.")
    lines = []
    for method in methods:
        runs = table.runs[table.runs["method"] == method]
        status = ", ".join(f"{n} {s}" for s, n in sorted(runs["status"].value_counts().items()))
        lines.append(f"- **{label(method)}**: {len(runs)} runs ({status}) over "
                     f"{', '.join(sorted(set(runs['model'])))} at budgets "
                     f"{', '.join(format_budget(b) for b in sorted(set(runs['budget_rst_s'])))}.")
    if "baseline" not in set(table.runs.get("method", [])):
        lines.append(f"- **baseline**: no runs under `{table.root}`: nothing to compare with.")
    cards = []
    for method in (m for m in methods if m == base_method(m)):  # a variant shares its method's card
        card = next((c for c in table.runs[table.runs["method"] == method]["method_card"] if c), "")
        if card:
            cards.append(f"**{label(method)}** (method card, as recorded in the runs' config.json): "
                         + " ".join(card.split()))
    return "\n".join(lines) + ("\n\n" + "\n\n".join(cards) if cards else "")


def method_stats_text(table: RunTable, methods) -> str:
    """Generated: per method, the mean over seeds of its numeric method_stats and its share of RST spent outside
    plain training (scoring, hessian), per model x budget."""
    out = []
    for method in table.methods_present(methods):
        runs = table.runs[table.runs["method"] == method]
        stat_cols = [c for c in runs.columns if c.startswith("stat.") and c != "stat.mean_active_layers"
                     and pd.api.types.is_numeric_dtype(runs[c]) and runs[c].notna().any()
                     and not pd.api.types.is_bool_dtype(runs[c])]
        rows = []
        for (model, budget_s), g in runs.groupby(["model", "budget_rst_s"], sort=True):
            rst = g["rst_s"].where(g["rst_s"] > 0)
            row = {"model": model, "budget": format_budget(budget_s), "runs": len(g)}
            for part in ("scoring", "hessian"):
                share = (g[f"rst_{part}"] / rst).mean()
                if math.isfinite(share) and share > 0:
                    row[f"RST share {part}"] = f"{100 * share:.1f}%"
            if g["il_rst_s"].notna().any():
                row["IL model RST s (apart from the budget)"] = fmt(g["il_rst_s"].mean(), 4)
            for col in stat_cols:
                row[col[5:]] = fmt(g[col].mean(), 3)
            rows.append(row)
        frame = pd.DataFrame(rows).fillna("-")
        out.append(f"**{label(method)}** (method_stats from summary.json, mean over the runs of each cell):\n\n"
                   + markdown_table(frame))
    return "\n\n".join(out) if out else "*No runs of these methods yet.*"


def downstream_text(table: RunTable, scores: pd.DataFrame) -> str:
    """Generated: the fine-tuning results table, or plainly that there are none."""
    if scores.empty:
        return (f"**No fine-tuning results under `{table.root}`** (no `finetune/<task>.json` in any run "
                f"directory), so this chapter has no results. Fine-tune a run with `ntng finetune --run DIR`.")
    frame = pd.DataFrame({
        "model": scores["model"], "task": scores["task"], "metric": scores["metric"],
        "method": scores["method"].map(lambda m: label(m)), "budget": scores["budget"],
        "seeds": scores["seeds"],
        "best dev score [95% CI]": [fmt_ci(m, lo, hi) for m, lo, hi in
                                    zip(scores["mean"], scores["ci_low"], scores["ci_high"], strict=True)],
        "floor": scores["floor"].map(fmt),
        "above floor": [fmt(m - f) if math.isfinite(f) else "-" for m, f in
                        zip(scores["mean"], scores["floor"], strict=True)]})
    best = []
    for (model, task), g in scores.groupby(["model", "task"], sort=False):
        top = g.loc[g["mean"].idxmax()] if g["mean"].notna().any() else None
        if top is not None:
            best.append(f"{model} / {task}: best mean dev score {fmt(top['mean'])} by "
                        f"{label(top['method'])} at {top['budget']}")
    tuned = sorted(set(scores["budget_rst_s"]))
    trained = sorted(set(table.runs["budget_rst_s"])) if len(table.runs) else tuned
    which = ("" if tuned == trained else
             f"\n\nFine-tuned here: the runs of budget {', '.join(format_budget(b) for b in tuned)} (pre-trained: "
             f"{', '.join(format_budget(b) for b in trained)}); `ntng finetune --run DIR` fine-tunes any other run.")
    return (markdown_table(frame) + ("\n\nHighest mean per task: " + "; ".join(best) + "." if best else "")
            + which)


def rst_tables_text(tables: pd.DataFrame, problems: list[str], table: RunTable) -> str:
    """Generated: each table's full-depth price, and this machine against the preset's shipped table."""
    if tables.empty:
        return "*No RST table could be read.*"
    train = tables[tables["unit"] == "train"]
    full = train.loc[train.groupby("table")["active_layers"].idxmax()]
    frame = pd.DataFrame({"table": full["table"], "source": full["source"], "model": full["model"],
                          "layers": full["active_layers"], "s per micro-batch at full depth":
                          full["seconds"].map(lambda s: f"{s:.4g}"), "machine": full["machine"].str[:60]})
    text = markdown_table(frame.sort_values(["source", "model", "table"]))
    mine = train[train["source"] == "this machine"]
    if mine.empty:
        text += (f"\n\nNo table was measured on this machine for preset `{table.preset}` (none in "
                 f"`{calibration_dir(table.results, table.preset)}`): `ntng book` measures one before the build; "
                 f"`ntng calibrate --preset {table.preset} --model bert --out FILE` measures one by hand.")
    else:
        lines = []
        for name, g in mine.groupby("table"):
            model, preset = g["model"].iloc[0], g["preset"].iloc[0]
            ref = train[(train["source"] == "shipped") & (train["model"] == model) & (train["preset"] == preset)]
            merged = g.merge(ref, on="active_layers", suffixes=("", "_ref"))
            if len(merged):
                ratio = float((merged["seconds"] / merged["seconds_ref"]).mean())
                lines.append(f"{model}: this machine's table `{name}` is {ratio:.2f}x the shipped `{preset}` table "
                             f"(mean ratio over {len(merged)} layer counts; > 1: slower than the reference)")
        if lines:
            text += "\n\n" + "; ".join(lines) + "."
    if problems:
        text += "\n\nTables that could not be read: " + "; ".join(problems) + "."
    return text


def reproduce_text(table: RunTable) -> str:
    """Generated: the exact commands that re-make these results and this book."""
    preset, results = table.preset, table.results
    try:
        spec = get_preset(preset)
        finetuned = " ".join(spec.book_finetune_budgets())
    except UsageError:  # records of a preset this checkout does not define
        finetuned = "BUDGET ..."
    example = table.runs.iloc[0] if len(table.runs) else None
    lines = ["```bash",
             "make book                       # .venv, data, the smoke grid, this book (fresh clone)",
             ".venv/bin/ntng data",
             f".venv/bin/ntng sweep --preset {preset} --results {results}          # the whole grid (skips complete runs)",
             f".venv/bin/ntng sweep --preset {preset} --results {results} --finetune {finetuned}  # as `ntng book` "
             "runs it: fine-tuned where the book shows it",
             f".venv/bin/ntng sweep --preset {preset} --results {results} --executor ray --ray-address auto --jobs 4",
             f".venv/bin/ntng book --preset {preset} --results {results}           # this book"]
    if example is not None:
        run_dir = Path(example["run_dir"])
        lines += ["# one cell of the grid, as the sweep runs it (papermill) and by hand (the same function):",
                  f"papermill notebooks/pretrain.ipynb {run_dir}/notebook.ipynb -p model {example['model']} "
                  f"-p method {example['method']} -p budget {example['budget']} -p preset {preset} "
                  f"-p seed {example['seed']} -p out_dir {run_dir}",
                  f".venv/bin/ntng pretrain --model {example['model']} --method {example['method']} "
                  f"--budget {example['budget']} --preset {preset} --seed {example['seed']} --out {run_dir}",
                  f".venv/bin/ntng finetune --run {run_dir}"]
    lines.append("```")
    grid = ""
    if len(table.runs):
        grid = (f"\n\nThe grid here: models {', '.join(sorted(set(table.runs['model'])))}; methods "
                f"{', '.join(table.methods_present())}; budgets "
                f"{', '.join(format_budget(b) for b in sorted(set(table.runs['budget_rst_s'])))}; seeds "
                f"{', '.join(str(s) for s in sorted(set(table.runs['seed'])))}; RST tables "
                f"{', '.join(f'`{t}`' for t in sorted(set(table.runs['rst_table'])) if t) or '-'}.")
    return "\n".join(lines) + grid


def versions_text(table: RunTable) -> str:
    """Generated: the distinct machines and package versions recorded by the runs, and this build's versions."""
    from importlib import metadata

    seen: dict[tuple, int] = {}
    for run_dir in table.runs.get("run_dir", []):
        try:
            config = json.loads((Path(run_dir) / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        machine = config.get("machine") or {}
        versions = config.get("versions") or {}
        key = (machine.get("cpu", "?"), str(machine.get("cpu_count", "?")), machine.get("device", "?"),
               machine.get("gpu", "") or "-", machine.get("python", "?"),
               ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v), config.get("precision", "?"))
        seen[key] = seen.get(key, 0) + 1
    parts = []
    if seen:
        frame = pd.DataFrame([(*k, n) for k, n in seen.items()],
                             columns=["cpu", "cores", "device", "gpu", "python", "packages", "precision", "runs"])
        parts.append("Recorded by the runs:\n\n" + markdown_table(frame))
    else:
        parts.append("*No readable run records yet.*")
    build = []
    for name in ("ntng", "torch", "transformers", "tokenizers", "pandas", "seaborn", "matplotlib", "jupyter-book",
                 "myst-nb", "sphinx", "papermill"):
        try:
            build.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    import platform

    parts.append(f"This build: Python {platform.python_version()} on {platform.platform()}; {', '.join(build)}.")
    return "\n\n".join(parts)


def run_page(model: str, method: str, budget: str, seed) -> str:
    """The name of a run's executed-notebook page (ntng.book.build.render_run_notebooks): URL-safe, so a variant's
    `+` and `=` become `-`."""
    seed = str(seed) if str(seed).startswith("seed") else f"seed{seed}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{model}-{method}-{budget}-{seed}")


def appendix_html(table: RunTable, pages: str = "../runs") -> str:
    """Generated: one row per model x method x budget, a link per seed to its executed notebook's page (under
    `pages`, relative to the appendix page), and which runs have none."""
    if table.runs.empty:
        return f"<p><em>No readable runs under <code>{table.root}</code>, so no notebooks.</em></p>"
    runs = sort_frame(table.runs)
    rows = []
    for (model, method, budget), g in runs.groupby(["model", "method", "budget"], sort=False):
        links = [f'<a href="{pages}/{run_page(model, method, budget, s)}.html">seed {s}</a>' if has
                 else f"seed {s} (none)" for s, has in zip(g["seed"], g["has_notebook"], strict=True)]
        rows.append(f"<tr><td>{model}</td><td>{label(method)}</td><td>{budget}</td><td>{' · '.join(links)}</td></tr>")
    have = int(runs["has_notebook"].sum())
    return (f"<p>{have} of {len(runs)} readable runs have an executed notebook.</p>"
            '<table class="table ntng-appendix"><thead><tr><th>model</th><th>method</th><th>budget</th>'
            f"<th>executed notebook</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
