"""`ntng`: the command line, a thin layer over the package's functions.

Bad input -> one line `ntng: error: ...` on stderr, exit 2, nothing written. A failure while working -> exit 1
with a one-line reason.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import NtngError, UsageError
from .presets import DEFAULT_PRESET, MODELS, REFERENCE_PRESET, all_presets, parse_budget

PROG = "ntng"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`ntng: error: ...`) and exit code 2."""

    def error(self, message: str):
        raise UsageError(message)


COMPARE_SEEDS = (0, 1, 2)  # a verdict needs an interval: three seeds unless asked otherwise


def one_line(text: str) -> str:
    """`text` with every character that could break or hide a line (newline, NEL, U+2028, other controls) escaped:
    a bad argument is echoed in the error, and the error must stay one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _budget(text: str) -> str:
    parse_budget(text)  # validate early; the value stays a string (it names run directories)
    return text


def _method(text: str) -> str:
    """A method (a built-in, an installed entry point, or module:Class) or a variant of one (ntng.training.variants), by
    its canonical name."""
    from ntng.training.variants import canonical_method

    return canonical_method(text)


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"no such file: {text}")
    return path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise UsageError(f"expected a number >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"bad seed {text!r}: expected a whole number >= 0") from None
    if value < 0:
        raise UsageError(f"bad seed {value}: expected a whole number >= 0")
    return value


def _grid_arguments(p, presets, methods_help: str) -> None:
    """--preset, --models and --methods, as a sweep and a tuning take them."""
    p.add_argument("--preset", choices=presets, default=DEFAULT_PRESET)
    p.add_argument("--models", nargs="+", choices=MODELS, default=None, help="default: bert t5")
    p.add_argument("--methods", nargs="+", type=_method, default=None, help=methods_help)


def _publish_arguments(p) -> None:
    """--remote and --branch, as `ntng publish` and `ntng book --publish` take them."""
    from .book.publish import DEFAULT_BRANCH, DEFAULT_REMOTE

    p.add_argument("--remote", default=None, help=f"git remote to push to (default {DEFAULT_REMOTE})")
    p.add_argument("--branch", default=None, help=f"branch that holds the site (default {DEFAULT_BRANCH})")


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog=PROG, description="No Train No Gain, re-evaluated: efficient training methods under "
                           "a fixed Reference System Time (RST) budget.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    presets = list(all_presets())

    p = sub.add_parser("data", help="fetch + build corpus, tasks, tokenizers (idempotent)",
                       description="Fetch the pinned npm tarballs, verify them, build the pre-training corpus, the "
                       "labelled tasks, the tokenizers and the packed sequences under the data directory. A second "
                       "call does nothing.")
    p.add_argument("--data-dir", type=Path, default=None, help="where to build (default ./data or $NTNG_DATA_DIR)")
    p.add_argument("--preset", choices=presets, default=None,
                   help="build the tokenizers/packings this preset needs (default: smoke and mini)")
    p.add_argument("--corpus", choices=("offline", "c4"), default="offline",
                   help="pre-training corpus: the offline npm mix (default) or allenai/c4 streamed through "
                   "`datasets` (needs network access to the hub)")
    p.add_argument("--c4-source", default="allenai/c4", help="hub id or local mirror of C4 (default allenai/c4)")
    p.add_argument("--c4-docs", type=_positive_int, default=200_000, help="C4 training documents to take")

    p = sub.add_parser("calibrate", help="measure an RST table on this machine",
                       description="Measure seconds per unit of work on this machine and write an RST table.")
    p.add_argument("--preset", choices=presets, required=True)
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--out", type=Path, default=None, help="JSON file to write (default rst-PRESET-MODEL.json)")
    p.add_argument("--repeats", type=_positive_int, default=7, help="timed runs per unit (the median is kept)")

    p = sub.add_parser("pretrain", help="one budgeted pre-training run",
                       description="Pre-train one model with one method under an RST budget into a run directory.")
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--method", type=_method, required=True,
                   help="a built-in method (docs/methods.md), an installed plug-in (entry point group ntng.methods), "
                   "module:Class, or a variant: METHOD+SETTING..., e.g. sophia+free_hessian, lion+lr=0.0003 (its "
                   "own run directory)")
    p.add_argument("--budget", type=_budget, required=True, help="RST budget with a unit: 20s, 10m, 6h")
    p.add_argument("--preset", choices=presets, default=DEFAULT_PRESET)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--out", type=Path, default=None, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--rst-table", type=_existing_file, default=None, help="charge with this RST table (JSON)")
    p.add_argument("--free-scoring", action="store_true", help="ablation: selection scoring passes cost no RST")
    p.add_argument("--free-hessian", action="store_true", help="ablation: Sophia's Hessian passes cost no RST")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a method option (lr=0.0003) or a recipe value (recipe.lr=0.002); repeatable. The run is "
                   "the variant METHOD+KEY=VALUE..., with a run directory of its own")
    p.add_argument("--data-split", choices=("full", "rho_main"), default=None,
                   help="training windows: full, or rho_main (the 80%% RHO-LOSS trains on, for a like-for-like "
                        "baseline); default: the method's own")

    p = sub.add_parser("finetune", help="fine-tune a pre-trained run on downstream tasks",
                       description="Fine-tune a complete pre-training run's model on downstream tasks, and the same "
                       "architecture from random initialisation as the floor; writes DIR/finetune/<task>.json. "
                       "Default tasks: the offline stand-in for GLUE (spam_ham, brown_genre, sotu_party). GLUE and "
                       "SuperGLUE tasks by name need the hub (HF_DATASETS_OFFLINE=0) or $NTNG_HUB_MIRROR. "
                       "Fine-tuning costs wall time only; it is not charged to the RST budget.")
    p.add_argument("--run", type=Path, required=True, help="a complete run directory")
    p.add_argument("--task", nargs="+", default=None,
                   help="tasks: spam_ham brown_genre sotu_party (default: all three), or GLUE (cola sst2 mrpc qqp "
                   "stsb mnli-m mnli-mm qnli rte) / SuperGLUE (boolq cb copa multirc superglue-rte wic wsc) names")

    p = sub.add_parser("sweep", help="run the grid of notebooks with papermill",
                       description="Run models x methods x budgets x seeds through notebooks/pretrain.ipynb, one "
                       "papermill execution per cell into RESULTS/<preset>/<model>/<method>/<budget>/seed<k>/ "
                       "(the executed notebook kept as notebook.ipynb). Complete runs are skipped, interrupted "
                       "ones resumed; a failing cell is recorded and the others go on. Prints a table of every "
                       "cell; exit code 1 when any cell failed or diverged.")
    _grid_arguments(p, presets, "default: every method on the models the paper ran it on (T5: no batch "
                    "selection); named methods run on every model; variants too (selective_backprop+free_scoring ...)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=V1,V2,...", dest="settings",
                   help="a grid axis: one variant of METHOD per value (lion.lr=3e-4,7e-4,2e-3; "
                   "baseline.recipe.lr=5e-4,1e-3); repeatable, several keys of one method combine")
    p.add_argument("--ablations", action="store_true",
                   help="add the paper's ablations at the grid's middle budget (BERT): each studied method with "
                   "the extra work it charges made free (free_scoring, free_hessian)")
    p.add_argument("--budgets", nargs="+", type=_budget, default=None,
                   help="RST budgets with a unit (default: the preset's three)")
    p.add_argument("--seeds", nargs="+", type=_seed, default=None, help="default: the preset's seeds (0)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: --jobs cells at once on this machine; ray: each cell a Ray task asking for the "
                   "preset's CPUs/GPUs (needs pip install 'ntng[ray]')")
    p.add_argument("--ray-address", default=None,
                   help="join this Ray cluster (e.g. auto, 10.0.0.1:6379, ray://head:10001); default: start a "
                   "local Ray runtime for the sweep. Results and data must be on a filesystem every node sees")
    p.add_argument("--jobs", type=_positive_int, default=1, help="cells at once with the local executor")
    p.add_argument("--results", type=Path, default=Path("results"), help="results tree (default ./results)")
    p.add_argument("--finetune", nargs="*", metavar="BUDGET",
                   help="then fine-tune every complete run (or only the runs of these budgets) on the offline tasks "
                   "(into DIR/finetune/; in the pre-training kernel, or notebooks/finetune.ipynb for a run complete "
                   "before), skipping runs whose results are up to date")

    p = sub.add_parser("book", help="build the Jupyter Book from the run records",
                       description="Run the preset's grid if missing, then build the HTML book.")
    # the book's default is the reference preset: its records are committed, so it builds from them (smoke is the
    # quick pipeline check)
    p.add_argument("--preset", choices=presets, default=REFERENCE_PRESET)
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--out", type=Path, default=None, help="where _build/ goes (default: the current directory)")
    p.add_argument("--records-only", action="store_true",
                   help="build from the records as they are: run no cell and measure no RST table (committed "
                        "records, or a grid still running elsewhere)")
    p.add_argument("--publish", action="store_true",
                   help="then push the site to the branch --branch of the git remote --remote with ghp-import "
                        "(as `ntng publish` does); the repository and remote are checked before the build")
    _publish_arguments(p)

    p = sub.add_parser("publish", help="push the built book to a gh-pages branch (GitHub Pages)",
                       description="Commit the built HTML site (default _build/html, as `ntng book` leaves it) as "
                       "the new state of a branch of the git repository here, with .nojekyll, using ghp-import, "
                       "and push that branch (never forced). GitHub Pages serves it once Settings -> Pages -> "
                       "Deploy from a branch names it; any static host can serve the folder itself.")
    p.add_argument("--site", type=Path, default=None, help="the built site (default _build/html)")
    _publish_arguments(p)
    p.add_argument("--message", default=None,
                   help="the commit message (default: what was published: the preset and this checkout's commit)")

    p = sub.add_parser("compare", help="is a method faster than the baseline under the same RST budgets?",
                       description="Run what is missing of METHOD and of the baseline at the same preset, budgets "
                       "and seeds (complete runs are reused), then print per model and budget: final loss of each, "
                       "the paired difference with its 95%% interval, the smallest difference these seeds could "
                       "detect, the time-to-target speed-up and a verdict (faster / slower / no detectable "
                       "difference). --claim 2x tests a stated speed-up (one-sided, p < 0.01). Exit 0 whatever the "
                       "verdict.")
    p.add_argument("--method", type=_method, required=True,
                   help="a method, an installed plug-in, module:Class, or a variant (METHOD+KEY=VALUE...)")
    p.add_argument("--model", nargs="+", choices=MODELS, default=["bert"], dest="models")
    p.add_argument("--preset", choices=presets, default=DEFAULT_PRESET)
    p.add_argument("--budgets", nargs="+", type=_budget, default=None, help="default: the preset's three")
    p.add_argument("--seeds", nargs="+", type=_seed, default=None, help="default: 0 1 2")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a method option or recipe.FIELD value; repeatable")
    p.add_argument("--claim", default=None, help="a speed-up to test, e.g. 2x")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--jobs", type=_positive_int, default=1, help="cells at once")

    p = sub.add_parser("tune", help="tune every method's hyper-parameters on equal terms",
                       description="Try each hyper-parameter the paper tuned (Appendix C; each method's tuning()) at "
                       "three values, one axis at a time around the preset's current values, at one budget (default: "
                       "the preset's smallest) and seed, into RESULTS/<preset>/<model>/<variant>/<budget>/seed<k>/; "
                       "the plan is kept in RESULTS/<preset>/tuning.json and the same command continues it; --methods that "
                       "the plan does not hold join it on its terms. A real "
                       "value chosen at the edge of those tried is followed one factor further, at most twice. Prints "
                       "each axis's final losses and the chosen value (the lowest, by a margin of noise).")
    _grid_arguments(p, presets, "default: every method on the models the paper ran it on")
    p.add_argument("--budget", type=_budget, default=None, help="default: the preset's smallest")
    p.add_argument("--seed", type=_seed, default=None, help="default: 0")
    p.add_argument("--keys", nargs="+", metavar="KEY", default=None,
                   help="tune only these hyper-parameters (e.g. lr recipe.lr: the peaks only); default: all")
    p.add_argument("--jobs", type=_positive_int, default=1, help="runs at once")
    p.add_argument("--results", type=Path, default=Path("results/tuning"))

    p = sub.add_parser("probe", help="which shape, batch and learning rate learn most in a fixed RST budget?",
                       description="Train the baseline at one RST budget over model shapes x batch sizes x peak "
                       "learning rates, each shape charged by an RST table measured here with one thread, into "
                       "RESULTS/<model>/<L>x<W>-b<batch>/<budget>/lr<lr>/; then print final loss, nats below the "
                       "context-free floor and tokens per RST second. Complete runs are skipped: the same command "
                       "continues an interrupted probe.")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--shapes", nargs="+", default=["4x128", "8x128", "4x256"], help="LAYERSxWIDTH ...")
    p.add_argument("--batches", nargs="+", type=_positive_int, default=[32, 64], help="sequences per step")
    p.add_argument("--bert-lrs", nargs="+", type=float, default=[2e-3, 4e-3, 8e-3])
    p.add_argument("--t5-lrs", nargs="+", type=float, default=[1e-2, 2e-2, 4e-2])
    p.add_argument("--budget", type=_budget, default="2m")
    p.add_argument("--base", choices=presets, default="smoke", help="preset the candidates derive from")
    p.add_argument("--jobs", type=_positive_int, default=2, help="runs at once (one thread each)")
    p.add_argument("--repeats", type=_positive_int, default=15, help="timed repeats per unit when calibrating")
    p.add_argument("--results", type=Path, default=Path("results/probe"))
    return parser


def cmd_data(args) -> int:
    from ntng.data import corpus as data

    manifest = data.build_data(args.data_dir, presets=data.presets_for_cli(args.preset), corpus=args.corpus,
                               c4_source=args.c4_source, c4_docs=args.c4_docs, log=lambda m: print(f"ntng data: {m}"))
    where = args.data_dir or data.default_data_dir()
    if not manifest["changed"]:
        print(f"ntng data: {where} is up to date (nothing to do)")
        return 0
    info = manifest["corpora"][args.corpus]["corpus"]
    tokens = {k[7:]: v for k, v in info.items() if k.startswith("tokens_")}
    token_text = "; ".join(f"{n:,} tokens ({name}, all splits)" for name, n in
                           ((name, sum(c.values())) for name, c in tokens.items()))
    print(f"ntng data: built {where} in {manifest['built_seconds']} s: "
          f"{info['train']['characters'] + info['validation']['characters']:,} characters in "
          f"{info['train']['documents'] + info['validation']['documents']:,} documents; {token_text}; "
          f"see {Path(where) / 'README.md'}")
    return 0


def cmd_calibrate(args) -> int:
    from ntng.training.calibration import calibrate
    from ntng.training.spec import check_writable

    out = args.out or Path(f"rst-{args.preset}-{args.model}.json")
    check_writable(out, is_file=True)
    calibrate(args.preset, args.model, out=out, repeats=args.repeats, log=lambda m: print(f"ntng calibrate: {m}"))
    return 0


def cmd_pretrain(args) -> int:
    from ntng.training.loop import pretrain
    from ntng.training.variants import with_settings

    method = with_settings(args.method, args.settings)
    summary = pretrain(model=args.model, method=method, budget=args.budget, preset=args.preset,
                       seed=args.seed, out_dir=args.out, resume=args.resume, rst_table=args.rst_table,
                       free_scoring=args.free_scoring, free_hessian=args.free_hessian, data_split=args.data_split,
                       log=lambda m: print(f"ntng pretrain: {m}", flush=True))
    print(f"ntng pretrain: {summary['status']}: {summary['steps']} steps, {summary['rst_s']:.1f} s RST "
          f"of {summary['budget_rst_s']:g}, {summary['wall_s']:.1f} s wall, final val_loss "
          f"{summary['final_val_loss'] if summary['final_val_loss'] is None else round(summary['final_val_loss'], 4)}")
    return 0 if summary["status"] == "complete" else 1


def cmd_finetune(args) -> int:
    from ntng.experiments.downstream import check_tasks, finetune, results_table

    check_tasks(args.task)  # an unknown name is refused before the run is even opened
    results = finetune(args.run, tasks=args.task, log=lambda m: print(f"ntng finetune: {m}", flush=True))
    rows = results_table(results)
    print(f"{'task':<14} {'suite':<26} {'metric':<9} {'pre-trained':>11} {'epoch':>5} {'random init':>11} "
          f"{'wall s':>7}")
    for r in rows:
        print(f"{r['task']:<14} {r['suite']:<26} {r['metric']:<9} {r['pretrained']:>11.4f} {r['best_epoch']:>5} "
              f"{r['random_init_floor']:>11.4f} {r['wall_s']:>7.1f}")
    print("ntng finetune: wall time only; fine-tuning is not charged to the RST budget")
    return 0


def cmd_sweep(args) -> int:
    from ntng.experiments.grid import format_table, sweep
    from ntng.training.variants import expand_settings

    common = dict(preset=args.preset, budgets=args.budgets, seeds=args.seeds, executor=args.executor,
                  ray_address=args.ray_address, jobs=args.jobs, results=args.results,
                  finetune=True if args.finetune == [] else args.finetune,  # bare: all
                  ablations=args.ablations, log=lambda m: print(f"ntng sweep: {m}", flush=True))
    if args.settings and not args.methods:  # the default grid per model (the paper's scope), --set applied to it
        from .methods import studied_methods

        models = args.models or list(MODELS)
        expand_settings(sorted({m for model in models for m in studied_methods(model)}), args.settings)  # checked
        grids = [([model], expand_settings(studied_methods(model), args.settings, strict=False)) for model in models]
    else:
        grids = [(args.models, expand_settings(args.methods, args.settings) if args.settings else args.methods)]
    rows = [row for models, methods in grids for row in sweep(models=models, methods=methods, **common)]
    print(format_table(rows), flush=True)
    bad = sum(r["status"] in ("failed", "diverged") for r in rows)
    if bad:
        print(f"{PROG}: error: {bad} of {len(rows)} cells failed or diverged (see the table)", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args) -> int:
    from ntng.book.comparison import compare, format_comparison, parse_claim

    parse_claim(args.claim)  # a bad claim is refused before anything runs
    result = compare(args.method, models=args.models, budgets=args.budgets,
                     seeds=args.seeds if args.seeds is not None else COMPARE_SEEDS, preset=args.preset,
                     settings=args.settings, claim=args.claim, results=args.results, jobs=args.jobs,
                     log=lambda m: print(f"ntng compare: {m}", flush=True))
    print(format_comparison(result), flush=True)
    # the verdict, whatever it is, is a result; a cell that failed or diverged is not
    return 1 if any(r.get("status") in ("failed", "diverged") for r in result.runs) else 0


def cmd_tune(args) -> int:
    from ntng.experiments.tuning import format_tuning, tune

    rows = tune(preset=args.preset, models=args.models, methods=args.methods, budget=args.budget, seed=args.seed,
                results=args.results, jobs=args.jobs, keys=args.keys, log=lambda m: print(f"ntng tune: {m}", flush=True))
    print(format_tuning(rows), flush=True)
    # a diverged trial is a result (too large a value); a failed one is not
    return 1 if any(t["status"] in ("failed", "missing") for r in rows for t in r["trials"]) else 0


def cmd_probe(args) -> int:
    from ntng.experiments.probe import format_rows, probe

    rows = probe(models=args.models, shapes=args.shapes, batches=args.batches,
                 lrs={"bert": args.bert_lrs, "t5": args.t5_lrs}, budget=args.budget, results=args.results,
                 base=args.base, jobs=args.jobs, repeats=args.repeats, log=lambda m: print(f"ntng probe: {m}", flush=True))
    print(format_rows(rows), flush=True)
    return 1 if any(r["status"] != "complete" for r in rows) else 0


def _publish_target(args) -> dict:
    from ntng.book.publish import DEFAULT_BRANCH, DEFAULT_REMOTE

    return dict(remote=args.remote or DEFAULT_REMOTE, branch=args.branch or DEFAULT_BRANCH)


def cmd_book(args) -> int:
    from ntng.book.build import build_book

    if args.publish:  # a missing remote is found now, not after the build
        from ntng.book.publish import check_target

        check_target(**_publish_target(args))
    elif args.remote is not None or args.branch is not None:
        raise UsageError("--remote and --branch go with --publish")
    index = build_book(preset=args.preset, results=args.results, out_dir=args.out, run_grid=not args.records_only,
                       log=lambda m: print(f"ntng book: {m}", flush=True))
    print(f"ntng book: open {index}")
    if args.publish:
        from ntng.book.publish import publish_site

        publish_site(index.parent, **_publish_target(args), log=lambda m: print(f"ntng book: {m}", flush=True))
    return 0


def cmd_publish(args) -> int:
    from ntng.book.publish import DEFAULT_SITE, publish_site

    publish_site(args.site or DEFAULT_SITE, **_publish_target(args), message=args.message,
                 log=lambda m: print(f"ntng publish: {m}", flush=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if not (args.command == "data" and args.corpus == "c4"):
            # no model or dataset hub here: never let a library wait on one
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        return {"data": cmd_data, "calibrate": cmd_calibrate, "pretrain": cmd_pretrain,
                "finetune": cmd_finetune, "book": cmd_book, "sweep": cmd_sweep,
                "compare": cmd_compare, "probe": cmd_probe, "tune": cmd_tune, "publish": cmd_publish}[args.command](args)
    except NtngError as exc:
        print(f"{PROG}: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unforeseen failure: still one line; NTNG_DEBUG=1 shows the traceback
        if os.environ.get("NTNG_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {one_line(first)} (NTNG_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
