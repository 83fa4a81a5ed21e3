"""The one budgeted training loop, for BERT and T5 and every method.

`pretrain(...)` resolves and checks its arguments first (`ntng.training.spec.resolve`: bad input -> UsageError,
nothing written), then trains until the RST clock reaches the budget, evaluating the validation loss at fixed
fractions of the budget (evaluation costs no RST) and writing the run directory of docs/records.md. Methods change
training only through the hooks of `ntng.methods.base.Method`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ntng.data import corpus as data_mod
from ntng.data.batches import BatchStream, make_collator
from ntng.data.splits import DATA_SPLITS, select_split
from ntng.errors import RunError, UsageError
from ntng.methods import Method, Run, build_method
from ntng.models.pretraining import build_model, count_parameters, model_config_dict
from ntng.presets import Preset, recipe_settings
from ntng.training.device import autocast_dtype, describe_machine, package_versions, pick_device, precision_name
from ntng.training.evaluation import EVAL_MASK_SEED, build_eval_set, mean_loss
from ntng.training.pricing import estimated_price
from ntng.training.progress import Bar
from ntng.training.records import RunDir
from ntng.training.rst import RSTClock
from ntng.training.schedules import SCHEDULES
from ntng.training.spec import PretrainSpec, evaluation_in_force, resolve

# a run's bar counts RST seconds of the budget, not steps (a step's cost varies with the method)
RST_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} s RST [{elapsed}<{remaining}]"


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
        # the variant's recipe values again, so that the preset's values for the method do not cover them
        self.method: Method = build_method(spec.method_spec or spec.method, model_name, preset,
                                           **{**spec.method_options, **recipe_settings(spec.recipe_overrides)})
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
        clock = RSTClock(spec.table, spec.budget_rst_s, free=spec.free_work)
        self.run = Run(model=model, optimizer=None, clock=clock, batches=batches, preset=preset,
                       model_name=model_name, amp_dtype=self.amp_dtype, seed=spec.seed)
        # an optimizer step the table does not price (a plug-in's own optimizer): an estimate, shipped or measured once
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
            **spec.free_flags(),
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
            "layer_sum": self.layer_sum, "identity": self.spec.identity(), "rst_estimates": self.rst_estimates,
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
        if state.get("rst_estimates"):  # a run pays the price it started with, whatever is shipped or cached now
            self.rst_estimates = state["rst_estimates"]
            self.run.clock.table = dataclasses.replace(self.spec.table, optimizer={
                **self.spec.table.optimizer, **{k: v["seconds"] for k, v in self.rst_estimates.items()}})
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
