"""Downstream evaluation: fine-tune a pre-trained run on labelled tasks, against a random-initialisation floor.

`finetune(run_dir, tasks)` loads the run's final model (DIR/checkpoint.pt at the depth the run ended with) and
fine-tunes a copy per task with the preset's `FinetuneRecipe` (AdamW, linear warm-up then linear decay to 0,
a few epochs, the best epoch on dev kept, as in the paper). The same architecture trained from random
initialisation with the same recipe and seed is the floor a pre-trained model has to beat.

- BERT: a pooled classification head on [CLS] (dense + tanh, dropout, linear; one output for regression).
- T5: text-to-text. The encoder reads "<task>: <text>", the target is the label word(s) tokenized with the run's
  Unigram tokenizer. Prediction is rank classification: the label whose word sequence has the highest
  log-likelihood. Unlike greedy decoding it cannot produce an answer that is no label.

Tasks: the offline suite (spam_ham, brown_genre, sotu_party: an offline stand-in for GLUE, never GLUE) by
default; GLUE/SuperGLUE by name through ntng.data.glue. Results: DIR/finetune/<task>.json, written atomically; a task
whose JSON matches the recipe is up to date and skipped. The floor depends only on (architecture, task data,
recipe, seed, precision), so it is computed once and cached under <data dir>/finetune-floors/, keyed by a hash of
all of them. Fine-tuning costs wall time, which is reported; it is not part of any RST budget (as in the paper).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ntng.data import corpus as data_mod
from ntng.data import glue
from ntng.errors import RunError, UsageError
from ntng.experiments.metrics import METRICS
from ntng.presets import FinetuneRecipe, Preset, get_preset
from ntng.training.records import RunDir, read_json, write_json

FINETUNE_FORMAT = 1  # bump when a rule changes: older results are then recomputed
OFFLINE_SUITE = "offline stand-in for GLUE"
OFFLINE_METRICS = {
    "spam_ham": "mcc",  # 31% spam: a constant "ham" would score 69% accuracy but 0 MCC
    "brown_genre": "macro_f1",  # 15 genres from 1% to 16% of passages: each genre counts the same
    "sotu_party": "accuracy",  # Democratic vs Republican passages are balanced (50/50 in train, 47/53 in dev)
}
SUBSET_SEED = 0  # which examples a capped task keeps: the same for every run and floor, whatever their seed
SUPERGLUE_LR_SCALE, SUPERGLUE_EPOCH_SCALE = 1.25, 2  # the paper: SuperGLUE lr 5e-5 / 10 epochs vs GLUE 4e-5 / 5

Log = Callable[[str], None]


# --- tasks -------------------------------------------------------------------------------------------------

def task_names() -> tuple[str, ...]:
    return (*data_mod.TASKS, *glue.BENCHMARK_TASKS)


def check_tasks(tasks) -> list[str]:
    """The task names to run, validated; None: the offline suite."""
    if tasks is None:
        return list(data_mod.TASKS)
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise UsageError("no task given")
    for name in names:
        if name not in data_mod.TASKS and name not in glue.BENCHMARK_TASKS:
            raise UsageError(f"unknown task {name!r} (offline: {', '.join(data_mod.TASKS)}; GLUE: "
                             f"{', '.join(glue.GLUE_TASKS)}; SuperGLUE: {', '.join(glue.SUPERGLUE_TASKS)})")
    return list(dict.fromkeys(names))


def load_offline_task(name: str, data_dir: Path | None = None) -> glue.TaskData:
    dataset = data_mod.load_task(name, data_dir)
    labels = tuple(dataset["train"].features["label"].names)
    return glue.TaskData(name=name, suite=OFFLINE_SUITE, metric=OFFLINE_METRICS[name], labels=labels,
                         train_texts=[(t,) for t in dataset["train"]["text"]],
                         train_labels=list(dataset["train"]["label"]),
                         dev_texts=[(t,) for t in dataset["dev"]["text"]], dev_labels=list(dataset["dev"]["label"]),
                         info={"source": str(Path(data_dir or data_mod.default_data_dir()) / "tasks" / name)})


def load_any_task(name: str, data_dir: Path | None = None) -> glue.TaskData:
    return load_offline_task(name, data_dir) if name in data_mod.TASKS else glue.load_benchmark_task(name)


def capped_indices(n: int, cap: int | None) -> list[int]:
    """All of range(n), or a fixed random subset of `cap` of them, in order."""
    if cap is None or cap >= n:
        return list(range(n))
    return sorted(np.random.default_rng(SUBSET_SEED).choice(n, cap, replace=False).tolist())


def recipe_for_suite(recipe: FinetuneRecipe, suite: str) -> FinetuneRecipe:
    if suite == "superglue":
        return replace(recipe, lr=recipe.lr * SUPERGLUE_LR_SCALE, t5_lr=recipe.t5_lr * SUPERGLUE_LR_SCALE,
                       epochs=recipe.epochs * SUPERGLUE_EPOCH_SCALE)
    return recipe


def check_recipe(recipe: FinetuneRecipe, model: str, preset: Preset) -> None:
    problems = [f"{k} must be > 0" for k in ("lr", "t5_lr", "epochs", "batch_size", "max_len")
                if not getattr(recipe, k) > 0]
    problems += [f"{k} must be >= 1 or None" for k in ("max_train", "max_dev")
                 if getattr(recipe, k) is not None and getattr(recipe, k) < 1]
    if not 0 <= recipe.warmup_fraction < 1 or not 0 <= recipe.head_dropout < 1 or recipe.weight_decay < 0:
        problems.append("warmup_fraction and head_dropout must be in [0, 1), weight_decay >= 0")
    if model == "bert" and recipe.max_len > preset.bert.seq_len:
        problems.append(f"max_len {recipe.max_len} exceeds BERT's {preset.bert.seq_len} positions")
    if problems:
        raise UsageError(f"fine-tuning recipe of preset {preset.name}: {'; '.join(problems)}")


# --- the pre-trained run -----------------------------------------------------------------------------------

@dataclass
class RunInfo:
    run_dir: Path
    config: dict
    summary: dict
    model: str
    preset: Preset
    seed: int
    data_dir: Path
    corpus: str
    vocab_size: int  # the model's (the tokenizer's real size, which may fall short of the preset's)


def inspect_run(run_dir: str | Path, data_dir: str | Path | None = None) -> RunInfo:
    """A complete pre-training run directory, checked; UsageError (nothing written) otherwise."""
    run_dir = Path(run_dir)
    records = RunDir(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"no run directory at {run_dir}")
    for path in (records.config_path, records.summary_path, records.checkpoint_path):
        if not path.exists():
            raise UsageError(f"{run_dir} is not a pre-training run: {path.name} is missing")
    try:
        config, summary = records.read_config(), records.read_summary()
    except RunError as exc:
        raise UsageError(str(exc)) from None
    if summary.get("status") != "complete":
        raise UsageError(f"{run_dir} is not a complete run (status {summary.get('status')!r}): fine-tuning takes "
                         "the model at the end of its budget")
    try:
        model, preset_name, seed = config["model"], config["preset"], int(config["seed"])
        data_info = config["data"]
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{records.config_path} lacks model/preset/seed/data: not written by ntng pretrain") from None
    preset = get_preset(preset_name)
    if json.loads(json.dumps(asdict(preset.shape(model)))) != config.get("shape"):
        raise UsageError(f"{run_dir} was trained with another {model} shape than preset {preset_name} has now")
    return RunInfo(run_dir=run_dir, config=config, summary=summary, model=model, preset=preset, seed=seed,
                   data_dir=Path(data_dir or data_info.get("dir") or data_mod.default_data_dir()),
                   corpus=data_info.get("corpus", "offline"), vocab_size=int(data_info["vocab_size"]))


_DEPTH_KEY = {"bert": re.compile(r"^layers\.(\d+)\."), "t5": re.compile(r"^hf\.encoder\.block\.(\d+)\.")}


def checkpoint_depth(state: dict, model: str) -> int:
    """Blocks in a saved model (stacking grows, dropping skips: the state holds what the run ended with)."""
    found = {int(m.group(1)) for key in state if (m := _DEPTH_KEY[model].match(key))}
    if not found:
        raise RunError(f"the checkpoint holds no {model} blocks")
    return max(found) + 1


def load_pretrained(run: RunInfo):
    """The run's final model (BertMLM or T5SpanModel) with its checkpoint weights, all blocks active."""
    from ntng.models.pretraining import build_model

    state = RunDir(run.run_dir).load_checkpoint()["model"]
    model = build_model(run.model, run.preset, vocab_size=run.vocab_size, num_layers=checkpoint_depth(state, run.model))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise RunError(f"{run.run_dir}/checkpoint.pt does not fit a {run.model} at preset {run.preset.name}: "
                       f"{str(exc).splitlines()[0]}") from None
    return model


