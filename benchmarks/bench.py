"""`make bench`: what a run costs on this machine, measured in one run, written to benchmarks/out/bench.json.

1. The machine's limit: large square matmuls through torch on all cores, fp32 and bf16 (best of the repeats).
2. Training throughput of the mini BERT and mini T5 through ntng's own `Trainer.train_step` (what users get:
   sparse MLM head, the default precision), and, interleaved with it in the same run, the Hugging Face default path
   at the same size and batch (`BertForMaskedLM`, full-vocabulary head, fp32, plain AdamW loop). MFU = model FLOPs
   per token (benchmarks/flops.py) x tokens/s / the measured bf16 matmul peak.
3. Inside the ntng BERT run, the time spent in the RST clock's charges and the method hooks, and the time spent
   waiting for the batch stream (next() including collation), each as a fraction of step time. Timers are wrapped
   around those calls on the bench's own Trainer instance; the production loop is not instrumented.
4. torch.compile of the mini BERT's model inside the same Trainer: compile time (first step) and steady throughput.
5. RST fidelity: every method trained briefly through `ntng.pretrain` at a preset whose shipped table was measured
   on this kind of machine; wall seconds / RST seconds from its summary (wall_s excludes evaluation).

Benchmarks are not tests: nothing here asserts a speed. `--smoke` runs every part at tiny sizes in seconds (CI).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import bert_flops_per_sequence, flops_per_token, t5_flops_per_sequence

from ntng.data import corpus as data_mod
from ntng.data.batches import BatchStream, make_collator
from ntng.data.splits import select_split
from ntng.errors import UsageError
from ntng.methods import paper_methods
from ntng.presets import get_preset, parse_budget
from ntng.training.device import autocast_dtype, describe_machine, pick_device
from ntng.training.loop import Trainer, pretrain
from ntng.training.records import write_json
from ntng.training.spec import resolve

ROOT = Path(__file__).resolve().parents[1]
METHODS = paper_methods()  # the study's seven
DEFAULT_OUT = ROOT / "benchmarks" / "out" / "bench.json"
HOOKS = ("begin_step", "next_microbatch", "active_layers", "before_update", "end_step")
CHARGES = ("charge_train", "charge_forward", "charge_optimizer")


# --- 1. the machine's limit --------------------------------------------------------------------------------

def matmul_gflops(dtype: torch.dtype, n: int, repeats: int) -> dict:
    """GFLOP/s of an n x n by n x n matmul (2 n^3 FLOPs): best and median of `repeats` after one warm-up."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return {"best": max(rates), "median": statistics.median(rates), "n": n, "repeats": repeats}


# --- 2-4. throughput through ntng's loop -------------------------------------------------------------------

