"""The text and figures of the book's pages "Choosing the CPU scale" and "Tuning on equal terms", computed from
the records of `ntng probe` (ntng.experiments.probe), of `ntng tune` (ntng.experiments.tuning) and of the reference preset's grid."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.figure import Figure

from ntng.book.figures import COLUMN_INCHES
from ntng.book.numbers import fmt as format_number
from ntng.book.run_table import load_runs
from ntng.experiments.tuning import MAX_EXTENSIONS, NOISE_MARGIN_NATS
from ntng.presets import REFERENCE_BELOW_FLOOR, Preset, format_budget, get_preset, parse_budget

LOWEST = "**"  # marks the lowest final loss of a model in a table


def fmt(value, digits: int = 3) -> str:
    """A number on the scale page; a missing one is left blank, as `ntng probe` prints it."""
    return format_number(value, digits, missing="")


def _show(value) -> str:
    return ",".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"


def best_probe_rows(rows: list[dict]) -> dict[tuple[str, float], dict]:
    """(model, budget in RST seconds) -> the complete probe run with the lowest final loss."""
    best: dict[tuple[str, float], dict] = {}
    for r in rows:
        key = (r["model"], r["budget_rst_s"])
        done = r["status"] == "complete" and r["final_val_loss"] is not None
        if done and (key not in best or r["final_val_loss"] < best[key]["final_val_loss"]):
            best[key] = r
    return best


def _groups(rows: list[dict]) -> list[tuple[str, float]]:
    """(model, budget) of the rows, model by model, budgets in increasing order."""
    return sorted({(r["model"], r["budget_rst_s"]) for r in rows})


def probe_markdown(rows: list[dict], unreadable=()) -> str:
    """One table per model: every candidate and learning rate, the lowest final loss in bold; then the runs whose
    records could not be read."""
    damaged = [f"- `{where}`: {why}" for where, why in unreadable]
    if damaged:
        damaged.insert(0, "\nRecords that cannot be read (left out above):\n")
    if not rows:
        return "\n".join(["*No probe records yet: run `ntng probe` (they land in `results/probe/`).*", *damaged])
    best = best_probe_rows(rows)
    out = []
    for model, budget_s in _groups(rows):
        mine = sorted((r for r in rows if (r["model"], r["budget_rst_s"]) == (model, budget_s)),
                      key=lambda r: (r["layers"], r["width"], r["batch"], r["lr"]))
        floor = next((r["floor"] for r in mine if r["floor"] is not None), None)
        budget = format_budget(budget_s)
        out.append(f"**{model.upper()}**, the baseline after {budget} of RST on one core; context-free floor "
                   f"{fmt(floor)} nats.\n")
        out.append("| layers x width | parameters | batch | peak lr | optimizer steps | tokens / RST s | final loss "
                   "| below floor |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in mine:
            mark = LOWEST if r is best.get((model, budget_s)) else ""
            loss = fmt(r["final_val_loss"]) if r["status"] == "complete" else r["status"]
            tps = "" if r["tokens_per_rst_s"] is None else f"{r['tokens_per_rst_s']:,.0f}"
            out.append(f"| {r['layers']} x {r['width']} | {r['parameters'] or 0:,} | {r['batch']} | {r['lr']:g} | "
                       f"{r['steps']} | {tps} | {mark}{loss}{mark} | {mark}{fmt(r['below_floor'])}{mark} |")
        out.append("")
    return "\n".join(out + damaged)


def probe_commands(rows: list[dict]) -> list[str]:
    """`ntng probe` commands that re-make these records (each skips the runs that exist): one per model and set of
    learning rates, over the shapes x batches tried with them (split by batch where they are not a full grid)."""
    groups: dict[tuple, set] = {}
    for r in rows:
        lrs = tuple(sorted({x["lr"] for x in rows if x["model"] == r["model"] and x["layers"] == r["layers"]
                            and x["width"] == r["width"] and x["batch"] == r["batch"]}))
        groups.setdefault((r["model"], r["budget_rst_s"], lrs), set()).add((r["layers"], r["width"], r["batch"]))
    commands = []
    for (model, budget_s, lrs), cells in sorted(groups.items()):
        shapes = sorted({(layers, width) for layers, width, _ in cells})
        batches = sorted({batch for _, _, batch in cells})
        full = len(cells) == len(shapes) * len(batches)
        for batch_set in [batches] if full else [[b] for b in batches]:
            mine = shapes if full else sorted({(la, w) for la, w, b in cells if b == batch_set[0]})
            commands.append(" ".join(["ntng probe --models", model, "--shapes", *(f"{la}x{w}" for la, w in mine),
                                      "--batches", *map(str, batch_set), f"--{model}-lrs",
                                      *(f"{lr:g}" for lr in lrs), "--budget", format_budget(budget_s),
                                      "--jobs 2"]))
    return commands


def probe_figure(rows: list[dict]) -> Figure | None:
    """Final loss against peak learning rate, one line per shape and batch, one panel per model; the floor dashed."""
    rows = [r for r in rows if r["status"] == "complete" and r["final_val_loss"] is not None]
    if not rows:
        return None
    groups = _groups(rows)
    fig = Figure(figsize=(COLUMN_INCHES, 4.0), layout="constrained")  # spans the text column (ntng.book.figures)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, (model, budget_s) in zip(axes, groups, strict=True):
        mine = [r for r in rows if (r["model"], r["budget_rst_s"]) == (model, budget_s)]
        shapes = sorted({(r["layers"], r["width"]) for r in mine})
        batches = sorted({r["batch"] for r in mine})
        styles = ["-", "--", ":", "-."]
        for key in sorted({(r["layers"], r["width"], r["batch"]) for r in mine}):
            line = sorted((r for r in mine if (r["layers"], r["width"], r["batch"]) == key), key=lambda r: r["lr"])
            # one colour per shape, one line style per batch size
            ax.plot([r["lr"] for r in line], [r["final_val_loss"] for r in line], marker="o",
                    color=f"C{shapes.index(key[:2]) % 10}", linestyle=styles[batches.index(key[2]) % len(styles)],
                    label=f"{key[0]}x{key[1]}, batch {key[2]}")
        floor = next((r["floor"] for r in mine if r["floor"] is not None), None)
        if floor is not None:
            ax.axhline(floor, color="grey", linestyle=":", linewidth=1)
            ax.annotate("context-free floor", (0.02, floor), xycoords=("axes fraction", "data"), fontsize=10,
                        color="grey", va="bottom")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("final validation loss (nats)")
        ax.set_title(f"{model.upper()}, {format_budget(budget_s)} of RST")
        ax.legend(fontsize=9)
    return fig


def preset_candidate(preset: Preset, model: str) -> tuple[int, int, int, float]:
    """(layers, width, batch, lr) of a preset's model: what to look up among the probe's candidates."""
    shape = preset.shape(model)
    width = shape.hidden if model == "bert" else shape.d_model
    return shape.num_layers, width, shape.batch, preset.recipe(model).lr


def preset_markdown(preset_name: str, probe_rows: list[dict], results: str | Path) -> str:
    """Where the preset sits in the probe, and how far below the floor its baselines end at each budget."""
    preset = get_preset(preset_name)
    best = best_probe_rows(probe_rows)
    out = []
    for model in ("bert", "t5"):
        layers, width, batch, lr = preset_candidate(preset, model)
        line = f"- **{model.upper()}** at `{preset.name}`: {layers} x {width}, batch {batch}, peak lr {lr:g}"
        budgets = sorted(b for m, b in best if m == model)
        if budgets:  # the probe's verdict at the longest budget it ran (its finalists)
            top, longest = best[(model, budgets[-1])], format_budget(budgets[-1])
            same = (top["layers"], top["width"], top["batch"], top["lr"]) == (layers, width, batch, lr)
            line += (f": the probe's lowest final loss at {longest}." if same else
                     f"; the probe's lowest final loss at {longest} was {top['layers']} x {top['width']}, batch "
                     f"{top['batch']}, lr {top['lr']:g}.")
        out.append(line)
    runs = load_runs(results, preset.name).runs
    base = runs[(runs["method"] == "baseline") & (runs["status"] == "complete")] if len(runs) else runs
    if len(base):
        out += ["", "The preset's baselines (seed 0 where there are more), nats below the context-free floor:", "",
                "| model | budget | final loss | floor | below floor | wall s / RST s |", "|---|---|---|---|---|---|"]
        for (model, budget_s), g in base.groupby(["model", "budget_rst_s"]):
            r = g.sort_values("seed").iloc[0]
            out.append(f"| {model.upper()} | {format_budget(budget_s)} | {fmt(r['final_val_loss'])} | "
                       f"{fmt(r['floor'])} | {fmt(r['floor'] - r['final_val_loss'])} | "
                       f"{fmt(r['wall_s'] / r['rst_s'], 2)} |")
        ratio = float((base["wall_s"] / base["rst_s"]).mean())
        from ntng.methods import paper_ablations

        rst = grid_rst_seconds(preset, reference_grid_methods(), ablations=len(paper_ablations()))
        cores = max(1, int(2 // preset.ray_cpus))
        hours = rst * ratio / cores / 3600
        out += ["", f"One seed of the reference grid is {rst / 60:.0f} min of RST; at the wall time these baselines "
                f"took per RST second ({ratio:.2f}, evaluations included), {cores} cells at a time on two cores, it "
                f"takes about **{hours:.1f} h** of wall time (each cell's kernel start-up not included)."]
        largest = max(parse_budget(b) for b in preset.budgets)
        for model, g in base.groupby("model"):
            points = sorted((b, float((gb["floor"] - gb["final_val_loss"]).mean()))
                            for b, gb in g.groupby("budget_rst_s"))
            needed = budget_to_reach(points, REFERENCE_BELOW_FLOOR)
            at_largest = dict(points).get(largest)
            if at_largest is None or at_largest >= REFERENCE_BELOW_FLOOR:
                continue
            text = (f"{model.upper()} ends {at_largest:.2f} nats below its floor at {format_budget(largest)}, short of "
                    f"the {REFERENCE_BELOW_FLOOR:g} a reference scale should reach.")
            if needed is not None:
                text += (f" At the gain per doubling of the budget between its two largest budgets, it would get "
                         f"there at about {needed / 60:.0f} min of RST: a grid with that largest budget would take "
                         f"about {hours * needed / largest:.0f} h per seed (an extrapolation, not a measurement).")
            out += ["", text]
    else:
        out += ["", f"*No baseline records at `{preset.name}` yet (`ntng sweep --preset {preset.name} --methods "
                "baseline`).*"]
    return "\n".join(out)


def budget_to_reach(points: list[tuple[float, float]], target: float) -> float | None:
    """The budget at which nats below the floor would reach `target`, extrapolated log-linearly in the budget from
    the two largest of `points` ((budget in s, nats below the floor), sorted); None without two points or gain."""
    if len(points) < 2:
        return None
    (b1, g1), (b2, g2) = points[-2], points[-1]
    per_doubling = (g2 - g1) / math.log2(b2 / b1)
    if per_doubling <= 0:
        return None
    return b2 * 2 ** ((target - g2) / per_doubling)


def reference_grid_methods() -> dict[str, list[str]]:
    """model -> the built-in methods the paper ran on it (each method's `studied_on`): a sweep's default grid."""
    from ntng.methods import studied_methods

    return {model: studied_methods(model) for model in ("bert", "t5")}


def grid_rst_seconds(preset: Preset, methods_by_model: dict[str, list[str]], ablations: int,
                     il_models: int = 1) -> float:
    """RST of one seed of a grid: every method at every budget, the ablations and RHO-LOSS's irreducible-loss
    models at the middle budget."""
    budgets = [parse_budget(b) for b in preset.budgets]
    middle = sorted(budgets)[len(budgets) // 2]
    total = sum(len(methods) * sum(budgets) for methods in methods_by_model.values())
    return total + (ablations + il_models) * middle


def tuning_markdown(rows: list[dict]) -> str:
    """One table row per tuned hyper-parameter: the paper's value, each value tried with its final loss, the
    chosen one (lowest) in bold."""
    if not rows:
        return "*No tuning records yet: run `ntng tune --preset P` (they land in `results/tuning/P/`).*"
    budget, seed, preset = rows[0]["budget"], rows[0]["seed"], rows[0]["preset"]
    out = [f"Preset `{preset}`: every run {budget} of RST, seed {seed}; final validation loss in nats, the chosen "
           f"value in bold: the lowest, unless it beats the value the grid was centred on (listed first) by "
           f"{NOISE_MARGIN_NATS:g} nats or less, which one seed cannot tell from noise. A real-valued hyper-parameter "
           f"chosen at the edge of the values tried was followed one factor further, at most {MAX_EXTENSIONS} "
           f"times (the values after the third).", "",
           "Every trial's loss was measured on " + "; ".join(sorted({e for r in rows for e in r.get("evaluated_on", [])}))
           + ". The reference grid's runs are evaluated as config.json's `evaluation` says (the reference preset: "
           "the whole split), so these losses do not compare with theirs; the tuning only chose the values.", "",
           "| model | method | hyper-parameter | paper | tried (final loss) | chosen |", "|---|---|---|---|---|---|"]
    for r in rows:
        tried = []
        for t in r["trials"]:
            loss = fmt(t["final_val_loss"]) if t["final_val_loss"] is not None else t["status"]
            mark = LOWEST if r["chosen"] is not None and t["value"] == r["chosen"] else ""
            tried.append(f"{mark}{_show(t['value'])}: {loss}{mark}")
        chosen = "" if r["chosen"] is None else _show(r["chosen"]) + ("" if r["complete"] else " (so far)")
        paper = "" if r["paper"] is None else _show(r["paper"])
        out.append(f"| {r['model'].upper()} | {r['method'].replace('_', ' ')} | `{r['key']}` | {paper} | "
                   f"{'; '.join(tried)} | {chosen} |")
    return "\n".join(out)


def tuning_figure(rows: list[dict]) -> Figure | None:
    """One small panel per tuned hyper-parameter: final loss against the value tried (log scale), the centre
    of the grid hollow."""
    rows = [r for r in rows if any(t["final_val_loss"] is not None for t in r["trials"])]
    if not rows:
        return None
    cols = 3  # three small panels across the text column (ntng.book.figures.COLUMN_INCHES)
    nrows = math.ceil(len(rows) / cols)
    fig = Figure(figsize=(COLUMN_INCHES, 2.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, r in zip(axes, rows, strict=False):
        trials = [t for t in r["trials"] if t["final_val_loss"] is not None]
        # a list-valued setting (stacking points) is placed by its first element
        xs = [t["value"][0] if isinstance(t["value"], list) else t["value"] for t in trials]
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        ax.plot([xs[i] for i in order], [trials[i]["final_val_loss"] for i in order], marker="o")
        centre = [i for i, t in enumerate(trials) if t["value"] == r["centre"]]
        for i in centre:
            ax.plot([xs[i]], [trials[i]["final_val_loss"]], marker="o", markerfacecolor="white", color="C0")
        if all(x > 0 for x in xs):
            ax.set_xscale("log")
        ax.set_title(f"{r['model'].upper()} {r['method'].replace('_', ' ')}: {r['key']}", fontsize=10)
        ax.tick_params(labelsize=9)
    for ax in axes[len(rows):]:
        ax.set_visible(False)
    return fig
