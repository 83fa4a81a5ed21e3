"""Presets: the sizes of everything that depends on the scale of an experiment.

`paper` mirrors the study (crammed BERT 16x768 on an RTX 3090, t5-v1.1-base on an A100); `smoke` and `mini` are
the CPU scales. Training hyper-parameters that the paper fixes (betas, eps, clipping...) live with the training
loop; what changes with scale lives here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import UsageError


@dataclass(frozen=True)
class BertShape:
    num_layers: int  # encoder blocks; divisible by 4 so layer stacking can run L/4 -> L/2 -> L
    hidden: int
    heads: int
    intermediate: int
    seq_len: int = 128  # the paper's (crammed BERT) sequence length, [CLS] and [SEP] included
    micro_batch: int = 128  # sequences per forward/backward pass; the RST table is per micro-batch
    grad_accum: int = 12  # micro-batches per optimizer step: 12 x 128 = the paper's 1536
    mlm_probability: float = 0.15

    @property
    def batch(self) -> int:
        return self.micro_batch * self.grad_accum


@dataclass(frozen=True)
class T5Shape:
    num_layers: int  # blocks in the encoder and, as many again, in the decoder; divisible by 4 for stacking
    d_model: int
    d_kv: int
    heads: int
    d_ff: int
    input_len: int = 512  # encoder input length after span corruption (the raw window is longer, see collate)
    micro_batch: int = 144  # sequences per forward/backward pass
    grad_accum: int = 1  # the paper's T5 table is per optimizer step of 144 sequences
    noise_density: float = 0.15
    mean_span: float = 3.0
    feed_forward_proj: str = "gated-gelu"  # t5 v1.1

    @property
    def batch(self) -> int:
        return self.micro_batch * self.grad_accum


@dataclass(frozen=True)
class Recipe:
    """The baseline's training recipe for one model (Kaddour et al. 2023 and its code), scaled where the preset says so."""

    optimizer: str  # "adamw" (BERT) or "adamw_scale" (T5: Adam step scaled by max(1e-3, RMS(param)))
    lr: float  # peak learning rate; the schedule multiplies it
    betas: tuple[float, float]
    eps: float
    weight_decay: float  # never on biases and LayerNorm weights
    grad_clip: float  # max global gradient norm
    schedule: str  # "one_cycle" (BERT) or "cosine_budget" (T5); both decay fully at the end of the budget
    # validation windows evaluated at every eval point (evaluation costs no RST): None = the whole validation split,
    # else that many spread evenly over it (ntng.training.evaluation), never a prefix (the split is packed source by source)
    eval_sequences: int | None
    eval_points: int = 10  # evaluations at k/eval_points of the budget, k = 1..eval_points, plus one at the start
    checkpoint_every: float = 0.1  # budget fraction between checkpoints: a kill loses at most this share
    # A method's own values (Lion's peak, Sophia's rho...) are not here: each method module holds the paper's, and a
    # preset's tuned ones are its `method_options`.


BERT_PAPER_RECIPE = Recipe(optimizer="adamw", lr=1e-3, betas=(0.9, 0.98), eps=1e-12, weight_decay=0.01,
                           grad_clip=0.5, schedule="one_cycle", eval_sequences=2048)
T5_PAPER_RECIPE = Recipe(optimizer="adamw_scale", lr=2e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                         grad_clip=1.0, schedule="cosine_budget", eval_sequences=1152)
PAPER_RECIPES = {"bert": BERT_PAPER_RECIPE, "t5": T5_PAPER_RECIPE}


def paper_peak_ratio(recipe: Recipe, model: str) -> float:
    """`recipe`'s peak over the paper's baseline peak for `model`: a method's own peak (Lion's, Sophia's...) is the
    paper's times this, keeping the paper's ratio to the baseline's where a preset moves the baseline's peak, the
    centre a tuning grid starts from (ntng.experiments.tuning)."""
    return recipe.lr / PAPER_RECIPES[model].lr