# --- encoding ---------------------------------------------------------------------------------------------

@dataclass
class Encoded:
    """A task tokenized for one model: inputs as id lists, targets as class indices or floats."""

    train_inputs: list[list[int]]
    train_targets: list
    dev_inputs: list[list[int]]
    dev_gold: list  # what the metric compares predictions with (class index, or a float for regression)
    num_classes: int  # 1 for BERT regression
    class_ids: list[list[int]] | None  # T5: each class's target token ids (label word + </s>)
    class_values: list[float] | None  # T5 regression: the value each class (bucket) stands for
    fingerprint: str  # a hash of every id and target: the floor cache key's data part


def stsb_buckets() -> list[float]:
    """T5's STS-B targets: scores rounded to 0.2 (the T5 paper's rule), 0.0 .. 5.0."""
    return [round(0.2 * k, 1) for k in range(26)]


def encode_task(task: glue.TaskData, model: str, tokenizer, recipe: FinetuneRecipe) -> Encoded:
    tokenizer.no_padding()
    tokenizer.enable_truncation(recipe.max_len)  # the post-processor's specials are counted in max_len
    train_keep = capped_indices(len(task.train_texts), recipe.max_train)
    dev_keep = capped_indices(len(task.dev_texts), recipe.max_dev)
    regression = task.labels is None

    def inputs(texts):
        if model == "bert":
            return [e.ids for e in tokenizer.encode_batch([t if len(t) > 1 else t[0] for t in texts])]
        prefix = task.name.replace("_", " ").replace("-", " ")
        joined = [f"{prefix}: " + " ".join(f"segment{i + 1}: {s}" for i, s in enumerate(t)) if len(t) > 1
                  else f"{prefix}: {t[0]}" for t in texts]
        return [e.ids for e in tokenizer.encode_batch(joined)]

    train_texts = [task.train_texts[i] for i in train_keep]
    dev_texts = [task.dev_texts[i] for i in dev_keep]
    train_labels = [task.train_labels[i] for i in train_keep]
    dev_gold = [task.dev_labels[i] for i in dev_keep]
    class_ids = class_values = None
    if model == "bert":
        num_classes = 1 if regression else len(task.labels)
        train_targets = train_labels
    else:
        if regression:
            class_values = stsb_buckets()
            words = [f"{v:.1f}" for v in class_values]
            train_targets = [int(round(v * 5)) for v in train_labels]
        else:
            words = list(task.labels)
            train_targets = train_labels
        tokenizer.no_truncation()
        class_ids = [e.ids for e in tokenizer.encode_batch(words)]
        tokenizer.enable_truncation(recipe.max_len)
        if len({tuple(ids) for ids in class_ids}) < len(class_ids):
            raise RunError(f"task {task.name}: two label words tokenize alike, so T5 cannot tell them apart")
        num_classes = len(words)
    encoded = Encoded(train_inputs=inputs(train_texts), train_targets=train_targets, dev_inputs=inputs(dev_texts),
                      dev_gold=dev_gold, num_classes=num_classes, class_ids=class_ids, class_values=class_values,
                      fingerprint="")
    digest = hashlib.sha256()
    for part in (encoded.train_inputs, encoded.train_targets, encoded.dev_inputs, encoded.dev_gold, class_ids):
        digest.update(json.dumps(part).encode())
    encoded.fingerprint = digest.hexdigest()[:16]
    return encoded


