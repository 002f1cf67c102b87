"""Classification metrics for image+text classifiers, computed with scikit-learn (works offline).

Binary tasks (hateful-meme detection) report `accuracy`, `auroc` (on P(class 1)), and `f1`/`precision`/`recall` of
class 1. Multi-class tasks (3-class sentiment) report `accuracy`, `macro_f1` and per-class `precision_<name>`,
`recall_<name>`, `f1_<name>`. Multi-label tasks (MAMI sub-task B: independent sigmoids, labels multi-hot) report
`subset_accuracy` (every label of a row right), `micro_f1`, `macro_f1`, `micro_auroc`, `macro_auroc` (mean of the
per-label AUROCs that are defined) and per label `f1_<name>`, `precision_<name>`, `recall_<name>`, `auroc_<name>`;
labels are decided with the per-label thresholds (0.5 without). Rows whose label is negative (-1: unlabeled) are
left out everywhere.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

from ..decisions import decide, label_thresholds
from .predictions import multi_hot, probabilities_from_logits

BINARY_METRICS = ("accuracy", "auroc", "f1", "precision", "recall")
MULTICLASS_METRICS = ("accuracy", "macro_f1")
MULTILABEL_METRICS = ("subset_accuracy", "micro_f1", "macro_f1", "micro_auroc", "macro_auroc")
RANDOM_BASELINE_DRAWS = 10


def metric_key(label_name: str) -> str:
    """A class name as it appears in metric keys: surrounding space stripped, inner whitespace runs as `_`."""
    return re.sub(r"\s+", "_", str(label_name).strip())


def best_model_metric(num_labels: int, multi_label: bool = False) -> str:
    """The Trainer's `metric_for_best_model` (greater is better): `"auroc"` for 2 classes, `"macro_f1"` otherwise;
    `"macro_auroc"` for multi-label models (threshold-free: the per-label thresholds are chosen after training)."""
    if multi_label:
        if num_labels < 1:
            raise ValueError(f"A multi-label classifier needs at least 1 label, got num_labels={num_labels}.")
        return "macro_auroc"
    if num_labels < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got num_labels={num_labels}.")
    return "auroc" if num_labels == 2 else "macro_f1"


def _labeled_multi_label(probabilities, labels, label_names):
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_labels = len(label_names)
    labels = (
        np.asarray(labels) if isinstance(labels, np.ndarray) and labels.ndim == 2 else multi_hot(labels, num_labels)
    )
    labels = labels.astype(np.int64)
    if probabilities.ndim != 2 or probabilities.shape != labels.shape or labels.shape[1] != num_labels:
        raise ValueError(
            f"probabilities and multi-hot labels must both have shape (num_examples, num_labels) = "
            f"({labels.shape[0]}, {num_labels}); got {probabilities.shape} and {labels.shape}"
        )
    keep = (labels >= 0).all(axis=1)
    if not keep.any():
        raise ValueError("No labeled rows: metrics need at least one labeled example.")
    return probabilities[keep], labels[keep]


def _auroc(positives: np.ndarray, scores: np.ndarray) -> float:
    """AUROC, NaN where undefined (a single class among the rows)."""
    if np.unique(positives).size < 2:
        return math.nan
    return float(roc_auc_score(positives, scores))


def multi_label_per_label_table(
    probabilities: np.ndarray, labels, label_names: Sequence[str], threshold=None
) -> list[dict]:
    """One row per label of a multi-label model: `label`, `precision`, `recall`, `f1`, `auroc` (NaN where
    undefined), `threshold`, `support` (labeled rows with the label), `predicted`, `tp`, `fp`, `fn`."""
    probabilities, labels = _labeled_multi_label(probabilities, labels, label_names)
    thresholds = label_thresholds(threshold, len(label_names))
    predicted = decide(probabilities, thresholds, multi_label=True)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, average=None, zero_division=0)
    return [
        {
            "label": str(name),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "auroc": _auroc(labels[:, i], probabilities[:, i]),
            "threshold": float(thresholds[i]),
            "support": int(support[i]),
            "predicted": int(predicted[:, i].sum()),
            "tp": int((predicted[:, i] & labels[:, i]).sum()),
            "fp": int((predicted[:, i] & (1 - labels[:, i])).sum()),
            "fn": int(((1 - predicted[:, i]) & labels[:, i]).sum()),
        }
        for i, name in enumerate(label_names)
    ]


def multi_label_metrics(probabilities: np.ndarray, labels, label_names: Sequence[str], threshold=None) -> dict:
    """Metrics of a multi-label model (see the module docstring): `probabilities` (N, L) sigmoids, `labels` multi-hot
    (N, L) (a row of -1: unlabeled, left out) or lists of label ids (`None`: unlabeled); labels decided with
    `threshold` (one per label or one for all; `None`: 0.5). Micro/macro AUROC are NaN where undefined."""
    probabilities, labels = _labeled_multi_label(probabilities, labels, label_names)
    predicted = decide(probabilities, threshold, multi_label=True)
    metrics = {"subset_accuracy": float((predicted == labels).all(axis=1).mean())}
    for average in ("micro", "macro"):
        precision, recall, f1, _ = precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)
        metrics[f"{average}_f1"] = float(f1)
        metrics[f"{average}_precision"] = float(precision)
        metrics[f"{average}_recall"] = float(recall)
    metrics["micro_auroc"] = _auroc(labels.reshape(-1), probabilities.reshape(-1))
    per_label = multi_label_per_label_table(probabilities, labels, label_names, threshold)
    defined = [row["auroc"] for row in per_label if math.isfinite(row["auroc"])]
    metrics["macro_auroc"] = float(np.mean(defined)) if defined else math.nan
    for row in per_label:
        key = metric_key(row["label"])
        for name in ("f1", "precision", "recall", "auroc"):
            metrics[f"{name}_{key}"] = row[name]
    return metrics


def _labeled(probabilities: np.ndarray, labels: np.ndarray, label_names: Sequence[str]):
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    num_classes = len(label_names)
    if probabilities.ndim != 2 or probabilities.shape != (labels.shape[0], num_classes):
        raise ValueError(
            f"probabilities must have shape (num_examples, num_classes) = ({labels.shape[0]}, {num_classes}); "
            f"got {probabilities.shape}"
        )
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got {list(label_names)}")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"Label {int(labels.max())} is out of range for {num_classes} classes {list(label_names)}")
    keep = labels >= 0
    if not keep.any():
        raise ValueError("No labeled rows (every label is < 0): metrics need at least one labeled example.")
    return probabilities[keep], labels[keep]


def classification_metrics(
    probabilities: np.ndarray, labels: np.ndarray, label_names: Sequence[str]
) -> dict[str, float]:
    """Metrics of `probabilities` (N, C) against `labels` (N,); rows with label < 0 are excluded.

    Predicted class = argmax of the probabilities. Binary (C == 2): `accuracy`, `auroc` (`roc_auc_score` on the
    probability of class 1; **NaN** when the labeled rows hold a single class, where AUROC is undefined),
    `f1`, `precision`, `recall` with class 1 as the positive class (0.0 where undefined, e.g. nothing predicted
    positive). Multi-class: `accuracy`, `macro_f1` (unweighted mean F1 over the classes present in the labels or
    the predictions), and `precision_<name>`, `recall_<name>`, `f1_<name>` for every class (0.0 where undefined),
    `<name>` being `metric_key(name)`. Raises `ValueError` when no row is labeled. Values are Python floats.
    """
    probabilities, labels = _labeled(probabilities, labels, label_names)
    predicted = probabilities.argmax(axis=1)
    metrics = {"accuracy": float(accuracy_score(labels, predicted))}
    if len(label_names) == 2:
        if np.unique(labels).size < 2:
            metrics["auroc"] = math.nan
        else:
            metrics["auroc"] = float(roc_auc_score(labels, probabilities[:, 1]))
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predicted, average="binary", pos_label=1, zero_division=0
        )
        metrics.update(f1=float(f1), precision=float(precision), recall=float(recall))
        return metrics
    metrics["macro_f1"] = float(f1_score(labels, predicted, average="macro", zero_division=0))
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, labels=list(range(len(label_names))), average=None, zero_division=0
    )
    for index, name in enumerate(label_names):
        key = metric_key(name)
        metrics[f"precision_{key}"] = float(precision[index])
        metrics[f"recall_{key}"] = float(recall[index])
        metrics[f"f1_{key}"] = float(f1[index])
    return metrics


def per_class_table(probabilities: np.ndarray, labels: np.ndarray, label_names: Sequence[str]) -> list[dict]:
    """One row per class: `label`, `precision`, `recall`, `f1`, `support` (labeled rows only)."""
    probabilities, labels = _labeled(probabilities, labels, label_names)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, probabilities.argmax(axis=1), labels=list(range(len(label_names))), average=None, zero_division=0
    )
    return [
        {
            "label": str(name),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(label_names)
    ]


def baseline_metrics(
    labels: np.ndarray, label_names: Sequence[str], seed: int = 0, num_draws: int = RANDOM_BASELINE_DRAWS
) -> dict[str, float]:
    """What guessing scores on these labels (rows with label < 0 excluded).

    `random_accuracy`: accuracy of uniformly random class guesses, as in the notebook's baseline, averaged over
    `num_draws` draws from `numpy.random.default_rng(seed)` (deterministic for a seed; close to 1/C).
    `majority_accuracy`: accuracy of always predicting the most frequent class.
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    labels = labels[labels >= 0]
    num_classes = len(label_names)
    if labels.size == 0:
        raise ValueError("No labeled rows (every label is < 0): baselines need at least one labeled example.")
    if labels.max() >= num_classes:
        raise ValueError(f"Label {int(labels.max())} is out of range for {num_classes} classes {list(label_names)}")
    rng = np.random.default_rng(seed)
    guesses = rng.integers(0, num_classes, size=(num_draws, labels.size))
    counts = np.bincount(labels, minlength=num_classes)
    return {
        "random_accuracy": float((guesses == labels).mean()),
        "majority_accuracy": float(counts.max() / labels.size),
    }


