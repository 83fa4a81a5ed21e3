"""The book's text and tables: numbers formatted for a page, generated sentences and Markdown/HTML tables, from
`ntng.book.run_table` (the records) and `ntng.book.statistics` (what is computed from them). Pages print these."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ntng.book.numbers import fmt, fmt_ci
from ntng.book.run_table import (
    RunTable,
    family_methods,
    family_name,
    finite,
    label,
    method_meta,
    method_order,
    sort_frame,
)
from ntng.book.statistics import (
    difference_to_baseline,
    final_loss_table,
    floors,
    time_to_target,
    where_methods_ran,
)
from ntng.errors import UsageError
from ntng.presets import format_budget, get_preset, parse_budget
from ntng.resources import shown_path
from ntng.training.variants import base_method

# --- RST tables ------------------------------------------------------------------------------------------

def calibration_dir(results: str | Path, preset: str) -> Path:
    """Where `ntng book` keeps the tables it measured on this machine (`ntng calibrate` output)."""
    return Path(results) / preset / "calibration"


def rst_tables(preset_name: str, results: str | Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Seconds per unit of work by active layers, long form (table, source, model, unit, active_layers, seconds),
    for the shipped tables of the preset (and the paper's) and this machine's tables under `calibration_dir`;
    plus a list of tables that could not be read (file: reason)."""
    from ntng.errors import NtngError
    from ntng.training.rst import load_table, shipped_table_path

    rows, problems = [], []
    try:
        rst_preset = get_preset(preset_name).rst_preset
    except NtngError:
        rst_preset = preset_name
    sources = []
    for preset in dict.fromkeys((rst_preset, "paper")):
        for model in ("bert", "t5"):
            sources.append(("shipped", shipped_table_path(preset, model)))
    if results is not None:
        folder = calibration_dir(results, preset_name)
        sources += [("this machine", p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    for source, path in sources:
        try:
            table = load_table(path)
        except NtngError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        for unit in ("train", "forward"):
            for layers, seconds in enumerate(getattr(table, unit), start=1):
                rows.append({"table": table.name, "source": source, "model": table.model, "preset": table.preset,
                             "unit": unit, "active_layers": layers, "seconds": seconds,
                             "machine": table.machine, "file": path.name})
    return pd.DataFrame(rows, columns=["table", "source", "model", "preset", "unit", "active_layers", "seconds",
                                       "machine", "file"]), problems


# --- text for the pages ------------------------------------------------------------------------------------

# Where a line must not break inside a number: between a number and its interval ("6.125 [6.100, 6.150]"), inside
# the interval, and after a budget's colon ("2m: -0.012"). Text around them still wraps.
_NUMBER_SPACES = re.compile(r"(?<=\d) (?=\[)|(?<=,) (?=[-+\u2212]?\d[\d.]*\])|(?<=:) (?=[-+\u2212]?\d)")


def keep_numbers_whole(text: str) -> str:
    """`text` with the spaces inside each number and its interval made non-breaking (a table never wraps a
    number over two lines)."""
    return _NUMBER_SPACES.sub("\u00a0", text)


def markdown_table(frame: pd.DataFrame) -> str:
    """A pipe table (cells escaped, numbers kept whole): the pages print these as generated Markdown."""
    if frame.empty:
        return ""
    def cell(v):
        return keep_numbers_whole(str(v).replace("|", "\\|").replace("\n", " "))
    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def results_table(table: RunTable, methods=None) -> pd.DataFrame:
    """The book's result table: per model x method x budget, final validation loss (mean [95% CI], complete runs
    of all runs), the paired difference to the baseline and its verdict, the time-to-target speed-up."""
    runs = table.runs if methods is None else table.runs[table.runs["method"].isin(["baseline", *methods])]
    finals = final_loss_table(runs)
    if finals.empty:
        return pd.DataFrame()
    diffs = difference_to_baseline(runs).set_index(["model", "method", "budget_rst_s"])
    speed = time_to_target(runs, table.evals)
    floor_of = floors(table.runs)  # nats below the context-free floor: what the runs learned beyond frequencies
    if methods is not None:  # a chapter's table: the baseline where its methods ran
        finals = where_methods_ran(finals)
    out = []
    for _, row in finals.iterrows():
        if methods is not None and row["method"] not in methods and row["method"] != "baseline":
            continue
        key = (row["model"], row["method"], row["budget_rst_s"])
        d = diffs.loc[key] if key in diffs.index else None
        s = speed[(speed["model"] == row["model"]) & (speed["method"] == row["method"])
                  & (speed["budget_rst_s"] == row["budget_rst_s"])]
        runs_text = f"{row['complete']}/{row['runs']}" + (f" ({row['not_complete']})" if row["not_complete"] else "")
        floor = floor_of.get(row["model"], math.nan)
        out.append({"model": row["model"], "method": label(row["method"]),
                    "budget": row["budget"], "runs": runs_text,
                    "final val loss [95% CI]": fmt_ci(row["mean"], row["ci_low"], row["ci_high"]),
                    "below floor": fmt(floor - row["mean"]),
                    "vs baseline [95% CI]": "-" if row["method"] == "baseline" or d is None
                    else fmt_ci(d["mean"], d["ci_low"], d["ci_high"], signed=True),
                    "verdict": "" if row["method"] == "baseline" or d is None else d["verdict"],
                    "speed-up": "" if row["method"] == "baseline" else speedup_text(s)})
    return pd.DataFrame(out)


def results_markdown(table: RunTable, methods=None) -> str:
    """The result table as the book shows it: a table per model under its name, so that the columns fit the page."""
    results = results_table(table, methods)
    if results.empty:
        return "*No complete runs of these methods yet.*"
    parts = []
    for model in dict.fromkeys(results["model"]):
        parts += [f"**{model.upper()}**", markdown_table(results[results["model"] == model].drop(columns="model"))]
    return "\n\n".join(parts)


def speedup_text(speed: pd.DataFrame) -> str:
    if speed.empty:
        return "-"
    reached = speed[speed["reached"]]
    parts = []
    if len(reached):
        parts.append(f"{reached['speedup'].mean():.2f}x")
    if len(reached) < len(speed):
        bound = speed[~speed["reached"]]["speedup_at_least"].min()
        parts.append(f"{len(speed) - len(reached)} seed(s) > {bound:.2f}x")
    return "; ".join(parts)


def _difference_words(row) -> str:
    """One budget's paired difference to the baseline in words, with its 95% interval."""
    mean, low, high, n = row["mean"], row["ci_low"], row["ci_high"], row["seeds"]
    if n < 2:
        return f"at {row['budget']} {mean:+.3f} (one seed)"
    if high < 0:
        return f"at {row['budget']} it ends {-mean:.3f} ({-high:.3f} to {-low:.3f}) nats below the baseline"
    if low > 0:
        return f"at {row['budget']} {mean:.3f} ({low:.3f} to {high:.3f}) nats above it"
    return f"at {row['budget']} the difference is {mean:+.3f} ({low:+.3f} to {high:+.3f}), within noise"


def gap_trend(first: float, last: float, growth: float) -> str:
    """One sentence on how a method's mean difference to the baseline moves from the smallest budget (`first`) to
    the largest (`last`, `growth` times the budget): the gap as printed (3 decimals) narrows, widens or stays, or
    the mean crosses the baseline on the way."""
    a, b = round(abs(first), 3), round(abs(last), 3)
    if first * last < 0 and a and b:  # crosses the baseline: a gap that "stays" or "narrows" would hide that
        return (f"The mean goes from {a:.3f} nats {'below' if first < 0 else 'above'} the baseline to {b:.3f} "
                f"{'below' if last < 0 else 'above'} it as the budget grows {growth:g}x.")
    change = f"stays at {a:.3f} nats" if a == b else f"{'narrows' if b < a else 'widens'} from {a:.3f} to {b:.3f} nats"
    return f"The gap {change} as the budget grows {growth:g}x."


def trend_sentences(table: RunTable, methods, exclude_seeds=()) -> list[str]:
    """One generated sentence per model x method: its final validation loss against the baseline's at each budget
    (paired by seed, mean and 95% interval over the seeds not in `exclude_seeds`), and whether the gap narrows as
    the budget grows."""
    runs = table.runs[~table.runs["seed"].isin(list(exclude_seeds))] if len(table.runs) else table.runs
    diffs = difference_to_baseline(runs)
    out = []
    for (model, method), g in diffs[diffs["method"].isin(methods)].groupby(["model", "method"], sort=False):
        g = g.sort_values("budget_rst_s")
        steps = "; ".join(_difference_words(r) for _, r in g.iterrows())
        first, last = g.iloc[0]["mean"], g.iloc[-1]["mean"]
        trend = ""
        if len(g) > 1:
            trend = " " + gap_trend(first, last, g.iloc[-1]["budget_rst_s"] / g.iloc[0]["budget_rst_s"])
        seeds = "-".join(map(str, sorted({int(g["seeds"].min()), int(g["seeds"].max())})))
        out.append(f"**{label(method)}, {model}** ({seeds} seed{'' if seeds == '1' else 's'}; 95% intervals): "
                   f"{steps}.{trend}")
    return out


def floor_text(below: pd.DataFrame) -> str:
    """Generated: how far the baseline ends below its context-free floor per model and budget (`below`:
    statistics.baseline_below_floor), and where it has not left the floor, what that means for the verdicts."""
    if below.empty:
        return "*No complete baseline run records a context-free floor yet.*"
    parts = []
    for model, g in below.groupby("model", sort=True):
        cells = "; ".join(f"{r['budget']} {fmt_ci(r['mean'], r['ci_low'], r['ci_high'])}" for _, r in g.iterrows())
        parts.append(f"{model} {cells}")
    above = below[below["mean"] <= 0]
    text = ("The baseline ends this far below the context-free floor (nats, mean [95% interval] over its runs; the "
            "floor is the loss of a model that knows only token frequencies): " + "; ".join(parts) + ".")
    if len(above):
        where = ", ".join(f"{r['model']} at {r['budget']}" for _, r in above.iterrows())
        text += (f" At {where} the baseline ends at or above the floor: it has learned word frequencies, not "
                 "language, and a method's difference there says little about claims that are about learning "
                 "language.")
    return text


def taxonomy_table(table: RunTable) -> pd.DataFrame:
    """The methods in the records (not their variants), as they describe themselves: family, the survey's component
    and action, what they do, and how many runs each has here."""
    counts = table.runs["method"].value_counts() if len(table.runs) else pd.Series(dtype=int)
    bad = pd.Series([Path(d).parts[-3] for d, f, _ in table.unreadable if not f.startswith("finetune/")],
                    dtype=object).value_counts()
    rows = []
    methods = sorted({base_method(m) for m in counts.index}, key=method_order)
    for method in methods:
        meta = method_meta(method)
        runs = int(counts.get(method, 0))
        rows.append({"family": family_name(meta["family"]) if meta.get("family") else "baseline",
                     "method": label(method), "component": meta.get("component", "-"),
                     "action": meta.get("action", "-"), "what it does": meta.get("summary", ""),
                     "runs here": f"{runs}" + (f" (+{int(bad[method])} unreadable)" if method in bad.index else "")})
    return pd.DataFrame(rows)


def overview_text(table: RunTable) -> str:
    """Generated: which results these are (preset, folder, models, budgets, seeds)."""
    where = f"`{shown_path(table.root)}`"
    if table.runs.empty:
        return (f"There are no readable runs under {where} yet: run `ntng sweep --preset {table.preset} "
                f"--results {table.results}` (or `ntng book`, which runs the grid when it is missing).")
    budgets = sorted(set(table.runs["budget_rst_s"]))
    seeds = sorted(set(table.runs["seed"]))
    return (f"These results are preset `{table.preset}`, read from {where}: models "
            f"{', '.join(sorted(set(table.runs['model'])))}; budgets "
            f"{', '.join(format_budget(b) for b in budgets)} of RST; seeds {', '.join(map(str, seeds))}.")


def records_html(table: RunTable, methods=None) -> str:
    """Runs that are not complete (with their recorded error) and run directories whose records cannot be read,
    as HTML inside `div.ntng-record` (the place where recorded failures are meant to be shown)."""
    parts = []
    other = table.not_complete()
    if methods is not None:
        other = other[other["method"].isin(methods)]
    if len(other):
        frame = other.assign(budget=other["budget"], error=other["error"].fillna(""))[
            ["model", "method", "budget", "seed", "status", "error"]]
        parts.append(f"<p>{len(frame)} run(s) did not complete; they are counted in the tables above but have no "
                     "final loss:</p>" + frame.to_html(index=False, border=0, classes="ntng-not-complete"))
    else:
        parts.append("<p>Every readable run completed.</p>")
    bad = table.unreadable_frame()
    if methods is not None and len(bad):
        bad = bad[[Path(r).parts[1] in methods if len(Path(r).parts) > 1 else False for r in bad["run"]]]
    if len(bad):
        parts.append(f"<p>{len(bad)} record(s) could not be read and are left out of every table and figure "
                     f"(paths under {table.results}):</p>" + bad.to_html(index=False, border=0,
                                                                            classes="ntng-unreadable"))
    elif methods is None:
        parts.append("<p>Every record could be read.</p>")
    return '<div class="ntng-record">' + "".join(parts) + "</div>"


def family_overview(table: RunTable, family: str) -> str:
    """Generated opening of a family chapter: what ran, or plainly that nothing did; the methods' cards."""
    methods = family_methods(table, family)
    if not methods:
        return (f"**No runs of {family_name(family)} under `{table.root}`**, so this chapter has no results. Run "
                f"them with `ntng sweep --preset {table.preset} --results {table.results}`.")
    lines = []
    for method in methods:
        runs = table.runs[table.runs["method"] == method]
        status = ", ".join(f"{n} {s}" for s, n in sorted(runs["status"].value_counts().items()))
        lines.append(f"- **{label(method)}**: {len(runs)} runs ({status}) over "
                     f"{', '.join(sorted(set(runs['model'])))} at budgets "
                     f"{', '.join(format_budget(b) for b in sorted(set(runs['budget_rst_s'])))}.")
    if "baseline" not in set(table.runs.get("method", [])):
        lines.append(f"- **baseline**: no runs under `{table.root}`: nothing to compare with.")
    cards = []
    for method in (m for m in methods if m == base_method(m)):  # a variant shares its method's card
        card = next((c for c in table.runs[table.runs["method"] == method]["method_card"] if c), "")
        if card:
            cards.append(f"**{label(method)}** (method card, as recorded in the runs' config.json): "
                         + " ".join(card.split()))
    return "\n".join(lines) + ("\n\n" + "\n\n".join(cards) if cards else "")


def method_stats_text(table: RunTable, methods) -> str:
    """Generated: per method, the mean over seeds of its numeric method_stats and its share of RST spent outside
    plain training (scoring, hessian): a row per quantity, a column per model and budget, so that it fits the page
    however many quantities a method reports."""
    out = []
    for method in table.methods_present(methods):
        runs = table.runs[table.runs["method"] == method]
        stat_cols = [c for c in runs.columns if c.startswith("stat.") and c != "stat.mean_active_layers"
                     and pd.api.types.is_numeric_dtype(runs[c]) and runs[c].notna().any()
                     and not pd.api.types.is_bool_dtype(runs[c])]
        columns = {}
        for (model, budget_s), g in runs.groupby(["model", "budget_rst_s"], sort=True):
            rst = g["rst_s"].where(g["rst_s"] > 0)
            column = {"runs": str(len(g))}
            for part in ("scoring", "hessian"):
                share = (g[f"rst_{part}"] / rst).mean()
                if math.isfinite(share) and share > 0:
                    column[f"share of RST spent on {part}"] = f"{100 * share:.1f}%"
            if g["il_rst_s"].notna().any():
                column["IL model's RST s (apart from the budget)"] = fmt(g["il_rst_s"].mean(), 1)
            for col in stat_cols:
                values = g[col].dropna()
                counted = bool(len(values)) and bool((values == values.round()).all())  # counts: no decimals
                name = " ".join("IL" if word == "il" else word for word in col[5:].split("_"))
                column[name] = f"{values.mean():,.0f}" if counted else fmt(values.mean(), 3)
            columns[f"{model.upper()} {format_budget(budget_s)}"] = column
        frame = pd.DataFrame(columns).fillna("-").rename_axis("mean over the runs").reset_index()
        out.append(f"**{label(method)}** (method_stats from summary.json, mean over the runs of each cell):\n\n"
                   + markdown_table(frame))
    return "\n\n".join(out) if out else "*No runs of these methods yet.*"


def downstream_text(table: RunTable, scores: pd.DataFrame) -> str:
    """Generated: the fine-tuning results table, or plainly that there are none."""
    if scores.empty:
        return (f"**No fine-tuning results under `{shown_path(table.root)}`** (no `finetune/<task>.json` in any run "
                f"directory), so this chapter has no results. Fine-tune a run with `ntng finetune --run DIR`.")
    frame = pd.DataFrame({
        "model": scores["model"], "task": scores["task"], "metric": scores["metric"],
        "method": scores["method"].map(lambda m: label(m)), "budget": scores["budget"],
        "seeds": scores["seeds"],
        "best dev score [95% CI]": [fmt_ci(m, lo, hi) for m, lo, hi in
                                    zip(scores["mean"], scores["ci_low"], scores["ci_high"], strict=True)],
        "floor": scores["floor"].map(fmt),
        "above floor": [fmt(m - f) if math.isfinite(f) else "-" for m, f in
                        zip(scores["mean"], scores["floor"], strict=True)]})
    best = []
    for (model, task), g in scores.groupby(["model", "task"], sort=False):
        top = g.loc[g["mean"].idxmax()] if g["mean"].notna().any() else None
        if top is not None:
            best.append(f"{model} / {task}: best mean dev score {fmt(top['mean'])} by "
                        f"{label(top['method'])} at {top['budget']}")
    tuned = sorted(set(scores["budget_rst_s"]))
    trained = sorted(set(table.runs["budget_rst_s"])) if len(table.runs) else tuned
    which = ("" if tuned == trained else
             f"\n\nFine-tuned here: the runs of budget {', '.join(format_budget(b) for b in tuned)} (pre-trained: "
             f"{', '.join(format_budget(b) for b in trained)}); `ntng finetune --run DIR` fine-tunes any other run.")
    tables = "\n\n".join(f"**{model.upper()}**\n\n" + markdown_table(part.drop(columns="model"))
                           for model, part in frame.groupby("model", sort=False))  # a table per model: it fits
    below = below_floor_text(scores)
    return (tables + ("\n\nHighest mean per task: " + "; ".join(best) + "." if best else "")
            + (f"\n\n{below}" if below else "") + which)


def below_floor_text(scores: pd.DataFrame) -> str:
    """Generated: per model, the fine-tuned cells whose mean score ends below the floor (the same fine-tuning from
    random weights). Where every cell of a model does, its pre-trained weights hurt the tasks, and the chapter
    cannot rank that model's methods downstream: said plainly."""
    out = []
    for model, g in scores.groupby("model", sort=False):
        known = g[g["floor"].notna() & g["mean"].notna()]
        below = known[known["mean"] < known["floor"]]
        if below.empty:
            continue
        name = model.upper()
        if len(below) == len(known):
            out.append(f"**{name}: every fine-tuned cell ends below its floor** ({len(known)} of {len(known)}: each "
                       f"method, task and budget). Fine-tuned from these pre-trained weights, {name} does worse than "
                       f"from random ones, so this chapter cannot rank {name}'s methods downstream.")
        else:
            cells = "; ".join(f"{label(r.method)} on {r.task} at {r.budget}" for r in below.itertuples())
            out.append(f"{name}: {len(below)} of {len(known)} fine-tuned cells end below their floor ({cells}).")
    return "\n\n".join(out)


def rst_tables_text(tables: pd.DataFrame, problems: list[str], table: RunTable) -> str:
    """Generated: each table's full-depth price, and this machine against the preset's shipped table."""
    if tables.empty:
        return "*No RST table could be read.*"
    train = tables[tables["unit"] == "train"]
    full = train.loc[train.groupby("table")["active_layers"].idxmax()]
    frame = pd.DataFrame({"table": full["table"], "source": full["source"], "model": full["model"],
                          "layers": full["active_layers"], "s per micro-batch at full depth":
                          full["seconds"].map(lambda s: f"{s:.4g}"), "machine": full["machine"].str[:60]})
    text = markdown_table(frame.sort_values(["source", "model", "table"]))
    mine = train[train["source"] == "this machine"]
    if mine.empty:
        text += (f"\n\nNo table was measured on this machine for preset `{table.preset}` (none in "
                 f"`{shown_path(calibration_dir(table.results, table.preset))}`): `ntng book` measures one before the build; "
                 f"`ntng calibrate --preset {table.preset} --model bert --out FILE` measures one by hand.")
    else:
        lines = []
        for name, g in mine.groupby("table"):
            model, preset = g["model"].iloc[0], g["preset"].iloc[0]
            ref = train[(train["source"] == "shipped") & (train["model"] == model) & (train["preset"] == preset)]
            merged = g.merge(ref, on="active_layers", suffixes=("", "_ref"))
            if len(merged):
                ratio = float((merged["seconds"] / merged["seconds_ref"]).mean())
                lines.append(f"{model}: this machine's table `{name}` is {ratio:.2f}x the shipped `{preset}` table "
                             f"(mean ratio over {len(merged)} layer counts; > 1: slower than the reference)")
        if lines:
            text += "\n\n" + "; ".join(lines) + "."
    if problems:
        text += "\n\nTables that could not be read: " + "; ".join(problems) + "."
    return text


def estimated_step_prices(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per RST table, optimizer step and price that the records charge by estimate (`ntng.training.pricing`):
    the table's AdamW step, the price charged, their ratio, the wall seconds of both steps as measured (interleaved),
    when, where the ratio came from (shipped with the table, or measured by the first run charged by it) and how many
    runs paid it. Runs that paid different prices under one table get a row each."""
    columns = [c for c in runs.columns if c.startswith("estimate.") and c.endswith(".seconds")]
    rows = []
    for column in columns:
        key = column[len("estimate."):-len(".seconds")]
        prefix = f"estimate.{key}."
        charged = runs[runs[column].notna()]
        for (model, table_name, _), g in charged.groupby(["model", "rst_table", column], sort=True):
            first = g.iloc[0]
            price, ratio = float(first[column]), float(first.get(prefix + "ratio", math.nan))
            rows.append({
                "model": model, "optimizer step": f"`{key}`", "RST table": f"`{table_name}`",
                "methods": ", ".join(label(m) for m in sorted(set(g["method"]), key=method_order)),
                "AdamW step (RST s)": f"{price / ratio:.3g}" if ratio > 0 else "-",
                "charged (RST s)": f"{price:.3g}", "x AdamW": f"{ratio:.2f}",
                "measured AdamW (wall ms)": _ms(first.get(prefix + "measured.adamw_s")),
                "measured step (wall ms)": _ms(first.get(prefix + "measured.candidate_s")),
                "measured on": str(first.get(prefix + "measured_on") or "-"),
                "ratio from": "shipped with the table" if _true(first.get(prefix + "shipped"))
                else "measured by the first run", "runs": len(g)})
    return pd.DataFrame(rows)


def _true(value) -> bool:
    """A recorded flag is set: True as the JSON gave it (pandas may hold it as numpy's bool), not a missing NaN."""
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _ms(seconds) -> str:
    value = finite(seconds)
    return "-" if math.isnan(value) else f"{value * 1e3:.3g}"


def estimated_steps_text(runs: pd.DataFrame) -> str:
    """Generated: the optimizer steps charged by a measured estimate rather than a table entry, and how."""
    frame = estimated_step_prices(runs)
    if frame.empty:
        return "*Every optimizer step in these records is priced by its RST table.*"
    # the page's column is narrow: each pair of steps in one cell, the tables' long names in a sentence below
    shown = pd.DataFrame({
        "model": frame["model"], "methods (step)": frame["methods"] + " (" + frame["optimizer step"] + ")",
        "RST s: AdamW → step": frame["AdamW step (RST s)"] + " → " + frame["charged (RST s)"],
        "x AdamW": frame["x AdamW"],
        "wall ms: AdamW → step": frame["measured AdamW (wall ms)"] + " → " + frame["measured step (wall ms)"],
        "ratio": frame["ratio from"].str.replace(" with the table", "") + " (measured " + frame["measured on"] + ")",
        "runs": frame["runs"]})
    tables = "; ".join(f"{model}: {', '.join(sorted(set(g['RST table'])))}" for model, g in frame.groupby("model"))
    return (markdown_table(shown) + f"\n\nThe RST tables: {tables}.\n\nAn RST table prices the optimizers it was "
            "calibrated with. A step it does not list (an optimizer that joined through the method registry later) is charged the table's AdamW "
            "step times the ratio of the two steps' median wall times, measured on the preset's model in "
            "interleaved rounds: the ratio the package ships with the table where it ships one (measured once on "
            "a quiet host like the table's, so runs made on different hosts pay one price), else measured on the "
            "machine of the first run charged by that table and cached. Each run's `summary.json` records the "
            "price under `rst_estimates`. The ratio, not the machine's speed, carries over: the wall times are "
            "those of the machine that measured it, the charge is in the table's seconds.")


def reproduce_text(table: RunTable) -> str:
    """Generated: the exact commands that re-make these results and this book."""
    preset, results = table.preset, shown_path(table.results)
    try:
        spec = get_preset(preset)
        finetuned = " ".join(spec.book_finetune_budgets())
    except UsageError:  # records of a preset this checkout does not define
        finetuned = "BUDGET ..."
    example = table.runs.iloc[0] if len(table.runs) else None
    lines = ["```bash",
             "make book                       # fresh clone: .venv, data, the reference book from the committed records",
             ".venv/bin/ntng data",
             f".venv/bin/ntng sweep --preset {preset} --results {results}          # the whole grid (skips complete runs)",
             f".venv/bin/ntng sweep --preset {preset} --results {results} --finetune {finetuned}  # as `ntng book` "
             "runs it: fine-tuned where the book shows it",
             f".venv/bin/ntng sweep --preset {preset} --results {results} --executor ray --ray-address auto --jobs 4",
             f".venv/bin/ntng book --preset {preset} --results {results}           # this book"]
    if example is not None:
        run_dir = shown_path(example["run_dir"])
        lines += ["# one cell of the grid, as the sweep runs it (papermill) and by hand (the same function):",
                  f"papermill notebooks/pretrain.ipynb {run_dir}/notebook.ipynb -p model {example['model']} "
                  f"-p method {example['method']} -p budget {example['budget']} -p preset {preset} "
                  f"-p seed {example['seed']} -p out_dir {run_dir}",
                  f".venv/bin/ntng pretrain --model {example['model']} --method {example['method']} "
                  f"--budget {example['budget']} --preset {preset} --seed {example['seed']} --out {run_dir}",
                  f".venv/bin/ntng finetune --run {run_dir}"]
    extra = extra_sweep_commands(table.runs, preset, results)
    if extra:
        lines += ["# the runs outside that grid (other methods, variants, budgets or seeds), as named sweeps:", *extra]
    lines.append("```")
    grid = ""
    if len(table.runs):
        grid = (f"\n\nThe grid here: models {', '.join(sorted(set(table.runs['model'])))}; methods "
                f"{', '.join(table.methods_present())}; budgets "
                f"{', '.join(format_budget(b) for b in sorted(set(table.runs['budget_rst_s'])))}; seeds "
                f"{', '.join(str(s) for s in sorted(set(table.runs['seed'])))}; RST tables "
                f"{', '.join(f'`{t}`' for t in sorted(set(table.runs['rst_table'])) if t) or '-'}.")
    return "\n".join(lines) + grid


def extra_sweep_commands(runs: pd.DataFrame, preset: str, results: str) -> list[str]:
    """`ntng sweep` commands that make exactly the runs in `runs` the preset's default grid (each studied method on
    its models, at the preset's budgets and seeds) does not: the methods the paper did not study, variants, extra
    budgets or seeds. Cells go together in one command where they form a full models x methods x budgets x seeds
    product. [] for a preset this checkout does not define."""
    from ntng.methods import studied_methods

    try:
        spec = get_preset(preset)
    except UsageError:
        return []
    if runs.empty:
        return []
    budgets, seeds = {parse_budget(b) for b in spec.budgets}, set(spec.seeds)
    studied = {model: set(studied_methods(model)) for model in set(runs["model"])}
    cells: dict[tuple[str, str, float], set[int]] = {}
    for model, method, budget, seed in zip(runs["model"], runs["method"], runs["budget_rst_s"], runs["seed"],
                                           strict=True):
        if method in studied[model] and budget in budgets and seed in seeds:
            continue
        cells.setdefault((model, method, float(budget)), set()).add(int(seed))
    # merge step by step: budgets with the same seeds, then models, then methods with the same rest
    by_budget: dict[tuple, list[float]] = {}
    for (model, method, budget), found in cells.items():
        by_budget.setdefault((model, method, tuple(sorted(found))), []).append(budget)
    by_model: dict[tuple, list[str]] = {}
    for (model, method, found), bs in by_budget.items():
        by_model.setdefault((method, tuple(sorted(bs)), found), []).append(model)
    by_method: dict[tuple, list[str]] = {}
    for (method, bs, found), models in by_model.items():
        by_method.setdefault((tuple(sorted(models)), bs, found), []).append(method)
    lines = []
    for (models, bs, found), methods in sorted(by_method.items(), key=lambda kv: (
            min(method_order(m) for m in kv[1]), kv[0][1], kv[0][0])):
        lines.append(f".venv/bin/ntng sweep --preset {preset} --results {results} --models {' '.join(models)} "
                     f"--methods {' '.join(sorted(methods, key=method_order))} "
                     f"--budgets {' '.join(format_budget(b) for b in bs)} --seeds {' '.join(map(str, found))}")
    return lines


def versions_text(table: RunTable) -> str:
    """Generated: the distinct machines and package versions recorded by the runs, and this build's versions."""
    from importlib import metadata

    seen: dict[tuple, int] = {}
    for run_dir in table.runs.get("run_dir", []):
        try:
            config = json.loads((Path(run_dir) / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        machine = config.get("machine") or {}
        versions = config.get("versions") or {}
        key = (machine.get("cpu", "?"), str(machine.get("cpu_count", "?")), machine.get("device", "?"),
               machine.get("gpu", "") or "-", machine.get("python", "?"),
               ", ".join(f"{k} {v}" for k, v in sorted(versions.items()) if v), config.get("precision", "?"))
        seen[key] = seen.get(key, 0) + 1
    parts = []
    if seen:
        frame = pd.DataFrame([(*k, n) for k, n in seen.items()],
                             columns=["cpu", "cores", "device", "gpu", "python", "packages", "precision", "runs"])
        parts.append("Recorded by the runs:\n\n" + markdown_table(frame))
    else:
        parts.append("*No readable run records yet.*")
    build = []
    for name in ("ntng", "torch", "transformers", "tokenizers", "pandas", "seaborn", "matplotlib", "jupyter-book",
                 "myst-nb", "sphinx", "papermill"):
        try:
            build.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    import platform

    parts.append(f"This build: Python {platform.python_version()} on {platform.platform()}; {', '.join(build)}.")
    return "\n\n".join(parts)


def run_page(model: str, method: str, budget: str, seed) -> str:
    """The name of a run's executed-notebook page (ntng.book.build.render_run_notebooks): URL-safe, so a variant's
    `+` and `=` become `-`."""
    seed = str(seed) if str(seed).startswith("seed") else f"seed{seed}"
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{model}-{method}-{budget}-{seed}")


def appendix_html(table: RunTable, pages: str = "../runs") -> str:
    """Generated: one row per model x method x budget, a link per seed to its executed notebook's page (under
    `pages`, relative to the appendix page), and which runs have none."""
    if table.runs.empty:
        return f"<p><em>No readable runs under <code>{table.root}</code>, so no notebooks.</em></p>"
    runs = sort_frame(table.runs)
    rows = []
    for (model, method, budget), g in runs.groupby(["model", "method", "budget"], sort=False):
        links = [f'<a href="{pages}/{run_page(model, method, budget, s)}.html">seed {s}</a>' if has
                 else f"seed {s} (none)" for s, has in zip(g["seed"], g["has_notebook"], strict=True)]
        rows.append(f"<tr><td>{model}</td><td>{label(method)}</td><td>{budget}</td><td>{' · '.join(links)}</td></tr>")
    have = int(runs["has_notebook"].sum())
    return (f"<p>{have} of {len(runs)} readable runs have an executed notebook.</p>"
            '<table class="table ntng-appendix"><thead><tr><th>model</th><th>method</th><th>budget</th>'
            f"<th>executed notebook</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