def pad(sequences: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T], attention mask [B, T]) right-padded to the longest sequence."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return ids, mask


# --- models -----------------------------------------------------------------------------------------------

class BertClassifier(nn.Module):
    """A pre-trained (or fresh) crammed BERT's encoder (final LayerNorm included) with a pooled head on [CLS]:
    dense + tanh, dropout, linear."""

    def __init__(self, mlm, num_outputs: int, dropout: float):
        super().__init__()
        self.bert = mlm  # embeddings + blocks + final norm; the tied vocabulary projection is not used downstream
        hidden, std = mlm.config.hidden, mlm.config.init_std
        self.pooler = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_outputs)
        for layer in (self.pooler, self.out):  # the encoder's own initialisation for new layers
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert.encode(input_ids, attention_mask)
        return self.out(self.dropout(torch.tanh(self.pooler(hidden[:, 0]))))


def t5_target_logprobs(model, encoded: torch.Tensor, input_mask: torch.Tensor, targets: torch.Tensor,
                       target_mask: torch.Tensor) -> torch.Tensor:
    """[B] summed log-likelihood of each (padded) target sequence given the encoder states (teacher forcing)."""
    layers = list(range(model.num_layers))
    decoded = model.decode(targets, encoded, layers, input_mask)
    if model.config.scale_decoder_outputs:
        decoded = decoded * (model.config.d_model ** -0.5)
    # the vocabulary projection and its normalisation only where a target token is (a training batch pads its
    # labels to the longest), over the contiguous last dimension: 2.7x faster rank classification than a
    # cross-entropy over the transposed [B, vocab, T] logits
    keep = target_mask.bool()
    logits = model.hf.lm_head(decoded[keep]).float()  # [tokens, vocab]
    wanted = targets[keep].unsqueeze(1)
    token_logprob = logits.gather(1, wanted).squeeze(1) - torch.logsumexp(logits, dim=1)
    rows = torch.arange(len(targets), device=targets.device).unsqueeze(1).expand_as(targets)[keep]
    return torch.zeros(len(targets), device=logits.device).index_add(0, rows, token_logprob)


