"""Downstream metrics as pure functions of (predictions, gold labels); higher is better for all of them.

Which task uses which (ntng.experiments.downstream, ntng.data.glue):
- accuracy: balanced classes (sotu_party; SST-2, MNLI, QNLI, RTE; BoolQ, COPA, RTE, WiC, WSC).
- matthews_corr (MCC): imbalanced binary tasks, where a constant prediction must score 0 (spam_ham; CoLA, as GLUE).
- macro_f1: imbalanced multi-class tasks, where every class should count the same (brown_genre; CB, as SuperGLUE).
- binary_f1: F1 of the positive class (MRPC, QQP as GLUE; MultiRC's F1a over answer options).
- pearson: regression (STS-B).
Undefined cases (a constant prediction, an empty class) score 0, the chance level of the chance-corrected metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _pair(predictions: Sequence, gold: Sequence) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(predictions), np.asarray(gold)
    if pred.shape != true.shape or pred.ndim != 1 or len(pred) == 0:
        raise ValueError(f"need two equally long, non-empty 1-d sequences, got shapes {pred.shape}, {true.shape}")
    return pred, true


def accuracy(predictions: Sequence[int], gold: Sequence[int]) -> float:
    pred, true = _pair(predictions, gold)
    return float(np.mean(pred == true))


def _f1(pred: np.ndarray, true: np.ndarray, label) -> float:
    tp = int(np.sum((pred == label) & (true == label)))
    fp = int(np.sum((pred == label) & (true != label)))
    fn = int(np.sum((pred != label) & (true == label)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def binary_f1(predictions: Sequence[int], gold: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class: 2 TP / (2 TP + FP + FN)."""
    pred, true = _pair(predictions, gold)
    return _f1(pred, true, positive)


def macro_f1(predictions: Sequence[int], gold: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in the gold labels or the predictions."""
    pred, true = _pair(predictions, gold)
    labels = np.union1d(np.unique(pred), np.unique(true))
    return float(np.mean([_f1(pred, true, label) for label in labels]))


def matthews_corr(predictions: Sequence[int], gold: Sequence[int]) -> float:
    """Matthews correlation coefficient, multi-class form (Gorodkin 2004) from the confusion matrix C:
    (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2)), c = correct, s = total,
    p_k / t_k = times class k is predicted / true. Binary: (TP TN - FP FN) / sqrt(...). 0 when undefined."""
    pred, true = _pair(predictions, gold)
    labels = np.union1d(np.unique(pred), np.unique(true))
    index = {label: i for i, label in enumerate(labels.tolist())}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.float64)
    for p, t in zip(pred.tolist(), true.tolist(), strict=True):
        confusion[index[t], index[p]] += 1
    s, c = confusion.sum(), np.trace(confusion)
    p_k, t_k = confusion.sum(axis=0), confusion.sum(axis=1)
    denominator = (s * s - p_k @ p_k) * (s * s - t_k @ t_k)
    return 0.0 if denominator == 0 else float((c * s - p_k @ t_k) / math.sqrt(denominator))


def pearson(predictions: Sequence[float], gold: Sequence[float]) -> float:
    """Pearson correlation; 0 when either side is constant."""
    pred, true = _pair(predictions, gold)
    pred, true = pred.astype(np.float64) - pred.mean(), true.astype(np.float64) - true.mean()
    denominator = math.sqrt(float(pred @ pred) * float(true @ true))
    return 0.0 if denominator == 0 else float(pred @ true) / denominator


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1, "mcc": matthews_corr, "f1": binary_f1, "pearson": pearson}
