"""Tuning on equal terms (`ntng tune`), as the paper tuned every method at its scale (Section 3, Appendix C).

Each method declares the hyper-parameters the paper tuned and the values to try (`Method.tuning()`: the current
value first, then a factor of two either side, or the method's own rule). The grid goes one axis at a time around
the current values: a centre run sets every tuned key to its current value, and each other value of a key is one
run with the other keys at the centre — k tuned keys make 1 + 2k runs, and every key gets three trials. All runs
at one budget (the preset's smallest) and one seed; the value with the lowest final validation loss is chosen.
A real-valued hyper-parameter (a float; not a whole number such as a mega-batch factor, nor a list such as stacking
points, whose grids are the method's own) whose chosen value is the smallest or largest tried is followed outward by
the same factor, one run at a time, at most `MAX_EXTENSIONS` per axis, and a value beyond the edge is chosen only by
beating the previous choice by more than the noise margin: no method's optimum is left outside its grid because its
current value started far from it. Every such axis, the baseline's peak included, follows the same rule.

The plan (the runs, each axis's values, the centre and the value at preset `paper`) is written to
RESULTS/<preset>/tuning.json before anything runs and reused when the same command runs again, so an interrupted
tuning continues with the plan it started with even after the preset's defaults take the chosen values. A tuning of
methods the plan does not hold (a method added later), at the same budget, seed and keys, joins the plan; any other
change is refused.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ntng.errors import UsageError
from ntng.methods import build_method, method_names
from ntng.presets import MODELS, PRESETS, format_budget, get_preset, parse_budget
from ntng.training.records import write_json
from ntng.training.variants import canonical_method, run_name, variant_name

PLAN_NAME = "tuning.json"
# a value replaces the centre only when it lowers the final loss by more than this: the mini BERT baseline's final
# losses over seeds 0-2 spread 0.008 nats (docs/models.md), so a smaller gain on one seed is not evidence
NOISE_MARGIN_NATS = 0.01
# a value chosen at the edge of its axis is followed outward by one more factor this many times at most: two more
# doublings (or halvings) cover a current value a factor of 8 from the optimum, and each costs one run
MAX_EXTENSIONS = 2


def plan_tuning(preset: str, models=MODELS, methods=None, budget: str | None = None, seed: int = 0,
                keys=None) -> dict:
    """Every axis of every method that runs on each model (by default the methods the paper studied on it); with
    `keys`, only the axes of those hyper-parameters (`lr`, `recipe.lr`: a control that re-tunes the peak only)."""
    preset_obj = get_preset(preset)
    budget = format_budget(parse_budget(budget or min(preset_obj.budgets, key=parse_budget)))
    axes, cells = [], {}
    for model in models:
        if model not in MODELS:
            raise UsageError(f"unknown model {model!r}")
        cells[model] = []
        for method in methods or method_names():
            hooks = build_method(method, model, preset_obj)
            if methods is None and model not in hooks.studied_on:
                continue
            grid = {k: v for k, v in hooks.tuning().items() if keys is None or k in keys}
            if not grid:
                continue
            paper = build_method(method, model, PRESETS["paper"]).tuning()
            centre = {key: values[0] for key, values in grid.items()}
            for key, values in grid.items():
                runs = [canonical_method(variant_name(method, {**centre, key: value})) for value in values]
                dirs = [run_name(run) for run in runs]
                axes.append({"model": model, "method": method, "key": key, "values": values, "runs": runs,
                             "run_dirs": dirs,
                             "centre": values[0], "paper": paper[key][0] if key in paper else None})
                cells[model] += [run for run in runs if run not in cells[model]]
    if keys is not None and not axes:
        raise UsageError(f"no method to tune has a hyper-parameter named {', '.join(keys)}")
    return {"preset": preset, "budget": budget, "seed": seed, "planned_on": time.strftime("%Y-%m-%d"),
            "axes": axes, "runs": cells, **({"keys": sorted(keys)} if keys is not None else {})}


def plan_path(results: str | Path, preset: str) -> Path:
    return Path(results) / preset / PLAN_NAME


def tuned_presets(results: str | Path) -> list[str]:
    """The presets with a tuning plan under `results`."""
    return sorted(path.parent.name for path in Path(results).glob(f"*/{PLAN_NAME}"))


def join_plan(plan: dict, other: dict) -> None:
    """Add another tuning's axes and runs (other methods at the same preset, budget, seed and keys) to `plan`, in
    place: one plan per preset, so the tuning page and the verdicts' tuning seed see every method's."""
    plan["axes"] += other["axes"]
    for model, runs in other["runs"].items():
        mine = plan["runs"].setdefault(model, [])
        mine += [run for run in runs if run not in mine]
    plan.setdefault("joined", []).append({"methods": sorted({a["method"] for a in other["axes"]}),
                                          "planned_on": other["planned_on"]})


def check_same_plan(plan: dict, path: Path, models, methods, budget, seed, keys=None) -> None:
    """An interrupted tuning continues its own plan (or the part of it of some of its methods); asking for another
    one is refused, not silently ignored."""
    asked = {"models": None if models is None else sorted(models),
             "methods": None if methods is None else sorted(canonical_method(m) for m in methods),
             "budget": None if budget is None else format_budget(parse_budget(budget)), "seed": seed,
             "keys": None if keys is None else sorted(keys)}
    planned = {"models": sorted(plan["runs"]), "methods": sorted({a["method"] for a in plan["axes"]}),
               "budget": plan["budget"], "seed": plan["seed"], "keys": plan.get("keys")}
    # methods: a part of the plan's may continue on its own (a plan that others joined)
    differ = [key for key, value in asked.items() if value is not None and
              (not set(value) <= set(planned[key]) if key == "methods" else value != planned[key])]
    if differ:
        raise UsageError(f"{path} plans another tuning ({', '.join(differ)} differ); delete it to plan afresh, or "
                         "give another --results")


def tune(preset: str, models=None, methods=None, budget: str | None = None, seed: int | None = None,
         results: str | Path = "results/tuning", jobs: int = 1, log=print, keys=None) -> list[dict]:
    """Plan (or continue the plan of an interrupted tuning), run every planned run through the sweep (complete
    runs are skipped), and return `tuning_rows`. Defaults: both models, every method the paper ran on each, the
    preset's smallest budget, seed 0."""
    from ntng.experiments.grid import sweep

    path = plan_path(results, preset)
    fresh = not path.exists()
    asked = None if methods is None else {canonical_method(m) for m in methods}
    if fresh:
        plan = plan_tuning(preset, models or MODELS, methods, budget, 0 if seed is None else seed, keys)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, plan)
    else:
        plan = json.loads(path.read_text())
        planned = {a["method"] for a in plan["axes"]}
        if asked and not asked & planned:  # other methods on the same terms: they join the plan
            check_same_plan(plan, path, models, None, budget, seed, keys)
            join_plan(plan, plan_tuning(preset, sorted(plan["runs"]), sorted(asked), plan["budget"], plan["seed"],
                                        plan.get("keys")))
            write_json(path, plan)
            log(f"{', '.join(sorted(asked))} join the plan in {path}")
        else:
            check_same_plan(plan, path, models, methods, budget, seed, keys)
            log(f"continuing the plan of {plan['planned_on']} in {path}")
    try:
        # the runs of the methods asked for (all, by default): a joined plan's earlier runs are not touched
        wanted = None if asked is None else {run for a in plan["axes"] if a["method"] in asked for run in a["runs"]}
        todo = {model: [run for run in runs if wanted is None or run in wanted] for model, runs in plan["runs"].items()}
        todo = {model: runs for model, runs in todo.items() if runs}
        while todo:
            for model, runs in todo.items():
                log(f"{model}: {len(runs)} runs at {plan['budget']}, seed {plan['seed']}")
                # a tuning keeps the evaluation it chose by: its runs made before the preset's evaluation set
                # changed still count (the tuning page states the set)
                sweep(preset=preset, models=[model], methods=runs, budgets=[plan["budget"]],
                      seeds=[plan["seed"]], results=results, jobs=jobs, keep_evaluation=True, log=log)
            added = extend_plan(plan, rows_for_plan(results, plan))
            if added:
                write_json(path, plan)
            todo = {}
            for model, run in added:
                log(f"{model}: {run}: the chosen value is at the edge of its axis; trying one step beyond")
                todo.setdefault(model, []).append(run)
    except UsageError:
        if fresh and not any((path.parent / model).exists() for model in plan["runs"]):
            path.unlink()  # refused before anything ran: leave nothing behind
        raise
    return tuning_rows(results, preset)


