"""Sophia-G: the baseline's loop and schedule with Sophia-G in place of AdamW / AdamWScale, plus its Hessian passes.

Every `hessian_interval` (k = 10) optimizer steps the method spends extra micro-batches of training data on the
Gauss-Newton-Bartlett estimate of the diagonal Hessian: it samples labels from the model's own softmax at the
prediction positions (BERT: the masked positions; T5: every decoder output), back-propagates the cross-entropy on
those sampled labels, and folds the squared gradient into the optimizer's estimate (`SophiaG.update_hessian`).
Each of those passes is charged to the RST clock as a forward+backward micro-batch at full depth, kind "hessian"
(free with --free-hessian, the paper's ablation), before it runs; a pass over fewer sequences than a micro-batch
costs its share, so an estimate costs what the paper's did relative to a step (BERT: half a batch every 10 steps,
5% of the training passes, also where a batch is a single micro-batch).

When the estimates happen follows the paper's two code bases: its BERT loop estimates before the first update and
then every k updates (before updates 1, k+1, 2k+1, ...) on 768 of a batch's 1536 sequences; its T5 loop after
every k-th update (before updates k+1, 2k+1, ...) on a whole batch, clipping the sampled-label gradient like a
training gradient. Estimates run in `begin_step`, so none is made after the budget's last step, where it could
never be used (the paper's loops would have paid for one there). Until the first estimate the Hessian is zero and
Sophia takes sign-of-momentum steps, as the official optimizer does.

The functional core is `ntng.training.optim.SophiaG` and `hessian_pass` / `sampled_label_loss` below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ntng.errors import UsageError
from ntng.presets import paper_peak_ratio
from ntng.training.optim import SophiaG, decay_groups

from .base import Claim, Method, Run, around, take_options
from .lion import check_betas

SOPHIA_BETAS = (0.965, 0.99)
HESSIAN_INTERVAL = 10  # optimizer steps between Hessian estimates (k), both models
# Appendix C.6 and the paper's code, per model. The peak is for the paper's baseline peak and moves with a preset's
# (ntng.presets.paper_peak_ratio). bs: None = the tokens per batch (BERT: 1536 x 128 = 196,608); T5 5120 always (its
# code calls step() without bs, so the optimizer's default applies). The share of a batch each estimate takes (BERT
# code: 768 of 1536; T5 the whole batch). T5: no weight decay, steps scaled by max(1e-3, RMS(param)).
PAPER_OPTIONS = {"bert": {"lr": 4e-4, "weight_decay": 0.015, "rho": 0.01, "bs": None, "hessian_batch_fraction": 0.5,
                          "rms_scale": False},
                 "t5": {"lr": 1e-3, "weight_decay": 0.0, "rho": 0.01, "bs": 5120, "hessian_batch_fraction": 1.0,
                        "rms_scale": True}}
HESSIAN_AT_START = {"bert": True, "t5": False}  # the paper's BERT loop estimates before update 1, its T5 loop not
CLIP_HESSIAN_GRADIENT = {"bert": False, "t5": True}  # the T5 loop clips the sampled-label gradient (at 1.0)


def tokens_per_batch(model: str, preset) -> int:
    """Sequences per optimizer step x tokens per sequence (BERT's window, T5's encoder input); the paper's BERT
    setting is 1536 x 128 = 196608."""
    shape = preset.shape(model)
    return shape.batch * (shape.seq_len if model == "bert" else shape.input_len)


def sophia_bs(model: str, preset) -> int:
    """Sophia's `bs`: the paper's fixed value where it has one (T5: 5120, the optimizer's default, as the paper's
    T5 code never passes bs), else the tokens per batch (BERT)."""
    fixed = PAPER_OPTIONS[model]["bs"]
    return int(fixed) if fixed is not None else tokens_per_batch(model, preset)


def hessian_due(steps_done: int, interval: int, at_start: bool) -> bool:
    """Whether an estimate runs before the next update, `steps_done` updates in."""
    return steps_done % interval == 0 and (steps_done > 0 or at_start)


def sampled_label_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of `logits` [..., V] against labels drawn from softmax(logits) (the Gauss-Newton-Bartlett
    estimator's loss); mean over positions, computed in float32. Draws from torch's global RNG."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    with torch.no_grad():
        labels = torch.multinomial(torch.softmax(flat, dim=-1), 1).squeeze(1)
    return F.cross_entropy(flat, labels)


def hessian_pass(run: Run, sequences: int, grad_clip: float) -> int:
    """One Hessian estimate on `sequences` sequences from the training stream, in micro-batches (the last may be
    smaller), each charged (kind 'hessian', full depth, its share of a micro-batch) before its forward+backward;
    then the optimizer folds the gradient (the mean over the sequences) in and the gradients are zeroed in place.
    Returns the number of passes."""
    model = run.model
    micro_batch = run.preset.shape(run.model_name).micro_batch
    sizes = [min(micro_batch, sequences - start) for start in range(0, sequences, micro_batch)]
    for size in sizes:
        logits = run.forward(run.batches.next(size), kind="hessian", share=size / micro_batch)["logits"]
        (sampled_label_loss(logits) * (size / sequences)).backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    run.optimizer.update_hessian()
    run.optimizer.zero_grad(set_to_none=False)
    return len(sizes)


class Sophia(Method):
    extra_work = ("hessian",)
    name = "sophia"
    label = "Sophia"
    family = "optimizers"
    component = "optimization"
    action = "replace"
    summary = "clipped diagonal second-order update"
    claims = (
        Claim("Sophia underperforms AdamW in validation loss in nearly all budgets",
              "Kaddour et al. 2023, Section 6.1, Figure 4",
              "worse"),
        Claim("With its Hessian estimates free, Sophia still shows no speed-up",
              "Kaddour et al. 2023, Section 6.1",
              "not_better",
              settings="free_hessian"),
    )
    card = (
        "**Sophia-G** (Liu et al. 2023, *Sophia: A Scalable Stochastic Second-order Optimizer for Language Model "
        "Pre-training*). Replaces AdamW with a clipped, diagonally pre-conditioned sign-momentum step: "
        "m <- b1 m + (1 - b1) g; p <- p (1 - lr wd) - lr sign(m) min(|m| / (rho bs h + 1e-15), 1), betas "
        "0.965/0.99, bs the tokens per batch. Every 10 steps it spends extra micro-batches estimating the diagonal "
        "Hessian h (Gauss-Newton-Bartlett: backprop cross-entropy on labels sampled from the model's own softmax, "
        "h <- b2 h + (1 - b2) g*g), charged at forward+backward cost (free with --free-hessian). Hyper-parameters "
        "as the paper tuned them (Appendix C.6): BERT lr 4e-4, weight decay 0.015 (none on biases and LayerNorm), "
        "rho 0.01, bs = tokens per batch, half a batch per estimate (a pass smaller than a micro-batch is "
        "charged its share, so the estimates cost 5% of the training passes as in the paper, also at a batch of "
        "one micro-batch); T5 lr 1e-3, rho 0.01, bs 5120 (the T5 code's "
        "default), no weight decay, a whole batch per estimate and the step scaled "
        "by max(1e-3, RMS(param)) like AdamWScale. The baseline's schedule, clipping and batch. Survey category: "
        "component *optimization* x action *replace*."
    )

    def __init__(self, model: str, preset, **options):
        super().__init__(model, preset)
        r, shape, paper = self.recipe, preset.shape(model), PAPER_OPTIONS[model]
        # the paper's share of a batch per estimate, in sequences (BERT 768 of 1536): at a batch of one micro-batch a
        # whole micro-batch would double the estimate's cost
        default_sequences = max(1, round(paper["hessian_batch_fraction"] * shape.batch))
        self.options = take_options(self.name, options, {
            "lr": paper["lr"] * paper_peak_ratio(r, model), "weight_decay": paper["weight_decay"], "rho": paper["rho"],
            "betas": SOPHIA_BETAS, "hessian_interval": HESSIAN_INTERVAL, "hessian_sequences": default_sequences,
            "rms_scale": paper["rms_scale"]})
        o = self.options
        if not o["lr"] > 0 or not o["weight_decay"] >= 0 or not o["rho"] > 0:
            raise UsageError(f"method sophia: lr and rho must be > 0 and weight_decay >= 0, got lr={o['lr']} "
                             f"rho={o['rho']} weight_decay={o['weight_decay']}")
        if o["hessian_interval"] < 1 or o["hessian_sequences"] < 1:
            raise UsageError(f"method sophia: hessian_interval and hessian_sequences must be >= 1, got "
                             f"{o['hessian_interval']} and {o['hessian_sequences']}")
        check_betas(self.name, o["betas"])
        self.bs = sophia_bs(model, preset)
        self.at_start = HESSIAN_AT_START[model]
        self.hessian_grad_clip = r.grad_clip if CLIP_HESSIAN_GRADIENT[model] else 0.0
        self.counters = {"hessian_updates": 0, "hessian_micro_batches": 0, "hessian_sequences": 0,
                         "clip_fraction_sum": 0.0, "clipped_steps": 0}

    @property
    def rst_optimizer(self) -> str:
        return "sophia"

    def tuning(self) -> dict[str, list]:
        return {"lr": around(self.options["lr"]), "rho": around(self.options["rho"])}  # C.6

    def settings(self) -> dict:
        return {"optimizer": "sophia", **self.options, "bs": self.bs, "hessian_at_start": self.at_start,
                "hessian_grad_clip": self.hessian_grad_clip}

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        o = self.options
        return SophiaG(decay_groups(model, o["weight_decay"]), lr=o["lr"], betas=o["betas"], rho=o["rho"],
                       weight_decay=o["weight_decay"], bs=self.bs, rms_scale=o["rms_scale"])

    def begin_step(self, run: Run) -> None:
        if hessian_due(run.step, self.options["hessian_interval"], self.at_start):
            passes = hessian_pass(run, self.options["hessian_sequences"], self.hessian_grad_clip)
            self.counters["hessian_updates"] += 1
            self.counters["hessian_micro_batches"] += passes
            self.counters["hessian_sequences"] += self.options["hessian_sequences"]

    def end_step(self, run: Run) -> None:
        fraction = getattr(run.optimizer, "last_clip_fraction", None)
        if fraction is not None:
            self.counters["clip_fraction_sum"] += fraction
            self.counters["clipped_steps"] += 1

    def stats(self) -> dict:
        c = self.counters
        return {"hessian_updates": c["hessian_updates"], "hessian_micro_batches": c["hessian_micro_batches"],
                "hessian_sequences": c["hessian_sequences"],
                "clip_fraction": c["clip_fraction_sum"] / c["clipped_steps"] if c["clipped_steps"] else None}

    def state_dict(self) -> dict:
        return dict(self.counters)

    def load_state(self, state: dict, run: Run) -> None:
        self.counters = {**self.counters, **state}
