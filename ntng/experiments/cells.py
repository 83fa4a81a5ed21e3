"""The grid's cells: what a grid of models x methods x budgets x seeds is, and what each cell's run directory holds.

Planning reads no run directory: `plan_grid` lays the cells out, `plan_ablations` adds the paper's ablations,
`run_order` says which start first. summary.json is the source of truth for what a run directory holds
(`cell_state`):

- `complete`: skipped, nothing is started;
- `diverged`: final (the same seed diverges again), reported as diverged; delete the directory to retry;
- `complete`, `diverged` or interrupted, but made with other settings than the preset gives the cell today (a tuned
  default changed since: `stale_settings`): reported as failed, naming them, and left as it is (not resumed); move
  it away to re-run it;
- config.json + checkpoint.pt (`running`, or `failed` after its first checkpoint): resumed, not restarted;
- anything else (nothing yet, a cell refused before training, killed before its first checkpoint): started afresh.

How a cell runs is `ntng.experiments.executors`; the sweep over them is `ntng.experiments.grid`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ntng.errors import RunError, UsageError
from ntng.presets import format_budget, middle_budget, parse_budget
from ntng.training.records import RunDir
from ntng.training.variants import ABLATION_MODELS, base_method, canonical_method, run_name


@dataclass(frozen=True)
class Cell:
    """One run of the grid: `method` on `model` at `budget` with `seed`, in `run_dir`."""

    model: str
    method: str
    budget: str  # as named in the run directory: format_budget(parse_budget(...)), e.g. "10s", "3m"
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.model}/{self.method}/{self.budget}/seed{self.seed}"


# --- planning --------------------------------------------------------------------------------------------

def _unique(values) -> list:
    return list(dict.fromkeys(values))


def plan_grid(preset: str, models, methods, budgets, seeds, results: Path) -> list[Cell]:
    """Every cell in grid order (models, methods, budgets, seeds); duplicates (e.g. 60s and 1m) once. A method
    may be a variant (`ntng.training.variants`): its run directory is named by the variant."""
    names = _unique(format_budget(parse_budget(b)) for b in budgets)
    return [Cell(m, meth, b, s, Path(results) / preset / m / run_name(meth) / b / f"seed{s}")
            for m in models for meth in methods for b in names for s in seeds]


def plan_ablations(preset: str, models, budgets, seeds, results: Path) -> list[Cell]:
    """The paper's ablations (ntng.methods.paper_ablations) at the middle of the grid's budgets (the preset's by
    default: 12 h of the paper's 6/12/24 h), for the models the paper ran them on."""
    from ntng.methods import paper_ablations

    return plan_grid(preset, [m for m in models if m in ABLATION_MODELS], paper_ablations(),
                     [middle_budget(budgets)], seeds, results)


def check_methods(methods) -> list[str]:
    """Methods and variants by their canonical names (`sophia+free_hessian`); a method no one can find (a
    built-in, an entry point, module:Class) is refused. A variant's settings are checked by each cell (a setting
    a method does not take fails that cell alone)."""
    return _unique(canonical_method(text) for text in _check_list("methods", methods))


def _check_list(what: str, values, allowed=None) -> list:
    values = _unique(values)
    if not values:
        raise UsageError(f"no {what} to sweep")
    for value in values:
        if allowed is not None and value not in allowed:
            raise UsageError(f"unknown {what[:-1]} {value!r} (choose from {', '.join(allowed)})")
    return values


def prepares(method: str) -> bool:
    """Whether the method makes something before its runs that its other runs reuse (`Method.prepare`, e.g.
    RHO-LOSS's irreducible-loss model); False for a method that cannot be found here."""
    from ntng.errors import NtngError
    from ntng.methods import Method, find_method

    try:
        return find_method(base_method(method)).prepare is not Method.prepare
    except NtngError:
        return False


def run_order(tasks: list[dict]) -> list[int]:
    """The order cells start in: per model and method that prepares something shared (`prepares`: RHO-LOSS trains
    and scores its irreducible-loss model, minutes at smoke), its first cell first and its other cells last (they
    reuse it; started next to the first, they would hold a job slot idle waiting on its lock), the rest in grid
    order in between."""
    first, middle, last, seen = [], [], [], set()
    shared = {m: prepares(m) for m in {task["method"] for task in tasks}}
    for k, task in enumerate(tasks):
        key = (task["model"], base_method(task["method"]))
        if not shared[task["method"]]:
            middle.append(k)
        elif key in seen:
            last.append(k)
        else:
            seen.add(key)
            first.append(k)
    return first + middle + last


def _finetune_budgets(finetune, budgets: list[str]) -> set[str]:
    """The grid budgets whose runs are fine-tuned: `finetune` True (all), False/None (none) or some budgets."""
    grid = {format_budget(parse_budget(b)) for b in budgets}
    if finetune is None or isinstance(finetune, bool):
        return grid if finetune else set()
    chosen = {format_budget(parse_budget(b)) for b in _check_list("fine-tuning budgets", finetune)}
    if not chosen <= grid:
        raise UsageError(f"fine-tuning budget(s) {', '.join(sorted(chosen - grid))} not in the grid's budgets "
                         f"({', '.join(budgets)})")
    return chosen


# --- what a run directory holds ----------------------------------------------------------------------------

def cell_state(run_dir: Path) -> str:
    """What a sweep does with `run_dir`: "complete", "diverged", "resume" or "fresh" (see the module doc)."""
    run = RunDir(run_dir)
    try:
        status = run.read_summary().get("status") if run.summary_path.exists() else None
    except RunError:  # a damaged summary says nothing; the checkpoint decides
        status = None
    if status in ("complete", "diverged"):
        return status
    if run.config_path.exists() and run.checkpoint_path.exists():
        return "resume"
    return "fresh"


def stale_settings(run_dir: Path, model: str, method: str, preset, keep_evaluation: bool = False) -> list[str]:
    """The settings a run in `run_dir` (finished or interrupted) was made with that `preset` no longer gives it
    (config.json's recipe, method settings and evaluation against `ntng.training.spec.settings_in_force`; not the
    evaluation with `keep_evaluation`); [] when they agree or the record cannot tell."""
    from ntng.training.spec import changed_settings, settings_in_force  # here: importing the grid loads no torch

    try:
        config = RunDir(run_dir).read_config()
        now = settings_in_force(model, method, preset)
        if keep_evaluation:
            now.pop("evaluation")
    except Exception:  # unreadable, or a method that cannot be built here: its cell says why when it runs
        return []
    return changed_settings(config, now)


def _read_summary(run: RunDir) -> dict | None:
    try:
        return run.read_summary() if run.summary_path.exists() else None
    except RunError:
        return None


def finetune_done(run_dir: Path, recipe) -> bool:
    """Every offline task of a run fine-tuned with `recipe` (a FinetuneRecipe), as ntng.finetune would judge."""
    from ntng.experiments import downstream

    recipe = downstream.recipe_for_suite(recipe, downstream.OFFLINE_SUITE)
    return all(downstream.is_up_to_date(downstream.result_path(run_dir, name), recipe)
               for name in downstream.check_tasks(None))