def choose(trials: list[dict], centre, planned: int) -> dict | None:
    """The chosen trial of one axis. Of the `planned` first values, the lowest complete final loss, unless it beats
    the centre by NOISE_MARGIN_NATS or less (one seed cannot tell them apart: the centre stays); then each value
    tried beyond the edge, in order, replaces the choice only by beating it by more than the margin too, so noise
    does not lead the grid outward. None until a run completes."""
    def done(t):
        return t["status"] == "complete" and t["final_val_loss"] is not None and math.isfinite(t["final_val_loss"])

    first = [t for t in trials[:planned] if done(t)]
    if not first:
        return None
    best = min(first, key=lambda t: t["final_val_loss"])
    centre_trial = next((t for t in first if t["value"] == centre), None)
    if centre_trial is not None and centre_trial["final_val_loss"] - best["final_val_loss"] <= NOISE_MARGIN_NATS:
        best = centre_trial
    for trial in trials[planned:]:
        if done(trial) and best["final_val_loss"] - trial["final_val_loss"] > NOISE_MARGIN_NATS:
            best = trial
    return best


def next_extension(axis: dict, chosen) -> float | None:
    """The value one step beyond `chosen` that `extend_plan` would add to `axis` (None: none due)."""
    if axis.get("extended", 0) >= MAX_EXTENSIONS:
        return None
    value = value_beyond(axis["values"], chosen)
    return None if value is None or value in axis["values"] else value


