"""The hooks through which a method changes training, and the run state they may touch.

The order in which the loop calls the hooks is described once, in docs/methods.md ("The hooks"); its code is
`ntng.training.loop.Trainer.train_step`.

`build_optimizer` chooses the optimizer. A hook that needs an extra pass of the model runs it through
`run.forward(batch, kind)`, which charges the clock for it (scoring passes at forward cost, Hessian passes at
forward+backward cost) before the work; hooks never run a loop of their own.

The loop zeroes gradients in place after each step (re-allocating them costs ~15% of a mini step in page faults),
so a parameter that took no part in a step holds a zero gradient, not None. A method whose blocks sit out a
whole step (layer dropping) and must not be touched by the optimizer sets their `.grad` to None in
`before_update`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ntng.errors import UsageError
from ntng.presets import Preset
from ntng.training.optim import build_optimizer


@dataclass(frozen=True)
class Claim:
    """A speed-up claim made about a method, to be held against the records (`ntng.book.verdicts`). A method lists the
    claims its sources make (`Method.claims`); the book states each one's verdict with its evidence."""

    text: str  # the claim in words, as its source makes it
    source: str  # where it is made: authors, year, section or figure
    # the rule it is held to (ntng.book.verdicts.RULES): "not_better" (no gain), "worse", "better", "not_worse" (matches
    # or beats), "gap_closes" (ahead at the smallest budget, level at the largest), "speedup" (as good as what it is
    # held against given `factor` times the budget)
    expects: str
    settings: str = ""  # the variant's settings it is about ("free_hessian"); "" = the method as it is
    against: str = "baseline"  # the runs it is paired with, by model, budget and seed (a variant name)
    models: tuple[str, ...] = ()  # the models it is about; () = every model the method ran on
    number: str = ""  # the claim's own figure, where its source gives one ("1.35x fewer tokens")
    factor: float = 1.0  # "speedup": the multiple of the method's budget the runs held against are given
    # < 1: the method's loss part-way through its runs (its evaluation nearest this fraction of the budget), held
    # against complete runs of that shorter budget (a claim to need no stopping time)
    at_fraction: float = 1.0


