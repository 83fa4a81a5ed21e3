"""Downstream tasks as one shape (`TaskData`): GLUE and SuperGLUE through `datasets`, by name.

The paper fine-tunes BERT on GLUE (CoLA, MNLI-m/mm, MRPC, QNLI, QQP, RTE, SST-2, STS-B) and SuperGLUE. Each task
here names its hub dataset and config, how its fields make one or two text segments, its label words (the T5
targets; None for regression) and its metric (see ntng.experiments.metrics for why each). SuperGLUE's classification tasks are
all here; ReCoRD (answers are entity spans, not labels) and the diagnostics (AX-b, AX-g: test sets only) are not.

Loading needs the hub, or a local copy of the hub repositories: `$NTNG_HUB_MIRROR/<hub id>/` laid out like the
repository (its README.md with the `configs:` header and the parquet files), which is also how the tests stand in
for the hub. With HF_DATASETS_OFFLINE=1 and no mirror, a GLUE task is refused in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ntng.errors import RunError, UsageError

MIRROR_ENV = "NTNG_HUB_MIRROR"
GLUE_DATASET = "nyu-mll/glue"
SUPERGLUE_DATASET = "aps/super_glue"  # the parquet copy of super_glue (the original is a loading script)
BINARY = ("no", "yes")  # label words of the False/True tasks


@dataclass(frozen=True)
class BenchmarkTask:
    """A GLUE or SuperGLUE task: where it lives on the hub and how its rows become (segments, label)."""

    name: str  # ntng's name for it (what --task takes)
    suite: str  # "glue" | "superglue"
    config: str  # the dataset config on the hub
    segments: tuple[str, ...]  # one or two str.format templates over a row's fields
    labels: tuple[str, ...] | None  # label words in label-id order (T5's targets); None: regression
    metric: str  # a key of ntng.experiments.metrics.METRICS
    dev_split: str = "validation"
    train_split: str = "train"

    @property
    def dataset(self) -> str:
        return GLUE_DATASET if self.suite == "glue" else SUPERGLUE_DATASET


@dataclass
class TaskData:
    """A labelled task ready for fine-tuning, whatever its source."""

    name: str
    suite: str  # "offline stand-in for GLUE" | "glue" | "superglue"
    metric: str
    labels: tuple[str, ...] | None  # label words; None: regression (float targets)
    train_texts: list[tuple[str, ...]]  # one or two segments per example
    train_labels: list
    dev_texts: list[tuple[str, ...]]
    dev_labels: list
    info: dict = field(default_factory=dict)  # where it came from


def _glue(name, config, segments, labels, metric, **kw):
    return BenchmarkTask(name, "glue", config, segments, labels, metric, **kw)


def _superglue(name, config, segments, labels, metric, **kw):
    return BenchmarkTask(name, "superglue", config, segments, labels, metric, **kw)


PAIR = ("{sentence1}", "{sentence2}")
NLI = ("{premise}", "{hypothesis}")
BENCHMARK_TASKS: dict[str, BenchmarkTask] = {t.name: t for t in (
    _glue("cola", "cola", ("{sentence}",), ("unacceptable", "acceptable"), "mcc"),
    _glue("sst2", "sst2", ("{sentence}",), ("negative", "positive"), "accuracy"),
    _glue("mrpc", "mrpc", PAIR, ("not equivalent", "equivalent"), "f1"),
    _glue("qqp", "qqp", ("{question1}", "{question2}"), ("not duplicate", "duplicate"), "f1"),
    _glue("stsb", "stsb", PAIR, None, "pearson"),
    _glue("mnli-m", "mnli", NLI, ("entailment", "neutral", "contradiction"), "accuracy",
          dev_split="validation_matched"),
    _glue("mnli-mm", "mnli", NLI, ("entailment", "neutral", "contradiction"), "accuracy",
          dev_split="validation_mismatched"),
    _glue("qnli", "qnli", ("{question}", "{sentence}"), ("entailment", "not entailment"), "accuracy"),
    _glue("rte", "rte", PAIR, ("entailment", "not entailment"), "accuracy"),
    _superglue("boolq", "boolq", ("{question}?", "{passage}"), BINARY, "accuracy"),
    _superglue("cb", "cb", NLI, ("entailment", "contradiction", "neutral"), "macro_f1"),
    _superglue("copa", "copa", ("{premise} What was the {question}?", "{choice1} or {choice2}"),
               ("first", "second"), "accuracy"),
    _superglue("multirc", "multirc", ("{paragraph}", "{question} {answer}"), BINARY, "f1"),
    _superglue("superglue-rte", "rte", NLI, ("entailment", "not entailment"), "accuracy"),
    _superglue("wic", "wic", ("{word}: {sentence1}", "{word}: {sentence2}"), BINARY, "accuracy"),
    _superglue("wsc", "wsc.fixed", ("{text}", 'Does "{span2_text}" refer to "{span1_text}"?'), BINARY,
               "accuracy"),
)}
GLUE_TASKS = tuple(n for n, t in BENCHMARK_TASKS.items() if t.suite == "glue")
SUPERGLUE_TASKS = tuple(n for n, t in BENCHMARK_TASKS.items() if t.suite == "superglue")


def resolve_source(task: BenchmarkTask, mirror: str | Path | None = None) -> str:
    """The hub id, or the local mirror's copy of it; refuses (one line) when offline without a mirror."""
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV)
    if mirror:
        local = Path(mirror) / task.dataset
        if not local.is_dir():
            raise UsageError(f"task {task.name}: no {task.dataset} under {mirror} (the local hub mirror)")
        return str(local)
    if os.environ.get("HF_DATASETS_OFFLINE") == "1":
        raise UsageError(f"task {task.name} loads {task.dataset} from the hub, but HF_DATASETS_OFFLINE=1; set "
                         f"HF_DATASETS_OFFLINE=0 on a machine with network access, or point {MIRROR_ENV} at a "
                         "local copy laid out like the hub")
    return task.dataset


