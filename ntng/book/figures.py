"""The book's figures (seaborn on matplotlib), each a pure function of `ntng.book.run_table` / `ntng.book.statistics` DataFrames that returns a
matplotlib Figure, or None when there is nothing to draw. No pyplot state: figures are built with
`matplotlib.figure.Figure`, so a notebook shows exactly what `show` displays.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg", force=False)

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from ntng.book import run_table, statistics
from ntng.book.run_table import label, method_order, sort_frame
from ntng.training.variants import base_method

BASELINE_COLOR = "black"
COLOURS = sns.color_palette("colorblind", 10)


def colour(method: str):
    """The baseline is black; every other method takes the next colour of the colorblind palette in the study's
    order of the methods the records hold (`run_table.method_order`); a variant takes its method's colour, darkened,
    so it reads as that method's sibling."""
    base = base_method(method)
    if base == "baseline":
        own = BASELINE_COLOR
    else:
        known = sorted({m for m in run_table.METHOD_META if m != "baseline"} | {base}, key=method_order)
        own = COLOURS[known.index(base) % len(COLOURS)]
    return own if method == base else tuple(0.55 * c for c in matplotlib.colors.to_rgb(own))


def palette_for(methods) -> dict:
    """A plain dict for seaborn's `palette=`, covering every method and variant in `methods`."""
    return {m: colour(m) for m in methods}

sns.set_theme(style="whitegrid", context="notebook")  # 12 pt labels, 11 pt ticks

# The book's text column, in inches at 96 px per inch (sphinx-book-theme's figures at a 1280 px window: 660 px).
# The book stretches every figure to the column's width (book/_static/ntng.css), so a figure drawn this wide shows
# its 12 pt (16 px) labels at about the body text's 16 px; a wider figure would shrink them.
COLUMN_INCHES = 7.0
SAVE_DPI = 144  # 1.5x the 96 px/in the sizes assume: sharp on high-density screens, same proportions


def show(fig: Figure | None, dpi: int = SAVE_DPI) -> None:
    """Display a figure in a notebook as one PNG output (nothing when `fig` is None)."""
    if fig is None:
        return
    from IPython.display import Image, display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    display(Image(data=buf.getvalue()))


def _grid(nrows: int, ncols: int, height: float = 3.2, sharey: bool | str = False):
    """Panels sharing the text column's width (COLUMN_INCHES), `height` inches each."""
    fig = Figure(figsize=(COLUMN_INCHES, height * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def _legend_outside(fig: Figure, title: str = "method") -> None:
    """One legend for the figure, below the panels: a legend at the side would take a third of the column. It has
    every panel's entries once: a method (a branched variant) may run at some budgets only."""
    labels: list[str] = []
    found: dict[str, object] = {}
    for a in fig.axes:  # merged in panel order: an entry new in a later panel goes after the one it follows there
        previous = None
        for handle, name in zip(*a.get_legend_handles_labels(), strict=True):
            if name not in found:
                found[name] = handle
                labels.insert(labels.index(previous) + 1 if previous is not None else 0, name)
            previous = name
    handles = [found[name] for name in labels]
    for a in fig.axes:
        if a.get_legend() is not None:
            a.get_legend().remove()
    fig.tight_layout()
    if handles:
        fig.legend(handles, [label(x) for x in labels], title=title or None, loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 3), frameon=False)


def _models(frame: pd.DataFrame) -> list[str]:
    """Models with at least one non-baseline run in `frame` (a baseline alone has nothing to be compared with)."""
    return sorted(set(frame[frame["method"] != "baseline"]["model"]))


def _methods(frame: pd.DataFrame) -> list[str]:
    return sorted(set(frame["method"]), key=method_order)


def _budgets(frame: pd.DataFrame) -> list[float]:
    return sorted(set(frame["budget_rst_s"]))


def _budget_axis(ax, budgets) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets)
    ax.set_xticklabels([_budget_label(b) for b in budgets])
    ax.minorticks_off()


def _budget_label(seconds: float) -> str:
    from ntng.presets import format_budget

    return format_budget(seconds)


def _offsets(methods, spread: float = 0.08) -> dict:
    """A small x shift per method (in log2 units of the budget axis) so markers at one budget do not overlap."""
    return dict(zip(methods, np.linspace(-spread, spread, len(methods)), strict=True))


def _interval_bars(ax, rows: pd.DataFrame, x, method: str, **style) -> None:
    """Means with their 95% intervals (`mean`, `ci_low`, `ci_high`; a missing interval draws no bar)."""
    yerr = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]])
    yerr = np.where(np.isfinite(yerr), yerr, 0.0)
    ax.errorbar(x, rows["mean"], yerr=yerr, color=colour(method), marker="o", capsize=3, label=method, **style)