@dataclass
class Run:
    """What the hooks may read and change. Owned by the loop."""

    model: Any  # ntng.models.pretraining.BertMLM | T5SpanModel
    optimizer: torch.optim.Optimizer | None
    clock: Any  # ntng.training.rst.RSTClock
    batches: Any  # ntng.data.batches.BatchStream
    preset: Preset
    model_name: str
    seed: int = 0  # the run's seed: methods that draw random numbers seed their own generators from it
    step: int = 0  # optimizer steps done
    micro_step: int = 0  # micro-batches trained on
    amp_dtype: torch.dtype | None = None  # the loop's autocast precision (None: fp32); extra passes use the same
    extra: dict = field(default_factory=dict)  # per-step values a method wants logged

    # what each kind of pass is charged as: a forward+backward micro-batch, or a forward-only one
    PASS_UNITS = {"train": "train", "hessian": "train", "scoring": "forward"}

    def forward(self, batch: dict, kind: str = "train", active_layers=None, share: float = 1.0) -> dict:
        """The one way a pass runs: charge the clock for it (before the work, at the depth that runs), move the
        batch to the model's device, run the model under the loop's autocast and return its output dict.

        kind "train" and "hessian" (Sophia's estimate) are charged as forward+backward micro-batches and return an
        output to back-propagate; "scoring" (batch selection) as a forward-only pass, run without gradients. `share`:
        the pass's sequences as a fraction of the preset's micro-batch, for a pass over fewer (Sophia's half-batch
        Hessian estimate where a batch is one micro-batch); it is charged that share of one. A method that runs the model any other way does unpaid work."""
        if kind not in self.PASS_UNITS:
            raise ValueError(f"unknown kind of pass {kind!r} (choose from {', '.join(self.PASS_UNITS)})")
        model = self.model
        depth = model.num_layers if active_layers is None else len(active_layers)
        if not 0.0 < share <= 1.0:
            raise ValueError(f"share must be in (0, 1], got {share}")
        if self.PASS_UNITS[kind] == "train":
            self.clock.charge_train(depth, kind=kind, share=share)
        else:
            self.clock.charge_forward(depth, kind=kind, share=share)
        device = next(model.parameters()).device
        moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.set_grad_enabled(kind != "scoring" and torch.is_grad_enabled()), torch.autocast(
                device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            return model(moved, active_layers=active_layers)


class Method:
    """The baseline's behaviour; methods override what they change.

    A method names itself and describes itself for the records (config.json's `method_meta`), which is all the
    report and the book read: `label` (how tables and legends name it), `family` (its book chapter: `dynamic`,
    `selection`, `optimizers`, or any other, shown under "Other methods"), the survey's `component` and `action`
    (Blalock et al.), `card`, and `extra_work` (below)."""

    name = "baseline"
    label = ""  # how the report names it; "" = the name with spaces
    family = ""  # the book chapter it belongs to; "" = none (the baseline)
    component = "-"  # the survey's component: model | data | optimization
    action = "-"  # the survey's action: remove | restrict | reorder | replace | retrofit
    summary = ""  # what it does, in a few words
    card = ""  # a short method card (what, where from, hyper-parameters, survey category), shown in the book
    # The part of the training windows the method trains on by default ("full"; RHO-LOSS: "rho_main", the 80% that
    # its irreducible-loss model did not see). See `ntng.data.splits`.
    data_split = "full"
    requires_data_split = False  # True: the method cannot train on any other split
    # the kinds of extra work (ntng.training.rst.EXTRA_KINDS) the method's hooks charge beyond training: "scoring" (forward-only
    # passes that choose data), "hessian" (Sophia's estimate). A run can make exactly these free (ntng.training.variants).
    extra_work: tuple[str, ...] = ()
    studied_on: tuple[str, ...] = ("bert", "t5")  # the models the paper ran it on (tuning covers these by default)
    claims: tuple[Claim, ...] = ()  # what its sources claim for it, held against the records by the book

    def __init__(self, model: str, preset: Preset, **options):
        if options:
            raise TypeError(f"{self.name} takes no options, got {sorted(options)}")
        self.model_name = model
        self.preset = preset
        self.recipe = preset.recipe(model)

    # --- settings ----------------------------------------------------------------------------------------
    @property
    def rst_optimizer(self) -> str:
        """The optimizer's key in the RST table ('adamw' covers T5's AdamWScale, as in the paper's table)."""
        return "adamw"

    def settings(self) -> dict:
        """Method hyper-parameters, recorded in config.json."""
        return {}

    def tuning(self) -> dict[str, list]:
        """The hyper-parameters the paper tuned for this method (Appendix C), each with the values a tuning grid
        tries, the method's current value first (`ntng tune`). Keys are what `--set` takes."""
        return {}

    @classmethod
    def meta(cls) -> dict:
        """What the records say about the method (config.json `method_meta`)."""
        return {"name": cls.name, "label": cls.label or cls.name.replace("_", " "), "family": cls.family,
                "component": cls.component, "action": cls.action, "summary": cls.summary,
                "extra_work": list(cls.extra_work), "studied_on": list(cls.studied_on), "class": f"{cls.__module__}:{cls.__qualname__}"}

    def prepare(self, spec, log, pretrain=None) -> dict:
        """Before the run is built: make what the method needs from outside the run (RHO-LOSS: its irreducible-
        loss model and losses, built once and cached). `pretrain` is the loop itself (`ntng.training.loop.pretrain`), for a
        method that trains a model of its own. Returns facts for summary.json, under their own keys."""
        return {}

    # --- hooks -------------------------------------------------------------------------------------------
    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        r = self.recipe
        return build_optimizer(r.optimizer, model, r.lr, r.betas, r.eps, r.weight_decay)

    def bind(self, run: Run) -> None:
        """Called once the model, optimizer and clock exist (and again after a resume)."""

    def begin_step(self, run: Run) -> None:
        """Before each optimizer step."""

    def lr_multiplier(self, budget_fraction: float) -> float | None:
        """The peak's multiplier at `budget_fraction` of the budget, or None: the recipe's schedule (the default).
        A pure function of the fraction, like every schedule (warmup-stable-decay overrides it)."""
        return None

    def next_microbatch(self, run: Run) -> dict:
        return run.batches.next()

    def active_layers(self, run: Run) -> list[int] | None:
        return None

    def before_update(self, run: Run) -> None:
        """After the gradients of a step are complete (and clipped), before the optimizer applies them."""

    def end_step(self, run: Run) -> None:
        """After each optimizer step."""

    def evaluation_weights(self, run: Run) -> contextlib.AbstractContextManager:
        """The weights the model is evaluated and saved at: a context manager the loop enters around every
        evaluation and every checkpoint save (the final one too, which fine-tuning reads), so the checkpoint holds the
        model as it is inside it. A resumed run enters and leaves it once after loading the checkpoint, to stand where
        the uninterrupted run stood after its save: entering it when the model already holds its evaluation weights
        must change nothing. Default: the training weights as they are (Schedule-Free: its averaged weights)."""
        return contextlib.nullcontext()

    @classmethod
    def findings(cls, runs, exclude_seeds=()):
        """What the method's records show beyond its claims, for its book chapter: (a paragraph of markdown, a
        pandas DataFrame or None), or None for nothing. `runs`: ntng.book.run_table's table of runs (every method's,
        with `run_dir`); `exclude_seeds`: the tuning seed(s)."""
        return None

    def stats(self) -> dict:
        """method_stats for summary.json."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state(self, state: dict, run: Run) -> None:
        """Restore from `state_dict()` on resume. Called after the model and optimizer are built and before
        their weights are loaded, so a method that reshapes the model (stacking) reshapes it here first."""


TUNING_FACTORS = (1.0, 0.5, 2.0)  # a tuned value is tried as it is and a factor of two either side


def around(value, factors=TUNING_FACTORS) -> list:
    """`value` times each factor (element-wise for a list of values): the tuning grid of one hyper-parameter."""
    if isinstance(value, (list, tuple)):
        return [[v * f for v in value] for f in factors]
    return [value * f for f in factors]


def take_options(method: str, options: dict, defaults: dict) -> dict:
    """`defaults` overridden by `options`; unknown names and non-numbers are refused (UsageError)."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UsageError(f"method {method} has no option(s) {', '.join(unknown)} (it takes {', '.join(defaults)})")
    out = dict(defaults)
    for key, value in options.items():
        default = defaults[key]
        if isinstance(default, bool):
            ok, what = isinstance(value, bool), "true or false"
        elif isinstance(default, tuple):
            ok = (isinstance(value, (list, tuple)) and len(value) == len(default)
                  and all(_is_number(v) for v in value))
            what = f"a list of {len(default)} numbers"
            value = tuple(float(v) for v in value) if ok else value
        elif isinstance(default, int):
            ok, what = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        else:
            ok, what = _is_number(value), "a number"
        if not ok:
            raise UsageError(f"method {method}: option {key} = {value!r} must be {what}")
        out[key] = value
    return out


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