def value_beyond(tried: list, chosen) -> float | None:
    """The next value outward when `chosen` is the smallest or largest of the real values `tried` on its axis:
    `chosen` times its ratio to its neighbour (0.0028 after 0.0056 -> 0.0014). None when `chosen` is inside, or the
    axis is not real-valued and positive (a whole number such as a mega-batch factor, a list of points, a zero)."""
    if not all(isinstance(v, float) for v in tried) or not isinstance(chosen, float) or chosen <= 0:
        return None
    smaller = [v for v in tried if v < chosen]
    larger = [v for v in tried if v > chosen]
    if smaller and larger:
        return None
    neighbour = min(larger) if larger else max(smaller) if smaller else None
    if neighbour is None or neighbour <= 0:
        return None
    return float(f"{chosen * chosen / neighbour:.12g}")  # no binary noise in run names


def within_range(preset: str, model: str, method: str, settings: dict) -> bool:
    """Whether the method accepts these options (its own range checks); recipe.FIELD settings are not its own."""
    options = {k: v for k, v in settings.items() if not k.startswith("recipe.")}
    try:
        build_method(method, model, get_preset(preset), **options)
    except UsageError:
        return False
    return True


def extend_plan(plan: dict, rows: list[dict]) -> list[tuple[str, str]]:
    """Add one run beyond the edge to every complete axis whose chosen value is at its edge (`value_beyond`), at
    most `MAX_EXTENSIONS` times per axis; returns the (model, run) pairs added. `plan` is changed in place."""
    added = []
    for axis, row in zip(plan["axes"], rows, strict=True):
        value = row["beyond"]
        if value is None:
            continue
        centre = {r["key"]: r["centre"] for r in rows if r["model"] == axis["model"] and r["method"] == axis["method"]}
        if not within_range(plan["preset"], axis["model"], axis["method"], {**centre, axis["key"]: value}):
            continue  # one factor further leaves the method's valid range (a momentum past 1): the axis ends here
        run = canonical_method(variant_name(axis["method"], {**centre, axis["key"]: value}))
        axis["values"].append(value)
        axis["runs"].append(run)
        axis.setdefault("run_dirs", list(axis["runs"][:-1])).append(run_name(run))
        axis["extended"] = axis.get("extended", 0) + 1
        runs = plan["runs"].setdefault(axis["model"], [])
        if run not in runs:
            runs.append(run)
            added.append((axis["model"], run))
    return added