def _seed_dots(ax, x, y, method: str) -> None:
    sns.scatterplot(x=x, y=y, color=colour(method), s=14, alpha=0.5, ax=ax, legend=False)


def _model_panels(table: pd.DataFrame, models, spread: float = 0.08, reference: float | None = None):
    """A figure with one panel per model: (fig, axes, [(ax, model, the model's rows, its methods, their x
    offsets)]). `reference`: the baseline's level, a dashed line in every panel."""
    fig, axes = _grid(1, len(models), height=3.6)
    panels = []
    for j, model in enumerate(models):
        ax = axes[0][j]
        part = table[table["model"] == model]
        methods_here = _methods(part)
        if reference is not None:
            ax.axhline(reference, color=BASELINE_COLOR, linestyle="--", linewidth=1.2, label="baseline")
        panels.append((ax, model, part, methods_here, _offsets(methods_here, spread)))
    return fig, axes, panels


def _budget_intervals(table: pd.DataFrame, seeds: pd.DataFrame, value: str, ylabel: str, models,
                      spread: float = 0.08, reference: float | None = None) -> Figure:
    """A panel per model: each method's mean over seeds with its 95% interval against the budget (`table`), and
    each seed's own `value` as a dot (`seeds`)."""
    fig, axes, panels = _model_panels(table, models, spread, reference)
    for ax, model, part, methods_here, offsets in panels:
        for method in methods_here:
            rows = part[part["method"] == method].sort_values("budget_rst_s")
            _interval_bars(ax, rows, rows["budget_rst_s"] * 2 ** offsets[method], method,
                           linestyle="--" if method == "baseline" else "-")
            dots = seeds[(seeds["model"] == model) & (seeds["method"] == method)]
            _seed_dots(ax, dots["budget_rst_s"] * 2 ** offsets[method], dots[value], method)
        _budget_axis(ax, _budgets(part))
        ax.set(title=model, xlabel="RST budget", ylabel=ylabel)
    _legend_outside(fig)
    return fig


FLOOR_COLOR = "grey"


def _floor_line(ax, floor: float | None) -> None:
    """The context-free loss floor (ntng.data.floors) as a dotted reference line."""
    if floor is not None and math.isfinite(floor):
        ax.axhline(floor, color=FLOOR_COLOR, linestyle=":", linewidth=1.2, label="context-free floor")


def loss_curves(evals: pd.DataFrame, methods, floors: dict | None = None) -> Figure | None:
    """Validation loss against RST: a row per model, a column per budget, one line per run (seed), the baseline
    in black on the same axes; `floors` (model -> loss) dotted: the loss of a model that ignores context."""
    data = evals[evals["method"].isin(["baseline", *methods])].dropna(subset=["val_loss"])
    if data.empty or not set(data["method"]) - {"baseline"}:
        return None
    data = statistics.where_methods_ran(data)
    models, budgets = _models(data), _budgets(data)
    fig, axes = _grid(len(models), len(budgets))
    for i, model in enumerate(models):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            part = sort_frame(data[(data["model"] == model) & (data["budget_rst_s"] == budget)])
            if not part.empty:
                sns.lineplot(data=part, x="rst_s", y="val_loss", hue="method", units="seed", estimator=None,
                             palette=palette_for(_methods(part)), hue_order=_methods(part), marker="o", markersize=4, ax=ax,
                             linewidth=1.4)
            _floor_line(ax, (floors or {}).get(model))
            later = part[part["rst_s"] > 0]["val_loss"]  # the untrained model's first evaluation would flatten the rest
            if len(later):
                floor = (floors or {}).get(model)
                low, high = later.min(), max(later.max(), floor if floor is not None and math.isfinite(floor) else -math.inf)
                ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
            ax.set(title=f"{model}, budget {_budget_label(budget)}", xlabel="RST (s)", ylabel="validation loss")
    _legend_outside(fig)
    return fig


def final_loss(finals: pd.DataFrame, runs: pd.DataFrame, methods) -> Figure | None:
    """Final validation loss per method x budget: the mean over seeds with its 95% t-interval (bars) and each
    seed (dots); a column per model."""
    table = statistics.where_methods_ran(finals[finals["method"].isin(["baseline", *methods])].dropna(subset=["mean"]))
    if table.empty or not set(table["method"]) - {"baseline"}:
        return None
    complete = statistics.where_methods_ran(runs[runs["status"] == "complete"])
    fig = _budget_intervals(table, complete, "final_val_loss", "final validation loss", _models(table), spread=0.12)
    floor_of = statistics.floors(runs)
    for ax, model in zip(fig.axes, _models(table), strict=False):
        _floor_line(ax, floor_of.get(model))
    return fig


