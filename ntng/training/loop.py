"""The one budgeted training loop, for BERT and T5 and every method.

`pretrain(...)` validates everything first (bad input -> UsageError, nothing written), then trains until the RST
clock reaches the budget, evaluating the validation loss at fixed fractions of the budget (evaluation costs no
RST) and writing the run directory of docs/records.md. Methods change training only through the hooks of
`ntng.methods.base.Method`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ntng.data import corpus as data_mod
from ntng.data.batches import BatchStream, make_collator
from ntng.data.splits import DATA_SPLITS, select_split
from ntng.errors import RunError, UsageError
from ntng.methods import Method, Run, build_method, find_method
from ntng.models.pretraining import build_model, count_parameters, model_config_dict
from ntng.presets import MODELS, Preset, format_budget, get_preset, parse_budget
from ntng.training.device import autocast_dtype, describe_machine, package_versions, pick_device, precision_name
from ntng.training.evaluation import EVAL_MASK_SEED, SELECTION_RULE, build_eval_set, mean_loss
from ntng.training.pricing import estimated_price
from ntng.training.progress import Bar
from ntng.training.records import RunDir
from ntng.training.rst import RSTClock, RSTTable, load_table, shipped_table, shipped_table_path
from ntng.training.schedules import SCHEDULES
from ntng.training.variants import DATA_SPLIT, RECIPE_PREFIX, RUN_FLAGS, parse_variant, variant_name

# a run's bar counts RST seconds of the budget, not steps (a step's cost varies with the method)
RST_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} s RST [{elapsed}<{remaining}]"


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
    free_scoring: bool
    free_hessian: bool
    data_dir: Path
    corpus: str
    method_options: dict
    data_split: str  # which training windows the run sees (ntng.data.splits.DATA_SPLITS)
    variant: str = ""  # the method with its settings (ntng.training.variants), e.g. "sophia+free_hessian"; names the run
    method_spec: str = ""  # how the method was found: a built-in's or entry point's name, or module:Class
    recipe_overrides: dict = field(default_factory=dict)  # recipe.FIELD settings, already applied to `preset`

    def identity(self) -> dict:
        """What must match for --resume to continue this run."""
        return {"model": self.model, "method": self.method, "budget_rst_s": self.budget_rst_s,
                "preset": self.preset.name, "seed": self.seed, "rst_table": self.table.name,
                "free_scoring": self.free_scoring, "free_hessian": self.free_hessian, "corpus": self.corpus,
                "method_options": self.method_options, "data_split": self.data_split,
                "evaluation": evaluation_in_force(self.preset, self.model),
                **({"recipe_overrides": self.recipe_overrides} if self.recipe_overrides else {}),
                # the preset's defaults for the method (tuned values) that the run's own settings leave in force: a run
                # made under others is another run
                **({"preset_method_options": opts} if (opts := {
                    k: v for k, v in self.preset.options_for(self.model, self.method).items()
                    if k not in self.method_options}) else {})}


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
            data_split: str | None = None) -> PretrainSpec:
    """Check every argument; raise UsageError naming the first bad one. Writes nothing.
    `method` may be a variant (`ntng.training.variants`: `sophia+free_hessian`, `lion+lr=0.0003`): its flags join
    free_scoring / free_hessian and its options join `method_options`.
    `data_split` None: the method's own (every window, except RHO-LOSS's 80%)."""
    if model not in MODELS:
        raise UsageError(f"unknown model {model!r} (choose from {', '.join(MODELS)})")
    parsed = parse_variant(method)
    method_spec = parsed.method
    method = find_method(method_spec).name  # a plug-in runs (and is recorded) under the name it gives itself
    flags = parsed.run_flags()
    free_scoring = bool(free_scoring or flags.get("free_scoring", False))
    free_hessian = bool(free_hessian or flags.get("free_hessian", False))
    method_options = dict(method_options or {})
    for key, value in parsed.method_options().items():
        if key in method_options and method_options[key] != value:
            raise UsageError(f"method option {key} is given twice with different values ({method_options[key]!r} "
                             f"and {value!r})")
        method_options[key] = value
    preset_obj = preset if isinstance(preset, Preset) else get_preset(preset)
    recipe_overrides = parsed.recipe_overrides()
    if recipe_overrides:
        preset_obj = with_recipe(preset_obj, model, recipe_overrides)
    method_obj = build_method(method_spec, model, preset_obj, **method_options)  # validates its settings now
    for flag, on in (("free_scoring", free_scoring), ("free_hessian", free_hessian)):
        if on and RUN_FLAGS[flag] not in method_obj.extra_work:
            raise UsageError(f"{flag}: method {method} does no {RUN_FLAGS[flag]} passes, so there is nothing to "
                             f"make free")
    named_split = parsed.data_split()
    if named_split is not None and data_split is not None and named_split != data_split:
        raise UsageError(f"data split {named_split!r} (in {parsed.name!r}) and {data_split!r} disagree")
    if data_split is None:
        data_split = named_split or method_obj.data_split
    variant = variant_name(method, {**method_options, **{k: True for k, on in (
        ("free_scoring", free_scoring), ("free_hessian", free_hessian)) if on},
        **{f"{RECIPE_PREFIX}{k}": v for k, v in recipe_overrides.items()},
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
                        free_scoring=free_scoring, free_hessian=free_hessian, data_dir=data_dir, corpus=corpus,
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


def recipe_value_ok(name: str, value) -> bool:
    """The range a recipe field must lie in (ntng.presets.Recipe)."""
    numbers = [float(v) for v in (value if isinstance(value, tuple) else (value,))
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if any(not math.isfinite(v) for v in numbers):
        return False
    if name == "betas":
        return all(0.0 <= v < 1.0 for v in numbers)
    if name in ("lr", "eps", "eval_points", "eval_sequences"):
        return all(v > 0 for v in numbers)
    if name == "checkpoint_every":
        return all(0.0 < v <= 1.0 for v in numbers)
    if name in ("weight_decay", "grad_clip"):
        return all(v >= 0 for v in numbers)
    return True


def with_recipe(preset: Preset, model: str, overrides: dict) -> Preset:
    """`preset` with the model's training recipe changed by `overrides` (field -> value); bad fields or values
    are refused (UsageError)."""
    recipe = preset.recipe(model)
    fields = {f.name: f for f in dataclasses.fields(recipe)}
    changes = {}
    for name, value in overrides.items():
        if name not in fields:
            raise UsageError(f"recipe.{name}: the training recipe has no field {name!r} (it has "
                             f"{', '.join(fields)})")
        current = getattr(recipe, name)
        if isinstance(current, (bool, str)):
            ok = type(value) is type(current)
        elif isinstance(current, tuple):
            ok = isinstance(value, (list, tuple)) and len(value) == len(current)
            value = tuple(value) if ok else value
        elif isinstance(current, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:  # floats, and optional numbers (None = the default rule)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise UsageError(f"recipe.{name} = {value!r} does not fit the recipe's {name} ({current!r})")
        if not recipe_value_ok(name, value):
            raise UsageError(f"recipe.{name} = {value!r} is out of range")
        changes[name] = value
    key = "bert_recipe" if model == "bert" else "t5_recipe"
    return dataclasses.replace(preset, **{key: dataclasses.replace(recipe, **changes)})


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
    overrides = parsed.recipe_overrides()
    preset_obj = with_recipe(preset, model, overrides) if overrides else preset
    hooks = build_method(parsed.method, model, preset_obj, **parsed.method_options())
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


# --- the loop --------------------------------------------------------------------------------------------

def _tokens_per_sequence(model: str, preset: Preset) -> int:
    """Tokens a sequence feeds the encoder: BERT's window, T5's corrupted input (targets not counted)."""
    return preset.bert.seq_len if model == "bert" else preset.t5.input_len


class Trainer:
    """Holds one run's state; `train()` runs it to the budget (or to divergence)."""

    def __init__(self, spec: PretrainSpec, log=print):
        self.spec = spec
        self.log = log
        self.device = pick_device()
        self.amp_dtype = autocast_dtype(self.device, spec.preset.precision)
        self.run_dir = RunDir(spec.out_dir)
        preset, model_name = spec.preset, spec.model
        self.shape = preset.shape(model_name)
        self.recipe = preset.recipe(model_name)
        self.method: Method = build_method(spec.method_spec or spec.method, model_name, preset,
                                           **spec.method_options)
        self.schedule = SCHEDULES[self.recipe.schedule]
        self.prepared = self.method.prepare(spec, log, pretrain=pretrain)  # e.g. RHO-LOSS's IL model: built once, reported apart

        tokenizer = data_mod.load_tokenizer(model_name, preset.vocab_size, spec.data_dir, spec.corpus)
        self.vocab_size = tokenizer.get_vocab_size()
        packed = data_mod.load_packed(model_name, preset, spec.data_dir, spec.corpus)
        all_train_windows = data_mod.windows_array(packed["train"])
        train_ids, train_windows = select_split(*all_train_windows, spec.data_split)
        val_ids, val_windows = data_mod.windows_array(packed["validation"])
        self.data_fingerprint = data_mod.fingerprint_windows(packed["train"])

        torch.manual_seed(spec.seed)  # model initialisation
        model = build_model(model_name, preset, vocab_size=self.vocab_size).to(self.device)
        batches = BatchStream(train_ids, train_windows, self.shape.micro_batch,
                              make_collator(model_name, preset, self.vocab_size, seed=spec.seed * 1_000_003 + 1),
                              seed=spec.seed)
        free = tuple(k for k, on in (("scoring", spec.free_scoring), ("hessian", spec.free_hessian)) if on)
        clock = RSTClock(spec.table, spec.budget_rst_s, free=free)
        self.run = Run(model=model, optimizer=None, clock=clock, batches=batches, preset=preset,
                       model_name=model_name, amp_dtype=self.amp_dtype, seed=spec.seed)
        # an optimizer step the table does not price (a plug-in's own optimizer): an estimate, measured once
        self.rst_estimates: dict = {}
        key = self.method.rst_optimizer
        if key not in spec.table.optimizer:
            price = estimated_price(spec.table, key, self.method, model_name, preset, spec.data_dir, log)
            self.rst_estimates[key] = price
            clock.table = dataclasses.replace(spec.table, optimizer={**spec.table.optimizer, key: price["seconds"]})
        self.method.bind(self.run)  # may reshape the model (e.g. start stacking from L/4 blocks)
        self.run.optimizer = self.method.build_optimizer(self.run.model)
        # the floor comes from the whole training split's frequencies, whatever part of it the method trains on
        self.eval_set = build_eval_set(model_name, make_collator(model_name, preset, self.vocab_size,
                                                                 seed=EVAL_MASK_SEED),
                                       self.shape.micro_batch, val_windows, val_ids, self.recipe.eval_sequences,
                                       all_train_windows[1], self.vocab_size)

        self.tokens = 0
        self.wall_s = 0.0  # wall time spent in training steps (evaluation and checkpoints excluded)
        self.evals: list[dict] = []
        self.next_eval = 0  # index into eval_fractions
        self.next_checkpoint = 1
        self.layer_sum = 0  # active layers summed over micro-batches: mean depth
        self.eval_fractions = [k / self.recipe.eval_points for k in range(0, self.recipe.eval_points + 1)]

    # --- evaluation --------------------------------------------------------------------------------------
    def evaluate(self) -> float:
        """The mean loss over every target of the evaluation set (ntng.training.evaluation)."""
        return mean_loss(self.run.model, self.eval_set.batches, self.device, self.amp_dtype)

    # --- records -----------------------------------------------------------------------------------------
    def config(self) -> dict:
        spec = self.spec
        return {
            "identity": spec.identity(),
            "model": spec.model, "method": spec.method, "variant": spec.variant, "preset": spec.preset.name,
            "seed": spec.seed,
            "budget": spec.budget, "budget_rst_s": spec.budget_rst_s,
            "rst_table": {"name": spec.table.name, "path": spec.table_path, "machine": spec.table.machine},
            "free_scoring": spec.free_scoring, "free_hessian": spec.free_hessian,
            "data_split": spec.data_split, "data_split_means": DATA_SPLITS[spec.data_split],
            "recipe": asdict(self.recipe), "method_settings": self.method.settings(),
            "method_card": self.method.card, "method_meta": self.method.meta(), "method_spec": spec.method_spec,
            "shape": asdict(self.shape), "preset_full": spec.preset.to_dict(),
            "model_config": model_config_dict(self.run.model),
            "data": {"dir": str(spec.data_dir), "corpus": spec.corpus,
                     "packing": data_mod.packing_name(spec.model, spec.preset),
                     "train_fingerprint": self.data_fingerprint, "vocab_size": self.vocab_size,
                     # the loss of a model that ignores context (ntng.data.floors): what the run learned is below it
                     "floor": data_mod.packing_floor(spec.model, spec.preset, spec.data_dir, spec.corpus)},
            "evaluation": {**evaluation_in_force(spec.preset, spec.model), **self.eval_set.describe()},
            "precision": precision_name(self.amp_dtype),
            "versions": package_versions(), "machine": describe_machine(self.device),
        }

    def summary(self, status: str, error: str | None = None) -> dict:
        clock = self.run.clock
        out = {
            "status": status, "run_dir": str(self.spec.out_dir), "model": self.spec.model,
            "method": self.spec.method, "variant": self.spec.variant, "preset": self.spec.preset.name,
            "seed": self.spec.seed, "budget_rst_s": self.spec.budget_rst_s, "rst_s": clock.rst_seconds,
            "wall_s": self.wall_s, "steps": self.run.step, "micro_steps": self.run.micro_step,
            "tokens": self.tokens,
            "final_val_loss": self.evals[-1]["val_loss"] if self.evals and status == "complete" else None,
            "evals": self.evals, "rst_breakdown": dict(clock.breakdown), "rst_units": dict(clock.units),
            "method_stats": {"mean_active_layers": self.layer_sum / max(1, self.run.micro_step),
                             **self.method.stats()},
            "data_split": self.spec.data_split, "eval_set": self.eval_set.fingerprint,
            "val_floor": self.eval_set.floor, **self.prepared,
            **({"rst_estimates": self.rst_estimates} if self.rst_estimates else {}),
        }
        if error:
            out["error"] = error
        return out

    def _state(self) -> dict:
        return {
            "model": self.run.model.state_dict(), "optimizer": self.run.optimizer.state_dict(),
            "clock": self.run.clock.state_dict(), "batches": self.run.batches.state_dict(),
            "method": self.method.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "step": self.run.step, "micro_step": self.run.micro_step, "tokens": self.tokens, "wall_s": self.wall_s,
            "evals": self.evals, "next_eval": self.next_eval, "next_checkpoint": self.next_checkpoint,
            "layer_sum": self.layer_sum, "identity": self.spec.identity(),
        }

    def checkpoint(self) -> None:
        with self.method.evaluation_weights(self.run):  # the checkpoint holds the weights the run is evaluated at
            self.run_dir.save_checkpoint(self._state())
        self.run_dir.write_summary(self.summary("running"))

    def restore(self) -> None:
        state = self.run_dir.load_checkpoint()
        self.method.load_state(state["method"], self.run)  # before weights: may reshape the model first
        self.run.model.load_state_dict(state["model"])
        self.run.optimizer.load_state_dict(state["optimizer"])
        self.run.clock.load_state_dict(state["clock"])
        self.run.batches.load_state_dict(state["batches"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.run.step, self.run.micro_step = state["step"], state["micro_step"]
        self.tokens, self.wall_s, self.evals = state["tokens"], state["wall_s"], state["evals"]
        self.next_eval, self.next_checkpoint = state["next_eval"], state["next_checkpoint"]
        self.layer_sum = state["layer_sum"]
        # the checkpoint was saved at the method's evaluation weights: leave them, as the uninterrupted run did after
        # its save (entering changes nothing: the model already holds them)
        with self.method.evaluation_weights(self.run):
            pass
        self.run_dir.truncate_metrics(self.run.step)
        self.log(f"resumed at step {self.run.step}, {self.run.clock.rst_seconds:.1f}/{self.spec.budget_rst_s:g} s RST")

    # --- training ----------------------------------------------------------------------------------------
    def _set_lr(self) -> float:
        """lr = peak x schedule(t/T). A group's peak is its lr when it joined the optimizer (kept in the group,
        so it survives a checkpoint; groups added later, e.g. by stacking, join at their peak)."""
        fraction = self.run.clock.budget_fraction
        multiplier = self.method.lr_multiplier(fraction)
        if multiplier is None:
            multiplier = self.schedule(fraction)
        for group in self.run.optimizer.param_groups:
            group.setdefault("peak_lr", group["lr"])
            group["lr"] = group["peak_lr"] * multiplier
        return self.run.optimizer.param_groups[0]["lr"]

    def train_step(self) -> tuple[float, float, float]:
        """One optimizer step; returns (mean micro-batch loss, lr, mean active layers)."""
        run, method, clock = self.run, self.method, self.run.clock
        method.begin_step(run)
        lr = self._set_lr()
        accum = self.shape.grad_accum
        loss_sum = torch.zeros((), device=self.device)  # summed where it is: one host sync a step, not one a micro-batch
        layers_in_step = 0
        for _ in range(accum):
            batch = method.next_microbatch(run)
            layers = method.active_layers(run)
            depth = run.model.num_layers if layers is None else len(layers)
            out = run.forward(batch, kind="train", active_layers=layers)  # charged at `depth` before it runs
            (out["loss"] / accum).backward()
            loss_sum += out["loss"].detach()
            layers_in_step += depth
            run.micro_step += 1
            self.tokens += batch["input_ids"].shape[0] * _tokens_per_sequence(self.spec.model, self.spec.preset)
        if self.recipe.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), self.recipe.grad_clip)
        method.before_update(run)
        run.optimizer.step()
        clock.charge_optimizer(method.rst_optimizer)
        run.optimizer.zero_grad(set_to_none=False)  # in place: re-allocating every gradient each step costs page faults
        method.end_step(run)
        run.step += 1
        self.layer_sum += layers_in_step
        return loss_sum.item() / accum, lr, layers_in_step / accum

    def _eval_due(self) -> bool:
        return self.next_eval < len(self.eval_fractions) and (
            self.run.clock.budget_fraction >= self.eval_fractions[self.next_eval] or self.run.clock.exhausted)

    def _record_eval(self, row: dict) -> None:
        with self.method.evaluation_weights(self.run):
            val = self.evaluate()
        self.evals.append({"step": self.run.step, "rst_s": self.run.clock.rst_seconds, "val_loss": val})
        row["val_loss"], row["val_floor"] = val, self.eval_set.floor
        # one eval covers every fraction it has passed (a step may cross two points of a tiny budget)
        while self._eval_due():
            self.next_eval += 1
        self.log(f"step {self.run.step:5d}  rst {self.run.clock.rst_seconds:8.1f}/{self.spec.budget_rst_s:g} s  "
                 f"val_loss {val:.4f}  wall {self.wall_s:.1f} s")

    def train(self, stop_after_steps: int | None = None) -> dict:
        """Run to the budget. `stop_after_steps` stops early without completing (tests of resume use it).
        Where a person watches (ntng.training.progress), a bar follows the RST budget and log lines print above it."""
        log, self.progress = self.log, Bar(0, "", enable=False)
        try:
            return self._run_to_budget(stop_after_steps)
        finally:
            self.progress.close()
            self.log = log

    def _run_to_budget(self, stop_after_steps: int | None) -> dict:
        spec, run, clock = self.spec, self.run, self.run.clock
        if spec.resume:
            self.run_dir.remove_temporaries()
            self.restore()
        else:
            self.run_dir.create()
            self.run_dir.remove_temporaries()
            self.run_dir.write_config(self.config())
            self.run_dir.start_metrics()
            self.run_dir.write_summary(self.summary("running"))
            row = {"step": 0, "rst_s": 0.0, "wall_s": 0.0, "tokens": 0}
            self._record_eval(row)
            self.run_dir.append_metrics(row)
        self.progress = Bar(spec.budget_rst_s, f"{spec.model}/{spec.method} {spec.budget}", log=self.log,
                            initial=clock.rst_seconds, bar_format=RST_BAR_FORMAT)
        self.log = self.progress.write
        steps_this_call = 0
        while not clock.exhausted:
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                return self.summary("running")
            started = time.perf_counter()
            loss, lr, depth = self.train_step()
            self.wall_s += time.perf_counter() - started
            steps_this_call += 1
            self.progress.advance_to(clock.rst_seconds)
            row = {"step": run.step, "rst_s": clock.rst_seconds, "wall_s": self.wall_s, "tokens": self.tokens,
                   "train_loss": loss, "lr": lr, "active_layers": depth}
            if not math.isfinite(loss):
                self.run_dir.append_metrics(row)
                error = f"non-finite training loss ({loss}) at step {run.step}, {clock.rst_seconds:.1f} s RST"
                summary = self.summary("diverged", error)
                self.run_dir.write_summary(summary)  # the last good checkpoint stays as it was
                self.log(f"diverged: {error}")
                return summary
            if self._eval_due():
                self._record_eval(row)
            self.run_dir.append_metrics(row)
            if not clock.exhausted and clock.budget_fraction >= self.next_checkpoint * self.recipe.checkpoint_every:
                while clock.budget_fraction >= self.next_checkpoint * self.recipe.checkpoint_every:
                    self.next_checkpoint += 1
                self.checkpoint()
        if self._eval_due():  # the end of the budget is always evaluated
            self._record_eval({})
        with self.method.evaluation_weights(self.run):  # the final checkpoint, which fine-tuning reads the model from
            self.run_dir.save_checkpoint(self._state())
        summary = self.summary("complete")
        self.run_dir.write_summary(summary)
        return summary