def _final_loss(run_dir: Path) -> tuple[str, float | None]:
    path = run_dir / "summary.json"
    if not path.exists():
        return "missing", None
    try:
        summary = json.loads(path.read_text())
        return summary.get("status", "missing"), summary.get("final_val_loss")
    except (OSError, ValueError, AttributeError):
        return "unreadable", None


def evaluated_on(run_dir: Path) -> str | None:
    """In words, the set a run's validation loss was measured on, from its config.json (None if unreadable)."""
    try:
        config = json.loads((Path(run_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    precision = config.get("precision", "?")
    evaluation = config.get("evaluation")
    if isinstance(evaluation, dict) and "windows" in evaluation:
        which = ("the whole validation split" if evaluation["windows"] >= evaluation["of_windows"] else
                 f"{evaluation['windows']:,} windows spread evenly over the validation split")
        return f"{which} ({evaluation['of_windows']:,} windows), in {precision}"
    wanted = (config.get("recipe") or {}).get("eval_sequences")
    return f"the first {wanted} windows of the validation split (a prefix of a split packed source by source), in {precision}"


def tuning_rows(results: str | Path, preset: str) -> list[dict]:
    """One row per axis: the values tried, each run's status and final loss, and the chosen value (the lowest
    complete final loss; None until a run of the axis completes)."""
    path = plan_path(results, preset)
    if not path.exists():
        return []
    return rows_for_plan(results, json.loads(path.read_text()))


def rows_for_plan(results: str | Path, plan: dict) -> list[dict]:
    """`tuning_rows` of a plan in hand."""
    preset = plan["preset"]
    rows = []
    for axis in plan["axes"]:
        trials, evaluations = [], set()
        for value, run, name in zip(axis["values"], axis["runs"], axis.get("run_dirs", axis["runs"]), strict=True):
            run_dir = Path(results) / preset / axis["model"] / name / plan["budget"] / f"seed{plan['seed']}"
            status, loss = _final_loss(run_dir)
            trials.append({"value": value, "run": run, "status": status, "final_val_loss": loss})
            evaluations.add(evaluated_on(run_dir))
        best = choose(trials, axis["centre"], planned=len(axis["values"]) - axis.get("extended", 0))
        settled = all(t["status"] in ("complete", "diverged") for t in trials)  # a diverged run is not re-run
        beyond = next_extension(axis, best["value"]) if best and settled else None
        rows.append({**{k: axis[k] for k in ("model", "method", "key", "centre", "paper")},
                     "preset": preset, "budget": plan["budget"], "seed": plan["seed"], "trials": trials,
                     "chosen": best["value"] if best else None,
                     "chosen_loss": best["final_val_loss"] if best else None,
                     # every run final and no step beyond the edge still due
                     "complete": settled and beyond is None, "settled": settled, "beyond": beyond,
                     "extended": axis.get("extended", 0),
                     "evaluated_on": sorted(e for e in evaluations if e)})
    return rows


def format_tuning(rows: list[dict]) -> str:
    def show(value):
        return ",".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"

    lines = [f"{'model':5s} {'method':20s} {'key':18s} {'paper':>12s} {'tried (final loss)':44s} chosen"]
    for r in rows:
        tried = "  ".join(f"{show(t['value'])} ({t['final_val_loss']:.3f})" if t["final_val_loss"] is not None
                          else f"{show(t['value'])} ({t['status']})" for t in r["trials"])
        paper = "" if r["paper"] is None else show(r["paper"])
        chosen = "" if r["chosen"] is None else show(r["chosen"]) + ("" if r["complete"] else " (so far)")
        lines.append(f"{r['model']:5s} {r['method']:20s} {r['key']:18s} {paper:>12s} {tried:44s} {chosen}")
    return "\n".join(lines)
