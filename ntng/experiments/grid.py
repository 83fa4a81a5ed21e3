"""The grid: models x methods x budgets x seeds, each cell one papermill execution of notebooks/pretrain.ipynb.

`sweep` checks the grid-wide input, plans the cells (`ntng.experiments.cells`: what each cell's run directory holds
decides whether it is skipped, resumed, started afresh or reported as stale), runs the others with an executor
(`ntng.experiments.executors`: local processes or Ray tasks) and returns one row per cell; `format_table` prints them.
With `finetune`, every complete run is then fine-tuned on the offline tasks (results in DIR/finetune/) unless its
results are up to date.

Grid-wide mistakes (an unknown model, a bad budget, no data) are refused before anything is written; a mistake that
concerns one cell (a method that cannot run at this preset) fails that cell alone, and the others go on.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

from ntng.errors import UsageError
from ntng.experiments.cells import (
    _check_list,
    _finetune_budgets,
    _read_summary,
    cell_state,
    check_methods,
    finetune_done,
    plan_ablations,
    plan_grid,
    run_order,
    stale_settings,
)
from ntng.experiments.executors import EXECUTORS, _execute_local, _execute_ray, _result, import_ray
from ntng.presets import MODELS, get_preset, parse_budget
from ntng.resources import notebook as shipped_notebook
from ntng.training.progress import Bar
from ntng.training.records import RunDir

NOTEBOOK = shipped_notebook("pretrain.ipynb")  # the checkout's, or the copy inside an installed package
FINETUNE_NOTEBOOK = NOTEBOOK.with_name("finetune.ipynb")
CELL_STATUSES = ("complete", "skipped", "failed", "diverged")  # skipped: found complete, nothing was run
# Environment a cell's kernel needs from the sweep's (Ray workers on other machines do not inherit it).
FORWARDED_ENV = ("NTNG_PRESETS_FILE", "NTNG_PRECISION", "NTNG_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                 "PYTHONPATH")  # PYTHONPATH: where a plug-in method given as module:Class is found


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"bad seed {seed!r}: expected a whole number >= 0")
    return seed


# --- the sweep -------------------------------------------------------------------------------------------

def _show(value, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[dict]) -> str:
    """The final table: one line per cell, then counts and every failure's reason."""
    header = ("model", "method", "budget", "seed", "status", "RST s", "wall s", "val_loss", "run directory")
    lines = [header] + [(r["model"], r["method"], r["budget"], str(r["seed"]), r["status"], _show(r["rst_s"], 1),
                         _show(r["wall_s"], 1), _show(r["final_val_loss"], 4), str(r["run_dir"])) for r in rows]
    if any(r.get("finetune") for r in rows):  # a sweep with fine-tuning: what happened to it, per cell
        column = ["finetune"] + [r.get("finetune") or "-" for r in rows]
        lines = [(*line[:-1], extra, line[-1]) for line, extra in zip(lines, column, strict=True)]
    numeric = {5, 6, 7}
    widths = [max(len(line[k]) for line in lines) for k in range(len(lines[0]))]
    out = ["  ".join(cell.rjust(w) if k in numeric else cell.ljust(w)
                     for k, (cell, w) in enumerate(zip(line, widths, strict=True))).rstrip() for line in lines]
    counts = {s: sum(r["status"] == s for r in rows) for s in CELL_STATUSES}
    out.append(f"{len(rows)} cells: {counts['complete']} complete, {counts['skipped']} skipped (already complete), "
               f"{counts['failed']} failed, {counts['diverged']} diverged")
    for r in rows:
        if r["status"] in ("failed", "diverged"):
            out.append(f"{r['status']}: {r['model']}/{r['method']}/{r['budget']}/seed{r['seed']}: {r['error']} "
                       f"(see {Path(r['run_dir']) / 'notebook.ipynb'})")
    return "\n".join(out)