@dataclass(frozen=True)
class FinetuneRecipe:
    """Downstream fine-tuning (ntng.experiments.downstream), scaled per preset. The paper's GLUE recipe: AdamW lr 4e-5, batch
    16, 5 epochs, best epoch on dev (SuperGLUE: lr 5e-5, 10 epochs; applied as x1.25 lr, x2 epochs). Its cost is
    wall time, reported but never charged to the RST budget, as in the paper."""

    lr: float  # BERT's peak learning rate (pooled classification head)
    t5_lr: float  # T5's peak (text-to-text); the paper gives none for T5 on GLUE-style tasks
    epochs: int  # the best epoch on dev is kept
    batch_size: int
    warmup_fraction: float = 0.1  # linear warm-up over this share of all steps, then linear decay to 0
    weight_decay: float = 0.01  # not on biases and LayerNorm weights
    max_len: int = 128  # input tokens, specials included; at most BERT's position table (seq_len)
    max_train: int | None = None  # cap on training examples per task (a fixed random subset); None: all
    max_dev: int | None = None  # cap on dev examples per task (a fixed random subset); None: all
    grad_clip: float = 1.0
    head_dropout: float = 0.1  # on BERT's pooled [CLS] vector (pre-training ran without dropout)


PAPER_FINETUNE = FinetuneRecipe(lr=4e-5, t5_lr=3e-4, epochs=5, batch_size=16)


@dataclass(frozen=True)
class Preset:
    name: str
    vocab_size: int  # both tokenizers (WordPiece for BERT, Unigram incl. 100 sentinels for T5)
    bert: BertShape
    t5: T5Shape
    budgets: tuple[str, str, str]  # default budgets, ratio 1:2:4 like the paper's 6/12/24 h
    bert_recipe: Recipe = BERT_PAPER_RECIPE
    t5_recipe: Recipe = T5_PAPER_RECIPE
    finetune: FinetuneRecipe = PAPER_FINETUNE
    # which runs `ntng book` fine-tunes: "all" budgets (the paper compares downstream per budget) or the "largest";
    # a rule, not a list, so a custom preset with other budgets keeps it
    book_finetune: str = "all"
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    table_preset: str | None = None  # whose shipped RST tables apply (a custom preset built on a shipped one)
    seeds: tuple[int, ...] = (0,)  # a sweep's default seeds
    # what one sweep cell asks Ray for; its torch threads follow ray_cpus (more threads barely speed up tiny models)
    ray_cpus: float = 1.0
    ray_gpus: float = 0.0
    # model -> method -> option -> value: a method's defaults at this preset (what tuning chose here), over the
    # method's own defaults and under the settings a run gives (--set); an option `recipe.FIELD` is the method's value
    # of a training-recipe field (`recipe.lr`: the peak tuned for a schedule that reuses the baseline's optimizer)
    method_options: dict = field(default_factory=dict, hash=False)
    # the precision every run of the preset trains and evaluates in ("fp32" or "bf16"); None follows the host (bf16
    # where it runs natively). A reference preset pins it: hosts differ, and every seed of one grid must match
    precision: str | None = None
    # the preset whose optimizer verdicts this one re-runs at a larger batch, so that its book shows this preset's
    # records beside that one's as its batch-size control (ntng.book.controls); None: a preset of its own
    batch_control_of: str | None = None

    def __post_init__(self):
        if self.precision not in (None, "fp32", "bf16"):
            raise UsageError(f"preset {self.name!r}: precision must be 'fp32', 'bf16' or null, got {self.precision!r}")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise UsageError(f"preset {self.name!r}: seeds must be whole numbers >= 0, got {self.seeds!r}")
        if not (isinstance(self.ray_cpus, (int, float)) and self.ray_cpus > 0):
            raise UsageError(f"preset {self.name!r}: ray_cpus must be a number > 0, got {self.ray_cpus!r}")
        if not (isinstance(self.ray_gpus, (int, float)) and self.ray_gpus >= 0):
            raise UsageError(f"preset {self.name!r}: ray_gpus must be a number >= 0, got {self.ray_gpus!r}")
        if not (isinstance(self.method_options, dict) and all(
                isinstance(methods, dict) and all(isinstance(o, dict) for o in methods.values())
                for methods in self.method_options.values())):
            raise UsageError(f"preset {self.name!r}: method_options must map model -> method -> option -> value")
        if self.book_finetune not in ("all", "largest"):
            raise UsageError(f"preset {self.name!r}: book_finetune must be 'all' or 'largest', got "
                             f"{self.book_finetune!r}")

    def book_finetune_budgets(self) -> list[str]:
        """The budgets whose runs `ntng book` fine-tunes."""
        if self.book_finetune == "all":
            return list(self.budgets)
        return [max(self.budgets, key=parse_budget)]

    @property
    def rst_preset(self) -> str:
        return self.table_preset or self.name

    def shape(self, model: str) -> BertShape | T5Shape:
        return self.bert if model == "bert" else self.t5

    def recipe(self, model: str) -> Recipe:
        return self.bert_recipe if model == "bert" else self.t5_recipe

    def options_for(self, model: str, method: str) -> dict:
        """The preset's defaults for `method` on `model` (method_options)."""
        return dict(self.method_options.get(model, {}).get(method, {}))

    def to_dict(self) -> dict:
        return asdict(self)


