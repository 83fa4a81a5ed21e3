"""The statistics the book shows, pure functions of `ntng.book.run_table` DataFrames:

- `mean_ci`: a mean and its 95% Student-t interval over seeds;
- `final_loss_table`: final validation loss per model x method x budget, mean and interval over seeds;
- `paired_differences`, `difference_to_baseline`: method minus baseline, paired by seed (same model, budget, seed);
- `time_to_target`: how much RST the baseline needs to reach a method's final loss (see `rst_to_reach`).
"""

from __future__ import annotations

import math

import pandas as pd

from ntng.book.run_table import KEYS, sort_frame
from ntng.presets import format_budget

# two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30; beyond that a Cornish-Fisher expansion
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def where_methods_ran(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows at a model and budget where a method other than the baseline ran: baseline runs of other budgets
    (held against claims about a run part-way) would be panels, points or rows with nothing to compare."""
    ran = frame[frame["method"] != "baseline"]
    keys = set(zip(ran["model"], ran["budget_rst_s"], strict=True))
    return frame[[k in keys for k in zip(frame["model"], frame["budget_rst_s"], strict=True)]]


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


def floors(runs: pd.DataFrame) -> dict[str, float]:
    """model -> the context-free loss floor its runs recorded (ntng.data.floors; config.json data.floor)."""
    if runs.empty or "floor" not in runs.columns:
        return {}
    known = runs.dropna(subset=["floor"])
    return {m: float(g["floor"].iloc[0]) for m, g in known.groupby("model")}


def baseline_below_floor(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model x budget: how far the baseline's final validation loss ends below the context-free floor its runs
    recorded (floor minus loss, nats; mean and 95% interval over its complete runs). Near or below 0 the baseline has
    learned word frequencies, not language, and a method compared with it there says little about its claims."""
    cols = ["model", "budget", "budget_rst_s", "seeds", "mean", "ci_low", "ci_high"]
    done = runs[(runs["method"] == "baseline") & (runs["status"] == "complete")] if len(runs) else runs
    if done.empty or "floor" not in done.columns:
        return pd.DataFrame(columns=cols)
    out = []
    for (model, budget_s), group in done.dropna(subset=["floor"]).groupby(["model", "budget_rst_s"], sort=True):
        mean, low, high, n = mean_ci(group["floor"] - group["final_val_loss"])
        out.append({"model": model, "budget": format_budget(budget_s), "budget_rst_s": budget_s, "seeds": n,
                    "mean": mean, "ci_low": low, "ci_high": high})
    return pd.DataFrame(out, columns=cols)