def warmup_linear_decay(fraction: float, warmup: float) -> float:
    """lr multiplier at a fraction of all fine-tuning steps: 0 -> 1 over `warmup`, then linearly to 0."""
    if warmup > 0 and fraction < warmup:
        return fraction / warmup
    return max(0.0, (1.0 - fraction) / (1.0 - warmup))


# --- the fine-tuning loop ---------------------------------------------------------------------------------

@dataclass
class FitResult:
    best_dev_score: float
    best_epoch: int
    epochs: list[dict]
    wall_s: float

    def to_dict(self) -> dict:
        return asdict(self)


class _Fitter:
    """Trains one model (BERT classifier or T5) on one encoded task; `fit()` returns the per-epoch dev scores."""

    def __init__(self, model_name: str, model, encoded: Encoded, recipe: FinetuneRecipe, metric: str, seed: int,
                 device: torch.device, amp_dtype, log: Log, label: str):
        from ntng.training.optim import decay_groups

        self.model_name, self.model, self.encoded, self.recipe = model_name, model.to(device), encoded, recipe
        self.metric, self.seed, self.device, self.amp_dtype, self.log, self.label = (
            METRICS[metric], seed, device, amp_dtype, log, label)
        lr = recipe.lr if model_name == "bert" else recipe.t5_lr
        # fused: one kernel over all parameters (CPU and CUDA); the for-loop default cost ~15% of a smoke T5 step
        self.optimizer = torch.optim.AdamW(decay_groups(self.model, recipe.weight_decay), lr=lr, fused=True)
        for group in self.optimizer.param_groups:
            group["peak_lr"] = lr
        if model_name == "t5":
            self.class_ids = [torch.tensor(ids, device=device).unsqueeze(0) for ids in encoded.class_ids]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _loss(self, inputs: list[list[int]], targets: list) -> torch.Tensor:
        ids, mask = (t.to(self.device) for t in pad(inputs))
        if self.model_name == "bert":
            out = self.model(ids, mask)
            if self.encoded.num_classes == 1:  # regression
                return F.mse_loss(out.squeeze(-1).float(), torch.tensor(targets, dtype=torch.float32, device=self.device))
            return F.cross_entropy(out.float(), torch.tensor(targets, device=self.device))
        target_ids, target_mask = (t.to(self.device) for t in pad([self.encoded.class_ids[k] for k in targets]))
        encoded = self.model.encode(ids, list(range(self.model.num_layers)), mask)
        logprob = t5_target_logprobs(self.model, encoded, mask, target_ids, target_mask)
        return -logprob.sum() / target_mask.sum()  # the token-mean cross-entropy of the label words

    @torch.no_grad()
    def predict(self, inputs: list[list[int]]) -> list:
        self.model.eval()
        predictions = []
        size = self.recipe.batch_size * 2
        for start in range(0, len(inputs), size):
            ids, mask = (t.to(self.device) for t in pad(inputs[start:start + size]))
            with self._autocast():
                if self.model_name == "bert":
                    out = self.model(ids, mask).float()
                    chosen = out.squeeze(-1).tolist() if self.encoded.num_classes == 1 else out.argmax(-1).tolist()
                else:  # rank classification: every label word's log-likelihood, the best one wins
                    encoded = self.model.encode(ids, list(range(self.model.num_layers)), mask)
                    scores = torch.stack([
                        t5_target_logprobs(self.model, encoded, mask, cls.expand(len(ids), -1),
                                           torch.ones(len(ids), cls.shape[1], device=self.device))
                        for cls in self.class_ids], dim=1)
                    chosen = scores.argmax(-1).tolist()
                    if self.encoded.class_values is not None:
                        chosen = [self.encoded.class_values[k] for k in chosen]
            predictions.extend(chosen)
        self.model.train()
        return predictions

    def fit(self) -> FitResult:
        recipe, encoded = self.recipe, self.encoded
        started = time.perf_counter()
        n = len(encoded.train_inputs)
        steps_per_epoch = math.ceil(n / recipe.batch_size)
        total_steps = steps_per_epoch * recipe.epochs
        step, epochs = 0, []
        self.model.train()
        for epoch in range(1, recipe.epochs + 1):
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            losses = []
            for start in range(0, n, recipe.batch_size):
                batch = order[start:start + recipe.batch_size]
                multiplier = warmup_linear_decay(step / total_steps, recipe.warmup_fraction)
                for group in self.optimizer.param_groups:
                    group["lr"] = group["peak_lr"] * multiplier
                with self._autocast():
                    loss = self._loss([encoded.train_inputs[i] for i in batch],
                                      [encoded.train_targets[i] for i in batch])
                if not torch.isfinite(loss):
                    raise RunError(f"{self.label}: non-finite fine-tuning loss at epoch {epoch}")
                loss.backward()
                if recipe.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), recipe.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
                step += 1
            score = self.metric(self.predict(encoded.dev_inputs), encoded.dev_gold)
            epochs.append({"epoch": epoch, "dev_score": score, "train_loss": float(np.mean(losses))})
            self.log(f"{self.label} epoch {epoch}/{recipe.epochs}: dev {score:.4f}, train loss {np.mean(losses):.4f}")
        best = max(epochs, key=lambda e: e["dev_score"])  # the first of equal bests
        return FitResult(best_dev_score=best["dev_score"], best_epoch=best["epoch"], epochs=epochs,
                         wall_s=time.perf_counter() - started)


