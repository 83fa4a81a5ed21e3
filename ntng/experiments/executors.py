"""How cells run: one cell as one papermill execution of notebooks/pretrain.ipynb (`run_cell`), and the executors
that run many.

A cell runs `python -m papermill` in a subprocess into its run directory (docs/records.md:
results/<preset>/<model>/<method>/<budget>/seed<k>/) and keeps the executed notebook there as notebook.ipynb; what it
does with a directory it finds is `ntng.experiments.cells.cell_state`. A failing cell is recorded (summary.json
`failed` with the error, its executed notebook with the traceback kept) and the others go on. With fine-tuning asked,
a cell that pre-trains fine-tunes in the same kernel (the notebook's `finetune` parameter: one kernel start, and its
imports, per cell instead of two); a run complete before goes through notebooks/finetune.ipynb (its executed
notebook DIR/finetune/notebook.ipynb).

Executors: `local` runs `jobs` cells at once, each in its own processes; `ray` makes each cell a Ray task asking
for the preset's `ray_cpus` / `ray_gpus`, on the cluster at `ray_address` or on a local Ray runtime started (and
shut down) for the sweep. A cell is plain data (a dict) so that it can travel to a Ray worker.
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
from functools import partial
from pathlib import Path

from ntng.errors import RunError, UsageError
from ntng.experiments.cells import _read_summary, cell_state, finetune_done
from ntng.presets import parse_budget
from ntng.training.records import RunDir

EXECUTORS = ("local", "ray")
LOCK_NAME = ".sweep.lock"
PARTIAL_NOTEBOOK = ".notebook-running-{}.ipynb"
NOTEBOOK_FAILED = "the run completed, but its notebook failed: "
KERNEL_START_TIMEOUT_S = 300  # papermill's default (60 s) is short for several kernels importing torch on 2 cores


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
