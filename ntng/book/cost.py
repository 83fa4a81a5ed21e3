"""The cost chapter (book/cost.md): what `make bench` measured (benchmarks/bench.py's JSON), as tables and sentences.

Every function takes the benchmark's record `bench` (a dict, as `read_bench` returns it) and returns text or a
DataFrame; the page only displays them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ntng.book.numbers import fmt
from ntng.book.run_table import label
from ntng.resources import shown_path

# the benchmark's targets: ntng's loop against the HF default, MFU, the RST tables' fidelity, the loop's overheads
SPEEDUP_TARGET = 3.0  # ntng BERT's tokens/s over the HF default path's
MFU_TARGET = 0.4  # of the bf16 matmul peak
WALL_OVER_RST_BAND = (0.9, 1.1)  # a table measured just before charges within 10% of the wall time
CLOCK_OVERHEAD_TARGET = 0.01  # the clock and the hooks, of a step
LOADER_WAIT_TARGET = 0.02  # waiting for the next micro-batch, of a step
BUSY_LOAD = 0.75  # a load average above this many runnable processes per core: the machine was busy


def read_bench(path: Path) -> tuple[dict | None, str | None]:
    """The benchmark's record, or None and what to do about it (as a sentence for the page)."""
    try:
        return json.loads(Path(path).read_text()), None
    except FileNotFoundError:
        return None, (f"No benchmark results at `{path}`: run `make bench` (about 8 minutes on 2 cores), then "
                      "rebuild the book.")
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"The benchmark results at `{path}` cannot be read ({type(exc).__name__}): run `make bench` again."


def pct(x) -> str:
    return "-" if x is None else f"{fmt(100 * x, 1)}%"


