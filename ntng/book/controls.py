"""The two controls a reviewer would raise against the verdicts, held against the records.

(a) Data. RHO-LOSS trains on 80% of the training windows (its irreducible-loss model learns on the other 20%), so
part of any difference to the baseline on all the data is the data. Its claims are held against both baselines: the
one on all the data and the one on the same 80% (the variant `baseline+data_split=rho_main`). `split_control` sets
the verdicts side by side and says whether the control changes one.

(b) Batch size. At 16 sequences a step the sign-like optimizers (Lion, Sophia) sit on the unigram plateau for the
first part of the budget whatever their peak: "Lion loses" could be a verdict about the batch. A batch-size control
preset (one whose `batch_control_of` names the preset: `cpu_batch64`, 4x `cpu`'s batch at its middle budget)
re-runs the baseline and the optimizers, each re-tuned by the same rule; `batch_control` holds each optimizer's
claim at that budget at both batch sizes and says whether the verdict changes, and `baseline_at_both_batches` says
where the baseline itself ends at each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ntng.book.run_table import label, method_order
from ntng.book.statistics import mean_ci
from ntng.book.verdicts import GAIN_MARGIN_NATS, MIN_SEEDS, judge, paired_cells, registry_claims
from ntng.presets import format_budget

FULL_BASELINE = "baseline"


def _evidence(cells, bare: bool = False) -> str:
    """The cells' evidence per budget; `bare`: without the budget where there is one (a column names it)."""
    if bare and len(cells) == 1:
        return cells[0].text().split(": ", 1)[-1]
    return "; ".join(c.text() for c in cells) or "-"


def controlled_claims(runs: pd.DataFrame, claims_of=registry_claims) -> list[tuple[str, object, object]]:
    """(method, claim against the baseline, the same claim against a control) for every claim of a method in the
    records that is held against another variant of the baseline (a control) and has a twin against the baseline."""
    out = []
    present = set(runs["method"]) if len(runs) else set()
    for method in sorted(set(runs["base_method"]) if len(runs) else (), key=method_order):
        claims = claims_of(method)
        for controlled in (c for c in claims if c.against != FULL_BASELINE and c.against.startswith("baseline+")):
            twin = next((c for c in claims if c.against == FULL_BASELINE and c.expects == controlled.expects
                         and c.settings == controlled.settings), None)
            name = method if not controlled.settings else f"{method}+{controlled.settings}"
            if twin is not None and name in present:
                out.append((name, twin, controlled))
    return out


def split_control(runs: pd.DataFrame, exclude_seeds=(), margin: float = GAIN_MARGIN_NATS,
                  claims_of=registry_claims) -> tuple[pd.DataFrame, list[str]]:
    """Per method held against a control and model, three rows: what the control's data costs the baseline itself
    (control minus baseline), and the method's evidence and verdict against the baseline on all the data and against
    the control. Returns the table and one sentence per method and model saying whether the control changes the
    verdict."""
    rows, sentences = [], []
    for name, twin, controlled in controlled_claims(runs, claims_of):
        control = controlled.against
        models = controlled.models or sorted(set(runs[runs["method"] == name]["model"]))
        for model in models:
            full = paired_cells(runs, model, name, FULL_BASELINE, exclude_seeds)
            against = paired_cells(runs, model, name, control, exclude_seeds)
            cost = paired_cells(runs, model, control, FULL_BASELINE, exclude_seeds)
            if not full and not against:
                continue
            v_full, _, _ = judge(twin.expects, full, margin)
            v_control, why, _ = judge(controlled.expects, against, margin) if against else ("no runs", "", "")
            rows += [{"model": model, "difference": f"{label(control)} minus {label(FULL_BASELINE)}",
                      "per budget, mean [95% interval]": _evidence(cost), "verdict": "(what the data costs)"},
                     {"model": model, "difference": f"{label(name)} minus {label(FULL_BASELINE)}",
                      "per budget, mean [95% interval]": _evidence(full), "verdict": v_full},
                     {"model": model, "difference": f"{label(name)} minus {label(control)}",
                      "per budget, mean [95% interval]": _evidence(against), "verdict": v_control}]
            if not against:
                sentences.append(f"**{label(name)}, {model}**: the control ({label(control)}) has no runs paired "
                                 f"with the method's yet, so it cannot change the verdict ({v_full}).")
            else:
                change = "does not change" if v_control == v_full else "changes"
                sentences.append(f"**{label(name)}, {model}**: against {label(FULL_BASELINE)} the verdict is "
                                 f"*{v_full}*; against {label(control)} it is *{v_control}* ({why}): the control "
                                 f"{change} the verdict.")
    return pd.DataFrame(rows), sentences