# a setting `recipe.FIELD` is a value of the model's training recipe (`recipe.lr`: a peak), in a variant's name
# (ntng.training.variants) or in a preset's `method_options` (a method's own tuned peak)
RECIPE_PREFIX = "recipe."


def recipe_settings(overrides: dict) -> dict:
    """{"lr": 0.002} -> {"recipe.lr": 0.002}: recipe fields as settings."""
    return {f"{RECIPE_PREFIX}{k}": v for k, v in overrides.items()}


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


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        vocab_size=8192,  # the offline corpus is ~6.2M WordPiece tokens at 8k; small vocab keeps the embedding cheap
        bert=BertShape(num_layers=4, hidden=128, heads=2, intermediate=512, micro_batch=16, grad_accum=2),
        t5=T5Shape(num_layers=4, d_model=128, d_kv=32, heads=4, d_ff=256, input_len=128, micro_batch=16),
        # 12 grid cells (7 methods on BERT, 5 on T5) x 21 s of RST, and 3 ablations at 6 s; with ~10 s of start-up per cell (a kernel importing torch and transformers)
        # and the RHO-LOSS irreducible-loss models, `make book` takes ~15 min on 2 cores (measured: docs/guide.md)
        budgets=("3s", "6s", "12s"),
        # the paper's recipes; a small batch (32 / 16 sequences) still trains stably at these peaks in seconds;
        # 64 validation windows (8k tokens): every eval point costs wall time in each of the grid's 39 runs
        bert_recipe=replace(BERT_PAPER_RECIPE, eval_sequences=64),
        t5_recipe=replace(T5_PAPER_RECIPE, eval_sequences=64),
        # seconds per task: 256 training passages cut to 64 tokens, 2 epochs = 32 steps, which tiny models only
        # use at a large lr (BERT learns spam_ham at 1e-3, not at 5e-4)
        finetune=FinetuneRecipe(lr=1e-3, t5_lr=5e-4, epochs=2, batch_size=16, max_len=64, max_train=256,
                                max_dev=128),
        # the largest only: the tiny models of the shorter budgets fine-tune to their floor anyway, and fine-tuning
        # all 39 runs would be a third of the book's 20 minutes
        book_finetune="largest",
        description="tiny models: the whole default grid and the book build in ~15-20 min on 2 CPU cores",
    ),
    "mini": Preset(
        name="mini",
        vocab_size=8192,
        # batches of 64 / 32 sequences: a few hundred optimizer steps fit in the budgets below on 2 cores
        bert=BertShape(num_layers=8, hidden=256, heads=4, intermediate=1024, micro_batch=32, grad_accum=2),
        t5=T5Shape(num_layers=8, d_model=256, d_kv=64, heads=4, d_ff=640, input_len=128, micro_batch=32),
        budgets=("90s", "3m", "6m"),  # 14 grid cells x 10.5 min ~ 2.5 h of RST for one seed
        ray_cpus=2.0,  # 256-wide layers on 32-sequence micro-batches still gain from a second thread
        bert_recipe=replace(BERT_PAPER_RECIPE, eval_sequences=512),
        t5_recipe=replace(T5_PAPER_RECIPE, eval_sequences=512),
        # ~1 min per task and model on 2 idle cores: 1000 training examples, 3 epochs = 188 steps
        finetune=FinetuneRecipe(lr=5e-4, t5_lr=3e-4, epochs=3, batch_size=16, max_train=1000, max_dev=400),
        description="small models that learn something real on a CPU; one seed of the grid within ~3 hours",
    ),
    # The reference CPU scale, chosen by measurement: `ntng probe` tried BERT and T5 shapes, batches and peaks for 2
    # min of RST, then the two leading shapes for 8 min (records in results/probe/, the book's page "Choosing the CPU
    # scale"). Each model is charged by the one-thread table the probe measured for it.
    "cpu": Preset(
        name="cpu",
        vocab_size=8192,
        # the probe's best at 8 min: a small model seeing many tokens, as compute-optimal training at this budget
        # predicts
        bert=BertShape(num_layers=4, hidden=64, heads=1, intermediate=256, micro_batch=16, grad_accum=1),
        t5=T5Shape(num_layers=4, d_model=64, d_kv=32, heads=2, d_ff=128, input_len=128, micro_batch=16),
        # 1:2:4, the largest that fits one seed of the reference grid (39 cells and an irreducible-loss model) in a
        # few hours on two cores at one cell per core; the page "Choosing the CPU scale" says what longer budgets
        # would cost
        budgets=("2m", "4m", "8m"),
        # the reference grid's three seeds; seed 0 is the tuning's (results/tuning/cpu), which decides no verdict
        seeds=(1, 2, 3),
        ray_cpus=1.0,  # the tables are one-thread tables: one cell per core
        # the probe's peaks (BERT 8x the paper's, T5 2x), which tuning kept; the methods' own peaks keep the paper's
        # ratio to the baseline's (paper_peak_ratio) unless tuning moved them (method_options)
        # evaluated on the whole validation split, at every eighth of the budget, so a quarter, a half and three
        # quarters of it are among the evaluations (an anytime method is held against the runs of those budgets)
        bert_recipe=replace(BERT_PAPER_RECIPE, lr=8e-3, eval_sequences=None, eval_points=8),
        t5_recipe=replace(T5_PAPER_RECIPE, lr=4e-2, eval_sequences=None, eval_points=8),
        finetune=FinetuneRecipe(lr=5e-4, t5_lr=3e-4, epochs=3, batch_size=16, max_train=1000, max_dev=400),
        book_finetune="largest",  # the 12 runs of the largest budget (7 BERT, 5 T5), ~1 min per task and model each
        # fp32 on every host: bf16 runs natively only on some (AVX512-BF16 / AMX) and is emulated, far slower, on the
        # others, and one grid's seeds must not differ in precision (a run in another precision is stale)
        precision="fp32",
        # what `ntng tune --preset cpu` chose among a method's own options, where it moved them (every run and loss:
        # results/tuning/cpu/tuning.json, the page "Tuning on equal terms"; a test holds these to it)
        method_options={"bert": {
            "selective_backprop": {"scale": 0.25},
            "lion": {"lr": 1.4e-3},
            "sophia": {"rho": 5e-3},
            # its peak (at decay 0.2) 0.008: 6.375, 0.004: 6.223, 0.016: 6.420, 0.002: 6.263 (seed 0, 2m): a constant
            # peak held for 70% of the budget wants half the baseline's
            "warmup_stable_decay": {"recipe.lr": 4e-3},
        }, "t5": {
            "layer_stacking": {"points": [0.25, 0.6]},
            "layer_dropping": {"lr": 8e-2},  # its own peak
            "lion": {"lr": 6e-3},
            "sophia": {"lr": 8e-3, "rho": 5e-3},
            # lr (at momentum 0.95) 0.04: 5.599, 0.02: 5.344, 0.01: 5.168, 0.005: 5.128, still the edge after the
            # tuner's two steps beyond it; momentum (at lr 0.04) 0.95: 5.599, 0.9: 5.436, 0.853: 5.305, 0.808: 5.324
            "muon": {"lr": 5e-3, "momentum": 0.852631578947},
            # lr (at beta1 0.9) 0.008: 5.565, 0.004: 5.465, 0.016: 5.705, 0.002: 5.630; beta1 (at lr 0.008) 0.9:
            # 5.565, 0.95: 5.469, 0.98: 5.526 (seed 0, 2m)
            "schedule_free": {"lr": 4e-3, "beta1": 0.95},
        }},
        description="the reference CPU scale, chosen by the probe: small models that learn well below the "
                    "context-free floor; one seed of the reference grid in ~4 hours on 2 cores",
    ),
    "paper": Preset(
        name="paper",
        vocab_size=32768,  # crammed BERT's vocabulary; t5-v1.1 uses 32128, rounded here to one size for both
        bert=BertShape(num_layers=16, hidden=768, heads=12, intermediate=3072),
        t5=T5Shape(num_layers=12, d_model=768, d_kv=64, heads=12, d_ff=2048),
        budgets=("6h", "12h", "24h"),
        ray_cpus=4.0, ray_gpus=1.0,  # one GPU per run, as in the paper; a few CPUs for data and the kernel
        description="crammed BERT 16x768 and t5-v1.1-base with the paper's RST tables; needs a GPU",
    ),
}

