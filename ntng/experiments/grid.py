"""The grid: models x methods x budgets x seeds, each cell one papermill execution of notebooks/pretrain.ipynb.

A cell runs `python -m papermill` in a subprocess into its run directory (docs/records.md:
results/<preset>/<model>/<method>/<budget>/seed<k>/) and keeps the executed notebook there as notebook.ipynb.
summary.json is the source of truth for what a directory holds:

- `complete`: skipped, nothing is started;
- `diverged`: final (the same seed diverges again), reported as diverged; delete the directory to retry;
- `complete`, `diverged` or interrupted, but made with other settings than the preset gives the cell today (a tuned
  default changed since: `stale_settings`): reported as failed, naming them, and left as it is (not resumed); move
  it away to re-run it;
- config.json + checkpoint.pt (`running`, or `failed` after its first checkpoint): resumed, not restarted;
- anything else (nothing yet, a cell refused before training, killed before its first checkpoint): started afresh.

A failing cell is recorded (summary.json `failed` with the error, its executed notebook with the traceback kept)
and the others go on. With `finetune`, every complete run is then fine-tuned on the offline tasks (results in
DIR/finetune/) unless its results are up to date: a cell that pre-trains does it in the same kernel (the notebook's
`finetune` parameter: one kernel start, and its imports, per cell instead of two); a run complete before goes
through notebooks/finetune.ipynb (its executed notebook DIR/finetune/notebook.ipynb).

Executors: `local` runs `jobs` cells at once, each in its own processes; `ray` makes each cell a Ray task asking
for the preset's `ray_cpus` / `ray_gpus`, on the cluster at `ray_address` or on a local Ray runtime started (and
shut down) for the sweep. Grid-wide mistakes (an unknown model, a bad budget, no data) are
refused before anything is written; a mistake that concerns one cell (a method that cannot run at this preset)
fails that cell alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from ntng.errors import RunError, UsageError
from ntng.presets import MODELS, format_budget, get_preset, middle_budget, parse_budget
from ntng.resources import notebook as shipped_notebook
from ntng.training.progress import Bar
from ntng.training.records import RunDir
from ntng.training.variants import ABLATION_MODELS, base_method, canonical_method, run_name

NOTEBOOK = shipped_notebook("pretrain.ipynb")  # the checkout's, or the copy inside an installed package
FINETUNE_NOTEBOOK = NOTEBOOK.with_name("finetune.ipynb")
EXECUTORS = ("local", "ray")
CELL_STATUSES = ("complete", "skipped", "failed", "diverged")  # skipped: found complete, nothing was run
LOCK_NAME = ".sweep.lock"
PARTIAL_NOTEBOOK = ".notebook-running-{}.ipynb"
NOTEBOOK_FAILED = "the run completed, but its notebook failed: "
# Environment a cell's kernel needs from the sweep's (Ray workers on other machines do not inherit it).
FORWARDED_ENV = ("NTNG_PRESETS_FILE", "NTNG_PRECISION", "NTNG_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                 "PYTHONPATH")  # PYTHONPATH: where a plug-in method given as module:Class is found
KERNEL_START_TIMEOUT_S = 300  # papermill's default (60 s) is short for several kernels importing torch on 2 cores


@dataclass(frozen=True)
class Cell:
    model: str
    method: str
    budget: str  # as named in the run directory: format_budget(parse_budget(...)), e.g. "10s", "3m"
    seed: int
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.model}/{self.method}/{self.budget}/seed{self.seed}"


# --- planning (pure) -------------------------------------------------------------------------------------

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
    (config.json's recipe, method settings and evaluation against `train.settings_in_force`; not the evaluation
    with `keep_evaluation`); [] when they agree or the record cannot tell."""
    from ntng.training.loop import changed_settings, settings_in_force

    try:
        config = RunDir(run_dir).read_config()
        now = settings_in_force(model, method, preset)
        if keep_evaluation:
            now.pop("evaluation")
    except Exception:  # unreadable, or a method that cannot be built here: its cell says why when it runs
        return []
    return changed_settings(config, now)