def peak_lr(run_dir: str | Path) -> float | None:
    """The peak learning rate a run trained with: its method's own `lr` where it has one, else the recipe's."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    own = (config.get("method_settings") or {}).get("lr")
    return own if own is not None else (config.get("recipe") or {}).get("lr")


def _peaks(runs: pd.DataFrame, model: str, method: str, budget_s: float) -> str:
    mine = runs[(runs["model"] == model) & (runs["method"] == method) & (runs["budget_rst_s"] == budget_s)]
    values = sorted({v for v in (peak_lr(d) for d in mine["run_dir"]) if v is not None})
    return ", ".join(f"{v:g}" for v in values) or "-"


def _batch_label(batch_sizes: dict, model: str, which: int) -> str:
    sizes = batch_sizes.get(model)
    return f"{sizes[which]} a step" if sizes else ("the preset's", "the control's")[which]


def batch_control(runs: pd.DataFrame, control_runs: pd.DataFrame, exclude_seeds=(), control_exclude_seeds=(),
                  margin: float = GAIN_MARGIN_NATS, claims_of=registry_claims,
                  batch_sizes: dict | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Each optimizer run in the batch-size control (`control_runs`), its claims against the baseline held at the
    control's budget(s) at both batch sizes: the preset's runs (`runs`) and the control's. `batch_sizes`: model ->
    (sequences a step in the preset, in the control). Returns the table, two rows per optimizer and model (one per
    batch size: peaks, evidence, verdict), and one sentence per optimizer and model saying whether the larger batch
    changes the verdict."""
    rows, sentences = [], []
    if control_runs.empty:
        return pd.DataFrame(), sentences
    batch_sizes = batch_sizes or {}
    budgets = sorted(set(control_runs["budget_rst_s"]))
    at = ", ".join(format_budget(b) for b in budgets)
    here = runs[runs["budget_rst_s"].isin(budgets)] if len(runs) else runs
    for method in sorted(set(control_runs["method"]) - {FULL_BASELINE}, key=method_order):
        for claim in (c for c in claims_of(method) if c.against == FULL_BASELINE and not c.settings):
            for model in sorted(set(control_runs[control_runs["method"] == method]["model"])):
                small = paired_cells(here, model, method, FULL_BASELINE, exclude_seeds) if len(here) else []
                large = paired_cells(control_runs, model, method, FULL_BASELINE, control_exclude_seeds)
                v_small = judge(claim.expects, small, margin)[0]
                v_large, why, _ = judge(claim.expects, large, margin)
                for which, (frame, cells, verdict) in enumerate(((here, small, v_small),
                                                                 (control_runs, large, v_large))):
                    rows.append({"model": model, "method": label(method),
                                 "sequences a step": (batch_sizes[model][which] if model in batch_sizes
                                                      else ("preset's", "control's")[which]),
                                 "peak lr (method / baseline)": " / ".join(_peaks(frame, model, m, budgets[0])
                                                                           for m in (method, FULL_BASELINE)),
                                 f"minus baseline at {at}, mean [95% interval]": _evidence(cells, bare=True),
                                 f"verdict ({claim.expects})": verdict})
                small_at, large_at = (_batch_label(batch_sizes, model, i) for i in (0, 1))
                lead = f"**{label(method)}, {model}** at {at} ({claim.text.rstrip('.')})"
                if not any(c.seeds >= MIN_SEEDS for c in large):  # too few seeds at the larger batch: no change yet
                    sentences.append(f"{lead}: *{v_small}* at {small_at}; at {large_at} it cannot be judged yet "
                                     f"({why}), so the control does not decide anything yet.")
                    continue
                change = "does not change" if v_small == v_large else "changes"
                sentences.append(f"{lead}: *{v_small}* at {small_at}, *{v_large}* at {large_at} ({why}): the "
                                 f"larger batch {change} the verdict.")
    return pd.DataFrame(rows), sentences


def baseline_at_both_batches(runs: pd.DataFrame, control_runs: pd.DataFrame, exclude_seeds=(),
                             control_exclude_seeds=(), batch_sizes: dict | None = None,
                             floors: dict | None = None) -> list[str]:
    """Per model, one sentence: the baseline's final validation loss (mean [95% interval] over the seeds that count)
    at the control's budget at both batch sizes, against the context-free floor (`floors`, model -> nats): where the
    larger batch leaves the baseline at or above its floor, the control compares word-frequency models."""
    out = []
    if control_runs.empty:
        return out
    batch_sizes, floors = batch_sizes or {}, floors or {}
    budgets = sorted(set(control_runs["budget_rst_s"]))

    def finals(frame, model, excluded):
        if frame.empty:
            return []
        done = frame[(frame["model"] == model) & (frame["method"] == FULL_BASELINE) & (frame["status"] == "complete")
                     & frame["budget_rst_s"].isin(budgets) & ~frame["seed"].isin(list(excluded))]
        return done["final_val_loss"].tolist()

    for model in sorted(set(control_runs[control_runs["method"] == FULL_BASELINE]["model"])):
        parts, above = [], []
        for which, (frame, excluded) in enumerate(((runs, exclude_seeds), (control_runs, control_exclude_seeds))):
            mean, low, high, n = mean_ci(finals(frame, model, excluded))
            if n == 0:
                continue
            where = _batch_label(batch_sizes, model, which)
            interval = f" [{low:.3f}, {high:.3f}]" if n > 1 else " (one seed)"
            parts.append(f"{mean:.3f}{interval} at {where}")
            if model in floors and mean >= floors[model]:
                above.append(where)
        if not parts:
            continue
        floor = f"; its context-free floor is {floors[model]:.3f}" if model in floors else ""
        verdict = (f", so at {' and '.join(above)} it has not left the floor and the comparison there is between "
                   "models of word frequencies" if above else "")
        out.append(f"**{label(FULL_BASELINE)}, {model}** at {', '.join(map(format_budget, budgets))} ends at "
                   f"{' and '.join(parts)}{floor}{verdict}.")
    return out