class Stopwatch:
    """Sums the time spent in the calls it wraps (an attribute replaced on one object, restored on exit)."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self._undo = []

    def wrap(self, obj, name: str) -> None:
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
        setattr(obj, name, timed)
        self._undo.append((obj, name))

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0

    def restore(self) -> None:
        for obj, name in self._undo:
            with contextlib.suppress(AttributeError):
                delattr(obj, name)  # back to the class attribute
        self._undo = []


def build_trainer(model: str, preset: str, data_dir: Path, out_dir: Path, method: str = "baseline") -> Trainer:
    spec = resolve(model, method, "1000h", preset, seed=0, out_dir=out_dir, data_dir=data_dir)
    return Trainer(spec, log=lambda *a, **k: None)


def loop_throughput(model: str, preset: str, data_dir: Path, out_dir: Path, steps: int, warmup: int,
                    compile_model: bool = False) -> dict:
    """Tokens/s of `Trainer.train_step` (baseline method), with the clock + hook and loader times inside it."""
    trainer = build_trainer(model, preset, data_dir, out_dir)
    run = trainer.run
    compile_s = None
    if compile_model:
        run.model.compile()  # in place: parameters and state_dict keys stay the model's own
    hooks, loader = Stopwatch(), Stopwatch()
    for name in HOOKS:
        hooks.wrap(trainer.method, name)
    for name in CHARGES:
        hooks.wrap(run.clock, name)
    loader.wrap(run.batches, "next")
    for index in range(warmup):
        start = time.perf_counter()
        trainer.train_step()
        if index == 0 and compile_model:
            compile_s = time.perf_counter() - start  # the first step traces and compiles
    hooks.reset()
    loader.reset()
    tokens_before = trainer.tokens
    step_times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        step_times.append(time.perf_counter() - start)
    hooks.restore()
    loader.restore()
    total = sum(step_times)
    # next_microbatch's time includes the loader's (baseline: it is the loader); hook overhead is the rest
    overhead = hooks.seconds - loader.seconds
    sample = run.batches.next()
    if model == "bert":
        counts = bert_flops_per_sequence(trainer.shape, trainer.vocab_size, sample["mlm_positions"].shape[1])
    else:
        counts = t5_flops_per_sequence(trainer.shape, trainer.vocab_size, sample["labels"].shape[1])
    return {"tokens_per_s": (trainer.tokens - tokens_before) / total, "step_s_median": statistics.median(step_times),
            "steps": steps, "flops_per_token": flops_per_token(counts), "flops_per_sequence": counts,
            "clock_hook_s": overhead, "clock_hook_calls": hooks.calls, "loader_s": loader.seconds,
            "loader_calls": loader.calls, "step_s_total": total, "compile_s": compile_s,
            "precision": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "float32",
            "micro_batch": trainer.shape.micro_batch, "grad_accum": trainer.shape.grad_accum}


def hf_bert_config(shape, vocab_size: int):
    """Hugging Face's post-LN BERT at the preset's shape (the default path a user would start from), dropout off."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=shape.hidden, num_hidden_layers=shape.num_layers,
                      num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                      max_position_embeddings=shape.seq_len, type_vocab_size=1, attn_implementation="sdpa")


def hf_default_throughput(preset: str, data_dir: Path, steps: int, warmup: int) -> dict:
    """The Hugging Face default path at the mini BERT's size and batch: `BertForMaskedLM` with labels at every
    position (-100 where not masked, so the full-vocabulary head runs on all tokens), fp32, torch AdamW, plain
    accumulation loop. Same packed windows and masking as ntng's loop, collated inside the timed loop as there."""
    from transformers import BertForMaskedLM

    preset_obj = get_preset(preset)
    shape = preset_obj.bert
    tokenizer = data_mod.load_tokenizer("bert", preset_obj.vocab_size, data_dir, "offline")
    vocab = tokenizer.get_vocab_size()
    packed = data_mod.load_packed("bert", preset_obj, data_dir, "offline")
    ids, windows = select_split(*data_mod.windows_array(packed["train"]), "full")
    stream = BatchStream(ids, windows, shape.micro_batch, make_collator("bert", preset_obj, vocab, seed=1), seed=0)
    torch.manual_seed(0)
    model = BertForMaskedLM(hf_bert_config(shape, vocab))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        for _ in range(shape.grad_accum):
            batch = stream.next()
            labels = torch.full_like(batch["input_ids"], -100)
            labels.scatter_(1, batch["mlm_positions"], batch["mlm_labels"])
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
            (out.loss / shape.grad_accum).backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(warmup):
        step()
    step_times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - start)
    tokens = steps * shape.batch * shape.seq_len
    counts = bert_flops_per_sequence(shape, vocab, masked_per_sequence=shape.seq_len, arch="hf")  # head on every token
    return {"tokens_per_s": tokens / sum(step_times), "step_s_median": statistics.median(step_times),
            "steps": steps, "flops_per_token": flops_per_token(counts), "flops_per_sequence": counts,
            "precision": "float32"}


# --- where a step's time goes --------------------------------------------------------------------------------

# torch.profiler op names -> what they are; the first pattern that a name contains wins, the rest is "elementwise"
OP_CATEGORIES = (
    ("matmul", ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::_weight_int", "mkldnn_matmul")),
    ("vocabulary softmax / loss", ("log_softmax", "nll_loss", "cross_entropy", "logsumexp")),
    ("attention", ("scaled_dot_product", "flash_attention", "efficient_attention", "aten::_softmax",
                   "softmax_backward")),
    ("copies and casts", ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous", "aten::cat",
                          "aten::index", "aten::gather", "aten::scatter", "aten::embedding")),
)