def make_downstream_model(model_name: str, backbone, encoded: Encoded, recipe: FinetuneRecipe):
    """BERT: the backbone's encoder with a pooled head (seeded by the caller); T5: the backbone itself."""
    if model_name == "bert":
        return BertClassifier(backbone, encoded.num_classes, recipe.head_dropout)
    return backbone


def fit_task(model_name: str, backbone, encoded: Encoded, recipe: FinetuneRecipe, metric: str, seed: int,
             log: Log = print, label: str = "", precision: str | None = None) -> FitResult:
    """Fine-tune `backbone` (consumed) on one encoded task; the head and data order are seeded by `seed`;
    `precision` the pre-training preset's pinned one (None follows the host)."""
    from ntng.training.device import autocast_dtype, pick_device

    torch.manual_seed(seed)
    model = make_downstream_model(model_name, backbone, encoded, recipe)
    device = pick_device()
    return _Fitter(model_name, model, encoded, recipe, metric, seed, device, autocast_dtype(device, precision), log,
                   label).fit()


# --- results ----------------------------------------------------------------------------------------------

def result_path(run_dir: Path, task: str) -> Path:
    return Path(run_dir) / "finetune" / f"{task}.json"


def is_up_to_date(path: Path, recipe: FinetuneRecipe) -> bool:
    try:
        old = read_json(path)
    except RunError:
        return False
    return (old.get("format") == FINETUNE_FORMAT and old.get("recipe") == json.loads(json.dumps(asdict(recipe)))
            and isinstance(old.get("floor"), dict) and "best_dev_score" in old)


