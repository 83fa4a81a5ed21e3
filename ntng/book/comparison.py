"""`ntng compare`: is method X faster than the baseline under the same RST budgets? One command, one verdict.

`compare(method, ...)` runs what is missing of X and of the baseline at the same preset, budgets and seeds (through
the grid, so complete runs are reused and interrupted ones resumed), then reads the records and, per model and
budget, pairs X's final validation loss with the baseline's of the same seed:

- difference = X - baseline, its mean and 95% Student-t interval over the seeds (negative: X ends lower);
- verdict: "faster" when the interval lies below 0 (X reaches a lower loss with the same RST), "slower" when it lies
  above 0, else "no detectable difference at n seeds"; with one seed there is no interval and no verdict;
- the smallest difference these seeds could detect: the interval's half-width (a difference smaller than that is
  indistinguishable from seed noise at this many seeds);
- speed-up (time to target, AlgoPerf-style with the baseline's result as the target): the RST the baseline used
  over the RST X needed to reach the baseline's final loss (X's validation curve, straight lines between its
  evaluations), per seed; where X never gets there the speed-up is at most 1 and counted as 1 (an upper bound),
  geometric mean over seeds;
- runs that did not complete (failed, diverged) are counted and named: the interval is over complete pairs only.

`claim` ("2x") tests a stated speed-up as modded-nanogpt's records do: a one-sided t-test of the mean log speed-up
against log(claim), supported when p < 0.01.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ntng.book.numbers import fmt
from ntng.errors import UsageError
from ntng.presets import MODELS, format_budget, get_preset, parse_budget

CLAIM_ALPHA = 0.01  # the claim must beat the baseline at p < 0.01 (modded-nanogpt's bar for a record)
_CLAIM = re.compile(r"(?P<factor>\d+(?:\.\d+)?)x")


def parse_claim(text: str | float | None) -> float | None:
    """'2x' -> 2.0; None -> None. A claim is a speed-up factor > 0."""
    if text is None:
        return None
    match = _CLAIM.fullmatch(str(text).strip().lower()) if isinstance(text, str) else None
    value = float(match["factor"]) if match else (float(text) if isinstance(text, (int, float)) else math.nan)
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"bad claim {text!r}: give a speed-up factor such as 2x or 1.5x")
    return value


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom (via the regularised incomplete beta function)."""
    x = df / (df + t * t)
    front = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - math.lgamma(0.5)
                     + (df / 2) * math.log(x) + 0.5 * math.log1p(-x)) if 0 < x < 1 else 0.0
    if x <= 0:
        tail = 0.0
    elif x >= 1:
        tail = 1.0
    elif x < (df / 2 + 1) / (df / 2 + 0.5 + 1):
        tail = front * _betacf(df / 2, 0.5, x) / (df / 2)
    else:
        tail = 1.0 - front * _betacf(0.5, df / 2, 1 - x) / 0.5
    return tail / 2 if t >= 0 else 1.0 - tail / 2


@dataclass
class BudgetResult:
    model: str
    budget: str
    seeds: int
    method_loss: float
    baseline_loss: float
    difference: float
    ci_low: float
    ci_high: float
    detectable: float  # the 95% interval's half-width: the smallest difference these seeds can tell from 0
    speedup: float  # geometric mean over seeds of the time-to-target speed-up (upper bounds included)
    speedup_bounded: int  # seeds where X never reached the baseline's final loss (speed-up <= 1)
    verdict: str
    not_complete: int = 0  # runs of X or the baseline at this model and budget that failed or diverged
    claim_p: float | None = None
    claim_supported: bool | None = None


@dataclass
class Comparison:
    method: str
    preset: str
    claim: float | None
    results: list[BudgetResult] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)  # the sweep's rows


def verdict_of(low: float, high: float, n: int) -> str:
    if n < 2:
        return "one seed: no interval, no verdict"
    if high < 0:
        return "faster"
    if low > 0:
        return "slower"
    return f"no detectable difference at {n} seeds"


