"""`ntng book`: run the preset's grid where it is missing, then build the Jupyter Book (HTML) from the run records.

The book's sources (`_config.yml`, `book/`) are copied into a staging folder (`<out>/_build/source`) together with
the grid's executed notebooks (one appendix page each, listed in the staged `_toc.yml`), so the checkout is never
written to. The pages learn which records to read from NTNG_BOOK_RESULTS / NTNG_BOOK_PRESET. They execute at build
time through Jupyter Book's cache; the cache is cleared whenever the records (or the code that reads them) change,
so a page never shows numbers of an earlier build. Training never runs inside the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ntng.errors import RunError, UsageError
from ntng.presets import MODELS, batch_control_for, get_preset
from ntng.resources import notebook as shipped_notebook
from ntng.resources import project_root

ROOT = project_root()  # the checkout, or the copy inside an installed package: _config.yml and book/ live here
SOURCES = ("_config.yml", "book")
CALIBRATION_REPEATS = 2  # a quick table of this machine for the RST chapter (the shipped tables used 7)


def bench_json() -> Path:
    """The figures of `make bench` that the cost chapter shows: $NTNG_BENCH_JSON, else this checkout's latest
    `make bench` (benchmarks/out/), else the measurement committed with the code (benchmarks/reference/)."""
    if os.environ.get("NTNG_BENCH_JSON"):
        return Path(os.environ["NTNG_BENCH_JSON"])
    latest = ROOT / "benchmarks" / "out" / "bench.json"
    return latest if latest.exists() else ROOT / "benchmarks" / "reference" / "bench.json"


def check_sources(root: Path = ROOT) -> None:
    missing = [name for name in (*SOURCES, "book/_toc.yml") if not (root / name).exists()]
    if missing:
        raise UsageError(f"the book's sources are not here ({', '.join(str(root / m) for m in missing)} missing): "
                         "run `ntng book` from a checkout, or install ntng from a wheel (it ships them)")


def run_notebooks(results: Path, preset: str) -> list[Path]:
    """Executed grid notebooks: results/<preset>/<model>/<method>/<budget>/seed<k>/notebook.ipynb."""
    root = Path(results) / preset
    return sorted(root.glob("*/*/*/seed*/notebook.ipynb")) if root.is_dir() else []


RUN_PAGES = "runs"  # the executed notebooks' pages, at the site's root: <html>/runs/<page>.html


def render_run_notebooks(results: Path, preset: str, extra: Path) -> int:
    """Each executed grid notebook as a stand-alone HTML page in `extra`/runs/ (Sphinx copies `extra` to the site's
    root: `html_extra_path`), named by `report.run_page`; the appendix is one page linking them all, not one sidebar
    entry per run. A notebook that cannot be read gets a page that says so. Returns how many pages."""
    import nbformat
    from nbconvert import HTMLExporter

    from ntng.book.report import run_page

    out = extra / RUN_PAGES
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="classic")  # one self-contained page (inline CSS), no JavaScript needed
    notebooks = run_notebooks(results, preset)
    for notebook in notebooks:
        seed, budget, method, model = notebook.parent.parts[-1:-5:-1]
        title = f"{model} / {method} / {budget} / {seed}"
        try:
            nb = nbformat.read(notebook, as_version=4)
        except Exception as exc:  # a damaged notebook is a record problem, not a build failure
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
                f"The executed notebook of this run ({notebook}) cannot be read: {type(exc).__name__}.")])
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(
            f"# {title}\n\nThe executed notebook of `{notebook.parent}`, as papermill left it "
            "([back to the book](../book/appendix.html))."))
        nb.metadata.pop("widgets", None)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
        (out / f"{run_page(model, method, budget, seed)}.html").write_text(body)
    return len(notebooks)


def _toc_entries(toc: dict) -> list[list]:
    """The chapter lists of a table of contents, with or without parts."""
    return [part["chapters"] for part in toc["parts"]] if "parts" in toc else [toc["chapters"]]


def stage_sources(stage: Path, results: Path, preset: str, root: Path = ROOT) -> int:
    """Copy the book's sources into `stage`, render the executed notebooks as pages the appendix links to, one
    chapter per family; returns how many notebooks."""
    import yaml

    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    shutil.copytree(root / "book", stage / "book", ignore=shutil.ignore_patterns("_build", "runs", ".*"))
    pages = render_run_notebooks(results, preset, stage / "extra")
    config = yaml.safe_load((root / "_config.yml").read_text())
    config.setdefault("sphinx", {}).setdefault("config", {})["html_extra_path"] = ["extra"]
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    toc_path = stage / "book" / "_toc.yml"
    toc = yaml.safe_load(toc_path.read_text())
    families = stage_families(stage, results, preset)
    for chapters in _toc_entries(toc):
        at = next((i for i, c in enumerate(chapters) if c.get("file") == FAMILY_TEMPLATE), None)
        if at is not None:
            chapters[at:at + 1] = [{"file": f} for f in families]
    tutorial = tutorial_path(results, preset)
    if tutorial.is_file():  # executed by `ntng book` (run_tutorial): the last chapter of "Use it"
        shutil.copyfile(tutorial, stage / "book" / TUTORIAL)
        reproduce = next(ch for ch in _toc_entries(toc) if any(c.get("file") == "book/reproduce" for c in ch))
        reproduce.append({"file": f"book/{Path(TUTORIAL).stem}"})
    toc_path.write_text(yaml.safe_dump(toc, sort_keys=False))
    return pages


FAMILY_TEMPLATE = "book/family"  # the _toc entry the family chapters replace
_BLOCK = re.compile(r"<!-- only: (?P<name>\w+) -->\n(?P<body>.*?)<!-- end: (?P=name) -->\n", re.S)


def family_blocks(table, family: str) -> set[str]:
    """Which optional sections a family's chapter shows: `layers` when its runs ran another depth than the
    baseline's full stack, `keep` when they report a keep rate (batch selection)."""
    from ntng.book.run_table import family_methods

    members = family_methods(table, family)
    runs = table.runs[table.runs["method"].isin(members)]
    shown = set()
    if "stat.keep_rate" in runs.columns and runs["stat.keep_rate"].notna().any():
        shown.add("keep")
    # depth: the active layers its runs logged step by step, against the most the baseline ran on that model
    steps = table.metrics(["baseline", *members]).dropna(subset=["active_layers"])
    if len(steps):
        full = steps[steps["method"] == "baseline"].groupby("model")["active_layers"].max().to_dict()
        own = steps[steps["method"] != "baseline"]
        if any(abs(float(d) - full.get(m, -1.0)) > 1e-9 for m, d in zip(own["model"], own["active_layers"],
                                                                        strict=True)):
            shown.add("layers")
    return shown