def floor_key(run: RunInfo, depth: int, task: str, encoded: Encoded, recipe: FinetuneRecipe, precision: str) -> str:
    ident = {"format": FINETUNE_FORMAT, "model": run.model, "shape": asdict(run.preset.shape(run.model)),
             "vocab_size": run.vocab_size, "depth": depth, "task": task, "data": encoded.fingerprint,
             "recipe": asdict(recipe), "seed": run.seed, "precision": precision}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def finetune(run_dir: str | Path, tasks=None, data_dir: str | Path | None = None, log: Log = print,
             recipe: FinetuneRecipe | dict | None = None, floor_dir: str | Path | None = None) -> dict:
    """Fine-tune a complete pre-training run on `tasks` (default: the offline suite); returns {task: result},
    the content of DIR/finetune/<task>.json. `recipe` overrides the preset's FinetuneRecipe (or some fields of
    it); `floor_dir` is where random-initialisation floors are cached (default <data dir>/finetune-floors)."""
    from ntng.models.pretraining import build_model
    from ntng.training.device import autocast_dtype, pick_device

    run = inspect_run(run_dir, data_dir)
    names = check_tasks(tasks)
    base = run.preset.finetune
    if isinstance(recipe, dict):
        try:
            base = replace(base, **recipe)
        except TypeError as exc:
            raise UsageError(f"bad fine-tuning recipe: {exc}") from None
    elif recipe is not None:
        base = recipe
    check_recipe(base, run.model, run.preset)
    offline = [n for n in names if n in data_mod.TASKS]
    for name in offline:  # fail before any work when the data is not built
        path = run.data_dir / "tasks" / name
        if not path.exists():
            raise UsageError(f"no task data at {path}: run `ntng data` first")
    for name in names:
        if name in glue.BENCHMARK_TASKS:
            glue.resolve_source(glue.BENCHMARK_TASKS[name])
    floor_root = Path(floor_dir) if floor_dir is not None else run.data_dir / "finetune-floors"
    device = pick_device()
    amp = autocast_dtype(device, run.preset.precision)  # the precision the run was pre-trained in, where pinned
    precision = str(amp).replace("torch.", "") if amp else "float32"

    tokenizer = data_mod.load_tokenizer(run.model, run.preset.vocab_size, run.data_dir, run.corpus)
    pretrained = None
    results = {}
    for name in names:
        task = load_any_task(name, run.data_dir)
        task_recipe = recipe_for_suite(base, task.suite)
        out_path = result_path(run.run_dir, name)
        if is_up_to_date(out_path, task_recipe):
            log(f"{name}: up to date ({out_path})")
            results[name] = read_json(out_path)
            continue
        if pretrained is None:
            pretrained = load_pretrained(run)
        depth = pretrained.num_layers
        encoded = encode_task(task, run.model, tokenizer, task_recipe)
        log(f"{name} ({task.suite}, metric {task.metric}): {len(encoded.train_inputs)} train / "
            f"{len(encoded.dev_inputs)} dev examples, {run.model} with {depth} blocks")
        model_fit = fit_task(run.model, copy.deepcopy(pretrained), encoded, task_recipe, task.metric, run.seed,
                             log, f"{name} pre-trained", precision=run.preset.precision)

        key = floor_key(run, depth, name, encoded, task_recipe, precision)
        floor_path = floor_root / f"{run.preset.name}-{run.model}-{name}-seed{run.seed}-{key}.json"
        floor = None
        if floor_path.exists():
            try:
                floor = read_json(floor_path)
                log(f"{name} floor: cached ({floor_path})")
            except RunError:
                floor = None
        if floor is None:
            torch.manual_seed(run.seed)  # the same initialisation a pre-training run of this seed starts from
            fresh = build_model(run.model, run.preset, vocab_size=run.vocab_size, num_layers=depth)
            floor = fit_task(run.model, fresh, encoded, task_recipe, task.metric, run.seed, log,
                             f"{name} random init", precision=run.preset.precision).to_dict()
            floor_root.mkdir(parents=True, exist_ok=True)
            write_json(floor_path, floor)
        result = {
            "format": FINETUNE_FORMAT, "task": name, "suite": task.suite, "metric": task.metric,
            "best_dev_score": model_fit.best_dev_score, "best_epoch": model_fit.best_epoch,
            "epochs": model_fit.epochs,
            "floor": {k: floor[k] for k in ("best_dev_score", "best_epoch", "epochs")},
            "wall_s": model_fit.wall_s, "floor_wall_s": floor["wall_s"], "floor_cache": str(floor_path),
            "counts_toward_rst_budget": False,  # fine-tuning is reported in wall time, as in the paper
            "model": run.model, "method": run.config.get("method"), "preset": run.preset.name,
            "budget": run.config.get("budget"), "budget_rst_s": run.config.get("budget_rst_s"), "seed": run.seed,
            "num_layers": depth, "recipe": asdict(task_recipe), "precision": precision,
            "n_train": len(encoded.train_inputs), "n_dev": len(encoded.dev_inputs),
            "labels": list(task.labels) if task.labels is not None else None,
            "prediction": "pooled [CLS] head" if run.model == "bert" else "rank classification of label words",
            "source": task.info,
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(out_path, result)
        log(f"{name}: {task.metric} {result['best_dev_score']:.4f} (epoch {result['best_epoch']}) vs random-init "
            f"floor {result['floor']['best_dev_score']:.4f}; {result['wall_s']:.1f} s wall -> {out_path}")
        results[name] = result
    return results


def results_table(results: dict) -> list[dict]:
    """One row per task, for printing or a DataFrame."""
    return [{"task": r["task"], "suite": r["suite"], "metric": r["metric"], "pretrained": r["best_dev_score"],
             "best_epoch": r["best_epoch"], "random_init_floor": r["floor"]["best_dev_score"],
             "wall_s": r["wall_s"], "floor_wall_s": r["floor_wall_s"]} for r in results.values()]
