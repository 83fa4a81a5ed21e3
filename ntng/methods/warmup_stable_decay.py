"""Warmup-stable-decay (WSD; MiniCPM, Hu et al. 2024; Hägele et al. 2024, "Scaling laws and compute-optimal
training beyond fixed training durations"): the baseline with another learning-rate schedule.

Linear warm-up from 0 to the peak over the first `warmup` of the budget, the peak held, then a cool-down to 0 over
the last `decay` of the budget, linear or 1 - sqrt (Hägele et al.'s best shape). Claimed to match a cosine or
linear decay of the same budget, and so to let one run serve several budgets: its stable phase can be branched
into a cool-down at any point. Like every schedule here, a pure function of the budget fraction, and it decays
fully by the end of the budget, as the protocol requires of a baseline.

Branching (`horizon`): a run of budget T/h with `horizon=h` lays out its warm-up and stable phase on the timeline of
a run of budget T (its warm-up ends where T's does) and cools down over the last `decay` of its own budget. Runs are
deterministic given the seed (same initialisation, same batches, whatever the budget), so until its cool-down starts
such a run is, step for step, the run of budget T (bit for bit where h is a power of two: the fractions then scale
exactly); from there it is that run's stable phase branched into a cool-down. One run of budget T plus branches
cooling down from T/4 and T/2 therefore give the budgets T/4, T/2 and T for T(1 + 3 decay / 4) of RST instead of
7T/4, which is what its users want from it; `branching_saving` states that from the records, and the claims hold
each branch against a separate run of its budget.

Not a method the paper studied (`studied_on` is empty): it joins a grid when named (`--methods warmup_stable_decay`).
"""

from __future__ import annotations

import math

from ntng.errors import UsageError

from .base import Claim, Method, around, take_options


def wsd_multiplier(fraction: float, warmup: float, decay: float, sqrt_decay: bool, horizon: float = 1.0) -> float:
    """The peak's multiplier at `fraction` of the budget: during warm-up the fraction of the horizon's budget
    (`horizon` times this one) over `warmup`, 1 in the stable phase, then over the last `decay` of this budget with
    progress p from 0 to 1, 1 - p (linear) or 1 - sqrt(p)."""
    f = min(max(fraction, 0.0), 1.0)  # the last step may start just before the end and finish just past it
    on_horizon = f / horizon  # the fraction of the longer run's budget: its warm-up is the one followed
    if on_horizon < warmup:
        return on_horizon / warmup
    start = 1.0 - decay
    if f <= start:
        return 1.0
    if f >= 1.0:
        return 0.0  # exactly, whatever the rounding of 1 - decay
    progress = (f - start) / decay
    return 1.0 - (math.sqrt(progress) if sqrt_decay else progress)