def claim_test(speedups: list[float], claim: float) -> float:
    """One-sided p-value of H0: mean log speed-up <= log(claim) (NaN with fewer than 2 seeds)."""
    logs = [math.log(s) for s in speedups if s > 0 and math.isfinite(s)]
    n = len(logs)
    if n < 2:
        return math.nan
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    if sd == 0:
        return 0.0 if mean > math.log(claim) else 1.0
    return t_sf((mean - math.log(claim)) / (sd / math.sqrt(n)), n - 1)


def method_speedups(pairs, evals, method: str) -> list[tuple[float, bool]]:
    """Per complete pair (one model, budget and seed): (speed-up, reached). speed-up = the baseline's RST / the RST
    the method needed to reach the baseline's final loss; 1.0 and reached=False where it never did."""
    from ntng.book.statistics import rst_to_reach

    out = []
    for _, pair in pairs.iterrows():
        curve = evals[(evals["method"] == method) & (evals["model"] == pair["model"])
                      & (evals["budget_rst_s"] == pair["budget_rst_s"]) & (evals["seed"] == pair["seed"])]
        base = evals[(evals["method"] == "baseline") & (evals["model"] == pair["model"])
                     & (evals["budget_rst_s"] == pair["budget_rst_s"]) & (evals["seed"] == pair["seed"])]
        t = rst_to_reach(curve["rst_s"], curve["val_loss"], pair["baseline_val_loss"])
        used = float(base["rst_s"].max()) if len(base) else math.nan
        if math.isfinite(t) and t > 0 and math.isfinite(used):
            out.append((used / t, True))
        else:
            out.append((1.0, False))
    return out


def summarise(runs, evals, method: str, claim: float | None) -> list[BudgetResult]:
    """Per model x budget: the comparison of `method`'s complete runs with the baseline's of the same seeds."""
    from ntng.book.statistics import mean_ci, paired_differences

    chosen = runs[runs["method"].isin(["baseline", method])]
    pairs = paired_differences(chosen)
    pairs = pairs[pairs["method"] == method]
    out = []
    for (model, budget_s), group in pairs.groupby(["model", "budget_rst_s"], sort=True):
        mean, low, high, n = mean_ci(group["difference"])
        speeds = method_speedups(group, evals, method)
        per_seed = [x for x, _ in speeds]
        geo = math.exp(sum(math.log(x) for x in per_seed) / len(per_seed)) if per_seed else math.nan
        cell = chosen[(chosen["model"] == model) & (chosen["budget_rst_s"] == budget_s)]
        result = BudgetResult(model=model, budget=format_budget(budget_s), seeds=n,
                              method_loss=float(group["val_loss"].mean()),
                              baseline_loss=float(group["baseline_val_loss"].mean()), difference=mean, ci_low=low,
                              ci_high=high, detectable=(high - mean) if n > 1 else math.nan, speedup=geo,
                              speedup_bounded=sum(not reached for _, reached in speeds),
                              verdict=verdict_of(low, high, n),
                              not_complete=int((cell["status"] != "complete").sum()))
        if claim is not None:
            p = claim_test(per_seed, claim)
            result.claim_p = p
            result.claim_supported = bool(math.isfinite(p) and p < CLAIM_ALPHA)
        out.append(result)
    return out