def stage_families(stage: Path, results: Path, preset: str) -> list[str]:
    """One chapter per family in the records (the study's three always, then any other), each from the one
    template book/family.md; returns their toc entries."""
    import yaml

    from ntng.book.run_table import FAMILY_NAMES, families_present, load_runs

    table = load_runs(results, preset)
    pages = yaml.safe_load((stage / "book" / "families.yml").read_text())
    template = (stage / "book" / "family.md").read_text()
    entries = []
    for family in dict.fromkeys([*FAMILY_NAMES, *families_present(table)]):
        page = pages.get(family) or {k: v.format(family=family.replace("_", " ")) for k, v in pages["_other"].items()}
        shown = family_blocks(table, family)
        text = _BLOCK.sub(lambda m, shown=shown: m["body"] if m["name"] in shown else "", template)
        text = text.replace("@TITLE@", page["title"]).replace("@INTRO@", page["intro"]).replace("@FAMILY@", family)
        (stage / "book" / f"family-{family}.md").write_text(text)
        entries.append(f"book/family-{family}")
    (stage / "book" / "family.md").unlink()
    (stage / "book" / "families.yml").unlink()
    return entries


TUTORIAL = "your_method.ipynb"  # notebooks/your_method.ipynb, executed by `ntng book` into results/<preset>/tutorial/


def tutorial_path(results: Path, preset: str) -> Path:
    return Path(results) / preset / "tutorial" / TUTORIAL