# The optimizer verdict's batch-size control: `cpu` at 4x the batch, 64 sequences a step as 4 micro-batches of 16,
# so every micro-batch is the one cpu's tables charge; at cpu's middle budget only. Sign-like updates (Lion, Sophia)
# are known to need large batches: at 16 sequences they sit on the unigram plateau for the first ~120 s of RST
# whatever their peak. The baseline's, Lion's and Sophia's peaks are re-tuned here by the same rule
# (`ntng tune --preset cpu_batch64 --keys recipe.lr lr`, results/tuning/cpu_batch64; a test holds these to it), then
# run with the grid's seeds. Their other options are cpu's (warmup-stable-decay's peak, which is not run here, too: it
# would need its own tuning at this batch).
_CPU = PRESETS["cpu"]
PRESETS["cpu_batch64"] = replace(
    _CPU, name="cpu_batch64",
    bert=replace(_CPU.bert, grad_accum=4), t5=replace(_CPU.t5, grad_accum=4),
    bert_recipe=replace(_CPU.bert_recipe, lr=1.6e-2), t5_recipe=replace(_CPU.t5_recipe, lr=8e-2),
    method_options={
        "bert": {**_CPU.method_options["bert"], "lion": {"lr": 2.8e-3}, "sophia": {"rho": 5e-3, "lr": 1.6e-3}},
        "t5": {**_CPU.method_options["t5"], "lion": {"lr": 1.2e-2}, "sophia": {"lr": 8e-3, "rho": 5e-3}}},
    budgets=("4m",), table_preset="cpu", book_finetune="largest", batch_control_of="cpu",
    description="the reference CPU scale at 4x the batch (64 sequences), its middle budget: the optimizers' "
                "batch-size control")