def op_category(name: str) -> str:
    for category, patterns in OP_CATEGORIES:
        if any(pattern in name for pattern in patterns):
            return category
    return "elementwise"


def step_breakdown(model: str, preset: str, data_dir: Path, out_dir: Path, steps: int, warmup: int) -> dict:
    """Where a baseline training step's time goes: the optimizer's step (torch's `Optimizer.step#...` profiler
    range, ours included: they subclass torch.optim.Optimizer) and, outside it, the self time of every operator
    (torch.profiler) grouped by `op_category`; what no operator accounts for is Python and framework time. With
    the model's weight-matmul FLOPs (benchmarks/flops.py) it gives the rate the matmuls themselves reach: MFU is
    low either because they are slow (small shapes) or because other work takes the time."""
    from torch.profiler import ProfilerActivity, profile

    trainer = build_trainer(model, preset, data_dir, out_dir)
    for _ in range(warmup):
        trainer.train_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        total = time.perf_counter() - start
    sample = trainer.run.batches.next()
    if model == "bert":
        counts = bert_flops_per_sequence(trainer.shape, trainer.vocab_size, sample["mlm_positions"].shape[1])
    else:
        counts = t5_flops_per_sequence(trainer.shape, trainer.vocab_size, sample["labels"].shape[1])
    seconds: dict[str, float] = {"optimizer step": 0.0}
    for event in prof.events():
        if event.name.startswith("Optimizer.step#"):
            seconds["optimizer step"] += event.cpu_time_total / 1e6
            continue
        if not event.name.startswith("aten::"):
            continue
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("Optimizer.step#"):
            parent = parent.cpu_parent
        if parent is None:  # the model's work, not the optimizer's
            category = op_category(event.name)
            seconds[category] = seconds.get(category, 0.0) + event.self_cpu_time_total / 1e6
    seconds["python and framework"] = max(0.0, total - sum(seconds.values()))
    sequences = steps * trainer.shape.micro_batch * trainer.shape.grad_accum
    matmul_s = seconds.get("matmul", 0.0)
    return {"preset": preset, "steps": steps, "step_s": total / steps,
            "fractions": {k: v / total for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])},
            "matmul_gflops": counts["weights"] * sequences / matmul_s / 1e9 if matmul_s else None,
            "note": "under torch.profiler (its timers slow small ops down); fractions of the profiled step time"}


# --- 5. RST fidelity ---------------------------------------------------------------------------------------

def rst_fidelity(model: str, preset: str, budget: str, data_dir: Path, out_root: Path, methods,
                 il_budget: str | None = None, rst_table: Path | None = None) -> dict:
    """wall_s / rst_s of a short run of each method (its summary's figures). RHO-LOSS's irreducible-loss model is
    built once and cached with the data (its cost is not in the run's wall_s): `il_budget` None is the method's
    default, so a cache that earlier runs built is reused. `rst_table`: charge with this table (JSON) instead of
    the preset's shipped one."""
    out = {}
    for method in methods:
        options = {"il_budget_s": parse_budget(il_budget)} if method == "rho_loss" and il_budget else None
        summary = pretrain(model, method, budget, preset, seed=0, out_dir=out_root / f"{model}-{method}",
                           data_dir=data_dir, method_options=options, rst_table=rst_table,
                           log=lambda *a, **k: None)
        out[method] = {"wall_s": summary["wall_s"], "rst_s": summary["rst_s"], "steps": summary["steps"],
                       "wall_over_rst": summary["wall_s"] / summary["rst_s"], "status": summary["status"]}
    return out


def same_machine_kind(table_machine: str, here: dict) -> bool:
    """The table's machine line names this CPU (or GPU) and core count."""
    fields = dict(part.split("=", 1) for part in table_machine.split(", ") if "=" in part)
    device = here.get("gpu") or here["cpu"]
    return fields.get("cpu") == here["cpu"] and fields.get("cpu_count") == str(here["cpu_count"]) \
        if not here.get("gpu") else fields.get("gpu") == device