def multi_label_baselines(labels, label_names: Sequence[str], seed: int = 0, num_draws: int = RANDOM_BASELINE_DRAWS):
    """What guessing scores on multi-label data: `random_macro_f1` (each label flagged at random with probability
    1/2, over `num_draws` draws), `all_labels_macro_f1` (every label flagged on every row) and
    `majority_subset_accuracy` (always predicting the most frequent label set)."""
    labels = (
        np.asarray(labels)
        if isinstance(labels, np.ndarray) and labels.ndim == 2
        else multi_hot(labels, len(label_names))
    )
    labels = labels[(labels >= 0).all(axis=1)]
    if labels.shape[0] == 0:
        raise ValueError("No labeled rows: baselines need at least one labeled example.")
    rng = np.random.default_rng(seed)
    random_f1 = [
        f1_score(labels, rng.integers(0, 2, size=labels.shape), average="macro", zero_division=0)
        for _ in range(num_draws)
    ]
    _, counts = np.unique(labels, axis=0, return_counts=True)
    return {
        "random_macro_f1": float(np.mean(random_f1)),
        "all_labels_macro_f1": float(f1_score(labels, np.ones_like(labels), average="macro", zero_division=0)),
        "majority_subset_accuracy": float(counts.max() / labels.shape[0]),
    }