MODELS = ("bert", "t5")
DEFAULT_PRESET = "smoke"
REFERENCE_PRESET = "cpu"  # the CPU scale the study runs at (the book's "Choosing the CPU scale")
# nats: how far below the context-free floor a reference scale's baselines should end at its largest budget, so that
# the methods are compared on learning language, not word frequencies
REFERENCE_BELOW_FLOOR = 1.5
PRESETS_FILE_ENV = "NTNG_PRESETS_FILE"


def load_custom_presets(path: str | Path) -> dict[str, Preset]:
    """Presets from a JSON list, each a shipped preset with changes, e.g.

        [{"name": "tiny", "base": "smoke", "vocab_size": 400, "t5": {"input_len": 32},
          "bert_recipe": {"lr": 2e-3}}]

    A custom preset is charged with its base's shipped RST tables (or a table passed with --rst-table)."""
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read presets from {path}: {exc}") from None
    out = {}
    for entry in entries if isinstance(entries, list) else [None]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise UsageError(f"{path}: each preset must be an object with a 'name'")
        entry = dict(entry)
        name, base_name = entry.pop("name"), entry.pop("base", DEFAULT_PRESET)
        # a preset built on a control is not that control unless it says so
        entry.setdefault("batch_control_of", None)
        if name in PRESETS:
            raise UsageError(f"{path}: preset {name!r} would replace a shipped preset")
        if base_name not in PRESETS:
            raise UsageError(f"{path}: preset {name!r} has an unknown base {base_name!r}")
        base = PRESETS[base_name]
        try:
            nested = {key: replace(getattr(base, key), **entry.pop(key, {}))
                      for key in ("bert", "t5", "bert_recipe", "t5_recipe", "finetune")}
            for key in ("budgets", "seeds"):  # JSON lists -> the tuples a frozen preset holds
                if key in entry:
                    entry[key] = tuple(entry[key])
            out[name] = replace(base, name=name, table_preset=base.rst_preset, **nested, **entry)
        except TypeError as exc:
            raise UsageError(f"{path}: preset {name!r}: {exc}") from None
    for name, preset in out.items():
        if preset.batch_control_of is not None and (preset.batch_control_of not in {**PRESETS, **out}
                                                    or preset.batch_control_of == name):
            raise UsageError(f"{path}: preset {name!r}: batch_control_of must name another preset, got "
                             f"{preset.batch_control_of!r}")
    return out