def rate(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def measured_on(bench: dict, path: Path) -> str:
    """Where and when, and whether the machine was busy (which lowers every throughput)."""
    load = bench["load_average_before"][0], bench["load_average_after"][0]
    machine = bench["machine"]
    cores = machine["cpu_count"]
    busy = max(load) > BUSY_LOAD * cores
    return (f"From `{shown_path(path)}`. Measured on {bench['measured_on']} ({bench['mode']} mode) on "
            f"`{machine.get('gpu') or machine['cpu']}`, {cores} cores, {machine['torch_threads']} torch threads, "
            f"torch {bench['torch']}, default precision {bench['default_precision']}. Load average {load[0]:.2f} "
            f"before and {load[1]:.2f} after"
            + (f": **the machine was busy with other work** (more than {BUSY_LOAD * cores:.1f} runnable processes on "
               f"{cores} cores), so every throughput below is lower and every wall/RST ratio higher than on a quiet "
               "machine." if busy else "."))


def throughput(bench: dict) -> tuple[pd.DataFrame, str]:
    """Tokens per second and MFU of ntng's loop, the HF default path and torch.compile; FLOPs per token."""
    b, t = bench, bench["throughput"]
    compiled = b["compile_s"] is not None
    rows = [
        ("matmul peak, fp32 (GFLOP/s)", rate(b["matmul_gflops_fp32"])),
        ("matmul peak, bf16 (GFLOP/s)", rate(b["matmul_gflops_bf16"])),
        (f"ntng BERT ({t['preset']}), tokens/s", rate(b["bert_tokens_per_s"])),
        ("HF default BERT (fp32, full-vocabulary head), tokens/s", rate(b["hf_default_tokens_per_s"])),
        ("speed-up of ntng's loop over the HF default", f"{b['speedup_vs_hf_default']:.2f}x"),
        ("ntng BERT MFU (of the bf16 peak)", pct(b["bert_mfu"])),
        ("HF default MFU (of the bf16 / fp32 peak)",
         f"{pct(b['hf_default_mfu'])} / {pct(b['hf_default_mfu_of_fp32_peak'])}"),
        (f"ntng T5 ({t['preset']}), tokens/s (encoder input)", rate(b["t5_tokens_per_s"])),
        ("ntng T5 MFU (of the bf16 peak)", pct(b["t5_mfu"])),
        ("torch.compile'd BERT, tokens/s (speed-up)",
         f"{rate(b['bert_compiled_tokens_per_s'])} ({b['compile_speedup']:.2f}x)" if compiled else "not measured"),
        ("torch.compile, first step (compile) seconds", f"{b['compile_s']:.0f}" if compiled else "-"),
    ]
    best = {k: max(t[k], key=lambda r: r["tokens_per_s"]) for k in ("bert", "hf_default", "t5")}
    text = (f"FLOPs per token: ntng BERT {best['bert']['flops_per_token'] / 1e6:.1f} M (sparse head on "
            f"{best['bert']['flops_per_sequence']['tokens']}-token sequences), HF default "
            f"{best['hf_default']['flops_per_token'] / 1e6:.1f} M (the head on every token), T5 "
            f"{best['t5']['flops_per_token'] / 1e6:.1f} M. Each figure is the best of {len(t['bert'])} interleaved "
            f"round(s) of {best['bert']['steps']} optimizer steps after warm-up: noise on a shared machine only ever "
            "slows a round down.")
    return pd.DataFrame(rows, columns=["what", "value"]), text


def step_breakdown(bench: dict) -> tuple[pd.DataFrame | None, str]:
    """Each model's profiled step by kind of work, and how much of it is matmul at what share of the peak."""
    if "step_breakdown" not in bench:
        return None, "*This benchmark result has no step breakdown (an older `make bench`): run it again.*"
    parts = bench["step_breakdown"]
    kinds = list(dict.fromkeys(k for part in parts.values() for k in part["fractions"]))
    frame = pd.DataFrame([{"share of a step": k, **{f"{m.upper()} ({parts[m]['preset']})":
                                                    pct(parts[m]["fractions"].get(k, 0.0)) for m in parts}}
                          for k in kinds])
    peak = bench["matmul_gflops_bf16"]
    lines = []
    for m, part in parts.items():
        f = part["fractions"]
        largest = [(k, v) for k, v in f.items() if k != "matmul"][:3]
        lines.append(
            f"{m.upper()}: a profiled step takes {part['step_s'] * 1e3:.0f} ms; its matmuls take "
            f"{pct(f.get('matmul', 0.0))} of it and run at {part['matmul_gflops']:,.0f} GFLOP/s, "
            f"{pct(part['matmul_gflops'] / peak)} of the {peak:,.0f} GFLOP/s peak; the other "
            f"{pct(1 - f.get('matmul', 0.0))} is work MFU does not count, largest "
            + ", ".join(f"{k} {pct(v)}" for k, v in largest) + ".")
    return frame, ("\n\n".join(lines) + "\n\nMFU is about the matmuls' share of the step times their rate against "
                   "the peak (the profiler's timers make small operators look a little slower).")


MODEL_KEYS = (("bert", "wall_over_rst", "wall_over_rst_relative"), ("t5", "wall_over_rst_t5",
                                                                      "wall_over_rst_relative_t5"))


def rst_fidelity(bench: dict) -> tuple[pd.DataFrame, str]:
    """Wall over RST per method and model, charged by a table calibrated just before the runs."""
    f = bench["rst_fidelity"]
    frame = pd.DataFrame([{"method": label(m),
                           **{f"{model.upper()} wall / RST": f"{bench[key][m]:.2f}" for model, key, _ in MODEL_KEYS},
                           **{f"{model.upper()} / baseline's": f"{bench[rel][m]:.2f}"
                              for model, _, rel in MODEL_KEYS if rel in bench},
                           **{f"{model.upper()} steps": f["runs"][model][m]["steps"] for model, _, _ in MODEL_KEYS}}
                          for m in bench["wall_over_rst"]])
    drift = "; ".join(f"{m.upper()} {v['train_full_depth_s'] * 1e3:.1f} ms per full-depth micro-batch here vs "
                      f"{v['shipped_train_full_depth_s'] * 1e3:.1f} ms in the shipped table"
                      for m, v in f["tables"].items() if "train_full_depth_s" in v)
    text = (f"Runs of {f['budget']} RST at preset `{f['preset']}`, {f.get('rounds', 1)} round(s) of every method (the "
            "order reversed each round), charged by a table calibrated on this machine just before them; the median "
            "over rounds. \"/ baseline's\" divides each run's ratio by the baseline's of the same round: the "
            "machine's own speed changes between minutes cancel, what is left is how consistently the table prices "
            "one method against another." + (f" Today's tables against the shipped ones: {drift}." if drift else ""))
    return frame, text


def targets(bench: dict) -> pd.DataFrame:
    """The benchmark's targets, each with what was measured and whether it was met."""
    b = bench
    ratios = [v for _, key, _ in MODEL_KEYS for v in b[key].values()]
    relative = [v for _, _, rel in MODEL_KEYS for v in b.get(rel, {}).values()]
    low, high = WALL_OVER_RST_BAND

    def within(values):
        return all(low <= v <= high for v in values)

    rows = [
        (f"ntng BERT >= {SPEEDUP_TARGET:g}x the HF default path", f"{b['speedup_vs_hf_default']:.2f}x",
         verdict(b["speedup_vs_hf_default"] >= SPEEDUP_TARGET)),
        (f"MFU >= {MFU_TARGET:.0%} of the bf16 matmul peak (BERT / T5)", f"{pct(b['bert_mfu'])} / {pct(b['t5_mfu'])}",
         verdict(min(b["bert_mfu"], b["t5_mfu"]) >= MFU_TARGET)),
        (f"wall / RST within {high - 1:.0%} of 1 for every method (table measured just before)",
         f"{min(ratios):.2f} .. {max(ratios):.2f}", verdict(within(ratios))),
        ("... relative to the baseline of the same round",
         f"{min(relative):.2f} .. {max(relative):.2f}" if relative else "-",
         verdict(within(relative)) if relative else "-"),
        (f"clock + hooks < {CLOCK_OVERHEAD_TARGET:.0%} of a step", pct(b["clock_overhead_fraction"]),
         verdict(b["clock_overhead_fraction"] < CLOCK_OVERHEAD_TARGET)),
        (f"loader wait < {LOADER_WAIT_TARGET:.0%} of a step", pct(b["loader_wait_fraction"]),
         verdict(b["loader_wait_fraction"] < LOADER_WAIT_TARGET)),
    ]
    return pd.DataFrame(rows, columns=["target", "measured", "verdict"])
