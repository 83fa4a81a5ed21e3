"""What a run is: its specification, resolved and checked before anything is written.

`resolve(...)` turns the arguments of `pretrain` (a method may be a variant, ntng.training.variants) into a
`PretrainSpec`, raising UsageError on the first bad one; it also decides whether --resume continues a run (the
spec's `identity` must match the run's config.json). `settings_in_force` / `changed_settings` say whether a run on
disk was made with the settings a preset gives it today (the sweep's stale-run check). The loop that trains a spec is
`ntng.training.loop`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ntng.data import corpus as data_mod
from ntng.data.splits import DATA_SPLITS
from ntng.errors import RunError, UsageError
from ntng.methods import Method, build_method, find_method
from ntng.presets import MODELS, RECIPE_PREFIX, Preset, format_budget, get_preset, parse_budget, recipe_settings
from ntng.training.device import autocast_dtype, precision_name
from ntng.training.evaluation import EVAL_MASK_SEED, SELECTION_RULE
from ntng.training.records import RunDir
from ntng.training.rst import RSTTable, load_table, shipped_table, shipped_table_path
from ntng.training.variants import DATA_SPLIT, RUN_FLAGS, parse_variant, variant_name


@dataclass
class PretrainSpec:
    """Everything a run is, resolved and validated before any file is written."""

    model: str
    method: str
    budget: str
    budget_rst_s: float
    preset: Preset
    seed: int
    out_dir: Path
    resume: bool
    table: RSTTable
    table_path: str
    free_work: tuple[str, ...]  # the kinds of extra work (ntng.training.rst.EXTRA_KINDS) the clock does not charge
    data_dir: Path
    corpus: str
    method_options: dict
    data_split: str  # which training windows the run sees (ntng.data.splits.DATA_SPLITS)
    variant: str = ""  # the method with its settings (ntng.training.variants), e.g. "sophia+free_hessian"; names the run
    method_spec: str = ""  # how the method was found: a built-in's or entry point's name, or module:Class
    recipe_overrides: dict = field(default_factory=dict)  # recipe.FIELD settings, already applied to `preset`

    def free_flags(self) -> dict:
        """The run flags as the records hold them: {"free_scoring": False, "free_hessian": True}."""
        return {flag: kind in self.free_work for flag, kind in RUN_FLAGS.items()}

    @property
    def free_scoring(self) -> bool:
        return "scoring" in self.free_work

    @property
    def free_hessian(self) -> bool:
        return "hessian" in self.free_work

    def identity(self) -> dict:
        """What must match for --resume to continue this run."""
        return {"model": self.model, "method": self.method, "budget_rst_s": self.budget_rst_s,
                "preset": self.preset.name, "seed": self.seed, "rst_table": self.table.name,
                **self.free_flags(), "corpus": self.corpus,
                "method_options": self.method_options, "data_split": self.data_split,
                "evaluation": evaluation_in_force(self.preset, self.model),
                **({"recipe_overrides": self.recipe_overrides} if self.recipe_overrides else {}),
                # the preset's defaults for the method (tuned values) that the run's own settings leave in force: a run
                # made under others is another run
                **({"preset_method_options": opts} if (opts := {
                    k: v for k, v in self.preset.options_for(self.model, self.method).items()
                    if k not in {**self.method_options, **recipe_settings(self.recipe_overrides)}}) else {})}


def evaluation_in_force(preset: Preset, model: str) -> dict:
    """How a run of `model` at `preset` is evaluated today (config.json's `evaluation` holds these and what they
    gave: the set's size, fingerprint and floor): the rule that picks the validation windows, their masking, and
    the precision where the preset pins one. A run evaluated otherwise does not compare with one made today."""
    return {"selection": SELECTION_RULE, "mask_seed": EVAL_MASK_SEED,
            "eval_sequences": preset.recipe(model).eval_sequences, "eval_points": preset.recipe(model).eval_points,
            **({"precision": precision_name(autocast_dtype(torch.device("cpu"), preset.precision))}
               if preset.precision else {})}


def default_run_dir(preset: str, model: str, method: str, budget: str, seed: int, results: Path | str = "results"):
    return Path(results) / preset / model / method / format_budget(parse_budget(budget)) / f"seed{seed}"


def resolve(model: str, method: str, budget: str | float, preset: str | Preset = "smoke", seed: int = 0,
            out_dir: str | Path | None = None, resume: bool = False, rst_table: str | Path | None = None,
            free_scoring: bool = False, free_hessian: bool = False, data_dir: str | Path | None = None,
            corpus: str = "offline", method_options: dict | None = None,
            data_split: str | None = None, free_work: tuple[str, ...] = ()) -> PretrainSpec:
    """Check every argument; raise UsageError naming the first bad one. Writes nothing.
    `method` may be a variant (`ntng.training.variants`: `sophia+free_hessian`, `lion+lr=0.0003`): its flags join
    the kinds of extra work made free (`free_work`; free_scoring / free_hessian are two of them by name) and its
    options join `method_options`.
    `data_split` None: the method's own (every window, except RHO-LOSS's 80%)."""
    if model not in MODELS:
        raise UsageError(f"unknown model {model!r} (choose from {', '.join(MODELS)})")
    parsed = parse_variant(method)
    method_spec = parsed.method
    method = find_method(method_spec).name  # a plug-in runs (and is recorded) under the name it gives itself
    free_work = (free_work,) if isinstance(free_work, str) else tuple(free_work)
    flags = {**parsed.run_flags(), **({"free_scoring": True} if free_scoring else {}),
             **({"free_hessian": True} if free_hessian else {}), **{f"free_{kind}": True for kind in free_work}}
    unknown = sorted(set(flags) - set(RUN_FLAGS))
    if unknown:
        raise UsageError(f"no kind of extra work {unknown[0].removeprefix('free_')!r} to make free (choose from "
                         f"{', '.join(RUN_FLAGS.values())})")
    free_work = tuple(kind for flag, kind in RUN_FLAGS.items() if flags.get(flag))
    method_options = dict(method_options or {})
    recipe_keys = [key for key in method_options if key.startswith(RECIPE_PREFIX)]
    if recipe_keys:  # a recipe value is a variant's setting: it names the run (and its directory)
        raise UsageError(f"{recipe_keys[0]} is not a method option: name it in the method ({method}+{recipe_keys[0]}=...)")
    for key, value in parsed.method_options().items():
        if key in method_options and method_options[key] != value:
            raise UsageError(f"method option {key} is given twice with different values ({method_options[key]!r} "
                             f"and {value!r})")
        method_options[key] = value
    preset_obj = preset if isinstance(preset, Preset) else get_preset(preset)
    recipe_overrides = parsed.recipe_overrides()
    # validates its settings now; the preset it runs with holds its training recipe: the preset's own, the preset's
    # values for the method (a tuned peak, `recipe.lr` in method_options) over it, the variant's over those
    method_obj = build_method(method_spec, model, preset_obj, **{**method_options, **recipe_settings(recipe_overrides)})
    preset_obj = method_obj.preset
    for kind in free_work:
        if kind not in method_obj.extra_work:
            raise UsageError(f"free_{kind}: method {method} does no {kind} passes, so there is nothing to make free")
    named_split = parsed.data_split()
    if named_split is not None and data_split is not None and named_split != data_split:
        raise UsageError(f"data split {named_split!r} (in {parsed.name!r}) and {data_split!r} disagree")
    if data_split is None:
        data_split = named_split or method_obj.data_split
    variant = variant_name(method, {**method_options, **{f"free_{kind}": True for kind in free_work},
        **recipe_settings(recipe_overrides),
        # a run on other windows than its method's own is another run (and directory)
        **({DATA_SPLIT: data_split} if data_split != method_obj.data_split else {})})
    if data_split not in DATA_SPLITS:
        raise UsageError(f"unknown data split {data_split!r} (choose from {', '.join(DATA_SPLITS)})")
    if method_obj.requires_data_split and data_split != method_obj.data_split:
        raise UsageError(f"method {method} trains on the {method_obj.data_split!r} split only, not {data_split!r}")
    budget_text = budget if isinstance(budget, str) else f"{float(budget):g}s"
    budget_s = parse_budget(budget_text)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"bad seed {seed!r}: expected a whole number >= 0")
    if rst_table is not None:
        table, table_path = load_table(rst_table), str(rst_table)
    else:
        table = shipped_table(preset_obj.rst_preset, model)
        table_path = str(shipped_table_path(preset_obj.rst_preset, model))
    check_table_fits(table, model, preset_obj)
    data_dir = Path(data_dir or data_mod.default_data_dir())
    packed = data_dir / corpus / "packed" / data_mod.packing_name(model, preset_obj)
    if not packed.exists():
        raise UsageError(f"no packed data at {packed}: run `ntng data` first"
                         + (f" (with --preset {preset_obj.name})" if preset_obj.name == "paper" else ""))
    out = Path(out_dir) if out_dir is not None else default_run_dir(preset_obj.name, model, variant, budget_text, seed)
    check_writable(out)
    spec = PretrainSpec(model=model, method=method, budget=budget_text, budget_rst_s=budget_s, preset=preset_obj,
                        seed=seed, out_dir=out, resume=resume, table=table, table_path=table_path,
                        free_work=free_work, data_dir=data_dir, corpus=corpus,
                        method_options=method_options, data_split=data_split, variant=variant,
                        method_spec=method_spec, recipe_overrides=recipe_overrides)
    run_dir = RunDir(out)
    if resume and not run_dir.config_path.exists():
        # killed before its directory was written (a re-submitted scheduler job): there is nothing to continue,
        # so the run starts, as it would have the first time
        spec.resume = False
    elif resume:
        try:
            previous = run_dir.read_config().get("identity")
        except RunError as exc:
            raise UsageError(f"cannot resume: {exc}") from None
        if previous != _jsonish(spec.identity()):
            diff = sorted(k for k in spec.identity() if (previous or {}).get(k) != _jsonish(spec.identity())[k])
            raise UsageError(f"--resume of {out} with a different config ({', '.join(diff) or 'unknown'} differ)")
        if not run_dir.checkpoint_path.exists():
            spec.resume = False  # killed before its first checkpoint: nothing was kept, so it starts over
    elif run_dir.summary_path.exists() or run_dir.checkpoint_path.exists():
        raise UsageError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    return spec


# recipe fields that do not change what a run learns or reports (how often it checkpoints)
UNRECORDED_RECIPE_FIELDS = ("checkpoint_every",)
# the recipe's optimizer: a method that builds its own (Lion, Sophia, layer dropping's own peak) records the values it
# builds it from in its settings, so the baseline's peak moving does not concern its runs
RECIPE_OPTIMIZER_FIELDS = ("optimizer", "lr", "betas", "eps", "weight_decay")


def settings_in_force(model: str, method: str, preset: Preset) -> dict:
    """What a run of `method` (a variant) at `preset` is made with today, as its config.json records it: the
    recipe fields it reads (not the recipe's optimizer where the method builds its own: the values it builds it
    from are in its settings) and the method's settings. Raises UsageError as
    `resolve` does."""
    parsed = parse_variant(method)
    hooks = build_method(parsed.method, model, preset,
                         **{**parsed.method_options(), **recipe_settings(parsed.recipe_overrides())})
    preset_obj = hooks.preset  # with the recipe the method runs with (the preset's values for it, the variant's)
    # how a run is evaluated is compared with the rest of the evaluation (its own part, below)
    ignored = set(UNRECORDED_RECIPE_FIELDS) | {"eval_sequences", "eval_points"}
    if type(hooks).build_optimizer is not Method.build_optimizer:
        ignored |= set(RECIPE_OPTIMIZER_FIELDS)
    recipe = {k: v for k, v in asdict(preset_obj.recipe(model)).items() if k not in ignored}
    return _jsonish({"recipe": recipe, "method_settings": hooks.settings(),
                     "evaluation": evaluation_in_force(preset_obj, model)})


def changed_settings(config: dict, now: dict) -> list[str]:
    """The settings (`recipe.lr`, `method_settings.rho`) a run recorded in `config` that differ from `now`
    (`settings_in_force`, whose keys say which are compared): a tuned default changed after the run was made."""
    changed = []
    for part, values in now.items():
        recorded = config.get(part) if isinstance(config.get(part), dict) else {}
        if part == "evaluation":  # the set was recorded with what it gave (size, fingerprint, floor), the precision
            # beside it (config.json's `precision`), and before it had a part of its own, in the recipe
            old = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
            recorded = {**{k: old[k] for k in ("eval_sequences", "eval_points") if k in old}, **recorded,
                        "precision": config.get("precision", recorded.get("precision"))}
        keys = set(values) if part in ("recipe", "evaluation") else set(values) | set(recorded)
        changed += [f"{part}.{k}" for k in sorted(keys) if recorded.get(k) != values.get(k)]
    return changed


def _jsonish(obj):
    """`obj` as it reads back from JSON (tuples become lists...), to compare with a stored config."""
    return json.loads(json.dumps(obj, default=str))


def check_writable(out: Path, is_file: bool = False) -> None:
    """`out` (a run directory, or a file if `is_file`) can be written: it exists as such and is writable, or its
    nearest existing ancestor is a writable directory."""
    out = Path(out)
    if out.exists():
        if out.is_dir() == is_file or not os.access(out, os.W_OK):
            raise UsageError(f"cannot write {out}: not a writable {'file' if is_file else 'directory'}")
        return
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UsageError(f"cannot write {out}: {probe} is not a writable directory")


def check_table_fits(table: RSTTable, model: str, preset: Preset) -> None:
    shape = preset.shape(model)
    if table.model != model:
        raise UsageError(f"RST table {table.name} is for {table.model}, not {model}")
    if table.num_layers < shape.num_layers:
        raise UsageError(f"RST table {table.name} covers {table.num_layers} layers; {model} at preset "
                         f"{preset.name} has {shape.num_layers}")
    sequences = table.micro_batch.get("sequences")
    if sequences is not None and sequences != shape.micro_batch:
        raise UsageError(f"RST table {table.name} prices micro-batches of {sequences} sequences; preset "
                         f"{preset.name} trains {model} on micro-batches of {shape.micro_batch}")