def _check_list(what: str, values, allowed=None) -> list:
    values = _unique(values)
    if not values:
        raise UsageError(f"no {what} to sweep")
    for value in values:
        if allowed is not None and value not in allowed:
            raise UsageError(f"unknown {what[:-1]} {value!r} (choose from {', '.join(allowed)})")
    return values


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"bad seed {seed!r}: expected a whole number >= 0")
    return seed


# --- one cell (runs where the executor puts it: a thread of the sweep, or a Ray worker) -------------------

def _notebook_error(path: Path) -> str | None:
    """`ename: evalue` of the first error an executed notebook holds, if any."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                value = (out.get("evalue") or "").strip().splitlines()
                return f"{out.get('ename', 'Error')}: {value[0] if value else ''}".rstrip(": ")
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _failed_summary(task: dict, error: str, previous: dict | None) -> dict:
    """summary.json of a cell that failed outside the loop's own bookkeeping (refused, or its kernel died):
    the last recorded figures if there are any, else a run that did nothing."""
    base = {"run_dir": task["run_dir"], "model": task["model"], "method": task["method"], "preset": task["preset"],
            "seed": task["seed"], "budget_rst_s": parse_budget(task["budget"]), "rst_s": 0.0, "wall_s": 0.0,
            "steps": 0, "micro_steps": 0, "tokens": 0, "final_val_loss": None, "evals": [],
            "rst_breakdown": {"train": 0.0, "scoring": 0.0, "hessian": 0.0, "optimizer": 0.0}, "method_stats": {}}
    return {**base, **(previous or {}), "status": "failed", "final_val_loss": None, "error": error}


def _result(task: dict, status: str, summary: dict | None, elapsed_s: float, error: str | None = None,
            resumed: bool = False, finetune: str | None = None) -> dict:
    summary = summary or {}
    return {"model": task["model"], "method": task["method"], "budget": task["budget"], "seed": task["seed"],
            "run_dir": task["run_dir"], "status": status, "rst_s": summary.get("rst_s"),
            "wall_s": summary.get("wall_s"), "final_val_loss": summary.get("final_val_loss"),
            "error": error if error is not None else summary.get("error"), "elapsed_s": elapsed_s,
            "resumed": resumed, "finetune": finetune}


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


@contextlib.contextmanager
def _cell_lock(run_dir: Path):
    """Yields False when another process holds this cell (two sweeps over one results tree)."""
    import fcntl

    with open(run_dir / LOCK_NAME, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _papermill(notebook: str, executed: Path, params: dict, env: dict, on_start) -> tuple[int, str, bool]:
    """Execute a notebook (its JSON text) with papermill in a subprocess into `executed`. papermill saves as it
    goes under a partial name (not `.*.tmp-*`: the loop drops those), renamed whole at the end, interrupted or not.
    Returns (exit code, papermill's stderr, whether a notebook was written: a missing kernel writes none)."""
    executed.parent.mkdir(parents=True, exist_ok=True)
    for stale in executed.parent.glob(PARTIAL_NOTEBOOK.format("*")):  # a killed sweep's; the cell lock is ours
        stale.unlink(missing_ok=True)
    partial = executed.parent / PARTIAL_NOTEBOOK.format(f"{os.getpid()}-{threading.get_ident()}")
    written = False
    with tempfile.TemporaryDirectory(prefix="ntng-cell-") as tmp:
        source = Path(tmp) / "notebook.ipynb"
        source.write_text(notebook)
        command = [sys.executable, "-m", "papermill", str(source), str(partial), "-y", json.dumps(params),
                   "--kernel", "python3", "--no-progress-bar", "--start-timeout", str(KERNEL_START_TIMEOUT_S)]
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if on_start is not None:
            on_start(proc)
        try:
            _, stderr = proc.communicate()
        except BaseException:  # interrupted (Ctrl-C, a Ray cancel): stop the notebook; the run stays resumable
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            raise
        finally:
            if partial.exists():
                os.replace(partial, executed)
                written = True
    return proc.returncode, stderr, written


def _failure(executed: Path, code: int, stderr: str, written: bool) -> str:
    return ((_notebook_error(executed) if written else None) or _last_line(stderr)
            or f"papermill exited with code {code}")


def _pretrain_cell(task: dict, run: RunDir, state: str, env: dict, on_start) -> tuple[str, dict | None, str | None]:
    """Pre-train one cell through notebooks/pretrain.ipynb: (status, summary, error)."""
    if state == "fresh":  # leftovers of a cell that never reached a checkpoint: nothing to resume from
        for leftover in (run.summary_path, run.config_path, run.metrics_path, run.checkpoint_path):
            leftover.unlink(missing_ok=True)
    params = {"model": task["model"], "method": task["method"], "budget": task["budget"], "preset": task["preset"],
              "seed": task["seed"], "out_dir": str(run.path), "resume": state == "resume",
              "data_dir": task["data_dir"], "finetune": bool(task.get("finetune"))}
    executed = run.path / "notebook.ipynb"
    code, stderr, written = _papermill(task["notebook"], executed, params, env, on_start)
    summary = _read_summary(run)
    status = (summary or {}).get("status")
    if code == 0 and status in ("complete", "diverged"):
        return status, summary, None
    error = _failure(executed, code, stderr, written)
    if status == "complete":  # trained to the end, then a later notebook cell failed: the notebook is broken
        return "failed", summary, NOTEBOOK_FAILED + error
    if status != "failed" or "error" not in summary:  # refused before training, or the kernel died
        summary = _failed_summary(task, error, summary)
        run.write_summary(summary)
    return "failed", summary, summary.get("error") or error


def run_cell(task: dict, on_start=None) -> dict:
    """Execute one cell: notebooks/pretrain.ipynb with papermill in a subprocess, kept as run_dir/notebook.ipynb;
    with `task["finetune"]`, fine-tuned in that kernel, or (a run complete before) through notebooks/finetune.ipynb
    into run_dir/finetune/notebook.ipynb.

    `task` is plain data (it travels to Ray workers): the cell, the preset's name, the absolute data directory,
    the notebooks' JSON text and environment variables for the kernel. `on_start(process)` lets the local
    executor stop a cell's processes when the sweep is interrupted. Returns the cell's result row."""
    started = time.perf_counter()
    run = RunDir(Path(task["run_dir"]))
    run.path.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **task["env"], "NTNG_PROGRESS": "0"}  # executed notebooks get lines, not a bar
    with _cell_lock(run.path) as locked:
        if not locked:
            return _result(task, "failed", None, time.perf_counter() - started,
                           error=f"another process is running this cell ({run.path / LOCK_NAME} is locked)")
        state = cell_state(run.path)
        if state == "diverged":  # final
            return _result(task, "diverged", _read_summary(run), time.perf_counter() - started)
        resumed = state == "resume"
        status, summary, error = "skipped", _read_summary(run), None
        finetuned = None
        if task.get("finetune"):
            from ntng.presets import FinetuneRecipe

            recipe = FinetuneRecipe(**task["finetune_recipe"])
            finetuned = partial(finetune_done, run.path, recipe)
        if state != "complete":  # pre-train, and fine-tune in the same kernel when asked
            status, summary, error = _pretrain_cell(task, run, state, env, on_start)
            if status != "complete":
                trained = (summary or {}).get("status") == "complete"
                if finetuned is not None and trained and not finetuned():
                    error = f"fine-tuning failed: {error.removeprefix(NOTEBOOK_FAILED)}"
                    return _result(task, "failed", summary, time.perf_counter() - started, error, resumed,
                                   finetune="failed")
                return _result(task, status, summary, time.perf_counter() - started, error, resumed)
        finetune = None
        if finetuned is not None:
            finetune = "skipped" if state == "complete" else "complete"
            if not finetuned():  # a run pre-trained before (or without) fine-tuning: its own notebook
                executed = run.path / "finetune" / "notebook.ipynb"
                params = {"run_dir": str(run.path), "tasks": "", "data_dir": task["data_dir"]}
                code, stderr, written = _papermill(task["finetune_notebook"], executed, params, env, on_start)
                if code != 0:
                    return _result(task, "failed", summary, time.perf_counter() - started,
                                   f"fine-tuning failed: {_failure(executed, code, stderr, written)}", resumed,
                                   finetune="failed")
                status, finetune = "complete", "complete"
        return _result(task, status, summary, time.perf_counter() - started, error, resumed, finetune)


