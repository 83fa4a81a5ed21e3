"""Verdicts: each claim a method's sources make (`Method.claims`) held against the run records.

The evidence of a claim is, at each budget, the method's final validation loss minus that of the runs it is held
against (the baseline, or a control such as the baseline on RHO-LOSS's 80% split), paired by model, budget and seed:
the mean over seeds and its 95% Student-t interval. The seed the tuning chose values on never counts (its runs are
the tuning's winners, chosen on that seed); a cell needs two seeds or more to count at all.

A rule turns the intervals into one of three verdicts, `held`, `not held` or `inconclusive`:

- `not_better` (a gain vanishes): *not held* where the interval lies wholly below 0 at some budget (a reliable gain);
  *held* where at every budget it rules out a gain of GAIN_MARGIN_NATS or more; otherwise inconclusive.
- `worse`: *held* where the interval lies wholly above 0 at most budgets and wholly below at none; *not held* where
  it lies wholly below 0 at some budget; otherwise inconclusive.
- `better`: *held* where the interval lies wholly below 0 at every budget; *not held* where it lies wholly above 0 at
  some budget; otherwise inconclusive.
- `not_worse` (matches or beats): *not held* where the interval lies wholly above 0 at some budget (a reliable
  loss); *held* where at every budget it rules out a loss of GAIN_MARGIN_NATS or more; otherwise inconclusive.
- `gap_closes` (ahead early, level late): *held* where the interval lies wholly below 0 at the smallest budget and
  rules out a gain of GAIN_MARGIN_NATS at the largest; *not held* where the method is not ahead at the smallest
  budget (interval wholly above 0) or keeps a gain of more than GAIN_MARGIN_NATS at the largest; otherwise
  inconclusive.
- `speedup` (a k-fold speed-up): the evidence is the method at budget B minus what it is held against at k B,
  read per seed off that seed's runs, linearly in log budget between the two budgets either side of k B (a budget
  whose k B lies outside them has no evidence). *Not held* where the interval lies wholly above 0 at some budget
  (behind runs given k times its budget: less than k-fold); *held* where it lies wholly below or at 0 at every
  budget (at least k-fold); otherwise inconclusive.

A claim to need no stopping time (`Claim.at_fraction` f < 1) is evidenced by the method's evaluation at f of its
budget B held against complete runs of budget f B.

Each verdict comes with the sentence of the rule that decided it and what would change it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ntng.book.report import markdown_table
from ntng.book.run_table import label, method_order
from ntng.book.statistics import mean_ci, where_methods_ran
from ntng.presets import format_budget

# The smallest gain the verdicts treat as a gain worth having, in nats of validation loss. Three paired seeds
# resolve about +-0.05 nats at the reference preset, and at that scale doubling the baseline's budget buys
# 0.05-0.07 nats: a gain below this is less than a 2x speed-up and within what three seeds can tell apart.
GAIN_MARGIN_NATS = 0.05
MIN_SEEDS = 2  # a cell with fewer paired seeds has no interval and does not count
RULES = ("not_better", "worse", "better", "not_worse", "gap_closes", "speedup")
# an evaluation counts as the one at fraction f of a budget B when it lies within this share of B of f B (evaluations
# fall at the first step past each of the recipe's eval points)
AT_FRACTION_TOLERANCE = 0.05
HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"


@dataclass(frozen=True)
class Cell:
    """The evidence at one budget: the paired differences' mean and 95% interval over `seeds` seeds."""

    budget_rst_s: float
    mean: float
    low: float
    high: float
    seeds: int
    note: str = ""  # what was compared where it is not the final losses at this budget ("against 4m")

    @property
    def budget(self) -> str:
        return format_budget(self.budget_rst_s)

    def text(self) -> str:
        where = f"{self.budget} ({self.note})" if self.note else self.budget
        if self.seeds < MIN_SEEDS:
            return f"{where}: {self.mean:+.3f} (one seed)"
        return f"{where}: {self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def tuning_seeds(results: str | Path, preset: str) -> set[int]:
    """The seed(s) `ntng tune` chose the preset's values on (results/tuning/<preset>/tuning.json); none if absent."""
    path = Path(results) / "tuning" / preset / "tuning.json"
    try:
        plan = json.loads(path.read_text())
        return {int(plan["seed"])}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def paired_cells(runs: pd.DataFrame, model: str, method: str, against: str, exclude_seeds=(), factor: float = 1.0,
                 at_fraction: float = 1.0, evals: pd.DataFrame | None = None) -> list[Cell]:
    """Per budget, `method` minus `against` (final validation loss of complete runs), paired by seed, leaving out
    `exclude_seeds`; budgets in increasing order, only those where both ran.

    `factor` k != 1: `against` is read at k times the method's budget, per seed, linearly in log budget between its
    runs either side (`loss_at_budget`). `at_fraction` f < 1: the method's loss is its evaluation at f of its budget
    B (`evals`: ntng.book.run_table's evaluation rows), against complete runs of budget f B; the cell's budget is f B."""
    if runs.empty:
        return []
    done = runs[(runs["status"] == "complete") & (runs["model"] == model) & ~runs["seed"].isin(list(exclude_seeds))]
    theirs = done[done["method"] == against].set_index(["budget_rst_s", "seed"])["final_val_loss"]
    notes: dict[float, str] = {}
    if at_fraction < 1.0:
        ours = _part_way(evals, done[done["method"] == method], at_fraction)
        notes = {b * at_fraction: f"at {at_fraction:.0%} of {format_budget(b)}" for b, _ in ours.index}
        ours.index = pd.MultiIndex.from_tuples([(b * at_fraction, s) for b, s in ours.index])
    else:
        ours = done[done["method"] == method].set_index(["budget_rst_s", "seed"])["final_val_loss"]
    if factor != 1.0:
        theirs = _at_factor(theirs, sorted({b for b, _ in ours.index}), factor)
        notes = {b: f"against {format_budget(b * factor)}" for b, _ in theirs.index}
    joined = pd.concat({"ours": ours, "theirs": theirs}, axis=1, join="inner").dropna()
    cells = []
    for budget_s, group in joined.groupby(level=0, sort=True):
        mean, low, high, n = mean_ci(group["ours"] - group["theirs"])
        cells.append(Cell(float(budget_s), mean, low, high, n, notes.get(budget_s, "")))
    return cells


