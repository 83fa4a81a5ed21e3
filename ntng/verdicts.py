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
- `gap_closes` (ahead early, level late): *held* where the interval lies wholly below 0 at the smallest budget and
  rules out a gain of GAIN_MARGIN_NATS at the largest; *not held* where the method is not ahead at the smallest
  budget (interval wholly above 0) or keeps a gain of more than GAIN_MARGIN_NATS at the largest; otherwise
  inconclusive.

Each verdict comes with the sentence of the rule that decided it and what would change it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .presets import format_budget
from .report import label, mean_ci

# The smallest gain the verdicts treat as a gain worth having, in nats of validation loss. Three paired seeds
# resolve about +-0.05 nats at the reference preset, and at that scale doubling the baseline's budget buys
# 0.05-0.07 nats: a gain below this is less than a 2x speed-up and within what three seeds can tell apart.
GAIN_MARGIN_NATS = 0.05
MIN_SEEDS = 2  # a cell with fewer paired seeds has no interval and does not count
RULES = ("not_better", "worse", "better", "gap_closes")
HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"


@dataclass(frozen=True)
class Cell:
    """The evidence at one budget: the paired differences' mean and 95% interval over `seeds` seeds."""

    budget_rst_s: float
    mean: float
    low: float
    high: float
    seeds: int

    @property
    def budget(self) -> str:
        return format_budget(self.budget_rst_s)

    def text(self) -> str:
        if self.seeds < MIN_SEEDS:
            return f"{self.budget}: {self.mean:+.3f} (one seed)"
        return f"{self.budget}: {self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def tuning_seeds(results: str | Path, preset: str) -> set[int]:
    """The seed(s) `ntng tune` chose the preset's values on (results/tuning/<preset>/tuning.json); none if absent."""
    path = Path(results) / "tuning" / preset / "tuning.json"
    try:
        plan = json.loads(path.read_text())
        return {int(plan["seed"])}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def paired_cells(runs: pd.DataFrame, model: str, method: str, against: str, exclude_seeds=()) -> list[Cell]:
    """Per budget, `method` minus `against` (final validation loss of complete runs), paired by seed, leaving out
    `exclude_seeds`; budgets in increasing order, only those where both ran."""
    if runs.empty:
        return []
    done = runs[(runs["status"] == "complete") & (runs["model"] == model) & ~runs["seed"].isin(list(exclude_seeds))]
    ours = done[done["method"] == method].set_index(["budget_rst_s", "seed"])["final_val_loss"]
    theirs = done[done["method"] == against].set_index(["budget_rst_s", "seed"])["final_val_loss"]
    joined = pd.concat({"ours": ours, "theirs": theirs}, axis=1, join="inner").dropna()
    cells = []
    for budget_s, group in joined.groupby(level=0, sort=True):
        mean, low, high, n = mean_ci(group["ours"] - group["theirs"])
        cells.append(Cell(float(budget_s), mean, low, high, n))
    return cells


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
            return (HELD, f"reliably worse (interval wholly above 0) at {names(worse)} of {len(counted)} budgets, "
                          "better at none", "intervals reaching 0 at most budgets")
        return (INCONCLUSIVE, f"reliably worse at {len(worse)} of {len(counted)} budgets, better at none",
                "more seeds narrowing the intervals")
    if expects == "better":
        if worse:
            return (NOT_HELD, f"reliably worse at {names(worse)}", "more seeds moving the interval below 0")
        if len(better) == len(counted):
            return (HELD, "the interval lies wholly below 0 at every budget", "an interval reaching 0")
        return (INCONCLUSIVE, f"reliably better at {len(better)} of {len(counted)} budgets",
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


def claim_rows(runs: pd.DataFrame, claims_of, exclude_seeds=(), margin: float = GAIN_MARGIN_NATS) -> pd.DataFrame:
    """One row per claim x model with evidence: the claim, its source, the paired differences per budget, the
    verdict, the rule's reason and what would change it. `claims_of(method)` gives a method's claims (a method the
    registry does not know has none)."""
    cols = ["model", "method", "claim", "source", "against", "evidence", "seeds", "verdict", "why", "would_change"]
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
                cells = paired_cells(runs, model, name, claim.against, exclude_seeds)
                if not cells:
                    continue
                verdict, why, change = judge(claim.expects, cells, margin)
                rows.append({"model": model, "method": name, "claim": claim.text, "source": claim.source,
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
        "claim": [f"{label(m)}: {c}" for m, c in zip(rows["method"], rows["claim"], strict=True)],
        "source": rows["source"], "model": rows["model"],
        "against": [label(a) for a in rows["against"]],
        "evidence (method minus against, nats)": rows["evidence"],
        "verdict": rows["verdict"], "because": rows["why"], "would change it": rows["would_change"]})


def registry_claims(method: str) -> tuple:
    """The claims of the method the registry finds by `method`'s name; none for a method it does not know."""
    from .errors import UsageError
    from .methods import find_method

    try:
        return tuple(find_method(method).claims)
    except UsageError:
        return ()


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
        f"- *Ahead early, level late* (`gap_closes`): **held** if the interval lies wholly below 0 at the smallest "
        f"budget and rules out a gain of {margin:g} nats at the largest; **not held** if the method is behind at the "
        f"smallest budget or keeps a gain of more than {margin:g} nats at the largest; otherwise inconclusive.",
        f"- A budget counts only with {MIN_SEEDS} or more paired seeds; the interval is the 95% Student-t interval "
        "of the paired differences (method minus what it is held against, same model, budget and seed)."])