# --- executors -----------------------------------------------------------------------------------------

def _crashed(task: dict, exc: BaseException) -> dict:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return _result(task, "failed", None, 0.0, error=f"{type(exc).__name__}: {first}".rstrip(": "))


def _execute_local(tasks: list[dict], jobs: int, on_done) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    live: set = set()
    lock = threading.Lock()

    def started(proc):
        with lock:
            live.add(proc)

    def one(task):
        if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:  # cells share the cores instead of fighting over them
            task = {**task, "env": {**task["env"], "OMP_NUM_THREADS": str(threads)}}
        return run_cell(task, on_start=started)

    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ntng-cell")
    futures: dict = {}
    try:
        futures = {pool.submit(one, task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # a bug or a broken environment: this cell fails, the others go on
                result = _crashed(tasks[i], exc)
            on_done(i, result)
    except BaseException:
        for future in futures:
            future.cancel()
        with lock:
            for proc in live:
                if proc.poll() is None:
                    proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'ntng[ray]'") from None
    return ray


def _execute_ray(tasks: list[dict], preset, ray_address: str | None, on_done, log) -> None:
    ray = import_ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report to the network
    owned = not ray.is_initialized()
    cpus, gpus = preset.ray_cpus, preset.ray_gpus
    if owned:
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if ray_address:
                ray.init(address=ray_address, **quiet)
            else:
                ray.init(include_dashboard=False, object_store_memory=256 * 2**20, **quiet)  # cells pass small dicts
        except Exception as exc:
            where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray runtime"
            raise RunError(f"could not start {where}: {type(exc).__name__}: {_last_line(str(exc))}") from None
    try:
        available = ray.cluster_resources()
        if owned and not ray_address:  # one machine: ask for no more than it has, or the tasks would wait forever
            if gpus > available.get("GPU", 0):
                raise UsageError(f"preset {preset.name} asks each cell for {gpus:g} GPU(s); this machine's Ray "
                                 f"runtime has {available.get('GPU', 0):g}: use --ray-address with a GPU cluster")
            cpus = min(cpus, available.get("CPU", 1))
        elif gpus > available.get("GPU", 0) or cpus > available.get("CPU", 0):
            log(f"the cluster has {available.get('CPU', 0):g} CPUs and {available.get('GPU', 0):g} GPUs now; each cell "
                f"asks for {cpus:g} CPUs and {gpus:g} GPUs: cells wait until the cluster grows")
        remote = ray.remote(run_cell).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        threads = str(max(1, int(cpus)))
        pending = {}
        for i, task in enumerate(tasks):
            env = task["env"] if "OMP_NUM_THREADS" in os.environ else {**task["env"], "OMP_NUM_THREADS": threads}
            pending[remote.remote({**task, "env": env})] = i
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # a worker that died (OOM...) fails its cell only
                        result = _crashed(tasks[i], exc)
                    on_done(i, result)
        except BaseException:
            for ref in pending:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            raise
    finally:
        if owned:
            ray.shutdown()


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
    evaluated on another set or precision (`train.evaluation_in_force`) still counts as its cell (a finished tuning
    keeps the records it chose by). Bad grid-wide input raises UsageError before anything is written."""
    from ntng.data import corpus as data_mod
    from ntng.training.loop import check_writable

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