def loss_at_budget(losses: dict[float, float], budget_s: float) -> float | None:
    """The loss at `budget_s` read off runs of other budgets ({budget: loss}, one seed): exact where one ran,
    else linear in log budget between the nearest budgets either side; None outside their range."""
    if budget_s in losses:
        return losses[budget_s]
    below = [b for b in losses if b < budget_s]
    above = [b for b in losses if b > budget_s]
    if not below or not above:
        return None
    lo, hi = max(below), min(above)
    w = math.log(budget_s / lo) / math.log(hi / lo)
    return (1 - w) * losses[lo] + w * losses[hi]


def _at_factor(finals: pd.Series, budgets: list[float], factor: float) -> pd.Series:
    """Per seed, the loss at `factor` times each of `budgets`, indexed by that budget (not the multiple)."""
    out = {}
    for seed in sorted({s for _, s in finals.index}):
        per_budget = {float(b): float(v) for (b, s), v in finals.items() if s == seed}
        for budget_s in budgets:
            value = loss_at_budget(per_budget, budget_s * factor)
            if value is not None:
                out[(budget_s, seed)] = value
    return pd.Series(out, dtype=float)


def _part_way(evals: pd.DataFrame | None, runs: pd.DataFrame, fraction: float) -> pd.Series:
    """Per complete run of `runs` (by budget and seed), its evaluation at `fraction` of the budget."""
    out = {}
    if evals is None or evals.empty or runs.empty:
        return pd.Series(out, dtype=float)
    for _, run in runs.iterrows():
        budget_s = float(run["budget_rst_s"])
        mine = evals[(evals["model"] == run["model"]) & (evals["method"] == run["method"])
                     & (evals["budget_rst_s"] == budget_s) & (evals["seed"] == run["seed"])]
        if mine.empty:
            continue
        gap = (mine["rst_s"] - fraction * budget_s).abs()
        if gap.min() <= AT_FRACTION_TOLERANCE * budget_s:
            out[(budget_s, run["seed"])] = float(mine.loc[gap.idxmin(), "val_loss"])
    return pd.Series(out, dtype=float)


