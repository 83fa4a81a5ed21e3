"""The scale probe: which model shape, batch and peak learning rate learn the most language on this machine in a
fixed RST budget? (`ntng probe`; the book's page "Choosing the CPU scale" reads its records.)

Every candidate is the baseline trained for the same RST budget. Candidates differ in cost per token, so each
shape gets an RST table of its own, measured here with one torch thread (the reference system of a CPU preset is
one core: a sweep runs one cell per core). A candidate is a preset derived from `base` (`probe-...`, written to
RESULTS/presets.json and handed to each run through $NTNG_PRESETS_FILE), so every run is an ordinary run record:

    RESULTS/presets.json                       the candidates as custom presets
    RESULTS/tables/<model>-<L>x<W>.json        one RST table per shape (the batch size does not change it)
    RESULTS/<model>/<L>x<W>-b<batch>/<budget>/lr<lr>/   one run directory per candidate, budget and learning rate

Like a sweep, the probe skips complete runs and resumes interrupted ones: the same command continues it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ntng.errors import RunError, UsageError
from ntng.presets import MODELS, PRESETS, PRESETS_FILE_ENV, format_budget, parse_budget
from ntng.training.records import RunDir, write_json

PROBE_THREADS = 1  # torch threads per run and per calibration: one core is the reference system of a CPU preset
PROBE_EVAL_SEQUENCES = 256  # validation windows per evaluation: 32k tokens, enough to rank candidates


@dataclass(frozen=True)
class Shape:
    model: str
    layers: int  # blocks (T5: in the encoder and again in the decoder); divisible by 4 for layer stacking
    width: int  # BERT hidden size / T5 d_model

    @property
    def name(self) -> str:
        return f"{self.model}-{self.layers}x{self.width}"

    def overrides(self, micro_batch: int, grad_accum: int) -> dict:
        """The preset fields of this shape: heads of 64 (BERT) / 32 (T5) dimensions, BERT's FFN 4x wide as in
        the paper, T5's gated FFN 2x (t5-v1.1-base: 2048 / 768)."""
        if self.model == "bert":
            return {"num_layers": self.layers, "hidden": self.width, "heads": max(1, self.width // 64),
                    "intermediate": 4 * self.width, "micro_batch": micro_batch, "grad_accum": grad_accum}
        return {"num_layers": self.layers, "d_model": self.width, "d_kv": 32, "heads": max(1, self.width // 32),
                "d_ff": 2 * self.width, "micro_batch": micro_batch, "grad_accum": grad_accum}


@dataclass(frozen=True)
class Candidate:
    shape: Shape
    batch: int  # sequences per optimizer step
    micro_batch: int  # sequences per forward/backward pass (what the RST table is measured for)

    @property
    def preset_name(self) -> str:
        return f"probe-{self.shape.name}-b{self.batch}"

    @property
    def table_name(self) -> str:
        return f"{self.shape.name}-m{self.micro_batch}"

    def run_dir(self, results: Path, budget: str, lr: float) -> Path:
        return (results / self.shape.model / f"{self.shape.layers}x{self.shape.width}-b{self.batch}"
                / format_budget(parse_budget(budget)) / f"lr{lr!r}")


def parse_shape(model: str, text: str) -> Shape:
    """'4x128' -> Shape(model, 4, 128)."""
    try:
        layers, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"bad shape {text!r}: give LAYERSxWIDTH, e.g. 4x128") from None
    head = 64 if model == "bert" else 32  # BERT: heads of 64 dimensions; T5: d_kv 32
    if layers < 4 or layers % 4 or width < head or width % head:
        raise UsageError(f"bad {model} shape {text!r}: layers must be a multiple of 4 (layer stacking), width a "
                         f"multiple of {head} (whole attention heads)")
    return Shape(model, layers, width)


def candidates(models, shapes, batches, micro_batch: int) -> list[Candidate]:
    out = []
    for model in models:
        for text in shapes:
            for batch in batches:
                if batch < 1 or batch % micro_batch and batch > micro_batch:
                    raise UsageError(f"batch {batch} is not a whole number of micro-batches of {micro_batch}")
                micro = min(micro_batch, batch)
                out.append(Candidate(parse_shape(model, text), batch, micro))
    return out


def base_entry(base: str) -> dict:
    """`base` as the start of a custom-preset entry: {"base": base} for a shipped preset; for a custom one (from
    $NTNG_PRESETS_FILE), its own entry, so that a candidate derived from it needs no other file."""
    if base in PRESETS:
        return {"base": base}
    path = os.environ.get(PRESETS_FILE_ENV)
    entries = json.loads(Path(path).read_text()) if path and Path(path).is_file() else []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == base:
            return {k: v for k, v in entry.items() if k not in ("name", "description")}
    raise UsageError(f"unknown base preset {base!r}")


def preset_entries(cands: list[Candidate], base: str | dict) -> list[dict]:
    """The candidates as custom presets (presets.load_custom_presets), evaluated on the same windows (a custom
    base's own number of them, where it sets one); a run gives its budget itself, so one candidate serves every
    budget it is probed at."""
    start = base_entry(base) if isinstance(base, str) else base
    entries = []
    for cand in cands:
        model = cand.shape.model
        entry = json.loads(json.dumps(start))  # a deep copy
        entry.update({
            "name": cand.preset_name,
            model: {**start.get(model, {}), **cand.shape.overrides(cand.micro_batch, cand.batch // cand.micro_batch)},
            f"{model}_recipe": {"eval_sequences": PROBE_EVAL_SEQUENCES, **start.get(f"{model}_recipe", {})},
            "description": f"scale probe candidate: {cand.shape.name}, {cand.batch} sequences per step",
        })
        entries.append(entry)
    return entries


def merged_entries(presets_file: Path, entries: list[dict]) -> list[dict]:
    """The candidates already in `presets_file` plus `entries`; a candidate of the same name made with other
    settings (another base preset) is refused: its runs and table would be reused for the wrong thing."""
    old = json.loads(presets_file.read_text()) if presets_file.exists() else []
    by_name = {e["name"]: e for e in old}
    for entry in entries:
        if entry["name"] in by_name and by_name[entry["name"]] != entry:
            raise UsageError(f"{presets_file.parent} holds a probe of {entry['name']} derived from another base "
                             "preset: give another --results")
        by_name[entry["name"]] = entry
    return list(by_name.values())


def _env(presets_file: Path) -> dict:
    return {**os.environ, "NTNG_PRESETS_FILE": str(presets_file), "OMP_NUM_THREADS": str(PROBE_THREADS),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _ntng(args: list[str], env: dict, log_path: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        return subprocess.run([sys.executable, "-m", "ntng.cli", *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                              check=False).returncode


def probe(models=MODELS, shapes=("4x128", "8x128", "4x256"), batches=(32, 64), lrs: dict | None = None,
          budget: str = "2m", results: str | Path = "results/probe", base: str = "smoke", micro_batch: int = 32,
          jobs: int = 2, repeats: int = 15, log=print) -> list[dict]:
    """Calibrate every shape, then train every candidate at every learning rate of its model for `budget` of
    RST, `jobs` runs at a time; returns the rows of `probe_rows`. Interrupted: run it again."""
    parse_budget(budget)
    start = base_entry(base)
    lrs = lrs or {}
    for model in models:
        if not lrs.get(model) or any(not (0 < lr < 1) for lr in lrs[model]):
            raise UsageError(f"give {model}'s peak learning rates, each in (0, 1)")
    cands = candidates(models, shapes, batches, micro_batch)
    results = Path(results)
    results.mkdir(parents=True, exist_ok=True)
    presets_file = results / "presets.json"
    write_json(presets_file, merged_entries(presets_file, preset_entries(cands, start)))
    env = _env(presets_file)

    tables = {}
    for cand in cands:  # one table per shape and micro-batch: calibrated one at a time, nothing else running
        path = results / "tables" / f"{cand.table_name}.json"
        tables[cand] = path
        if path.exists():
            continue
        log(f"calibrating {cand.table_name} (one thread, {repeats} repeats)")
        code = _ntng(["calibrate", "--preset", cand.preset_name, "--model", cand.shape.model, "--out", str(path),
                      "--repeats", str(repeats)], env, results / "logs" / f"calibrate-{cand.table_name}.log")
        if code != 0:
            raise RunError(f"calibrating {cand.table_name} failed: see {results / 'logs'}")

    cells = [(cand, lr) for cand in cands for lr in lrs[cand.shape.model]]
    lock = threading.Lock()
    done = [0]

    def one(cell):
        cand, lr = cell
        out = cand.run_dir(results, budget, lr)
        summary = RunDir(out).read_summary() if (out / "summary.json").exists() else None
        if summary and summary.get("status") in ("complete", "diverged"):
            status = summary["status"]
        else:
            code = _ntng(["pretrain", "--model", cand.shape.model, "--method", "baseline", "--budget", budget,
                          "--preset", cand.preset_name, "--set", f"recipe.lr={lr!r}", "--rst-table",
                          str(tables[cand]), "--out", str(out), "--resume"], env, out.parent / f"{out.name}.log")
            status = "complete" if code == 0 else f"exit {code}"
        with lock:
            done[0] += 1
            log(f"[{done[0]}/{len(cells)}] {cand.preset_name} lr {lr:g}: {status}")

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, cells))
    budget_s = parse_budget(budget)
    found = {(r["preset"], r["lr"]): r for r in probe_rows(results) if r["budget_rst_s"] == budget_s}
    # the cells asked for, in order; one that left no record (refused before it started) is "missing"
    return [found.get((cand.preset_name, lr)) or {"model": cand.shape.model, "preset": cand.preset_name,
                                                  "status": "missing", "lr": lr} for cand, lr in cells]


def ship_table(table_path: str | Path, preset: str, out: str | Path) -> dict:
    """Write a probe table as the shipped table of `preset` (ntng/tables/<preset>-<model>.json): the same
    measurement, relabelled, so that the preset's runs are charged exactly as its probe candidate's were."""
    table = json.loads(Path(table_path).read_text())
    measured_for = table["preset"]
    table["preset"] = preset
    table["notes"] = [*table.get("notes", []),
                      f"measured by `ntng probe` for its candidate {measured_for} and shipped for preset {preset} "
                      "unchanged (the same model and micro-batch): the probe's runs and the preset's are charged alike"]
    write_json(Path(out), table)
    return table


def probe_rows(results: str | Path = "results/probe", unreadable: list | None = None) -> list[dict]:
    """One row per probe run found under `results`: shape, batch, lr, parameters, final loss and its distance
    below the context-free floor, throughput. A run whose records cannot be read is left out and, when
    `unreadable` is a list, added to it (its directory and the reason)."""
    rows = []
    for config_path in sorted(Path(results).glob("*/*/*/lr*/config.json")):
        summary_path = config_path.with_name("summary.json")
        if not summary_path.exists():
            continue
        try:
            rows.append(_probe_row(config_path, summary_path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            if unreadable is not None:
                unreadable.append((str(config_path.parent), f"{type(exc).__name__}: {exc}"))
    return rows


def _probe_row(config_path: Path, summary_path: Path) -> dict:
    config = json.loads(config_path.read_text())
    summary = json.loads(summary_path.read_text())
    model = config["model"]
    shape = config["shape"]
    floor = (config.get("data") or {}).get("floor")
    loss = summary.get("final_val_loss")
    return {
        "model": model, "preset": config["preset"], "shape": config_path.parents[2].name.split("-b")[0],
        "layers": shape.get("num_layers"), "width": shape.get("hidden") or shape.get("d_model"),
        "batch": shape["micro_batch"] * shape["grad_accum"],
        "lr": config["recipe"]["lr"], "parameters": (config.get("model_config") or {}).get("num_parameters"),
        "status": summary["status"], "steps": summary.get("steps"), "tokens": summary.get("tokens"),
        "budget_rst_s": summary.get("budget_rst_s"), "wall_s": summary.get("wall_s"),
        "tokens_per_rst_s": summary["tokens"] / summary["rst_s"] if summary.get("rst_s") else None,
        "final_val_loss": loss, "floor": floor,
        "below_floor": floor - loss if floor is not None and loss is not None else None,
    }


def format_rows(rows: list[dict]) -> str:
    head = f"{'model':5s} {'shape':7s} {'batch':>5s} {'lr':>8s} {'params':>10s} {'steps':>6s} {'tok/s':>7s} " \
           f"{'loss':>7s} {'below':>6s} status"
    lines = [head]
    for r in rows:
        if r["status"] == "missing":
            lines.append(f"{r['model']:5s} {r['preset']} lr {r['lr']:g}: no record (see its log)")
    done = [r for r in rows if r["status"] != "missing"]
    for r in sorted(done, key=lambda r: (r["model"], r["layers"] or 0, r["width"] or 0, r["batch"], r["lr"])):
        loss = "" if r["final_val_loss"] is None else f"{r['final_val_loss']:.3f}"
        below = "" if r["below_floor"] is None else f"{r['below_floor']:.3f}"
        tps = "" if r["tokens_per_rst_s"] is None else f"{r['tokens_per_rst_s']:.0f}"
        lines.append(f"{r['model']:5s} {r['shape']:7s} {r['batch']:5d} {r['lr']:8.2g} {r['parameters'] or 0:10,d} "
                     f"{r['steps'] or 0:6d} {tps:>7s} {loss:>7s} {below:>6s} {r['status']}")
    return "\n".join(lines)