def difference(diffs: pd.DataFrame, pairs: pd.DataFrame, methods) -> Figure | None:
    """Method minus baseline (final validation loss, paired by seed) against the budget: the mean with its 95%
    t-interval and each seed; 0 is the baseline, below 0 the method is better."""
    table = diffs[diffs["method"].isin(methods)].dropna(subset=["mean"])
    if table.empty:
        return None
    return _budget_intervals(table, pairs, "difference", "method - baseline (val loss)", sorted(set(table["model"])),
                             reference=0.0)


def overview(diffs: pd.DataFrame, pairs: pd.DataFrame) -> Figure | None:
    """The book's first figure: every method's final-loss difference to the baseline (mean over seeds, 95%
    interval, each seed a dot) against the budget, one panel per model; variants (ablations) are left to their
    family's chapter."""
    methods = [m for m in _methods(diffs) if m == base_method(m) and m != "baseline"] if len(diffs) else []
    return difference(diffs, pairs, methods) if methods else None


def speedup(speed: pd.DataFrame, methods) -> Figure | None:
    """Time-to-target speed-up per seed against the budget (log scale): RST the baseline needs to reach the
    method's final loss / RST the method used. 1 = parity; triangles: the baseline never got that low (a lower
    bound)."""
    table = speed[speed["method"].isin(methods)]
    if table.empty:
        return None
    fig, axes, panels = _model_panels(table, sorted(set(table["model"])), reference=1.0)
    for ax, model, part, methods_here, offsets in panels:
        for method in methods_here:
            rows = part[part["method"] == method]
            hit = rows[rows["reached"]]
            if len(hit):
                mean = hit.groupby("budget_rst_s")["speedup"].mean()
                ax.plot(mean.index * 2 ** offsets[method], mean.values, color=colour(method), marker="o",
                        label=method)
                _seed_dots(ax, hit["budget_rst_s"] * 2 ** offsets[method], hit["speedup"], method)
            miss = rows[~rows["reached"]]
            if len(miss):
                ax.scatter(miss["budget_rst_s"] * 2 ** offsets[method], miss["speedup_at_least"], marker="^",
                           color=colour(method), label=None if len(hit) else method)
        ax.set_yscale("log", base=2)
        _budget_axis(ax, _budgets(part))
        ax.set(title=model, xlabel="RST budget", ylabel="speed-up vs baseline (x)")
    _legend_outside(fig)
    return fig


def wall_vs_rst(runs: pd.DataFrame, methods=None) -> Figure | None:
    """Wall-clock seconds of training against the RST charged, one dot per run; a column per model. The dotted
    line is wall = RST (this machine as fast as the reference)."""
    data = runs if methods is None else runs[runs["method"].isin(["baseline", *methods])]
    data = data[(data["rst_s"] > 0) & data["wall_s"].notna()] if not data.empty else data
    if methods is not None and not data.empty:
        data = data[data["model"].isin(_models(data))]
    if data.empty:
        return None
    models = sorted(set(data["model"]))
    fig, axes = _grid(1, len(models), height=3.6)
    for j, model in enumerate(models):
        ax = axes[0][j]
        part = sort_frame(data[data["model"] == model])
        sns.scatterplot(data=part, x="rst_s", y="wall_s", hue="method", style="status",
                        palette=palette_for(_methods(part)),
                        hue_order=_methods(part), ax=ax, s=40)
        top = max(part["rst_s"].max(), part["wall_s"].max()) * 1.05
        ax.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
        ax.set(title=model, xlabel="RST charged (s)", ylabel="wall clock (s)", xlim=(0, top), ylim=(0, top))
    _legend_outside(fig, title="")
    return fig


def active_layers(metrics: pd.DataFrame, full_depth: dict | None = None) -> Figure | None:
    """Active layers per optimizer step against the fraction of the budget used (mean over the step's
    micro-batches), one line per run; a row per model, a column per budget."""
    data = metrics.dropna(subset=["active_layers"]) if not metrics.empty else metrics
    if not data.empty:
        data = statistics.where_methods_ran(data)
    if data.empty:
        return None
    models, budgets = _models(data), _budgets(data)
    fig, axes = _grid(len(models), len(budgets), sharey="row")
    for i, model in enumerate(models):
        for j, budget in enumerate(budgets):
            ax = axes[i][j]
            part = sort_frame(data[(data["model"] == model) & (data["budget_rst_s"] == budget)])
            if not part.empty:
                sns.lineplot(data=part, x="budget_fraction", y="active_layers", hue="method", units="seed",
                             estimator=None, palette=palette_for(_methods(part)), hue_order=_methods(part), ax=ax, linewidth=1,
                             alpha=0.8)
            ax.set(title=f"{model}, budget {_budget_label(budget)}", xlabel="fraction of the RST budget",
                   ylabel="active layers", xlim=(0, 1))
    _legend_outside(fig)
    return fig