def make_compute_metrics(label_names: Sequence[str], multi_label: bool = False) -> Callable:
    """A `compute_metrics` for `transformers.Trainer`: logits -> softmax -> `classification_metrics` (multi-label:
    sigmoid -> `multi_label_metrics` at 0.5 per label, the per-label thresholds being chosen after training).

    Accepts the `EvalPrediction` the Trainer passes (predictions may be a tuple whose first item is the logits).
    Not for `batch_eval_metrics=True`.
    """
    label_names = list(label_names)

    def compute_metrics(eval_prediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        labels = eval_prediction.label_ids
        if isinstance(labels, (tuple, list)):
            labels = labels[0]
        if labels is None:
            raise ValueError("compute_metrics needs labels: the evaluation split has no `labels` column.")
        if multi_label:
            probabilities = probabilities_from_logits(logits, "multi_label_classification", dtype="float64")
            return multi_label_metrics(probabilities, multi_hot(np.asarray(labels), len(label_names)), label_names)
        probabilities = probabilities_from_logits(logits, dtype="float64")
        return classification_metrics(probabilities, np.asarray(labels), label_names)

    return compute_metrics


__all__ = [
    "BINARY_METRICS",
    "MULTICLASS_METRICS",
    "MULTILABEL_METRICS",
    "baseline_metrics",
    "best_model_metric",
    "classification_metrics",
    "make_compute_metrics",
    "metric_key",
    "multi_label_baselines",
    "multi_label_metrics",
    "multi_label_per_label_table",
    "per_class_table",
]