def all_presets() -> dict[str, Preset]:
    """The shipped presets plus any from $NTNG_PRESETS_FILE."""
    path = os.environ.get(PRESETS_FILE_ENV)
    return {**PRESETS, **load_custom_presets(path)} if path else dict(PRESETS)


def batch_control_for(name: str) -> str | None:
    """The preset that is `name`'s batch-size control (the first, shipped ones first), or None."""
    return next((p.name for p in all_presets().values() if p.batch_control_of == name), None)


def get_preset(name: str) -> Preset:
    presets = all_presets()
    try:
        return presets[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r} (choose from {', '.join(presets)})") from None


_BUDGET = re.compile(r"(?P<value>\d+(?:\.\d+)?)(?P<unit>[smh])")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_BUDGET_SECONDS = 365 * 24 * 3600.0  # a year of reference-machine time: anything more is a typo


def parse_budget(text: str) -> float:
    """An RST budget such as '20s', '10m', '6h' -> seconds. Unit required; positive; at most a year."""
    match = _BUDGET.fullmatch(str(text).strip())
    if not match:
        raise UsageError(f"bad budget {text!r}: give a positive number with a unit s, m or h (e.g. 20s, 10m, 6h)")
    seconds = float(match["value"]) * _UNIT_SECONDS[match["unit"]]
    if not (0 < seconds <= MAX_BUDGET_SECONDS):
        raise UsageError(f"bad budget {text!r}: must be above 0 and at most a year of RST")
    return seconds


def format_budget(seconds: float) -> str:
    """The inverse of parse_budget for whole units: 1200 -> '20m' (used in run directory names)."""
    for unit in ("h", "m"):
        if seconds >= _UNIT_SECONDS[unit] and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{int(seconds // _UNIT_SECONDS[unit])}{unit}"
    return f"{seconds:g}s"


def middle_budget(budgets) -> str:
    """The middle of a set of budgets, as a name ('12h' of the paper's 6/12/24 h): where the paper trains
    RHO-LOSS's irreducible-loss model and runs its ablations."""
    ordered = sorted(budgets, key=parse_budget)
    return format_budget(parse_budget(ordered[len(ordered) // 2]))