def judge(expects: str, cells: list[Cell], margin: float = GAIN_MARGIN_NATS) -> tuple[str, str, str]:
    """(verdict, why, what would change it) of a claim held to rule `expects` on its evidence `cells`."""
    if expects not in RULES:
        raise ValueError(f"unknown rule {expects!r} (choose from {', '.join(RULES)})")
    counted = [c for c in cells if c.seeds >= MIN_SEEDS]
    if not counted:
        return (INCONCLUSIVE, f"no budget has {MIN_SEEDS} or more paired seeds besides the tuning seed",
                f"runs of {MIN_SEEDS} or more seeds of the method and what it is held against")
    better = [c for c in counted if c.high < 0]  # reliably lower loss than what it is held against
    worse = [c for c in counted if c.low > 0]

    def names(cs):
        return ", ".join(c.budget for c in cs)

    of_all = f"of {len(counted)} budget{'s' if len(counted) != 1 else ''}"

    if expects == "not_better":
        if better:
            return (NOT_HELD, f"a reliable gain at {names(better)} (interval wholly below 0)",
                    "more seeds moving the interval's upper end above 0")
        small = [c for c in counted if c.low > -margin]
        if len(small) == len(counted):
            return (HELD, f"at every budget the interval rules out a gain of {margin:g} nats or more",
                    f"an interval wholly below 0 (a reliable gain) at any budget, or reaching below -{margin:g}")
        wide = [c for c in counted if c.low <= -margin]
        return (INCONCLUSIVE, f"no reliable gain, but at {names(wide)} the interval still allows a gain of "
                              f"{margin:g} nats or more", "more seeds narrowing the interval")
    if expects == "worse":
        if better:
            return (NOT_HELD, f"a reliable gain at {names(better)}", "more seeds moving the interval above 0")
        if 2 * len(worse) > len(counted):
            return (HELD, f"reliably worse (interval wholly above 0) at {names(worse)} {of_all}, "
                          "better at none", "intervals reaching 0 at most budgets")
        return (INCONCLUSIVE, f"reliably worse at {len(worse)} {of_all}, better at none",
                "more seeds narrowing the intervals")
    if expects == "not_worse":
        if worse:
            return (NOT_HELD, f"a reliable loss at {names(worse)} (interval wholly above 0)",
                    "more seeds moving the interval's lower end below 0")
        small = [c for c in counted if c.high < margin]
        if len(small) == len(counted):
            return (HELD, f"at every budget the interval rules out a loss of {margin:g} nats or more",
                    f"an interval wholly above 0 (a reliable loss) at any budget, or reaching above +{margin:g}")
        wide = [c for c in counted if c.high >= margin]
        return (INCONCLUSIVE, f"no reliable loss, but at {names(wide)} the interval still allows a loss of "
                              f"{margin:g} nats or more", "more seeds narrowing the interval")
    if expects == "speedup":
        if worse:
            return (NOT_HELD, f"behind the runs given the multiple of its budget at {names(worse)} (interval wholly "
                              "above 0): a smaller speed-up", "more seeds moving the interval's lower end below 0")
        level = [c for c in counted if c.high <= 0]
        if len(level) == len(counted):
            return (HELD, "at every budget the interval lies at or below 0: as good as runs given the multiple",
                    "an interval reaching above 0")
        return (INCONCLUSIVE, f"as good as runs given the multiple at {len(level)} {of_all}, "
                              "reliably behind at none", "more seeds narrowing the intervals")
    if expects == "better":
        if worse:
            return (NOT_HELD, f"reliably worse at {names(worse)}", "more seeds moving the interval below 0")
        if len(better) == len(counted):
            return (HELD, "the interval lies wholly below 0 at every budget", "an interval reaching 0")
        return (INCONCLUSIVE, f"reliably better at {len(better)} {of_all}",
                "more seeds narrowing the intervals")
    # gap_closes
    if len(counted) < 2:
        return (INCONCLUSIVE, "one budget only: a gap cannot close", "runs at a second budget")
    first, last = counted[0], counted[-1]
    if first.low > 0:
        return (NOT_HELD, f"behind, not ahead, at the smallest budget ({first.budget})",
                "more seeds moving the smallest budget's interval below 0")
    if last.high < -margin:
        return (NOT_HELD, f"a gain of more than {margin:g} nats persists at the largest budget ({last.budget})",
                f"more seeds moving the largest budget's interval above -{margin:g}")
    if first.high < 0 and last.low > -margin:
        return (HELD, f"ahead at {first.budget} (interval wholly below 0); at {last.budget} a gain of {margin:g} "
                      "nats or more is ruled out", f"an interval at {last.budget} reaching below -{margin:g}, or "
                                                   f"one at {first.budget} reaching 0")
    return (INCONCLUSIVE, f"the intervals at {first.budget} and {last.budget} do not settle it",
            "more seeds narrowing the intervals")