def run_tutorial(results: Path, preset: str, log=print) -> Path | None:
    """Execute the tutorial (its own method against the baseline, through `ntng.compare`, at the preset's smallest
    budget and three seeds) into results/<preset>/tutorial/, unless it ran before. Its runs join the records; a
    failure is logged and the book is built without the page."""
    from ntng.presets import get_preset, parse_budget

    out = tutorial_path(results, preset)
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    smallest = min(get_preset(preset).budgets, key=parse_budget)
    params = {"preset": preset, "budgets": smallest, "seeds": "0,1,2", "results": str(Path(results).resolve())}
    partial = out.with_name(f".{TUTORIAL}.running")
    command = [sys.executable, "-m", "papermill", str(shipped_notebook(TUTORIAL)), str(partial), "-y",
               json.dumps(params), "--kernel", "python3", "--no-progress-bar", "--cwd", str(out.parent)]
    log(f"running the tutorial ({TUTORIAL}: its method against the baseline at {smallest}, seeds 0 1 2)")
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NTNG_PROGRESS": "0"})
    if proc.returncode != 0:
        log(f"the tutorial failed; the book is built without it: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    os.replace(partial, out)
    return out


def records_fingerprint(results: Path, preset: str) -> str:
    """Changes whenever a record the book reads (results/<preset>/, the probe's, the tuning's) or the code that
    reads them changes."""
    digest = hashlib.sha256(f"{Path(results).resolve()}|{preset}".encode())
    control = batch_control_for(preset)  # its records stand beside the preset's on the controls page
    for root in (Path(results) / preset, *([Path(results) / control] if control else []), Path(results) / "probe",
                 Path(results) / "tuning"):
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "checkpoint.pt"):
            stat = path.stat()
            digest.update(f"{root.name}/{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    if bench_json().is_file():  # the cost chapter reads it
        digest.update(bench_json().read_bytes())
    package = Path(__file__).resolve().parents[1]  # ntng/
    book = [f"book/{p.name}" for p in sorted((package / "book").glob("*.py"))]  # every module the pages import
    for module in (*book, "presets.py", "training/rst.py", "training/variants.py", "experiments/probe.py",
                   "experiments/tuning.py"):
        digest.update((package / module).read_bytes())
    for path in sorted((package / "tables").glob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def calibrate_here(results: Path, preset: str, models, log=print) -> None:
    """This machine's RST tables for the RST chapter (once; kept with the results)."""
    from ntng.book.report import calibration_dir
    from ntng.training.calibration import calibrate

    folder = calibration_dir(results, preset)
    for model in models:
        out = folder / f"{model}.json"
        if out.exists():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        log(f"measuring this machine's RST table for {model} at preset {preset} -> {out}")
        calibrate(preset, model, out=out, repeats=CALIBRATION_REPEATS, log=lambda m: None)


def build_book(preset: str = "smoke", results: str | Path = "results", run_grid: bool = True, log=print,
               out_dir: str | Path | None = None, calibrate: bool | None = None) -> Path:
    """Build the HTML book from results/<preset>/ and return the path of its index.html.

    run_grid: run the preset's grid first (`ntng.experiments.grid.sweep`, which skips complete runs) with the paper's
    ablations at the middle budget, fine-tuning the runs of the preset's `book_finetune_budgets()`.
    out_dir: where `_build/` goes (default: the current directory). calibrate: measure this machine's RST tables where
    missing (default: when run_grid)."""
    get_preset(preset)  # an unknown preset is a usage error before anything runs
    check_sources()
    results = Path(results).resolve()
    out = Path(out_dir).resolve() if out_dir is not None else Path.cwd()
    if run_grid:
        try:
            from ntng.experiments.grid import sweep
        except ImportError as exc:
            raise UsageError(f"`ntng book` runs the grid with ntng.experiments.grid.sweep, which cannot be imported ({exc}); "
                             "pass run_grid=False to build from existing records") from None
        spec = get_preset(preset)
        # CPU presets: as many cells at once as the preset's CPUs per cell allow (tiny models gain little from a
        # second thread, so two one-thread cells finish the grid sooner); a GPU preset runs one cell at a time
        jobs = 1 if spec.ray_gpus else max(1, int((os.cpu_count() or 1) // spec.ray_cpus))
        log(f"running the {preset} grid into {results}, {jobs} cell(s) at a time (complete runs are skipped)")
        rows = sweep(preset=preset, results=results, finetune=spec.book_finetune_budgets(), jobs=jobs,
                     ablations=True, log=log)
        if any(r["status"] != "skipped" for r in rows) or tutorial_path(results, preset).is_file():
            run_tutorial(results, preset, log=log)
        else:  # committed records build the book without training; the tutorial trains, so it waits for a grid run
            log("every cell of the grid was complete: the book is built from the records without training, and "
                "without the tutorial chapter (it trains; it runs with the grid into a fresh --results)")
    if calibrate if calibrate is not None else run_grid:
        calibrate_here(results, preset, MODELS, log=log)

    build = out / "_build"
    stage = build / "source"
    pages = stage_sources(stage, results, preset)
    fingerprint = records_fingerprint(results, preset)
    stamp = build / ".ntng-records"
    if not stamp.exists() or stamp.read_text() != fingerprint:
        shutil.rmtree(build / ".jupyter_cache", ignore_errors=True)  # cached page outputs were of other records
    env = {**os.environ, "NTNG_BOOK_RESULTS": str(results), "NTNG_BOOK_PRESET": preset,
           "NTNG_BENCH_JSON": str(bench_json()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "MPLBACKEND": "Agg", "NO_COLOR": "1"}
    command = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(stage), "--path-output", str(out),
               "--toc", str(stage / "book" / "_toc.yml"), "--config", str(stage / "_config.yml"),
               "-W", "-n", "--keep-going", "--all"]
    if not Path(command[0]).exists():
        command[0:1] = [sys.executable, "-m", "jupyter_book.cli.main"]
    log(f"building the book from {results / preset} ({pages} executed notebook(s) in the appendix)")
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=stage, env=env, capture_output=True, text=True)
    log_path = build / "book-build.log"
    log_path.write_text(proc.stdout + proc.stderr)
    index = build / "html" / "index.html"
    if proc.returncode != 0 or not index.exists():
        problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                    if ("WARNING" in line or "ERROR" in line or "Error" in line) and "[IPKernelApp]" not in line]
        first = problems[0].strip() if problems else f"jupyter-book exited with {proc.returncode}"
        raise RunError(f"the book build failed ({len(problems)} warning(s)/error(s); first: {first}); "
                       f"full log: {log_path}")
    stamp.write_text(fingerprint)
    (build / "book.json").write_text(json.dumps({"preset": preset, "results": str(results), "index": str(index),
                                                 "seconds": round(time.perf_counter() - started, 1)}))
    log(f"built in {time.perf_counter() - started:.0f} s: {index}")
    return index