def pretrain(model: str = "bert", method: str = "baseline", budget: str = "30s", preset: str = "smoke",
             seed: int = 0, out_dir: str | Path | None = None, resume: bool = False,
             rst_table: str | Path | None = None, free_scoring: bool = False, free_hessian: bool = False,
             data_dir: str | Path | None = None, corpus: str = "offline", method_options: dict | None = None,
             data_split: str | None = None, log=print) -> dict:
    """Pre-train one model with one method under an RST budget; returns summary.json's content."""
    spec = resolve(model, method, budget, preset, seed, out_dir, resume, rst_table, free_scoring, free_hessian,
                   data_dir, corpus, method_options, data_split)
    try:
        trainer = Trainer(spec, log=log)
    except (KeyboardInterrupt, UsageError, RunError):
        raise
    except Exception as exc:
        raise RunError(f"could not set up the run: {type(exc).__name__}: {exc}") from exc
    log(f"{spec.model} / {spec.variant} / {spec.budget} RST at preset {spec.preset.name}, seed {spec.seed}: "
        f"{count_parameters(trainer.run.model):,} parameters, table {spec.table.name}, -> {spec.out_dir}")
    try:
        return trainer.train()
    except (KeyboardInterrupt, UsageError):
        raise
    except Exception as exc:
        summary = trainer.summary("failed", f"{type(exc).__name__}: {exc}")
        trainer.run_dir.write_summary(summary)
        raise RunError(f"run failed at step {trainer.run.step}: {type(exc).__name__}: {exc}") from exc