def _rows_to_examples(task: BenchmarkTask, rows, split: str) -> tuple[list[tuple[str, ...]], list]:
    texts, labels = [], []
    for row in rows:
        label = row["label"]
        if task.labels is not None and not 0 <= label < len(task.labels):
            continue  # unlabelled rows (-1, as in the hidden test sets) train nothing
        try:
            texts.append(tuple(template.format_map(row) for template in task.segments))
        except KeyError as exc:
            raise RunError(f"{task.dataset} ({task.config}) {split}: rows have no field {exc}") from None
        labels.append(float(label) if task.labels is None else int(label))
    return texts, labels


def load_benchmark_task(name: str, mirror: str | Path | None = None) -> TaskData:
    """A GLUE/SuperGLUE task's train and dev splits through `datasets.load_dataset`."""
    if name not in BENCHMARK_TASKS:
        raise UsageError(f"unknown task {name!r} (GLUE: {', '.join(GLUE_TASKS)}; SuperGLUE: "
                         f"{', '.join(SUPERGLUE_TASKS)})")
    task = BENCHMARK_TASKS[name]
    source = resolve_source(task, mirror)
    import datasets

    try:
        train, dev = datasets.load_dataset(source, task.config, split=[task.train_split, task.dev_split])
    except Exception as exc:  # the hub's and the loaders' errors are many; the user needs one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunError(f"cannot load {task.dataset} ({task.config}) from {source}: {reason}") from exc
    train_texts, train_labels = _rows_to_examples(task, train, task.train_split)
    dev_texts, dev_labels = _rows_to_examples(task, dev, task.dev_split)
    if not train_texts or not dev_texts:
        raise RunError(f"{task.dataset} ({task.config}) has no labelled {'train' if not train_texts else 'dev'} rows")
    return TaskData(name=name, suite=task.suite, metric=task.metric, labels=task.labels, train_texts=train_texts,
                    train_labels=train_labels, dev_texts=dev_texts, dev_labels=dev_labels,
                    info={"dataset": task.dataset, "config": task.config, "source": source,
                          "dev_split": task.dev_split})