def claim_rows(runs: pd.DataFrame, claims_of, exclude_seeds=(), margin: float = GAIN_MARGIN_NATS,
               evals: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per claim x model with evidence: the claim, its source, the paired differences per budget, the
    verdict, the rule's reason and what would change it. `claims_of(method)` gives a method's claims (a method the
    registry does not know has none); `evals` (ntng.book.run_table's evaluation rows) evidences claims about a run part-way."""
    cols = ["model", "method", "claim", "expects", "number", "at_fraction", "source", "against", "evidence", "seeds",
            "verdict", "why", "would_change"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    present = set(runs["method"])
    for method in sorted(set(runs["base_method"])):
        for claim in claims_of(method):
            name = method if not claim.settings else f"{method}+{claim.settings}"
            if name not in present or claim.against not in present:
                continue
            models = claim.models or sorted(set(runs[runs["method"] == name]["model"]))
            for model in models:
                cells = paired_cells(runs, model, name, claim.against, exclude_seeds, claim.factor,
                                     claim.at_fraction, evals)
                if not cells:
                    continue
                verdict, why, change = judge(claim.expects, cells, margin)
                rows.append({"model": model, "method": name, "claim": claim.text, "expects": claim.expects,
                             "number": claim.number, "at_fraction": claim.at_fraction, "source": claim.source,
                             "against": claim.against, "evidence": "; ".join(c.text() for c in cells),
                             "seeds": max(c.seeds for c in cells), "verdict": verdict, "why": why,
                             "would_change": change})
    return pd.DataFrame(rows, columns=cols)


def claims_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The book's claims table: claim, source, model, evidence (method minus what it is held against, mean [95%
    interval] per budget, nats), verdict and the reason, in a reader's words."""
    if rows.empty:
        return pd.DataFrame()
    return pd.DataFrame({
        "claim": [f"{label(m)}: {c}" + (f" ({n})" if n else "")
                  for m, c, n in zip(rows["method"], rows["claim"], rows["number"], strict=True)],
        "source": rows["source"], "model": rows["model"],
        "against": [label(a) for a in rows["against"]],
        "evidence (method minus against, nats)": rows["evidence"],
        "verdict": rows["verdict"], "because": rows["why"], "would change it": rows["would_change"]})


def _registered(method: str):
    """The registry's method class by `method`'s name, or None for a method it does not know."""
    from ntng.errors import UsageError
    from ntng.methods import find_method

    try:
        return find_method(method)
    except UsageError:
        return None


def registry_claims(method: str) -> tuple:
    """The claims of the method the registry finds by `method`'s name; none for a method it does not know."""
    found = _registered(method)
    return tuple(found.claims) if found else ()


def registry_findings(method: str, runs: pd.DataFrame, exclude_seeds=()) -> str:
    """What the registry's method by `method`'s name says its records show beyond its claims (`Method.findings`),
    as markdown ("" for nothing)."""
    found = _registered(method)
    result = found.findings(runs, exclude_seeds) if found else None
    if not result:
        return ""
    text, table = result
    return text + (f"\n\n{markdown_table(table)}" if table is not None and len(table) else "")


def verdict_paragraphs(rows: pd.DataFrame) -> str:
    """Each claim's verdict in words, with its evidence, the rule's reason and what would change it (markdown)."""
    if rows.empty:
        return ("*No claim has runs to be held against here yet* (a verdict needs the method and what it is held "
                "against at one budget or more, paired by seed).")
    out = []
    for _, r in rows.iterrows():
        out.append(f"- **{label(r['method'])}, {r['model']}: {r['verdict']}.** *{r['claim']}* ({r['source']}). "
                   f"Against {label(r['against'])}, method minus it, mean [95% interval] over {r['seeds']} "
                   f"seed(s): {r['evidence']}. Decided by: {r['why']}. Would change it: {r['would_change']}.")
    return "\n".join(out)


def seeds_text(runs: pd.DataFrame, excluded: set[int], margin: float = GAIN_MARGIN_NATS) -> str:
    """Which seeds decide the verdicts here, which are left out and why, and the margin the rules use."""
    seeds = sorted(set(runs["seed"])) if len(runs) else []
    counted = [s for s in seeds if s not in excluded]
    left = [s for s in seeds if s in excluded]
    text = (f"The verdicts count seed(s) {', '.join(map(str, counted)) or 'none'} of these records"
            + (f"; seed(s) {', '.join(map(str, left))}, on which the tuning chose its values, are shown in the "
               "tables but decide nothing" if left else "")
            + f". A gain worth having is {margin:g} nats or more of validation loss.")
    return text


def rules_text(margin: float = GAIN_MARGIN_NATS) -> str:
    """The rules, as a list a reader can check a verdict against (markdown)."""
    return "\n".join([
        f"- *No gain* (`not_better`): **not held** if the interval lies wholly below 0 at some budget (a reliable "
        f"gain); **held** if at every budget it rules out a gain of {margin:g} nats or more; otherwise inconclusive.",
        "- *Worse*: **held** if the interval lies wholly above 0 at most budgets and wholly below at none; **not "
        "held** if it lies wholly below 0 at some budget; otherwise inconclusive.",
        "- *Better*: **held** if the interval lies wholly below 0 at every budget; **not held** if it lies wholly "
        "above 0 at some budget; otherwise inconclusive.",
        f"- *Matches or beats* (`not_worse`): **not held** if the interval lies wholly above 0 at some budget (a "
        f"reliable loss); **held** if at every budget it rules out a loss of {margin:g} nats or more; otherwise "
        "inconclusive.",
        "- *k-fold speed-up* (`speedup`): the method at budget B against what it is held against at k B, read per "
        "seed linearly in log budget between its runs either side; **not held** if the interval lies wholly above 0 "
        "at some budget (less than k-fold); **held** if it lies at or below 0 at every budget; otherwise "
        "inconclusive. A budget whose k B lies outside the runs' budgets has no evidence.",
        "- A claim about a run part-way (no stopping time) holds the method's evaluation at that fraction f of its "
        "budget B against complete runs of budget f B.",
        f"- *Ahead early, level late* (`gap_closes`): **held** if the interval lies wholly below 0 at the smallest "
        f"budget and rules out a gain of {margin:g} nats at the largest; **not held** if the method is behind at the "
        f"smallest budget or keeps a gain of more than {margin:g} nats at the largest; otherwise inconclusive.",
        f"- A budget counts only with {MIN_SEEDS} or more paired seeds; the interval is the 95% Student-t interval "
        "of the paired differences (method minus what it is held against, same model, budget and seed)."])


RULE_WORDS = {"not_better": "no gain", "worse": "worse", "better": "better", "not_worse": "matches or beats",
              "gap_closes": "ahead early, level late", "speedup": "k-fold speed-up"}


def claim_words(row) -> str:
    """A claim in a few words for a table cell (a claim_rows row): its rule, its own figure for a speed-up, the point of
    the run it is about if part-way, and what it is held against unless the baseline; "speed-up 1.35x",
    "matches or beats at 50% of a run"."""
    words = RULE_WORDS.get(row["expects"], row["expects"])
    if row["expects"] == "speedup" and row["number"]:
        words = f"speed-up {row['number']}"
    if row["at_fraction"] < 1:
        words += f" at {row['at_fraction']:.0%} of a run"
    return words + (f" vs {label(row['against'])}" if row["against"] != "baseline" else "")


def glance(results: str | Path, preset: str) -> str:
    """The results at a glance (markdown, computed from the records of results/<preset>): per method and model, its
    final validation loss minus the baseline's at each budget (mean over the seeds that count) and the verdicts of
    its claims. The README shows it (tools/make_readme.py); the book's "What held" has the evidence."""
    from ntng.book.run_table import load_runs

    table = load_runs(results, preset)
    runs = table.runs
    excluded = tuning_seeds(results, preset)
    if runs.empty:
        return f"*No run records under {Path(results) / preset} yet.*"
    rows = claim_rows(runs, registry_claims, excluded, evals=table.evals)
    # a budget only the baseline ran at (held against claims about a run part-way) has no column of its own
    budgets = sorted(set(where_methods_ran(runs)["budget_rst_s"]))
    out = []
    for method in sorted(set(runs["method"]) - {"baseline"}, key=method_order):
        for model in sorted(set(runs[runs["method"] == method]["model"])):
            cells = {c.budget_rst_s: c for c in paired_cells(runs, model, method, "baseline", excluded)}
            if not cells:
                continue
            mine = rows[(rows["method"] == method) & (rows["model"] == model)] if len(rows) else rows
            claims = "; ".join(f"{claim_words(r)}: {r['verdict']}" for _, r in mine.iterrows())
            counts = sorted({c.seeds for c in cells.values()})
            out.append({"method": label(method), "model": model.upper(),
                        "seeds": "-".join(map(str, sorted({counts[0], counts[-1]}))),
                        **{f"{format_budget(b)}": (f"{cells[b].mean:+.3f}" if b in cells else "") for b in budgets},
                        "claims held to the records": claims})
    seeds = sorted(set(runs["seed"]) - excluded)
    return (f"Final validation loss minus the baseline's (nats; below 0 is better), paired by seed and averaged over "
            f"the seeds each cell has (`seeds`) of seed(s) {', '.join(map(str, seeds)) or 'none'}, at preset `{preset}`"
            + (f" (seed {', '.join(map(str, sorted(excluded)))}, the tuning's, decides nothing)" if excluded else "")
            + f". A verdict needs {MIN_SEEDS} or more seeds; the book's *What held* gives each with its interval.\n\n"
            + markdown_table(pd.DataFrame(out)))