def compare(method: str, models=("bert",), budgets=None, seeds=None, preset: str = "smoke", settings=(),
            claim: str | float | None = None, results: str | Path = "results", jobs: int = 1,
            data_dir: str | Path | None = None, log=print) -> Comparison:
    """Run what is missing of `method` (with `settings`, `--set KEY=VALUE`) and the baseline, then compare them
    (see the module docstring). Bad input raises UsageError before anything runs."""
    from ntng.book.run_table import load_runs
    from ntng.experiments.grid import sweep
    from ntng.training.variants import run_name, with_settings

    preset_obj = get_preset(preset)
    claim_factor = parse_claim(claim)
    variant = with_settings(method, settings)
    name = run_name(variant)
    if name == "baseline":
        raise UsageError("compare a method with the baseline, not the baseline with itself")
    models = list(models or ("bert",))
    for model in models:
        if model not in MODELS:
            raise UsageError(f"unknown model {model!r} (choose from {', '.join(MODELS)})")
    budgets = list(budgets or preset_obj.budgets)
    for budget in budgets:
        parse_budget(budget)
    seeds = list(seeds if seeds is not None else preset_obj.seeds)
    rows = sweep(preset=preset, models=models, methods=["baseline", variant], budgets=budgets, seeds=seeds,
                 results=results, jobs=jobs, data_dir=data_dir, log=log)
    table = load_runs(results, preset)
    wanted = {format_budget(parse_budget(b)) for b in budgets}
    # a cell the sweep failed (e.g. a run made before a tuned default changed) is not evidence for either side
    failed = {str(Path(r["run_dir"]).resolve()) for r in rows if r["status"] == "failed"}
    runs = table.runs
    if len(runs):
        runs = runs[runs["model"].isin(models) & runs["budget"].isin(wanted) & runs["seed"].isin(seeds)
                    & ~runs["run_dir"].map(lambda d: str(Path(d).resolve())).isin(failed)]
    out = Comparison(method=name, preset=preset, claim=claim_factor, runs=rows)
    out.results = summarise(runs, table.evals, name, claim_factor) if len(runs) else []
    return out


def format_comparison(result: Comparison) -> str:
    """The printed report: one table per model, then the claim's verdict."""
    lines = [f"{result.method} against the baseline at preset {result.preset} (final validation loss; "
             "difference < 0: the method ends lower under the same RST budget)"]
    failed = [r for r in result.runs if r.get("status") in ("failed", "diverged")]
    for r in failed:
        lines.append(f"{r['status']}: {r['model']}/{r['method']}/{r['budget']}/seed{r['seed']}: {r.get('error')}")
    if not result.results:
        lines.append("no complete pair of runs to compare")
    header = ("budget", "seeds", result.method, "baseline", "difference [95% CI]", "detectable", "speed-up",
              "verdict")
    for model in dict.fromkeys(r.model for r in result.results):
        rows = [header]
        for r in (x for x in result.results if x.model == model):
            interval = (f"{fmt(r.difference, signed=True)} [{fmt(r.ci_low, signed=True)}, "
                        f"{fmt(r.ci_high, signed=True)}]") if r.seeds > 1 else fmt(r.difference, signed=True)
            speed = "-" if not math.isfinite(r.speedup) else f"{r.speedup:.2f}x" + (
                f" ({r.speedup_bounded} never reached the baseline's loss)" if r.speedup_bounded else "")
            seeds = str(r.seeds) + (f" (+{r.not_complete} not complete)" if r.not_complete else "")
            rows.append((r.budget, seeds, fmt(r.method_loss), fmt(r.baseline_loss), interval,
                         fmt(r.detectable), speed, r.verdict))
        widths = [max(len(row[k]) for row in rows) for k in range(len(header))]
        lines.append(f"\n{model}:")
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if result.claim is not None:
        for r in result.results:
            if r.claim_p is None or not math.isfinite(r.claim_p):
                lines.append(f"claim {result.claim:g}x at {r.model}/{r.budget}: needs at least 2 seeds")
            else:
                word = "supported" if r.claim_supported else "not supported"
                lines.append(f"claim {result.claim:g}x at {r.model}/{r.budget}: {word} (one-sided p = "
                             f"{r.claim_p:.3g}, needs p < {CLAIM_ALPHA}; mean speed-up {r.speedup:.2f}x over "
                             f"{r.seeds} seeds)")
    return "\n".join(lines)