def _display_path(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def sweep(preset: str = "smoke", models=None, methods=None, budgets=None, seeds=None, executor: str = "local",
          ray_address: str | None = None, jobs: int = 1, results: str | Path = "results",
          data_dir: str | Path | None = None, finetune: bool = False, ablations: bool = False,
          keep_evaluation: bool = False, log=print) -> list[dict]:
    """Run the grid models x methods x budgets x seeds (defaults: both models, each built-in method on the models
    the paper ran it on, the preset's budgets and seeds) through notebooks/pretrain.ipynb; a method may be a variant (`sophia+free_hessian`). With
    `ablations`, the paper's ablations join the grid at its middle budget (`plan_ablations`). Returns one row per cell, in grid order: model, method, budget,
    seed, run_dir, status (complete | skipped | failed | diverged), rst_s, wall_s (the run's training wall time),
    final_val_loss, error, elapsed_s (this call's seconds on the cell, papermill and kernel start included),
    resumed, finetune. With `finetune` (True, or some of the grid's budgets: only their runs), every complete run
    is then fine-tuned on the offline tasks (into DIR/finetune/; see the module's docstring) unless its results
    are up to date; finetune says complete | skipped | failed (None where not asked). `keep_evaluation`: a run
    evaluated on another set or precision (`spec.evaluation_in_force`) still counts as its cell (a finished tuning
    keeps the records it chose by). Bad grid-wide input raises UsageError before anything is written."""
    from ntng.data import corpus as data_mod
    from ntng.training.spec import check_writable

    preset_obj = get_preset(preset)
    models = _check_list("models", MODELS if models is None else models, MODELS)
    from ntng.methods import studied_methods

    # the default grid is the paper's: each built-in method on the models it was studied on; named methods run on
    # every model asked
    by_model = {m: studied_methods(m) if methods is None else check_methods(methods) for m in models}
    budgets = _check_list("budgets", preset_obj.budgets if budgets is None else budgets)
    for budget in budgets:
        parse_budget(budget)
    seeds = [_check_seed(s) for s in _check_list("seeds", preset_obj.seeds if seeds is None else seeds)]
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r} (choose from {', '.join(EXECUTORS)})")
    if ray_address and executor != "ray":
        raise UsageError("--ray-address needs --executor ray")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UsageError(f"bad jobs {jobs!r}: expected a whole number >= 1")
    if executor == "ray":
        import_ray()
    for notebook in (NOTEBOOK, FINETUNE_NOTEBOOK) if finetune else (NOTEBOOK,):
        if not notebook.is_file():
            raise UsageError(f"no notebook at {notebook}: run from a checkout, or install ntng from a wheel")
    data_dir = Path(data_dir or data_mod.default_data_dir()).resolve()  # workers need no shared working directory
    for model in models:
        packed = data_dir / "offline" / "packed" / data_mod.packing_name(model, preset_obj)
        if not packed.exists():
            raise UsageError(f"no packed data at {packed}: run `ntng data` first"
                             + (f" (with --preset {preset_obj.name})" if preset_obj.name == "paper" else ""))
    finetune_at = _finetune_budgets(finetune, budgets)
    if finetune_at:
        for task_name in data_mod.TASKS:  # the offline stand-in for GLUE, which fine-tuning uses by default
            if not (data_dir / "tasks" / task_name).exists():
                raise UsageError(f"no task data at {data_dir / 'tasks' / task_name}: run `ntng data` first")
    shown_results = Path(results)
    check_writable(shown_results)

    cells = [cell for m in models
             for cell in plan_grid(preset_obj.name, [m], by_model[m], budgets, seeds, shown_results.resolve())]
    if ablations:
        known = {c.run_dir for c in cells}
        cells += [c for c in plan_ablations(preset_obj.name, models, budgets, seeds, shown_results.resolve())
                  if c.run_dir not in known]
    rows: list[dict | None] = [None] * len(cells)
    notebook_text = NOTEBOOK.read_text()
    finetune_text = FINETUNE_NOTEBOOK.read_text() if finetune_at else None
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    tasks, task_index = [], []
    for i, cell in enumerate(cells):
        tuned = cell.budget in finetune_at
        task = {"model": cell.model, "method": cell.method, "budget": cell.budget, "seed": cell.seed,
                "preset": preset_obj.name, "run_dir": str(cell.run_dir), "data_dir": str(data_dir),
                "notebook": notebook_text, "env": env, "finetune": tuned}
        if tuned:
            task.update(finetune_notebook=finetune_text, finetune_recipe=asdict(preset_obj.finetune))
        state = cell_state(cell.run_dir)
        stale = stale_settings(cell.run_dir, cell.model, cell.method, preset_obj, keep_evaluation) if state in (
            "complete", "diverged", "resume") else []
        if stale:  # not what the grid would run today: not counted as its cell, not resumed, not overwritten
            rows[i] = _result(task, "failed", _read_summary(RunDir(cell.run_dir)), 0.0, error=(
                f"made with other settings than preset {preset_obj.name} gives it now ({', '.join(stale)}); left "
                f"as it is: move it away to re-run it"))
        elif state == "diverged" or (state == "complete" and not tuned):  # final: nothing is started for it
            rows[i] = _result(task, "skipped" if state == "complete" else "diverged", _read_summary(
                RunDir(cell.run_dir)), 0.0)
        elif state == "complete" and finetune_done(cell.run_dir, preset_obj.finetune):
            rows[i] = _result(task, "skipped", _read_summary(RunDir(cell.run_dir)), 0.0, finetune="skipped")
        else:
            tasks.append(task)
            task_index.append(i)
    order = run_order(tasks)
    tasks, task_index = [tasks[k] for k in order], [task_index[k] for k in order]
    finished = len(cells) - len(tasks)
    where = f"{executor}" + (f" x{jobs}" if executor == "local" else f" ({ray_address or 'local runtime'})")
    log(f"grid of {len(cells)} cells at preset {preset_obj.name} -> {_display_path(shown_results)}: "
        f"{finished} finished before, {len(tasks)} to run ({where})")

    failures = sum(r["status"] in ("failed", "diverged") for r in rows if r)
    with Bar(len(cells), "grid", log=log, initial=finished,
             bar_format="{desc}: {n}/{total} cells |{bar}| [{elapsed}<{remaining}{postfix}]") as bar:
        bar.postfix(f"failed {failures}")

        def on_done(k: int, result: dict) -> None:
            nonlocal failures
            i = task_index[k]
            rows[i] = result
            failures += result["status"] in ("failed", "diverged")
            done = sum(r is not None for r in rows)
            detail = (f"RST {_show(result['rst_s'], 1)} s, val_loss {_show(result['final_val_loss'], 4)}"
                      + (", fine-tuned" if result.get("finetune") == "complete" else "")
                      if result["status"] in ("complete", "skipped") else result["error"])
            bar.advance_to(done)
            bar.postfix(f"failed {failures}")
            bar.write(f"[{done}/{len(cells)}] {cells[i].name}: {result['status']}"
                      f"{' (resumed)' if result.get('resumed') else ''} in {result['elapsed_s']:.0f} s: {detail}")

        if tasks and executor == "local":
            _execute_local(tasks, jobs, on_done)
        elif tasks:
            _execute_ray(tasks, preset_obj, ray_address, on_done, bar.write)
    for row, cell in zip(rows, cells, strict=True):
        row["run_dir"] = _display_path(cell.run_dir)
    return rows