def keep_rates(runs: pd.DataFrame, methods) -> Figure | None:
    """The share of scored examples the selection methods kept for training (method_stats.keep_rate), per
    budget: bars are means over seeds, dots single runs."""
    if runs.empty or "stat.keep_rate" not in runs.columns:
        return None
    data = runs[runs["method"].isin(methods)].dropna(subset=["stat.keep_rate"])
    if data.empty:
        return None
    data = sort_frame(data).assign(label=lambda f: f["method"].map(label))
    models = sorted(set(data["model"]))
    fig, axes = _grid(1, len(models), height=3.4)
    for j, model in enumerate(models):
        ax = axes[0][j]
        part = data[data["model"] == model]
        order = sorted(set(part["budget"]), key=lambda b: part[part["budget"] == b]["budget_rst_s"].iloc[0])
        hue_order = _methods(part)
        sns.barplot(data=part, x="budget", y="stat.keep_rate", hue="method", order=order, hue_order=hue_order,
                    palette=palette_for(hue_order), errorbar=None, ax=ax, alpha=0.8)
        sns.stripplot(data=part, x="budget", y="stat.keep_rate", hue="method", order=order, hue_order=hue_order,
                      palette=palette_for(hue_order), dodge=True, color="black", size=4, ax=ax, legend=False)
        ax.set(title=model, xlabel="RST budget", ylabel="keep rate", ylim=(0, 1))
    _legend_outside(fig)
    return fig


def downstream(table: pd.DataFrame) -> Figure | None:
    """Best dev score per task against the pre-training budget, one line per method (95% t-interval over
    seeds); the grey band's top edge is the floor (the same fine-tuning from a randomly initialised model)."""
    data = table.dropna(subset=["mean"]) if not table.empty else table
    if data.empty:
        return None
    pairs = list(dict.fromkeys(zip(data["model"], data["task"], strict=True)))
    ncols = min(len(pairs), 3)  # three panels at most across the column, then another row
    fig, axes = _grid(math.ceil(len(pairs) / ncols), ncols, height=3.0)
    for ax in axes.ravel()[len(pairs):]:
        ax.set_visible(False)
    for j, (model, task) in enumerate(pairs):
        ax = axes.ravel()[j]
        part = data[(data["model"] == model) & (data["task"] == task)]
        methods_here = _methods(part)
        offsets = _offsets(methods_here)
        for method in methods_here:
            rows = part[part["method"] == method].sort_values("budget_rst_s")
            _interval_bars(ax, rows, rows["budget_rst_s"] * 2 ** offsets[method], method,
                           linestyle="--" if method == "baseline" else "-")
        floor = part["floor"].mean()
        if math.isfinite(floor):
            ax.axhline(floor, color="grey", linestyle=":", linewidth=1.5, label="floor")
        _budget_axis(ax, _budgets(part))
        ax.set(title=f"{model}: {task}", xlabel="pre-training budget (RST)", ylabel=part["metric"].iloc[0])
    _legend_outside(fig, title="")
    return fig


def rst_tables(tables: pd.DataFrame) -> Figure | None:
    """Seconds per forward+backward micro-batch by active layers, one line per table; a column per model. The
    paper's tables (GPU, full-size models) sit far above the CPU presets' own (tiny models)."""
    data = tables[tables["unit"] == "train"] if not tables.empty else tables
    if data.empty:
        return None
    models = sorted(set(data["model"]))
    fig, axes = _grid(1, len(models), height=4.8)  # room for the legend under each panel
    for j, model in enumerate(models):
        ax = axes[0][j]
        part = data[data["model"] == model]
        sns.lineplot(data=part, x="active_layers", y="seconds", hue="table", style="source", markers=True, ax=ax,
                     style_order=["shipped", "this machine"])
        ax.set_yscale("log")
        ax.set(title=model, xlabel="active layers", ylabel="s per micro-batch (fwd+bwd)")
        # below its own panel (the tables differ per model): inside, it covered the curves
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False)
    fig.tight_layout()
    return fig