# --- the run -----------------------------------------------------------------------------------------------

SETTINGS = {
    # full: mini models for throughput ("mini BERT / mini T5"), the smoke preset for RST fidelity (its
    # short runs are long enough to amortise warm-up, and its tables were measured on the project's 2-core machine)
    "full": {"preset": "mini", "fidelity_preset": "smoke", "fidelity_budget": "10s", "il_budget": None,
             "matmul_n": 2048, "matmul_repeats": 10, "steps": 6, "warmup": 2, "rounds": 2, "compile": True,
             "profile_steps": 3, "calibration_repeats": 5, "fidelity_rounds": 2},
    "smoke": {"preset": "tiny", "fidelity_preset": "tiny", "fidelity_budget": "0.5s", "il_budget": "0.5s", "matmul_n": 256,
              "matmul_repeats": 3, "steps": 2, "warmup": 1, "rounds": 1, "compile": False, "profile_steps": 1,
              "calibration_repeats": 1, "fidelity_rounds": 1},
}


def run_bench(mode: str, data_dir: Path, preset: str | None = None, fidelity_preset: str | None = None,
              compile_model: bool | None = None, overrides: dict | None = None, log=print) -> dict:
    s = {**SETTINGS[mode], **(overrides or {})}
    s["preset"] = preset or s["preset"]
    s["fidelity_preset"] = fidelity_preset or s["fidelity_preset"]
    if compile_model is not None:
        s["compile"] = compile_model
    device = pick_device()
    here = describe_machine(device)
    started = time.perf_counter()
    load_before = os.getloadavg()
    result: dict = {"mode": mode, "settings": s, "machine": here, "torch": torch.__version__,
                    "default_precision": str(autocast_dtype(device)).replace("torch.", "")
                    if autocast_dtype(device) else "float32",
                    "measured_on": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average_before": load_before}

    log(f"matmul peak ({s['matmul_n']}^2, {torch.get_num_threads()} threads)")
    fp32 = matmul_gflops(torch.float32, s["matmul_n"], s["matmul_repeats"])
    bf16 = matmul_gflops(torch.bfloat16, s["matmul_n"], s["matmul_repeats"])
    result.update(matmul_gflops_fp32=fp32["best"], matmul_gflops_bf16=bf16["best"], matmul=
                  {"fp32": fp32, "bf16": bf16})

    with tempfile.TemporaryDirectory(prefix="ntng-bench-") as tmp:
        tmp = Path(tmp)
        # ntng BERT and the HF default path alternate in rounds, so machine noise lands on both alike
        bert_runs, hf_runs, t5_runs = [], [], []
        for r in range(s["rounds"]):
            log(f"round {r + 1}/{s['rounds']}: ntng BERT, HF default BERT, ntng T5 at preset {s['preset']}")
            bert_runs.append(loop_throughput("bert", s["preset"], data_dir, tmp / f"bert{r}", s["steps"],
                                             s["warmup"]))
            hf_runs.append(hf_default_throughput(s["preset"], data_dir, s["steps"], s["warmup"]))
            t5_runs.append(loop_throughput("t5", s["preset"], data_dir, tmp / f"t5{r}", s["steps"], s["warmup"]))
        bert, hf, t5 = _best(bert_runs), _best(hf_runs), _best(t5_runs)
        peak = bf16["best"] * 1e9
        result.update(
            bert_tokens_per_s=bert["tokens_per_s"], hf_default_tokens_per_s=hf["tokens_per_s"],
            speedup_vs_hf_default=bert["tokens_per_s"] / hf["tokens_per_s"],
            bert_mfu=bert["flops_per_token"] * bert["tokens_per_s"] / peak,
            hf_default_mfu=hf["flops_per_token"] * hf["tokens_per_s"] / peak,
            hf_default_mfu_of_fp32_peak=hf["flops_per_token"] * hf["tokens_per_s"] / (fp32["best"] * 1e9),
            t5_tokens_per_s=t5["tokens_per_s"], t5_mfu=t5["flops_per_token"] * t5["tokens_per_s"] / peak,
            clock_overhead_fraction=sum(b["clock_hook_s"] for b in bert_runs + t5_runs)
            / sum(b["step_s_total"] for b in bert_runs + t5_runs),
            loader_wait_fraction=sum(b["loader_s"] for b in bert_runs + t5_runs)
            / sum(b["step_s_total"] for b in bert_runs + t5_runs),
            throughput={"preset": s["preset"], "bert": bert_runs, "hf_default": hf_runs, "t5": t5_runs},
        )

        compiled = None
        if s["compile"]:
            log("torch.compile of the mini BERT (first step compiles)")
            compiled = loop_throughput("bert", s["preset"], data_dir, tmp / "bert-compiled", s["steps"],
                                       s["warmup"], compile_model=True)
        result.update(
            bert_compiled_tokens_per_s=compiled["tokens_per_s"] if compiled else None,
            compile_s=compiled["compile_s"] if compiled else None,
            compile_speedup=compiled["tokens_per_s"] / bert["tokens_per_s"] if compiled else None,
            compiled=compiled)

        breakdown = {}
        for model in ("bert", "t5"):
            log(f"where a {model} step's time goes (torch.profiler, {s['profile_steps']} steps)")
            breakdown[model] = step_breakdown(model, s["preset"], data_dir, tmp / f"profile-{model}",
                                              s["profile_steps"], s["warmup"])
        result.update(step_breakdown=breakdown)

        # RST fidelity: a table calibrated here minutes before (what the RST model predicts, the shipped table's
        # drift removed), then every method in rounds, the order reversed each round; this VM's speed moves by more
        # than 10% within minutes, so each method is also compared with the baseline run of the same round
        fidelity, tables = {}, {}
        from ntng.training.calibration import calibrate
        from ntng.training.rst import shipped_table

        for model in ("bert", "t5"):
            preset_obj = get_preset(s["fidelity_preset"])
            table = shipped_table(preset_obj.rst_preset, model)
            today = tmp / f"today-{model}.json"
            log(f"RST fidelity: calibrating {model} at preset {s['fidelity_preset']} on this machine now")
            measured = calibrate(s["fidelity_preset"], model, out=today, repeats=s["calibration_repeats"],
                                 log=lambda *a, **k: None)
            tables[model] = {"name": measured["name"], "machine": measured["machine"],
                             "same_machine_kind": True, "shipped": table.name,
                             "train_full_depth_s": _full_depth(measured),
                             "shipped_train_full_depth_s": _full_depth(table.to_dict())}
            rounds = []
            for r in range(s["fidelity_rounds"]):
                order = list(METHODS) if r % 2 == 0 else list(reversed(METHODS))
                log(f"RST fidelity: {model}, round {r + 1}/{s['fidelity_rounds']}, every method, "
                    f"{s['fidelity_budget']} RST at preset {s['fidelity_preset']}, charged by the table just measured")
                rounds.append(rst_fidelity(model, s["fidelity_preset"], s["fidelity_budget"], data_dir,
                                           tmp / f"fidelity-{r}", order, s["il_budget"], today))
            fidelity[model] = {m: {"rounds": [rnd[m] for rnd in rounds],
                                   "wall_over_rst": statistics.median(rnd[m]["wall_over_rst"] for rnd in rounds),
                                   "relative_to_baseline": statistics.median(
                                       rnd[m]["wall_over_rst"] / rnd["baseline"]["wall_over_rst"] for rnd in rounds),
                                   "steps": rounds[0][m]["steps"]}
                               for m in METHODS}
    result.update(
        wall_over_rst={m: v["wall_over_rst"] for m, v in fidelity["bert"].items()},
        wall_over_rst_t5={m: v["wall_over_rst"] for m, v in fidelity["t5"].items()},
        wall_over_rst_relative={m: v["relative_to_baseline"] for m, v in fidelity["bert"].items()},
        wall_over_rst_relative_t5={m: v["relative_to_baseline"] for m, v in fidelity["t5"].items()},
        rst_fidelity={"preset": s["fidelity_preset"], "budget": s["fidelity_budget"], "tables": tables,
                      "rounds": s["fidelity_rounds"], "runs": fidelity},
        load_average_after=os.getloadavg(), bench_wall_s=time.perf_counter() - started)
    return result


def _full_depth(table: dict) -> float:
    """A table's seconds per forward+backward micro-batch at its deepest layer count."""
    train = table["units"]["train"]
    return float(train[max(train, key=int)])


def _best(runs: list[dict]) -> dict:
    """The round with the highest throughput: noise on a shared machine only ever slows a round down."""
    return max(runs, key=lambda r: r["tokens_per_s"])


def print_table(r: dict, out=sys.stdout) -> None:
    def pct(x):
        return f"{x:.1%}" if x is not None else "-"

    rows = [
        ("matmul peak fp32 / bf16", f"{r['matmul_gflops_fp32']:.0f} / {r['matmul_gflops_bf16']:.0f} GFLOP/s"),
        (f"ntng BERT ({r['throughput']['preset']})", f"{r['bert_tokens_per_s']:,.0f} tok/s, MFU {pct(r['bert_mfu'])}"),
        ("HF default BERT (fp32, full head)",
         f"{r['hf_default_tokens_per_s']:,.0f} tok/s, MFU {pct(r['hf_default_mfu'])}"),
        ("speed-up vs HF default", f"{r['speedup_vs_hf_default']:.2f}x"),
        (f"ntng T5 ({r['throughput']['preset']})", f"{r['t5_tokens_per_s']:,.0f} tok/s, MFU {pct(r['t5_mfu'])}"),
        ("torch.compile BERT", f"{r['bert_compiled_tokens_per_s']:,.0f} tok/s ({r['compile_speedup']:.2f}x), "
                               f"compile {r['compile_s']:.0f} s" if r["compile_s"] is not None else "not measured"),
        ("clock + hooks / step", pct(r["clock_overhead_fraction"])),
        ("loader wait / step", pct(r["loader_wait_fraction"])),
    ]
    for model, part in r["step_breakdown"].items():
        rows.append((f"{model} step ({part['step_s'] * 1e3:.0f} ms profiled)",
                     "  ".join(f"{k} {v:.0%}" for k, v in part["fractions"].items() if v >= 0.005)
                     + f"; matmuls at {part['matmul_gflops']:.0f} GFLOP/s"))
    for model, key in (("BERT", "wall_over_rst"), ("T5", "wall_over_rst_t5")):
        for label, k in (("", key), (" / baseline's", key.replace("rst", "rst_relative"))):
            rows.append((f"wall / RST{label}, {model} ({r['rst_fidelity']['preset']})",
                         "  ".join(f"{m} {v:.2f}" for m, v in r[k].items())))
    rows.append(("load average before / after", f"{r['load_average_before'][0]:.2f} / {r['load_average_after'][0]:.2f}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (CI); default preset 'tiny'")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON to write (default {DEFAULT_OUT})")
    parser.add_argument("--data-dir", type=Path, default=None, help="packed data (default $NTNG_DATA_DIR or ./data)")
    parser.add_argument("--preset", default=None, help="throughput preset (default mini; smoke: tiny)")
    parser.add_argument("--fidelity-preset", default=None, help="RST-fidelity preset (default smoke; smoke: tiny)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved throughput rounds (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per round (default 6)")
    parser.add_argument("--fidelity-budget", default=None, help="RST budget of each fidelity run (default 10s)")
    parser.add_argument("--compile", dest="compile_model", action=argparse.BooleanOptionalAction, default=None,
                        help="measure torch.compile (default: on, off with --smoke)")
    args = parser.parse_args(argv)
    data_dir = Path(args.data_dir or data_mod.default_data_dir())
    try:
        overrides = {k: v for k, v in (("rounds", args.rounds), ("steps", args.steps),
                                       ("fidelity_budget", args.fidelity_budget)) if v is not None}
        if any(isinstance(v, int) and v < 1 for v in overrides.values()):
            raise UsageError("--rounds and --steps must be at least 1")
        result = run_bench("smoke" if args.smoke else "full", data_dir, args.preset, args.fidelity_preset,
                           args.compile_model, overrides=overrides, log=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True))
    except UsageError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)  # atomic: temp name + rename
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