class WarmupStableDecay(Method):
    name = "warmup_stable_decay"
    label = "WSD schedule"
    family = "newer_optimizers"
    component = "optimization"
    action = "reorder"
    summary = "constant learning rate, short final cool-down"
    studied_on = ()  # not in the paper's study: run when named
    claims = (
        Claim("matches a cosine or linear decay of the same budget", "Hägele et al. 2024 (arXiv 2405.18392), "
              "Section 3; Hu et al. 2024 (MiniCPM), Section 4", "not_worse"),
        Claim("a cool-down branched from the stable phase of a run 4 times as long matches a separate run of its "
              "budget", "Hägele et al. 2024, Section 4; Hu et al. 2024, Section 4", "not_worse",
              settings="horizon=4", against="warmup_stable_decay"),
        Claim("a cool-down branched from the stable phase of a run twice as long matches a separate run of its "
              "budget", "Hägele et al. 2024, Section 4; Hu et al. 2024, Section 4", "not_worse",
              settings="horizon=2", against="warmup_stable_decay"),
    )
    card = (
        "**Warmup-stable-decay** (Hu et al. 2024, *MiniCPM*; Hägele et al. 2024, *Scaling laws and compute-optimal "
        "training beyond fixed training durations*). The baseline's optimizer, peak, clipping and batch with "
        "another schedule: linear warm-up over the first 10% of the budget, the peak held, then a cool-down to 0 "
        "over the last 20% (share and shape are settings: `decay`, `sqrt_decay` for 1 - sqrt, the shape Hägele "
        "et al. found best, else linear). Claim: it matches a cosine or linear decay of the same budget, so one "
        "run's stable phase can be branched into cool-downs for several budgets: `horizon=h` runs the cool-down of "
        "budget T/h branched from a run of budget T (its warm-up and stable phase are that run's). Tuned: the "
        "baseline's peak and the cool-down's share. Survey category: component "
        "*optimization* x action *reorder*."
    )

    def __init__(self, model: str, preset, **options):
        super().__init__(model, preset)
        # horizon: the budget, as a multiple of this run's, whose warm-up and stable phase this run follows (1: its
        # own; 4: a cool-down branched from the stable phase of a run 4 times as long)
        self.options = take_options(self.name, options, {"warmup": 0.1, "decay": 0.2, "sqrt_decay": True,
                                                         "horizon": 1.0})
        o = self.options
        if not (0.0 <= o["warmup"] < 1.0 and 0.0 < o["decay"] <= 1.0 and o["horizon"] >= 1.0
                and o["warmup"] * o["horizon"] + o["decay"] <= 1.0):
            raise UsageError(f"method {self.name}: warmup in [0, 1), decay in (0, 1], horizon >= 1 and the cool-down "
                             f"starting after the warm-up (warmup x horizon + decay <= 1), got warmup={o['warmup']} "
                             f"decay={o['decay']} horizon={o['horizon']}")

    def tuning(self) -> dict[str, list]:
        # the peak, as for the baseline, and the cool-down's share, the setting its sources vary (10-20% and beyond)
        return {"recipe.lr": around(self.recipe.lr), "decay": around(self.options["decay"])}

    def settings(self) -> dict:
        return {"schedule": "warmup_stable_decay", **self.options}

    def lr_multiplier(self, budget_fraction: float) -> float:
        o = self.options
        return wsd_multiplier(budget_fraction, o["warmup"], o["decay"], o["sqrt_decay"], o["horizon"])

    @classmethod
    def findings(cls, runs, exclude_seeds=()):
        """The branching saving: per model and seed, what one run of the largest budget plus its branched cool-downs
        cost in RST against separate runs of each budget, and the branches' loss gap to those runs."""
        table = branching_saving(runs, exclude_seeds)
        if table.empty:
            return ("*No branched cool-downs in these records yet*: run `warmup_stable_decay+horizon=2` and "
                    "`+horizon=4` at the budgets a half and a quarter of the largest, beside `warmup_stable_decay` at "
                    "all three.", None)
        shown = table.assign(**{c: table[c].map(lambda x: f"{x:+.3f}") for c in table.columns if c.startswith("gap")})
        shown = shown.assign(**{c: shown[c].map(lambda x: f"{x:.0f}") for c in ("separate_rst_s", "branched_rst_s")})
        shown["saved"] = table["saved"].map(lambda x: f"{x:.0%}")
        shown = shown.rename(columns={"separate_rst_s": "separate runs (RST s)",
                                      "branched_rst_s": "one run + branches (RST s)", "saved": "RST saved",
                                      **{c: f"loss {c} (nats)" for c in table.columns if c.startswith("gap")}})
        return ("**Branching.** One run of the largest budget whose stable phase is branched into the cool-downs of "
                "the smaller budgets gives all of them; separate runs pay each budget in full. RST in seconds, from the "
                "records; loss gap = branched cool-down minus the separate run of the same budget and seed (nats):",
                shown)


def branching_saving(runs, exclude_seeds=()):
    """Per model and seed with a complete run of the largest budget and branched cool-downs
    (`warmup_stable_decay+horizon=h` at 1/h of it): RST of separate runs of those budgets, RST of the one run plus
    the branches' cool-downs (each branch shares the run's first (1 - decay) of its budget), the share saved, and
    each branch's final loss minus the separate run's of its budget. A pandas DataFrame (empty without branches)."""
    import json
    from pathlib import Path

    import pandas as pd

    from ntng.presets import format_budget

    name = WarmupStableDecay.name
    cols = ["model", "seed", "budgets", "separate_rst_s", "branched_rst_s", "saved"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    done = runs[(runs["status"] == "complete") & (runs["base_method"] == name)
                & ~runs["seed"].isin(list(exclude_seeds))]
    out = []
    for (model, seed), mine in done.groupby(["model", "seed"]):
        separate = mine[mine["method"] == name].set_index("budget_rst_s")
        if separate.empty:
            continue
        longest = float(separate.index.max())
        branches = []
        for _, run in mine[mine["method"] != name].iterrows():
            settings = json.loads((Path(run["run_dir"]) / "config.json").read_text()).get("method_settings", {})
            horizon, decay = float(settings.get("horizon", 1.0)), float(settings.get("decay", 0.0))
            if horizon > 1 and run["budget_rst_s"] * horizon == longest and run["budget_rst_s"] in separate.index:
                branches.append((run, decay))
        if not branches:
            continue
        budgets = sorted([longest, *(float(r["budget_rst_s"]) for r, _ in branches)])
        row = {"model": model, "seed": int(seed), "budgets": " + ".join(format_budget(b) for b in budgets),
               "separate_rst_s": float(sum(separate.loc[b, "rst_s"] for b in budgets)),
               # a branch costs only its cool-down: what it spent past the shared (1 - decay) of its budget
               "branched_rst_s": float(separate.loc[longest, "rst_s"] + sum(
                   r["rst_s"] - (1.0 - d) * r["budget_rst_s"] for r, d in branches))}
        row["saved"] = 1.0 - row["branched_rst_s"] / row["separate_rst_s"]
        for r, _ in sorted(branches, key=lambda rd: rd[0]["budget_rst_s"]):
            row[f"gap at {format_budget(r['budget_rst_s'])}"] = (
                float(r["final_val_loss"]) - float(separate.loc[r["budget_rst_s"], "final_val_loss"]))
        out.append(row)
    return pd.DataFrame(out).reset_index(drop=True) if out else pd.DataFrame(columns=cols)
