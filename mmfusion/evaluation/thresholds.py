"""Decision thresholds chosen on a labeled split: an operating point instead of argmax.

A policy (`train.py --decision_threshold`) is a number in [0, 1] (used as is) or one of

- `max_f1`: the threshold with the highest F1 of the positive class;
- `precision=P`: the lowest threshold whose precision is at least P (the most recall at that precision);
- `recall=R`: the highest threshold whose recall is at least R (the fewest flags that catch that share);
- `fpr=F`: the lowest threshold whose false-positive rate is at most F ("flag at most 1 % of clean posts":
  `fpr=0.01`).

Two classes: the threshold is on the probability of class 1 (the positive class, e.g. `hateful`). More classes: one
threshold per class, each chosen one vs rest (see `mmfusion.decisions` for how they decide). Multi-label models: one
threshold per label, each chosen on that label's sigmoid alone (`fit_multi_label_thresholds`; train.py's default
policy for them is `max_f1`); a label the split holds no positive (or no negative) example of cannot be fitted and
keeps 0.5, which the figures record (`fitted: false`, with the reason) and the log says. Candidates are the
split's distinct scores (scikit-learn's `roc_curve`, every point kept); the threshold returned lies halfway between
the chosen score and the next lower one, so the same examples are flagged on the split and a score a hair off (ONNX
vs PyTorch rounding) does not flip. A target the split cannot meet raises `UnreachableTargetError` naming the best
value it can reach, never a silent fallback.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from ..decisions import DEFAULT_MULTI_LABEL_THRESHOLD, check_decision_threshold, decide

POLICIES = ("max_f1", "precision", "recall", "fpr")


class UnreachableTargetError(ValueError):
    """The split cannot meet the policy's target; the message names the best value it can reach."""


@dataclass(frozen=True)
class ThresholdPolicy:
    """`kind`: `"fixed"`, `"max_f1"`, `"precision"`, `"recall"` or `"fpr"`; `target`: the number (the threshold
    itself for `"fixed"`, None for `"max_f1"`)."""

    kind: str
    target: float | None = None

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"{self.target:g}"
        if self.kind == "max_f1":
            return "max_f1"
        return f"{self.kind}={self.target:g}"

    @property
    def is_fitted(self) -> bool:
        return self.kind != "fixed"


def parse_policy(value) -> ThresholdPolicy:
    """A policy from `--decision_threshold`: a number in [0, 1], `max_f1`, `precision=0.9`, `recall=0.9`,
    `fpr=0.01`. Anything else is refused, saying what is accepted."""
    if isinstance(value, ThresholdPolicy):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return ThresholdPolicy("fixed", check_decision_threshold(float(value)))
    text = str(value).strip().lower().replace(" ", "")
    accepted = "a number in [0, 1], max_f1, precision=P, recall=R or fpr=F (P, R, F in [0, 1])"
    try:
        return ThresholdPolicy("fixed", check_decision_threshold(float(text)))
    except ValueError as error:
        if re.fullmatch(r"[-+0-9.eE]+|nan|inf", text):
            raise ValueError(f"--decision_threshold {value}: {error}") from None
    if text in ("max_f1", "maxf1", "f1"):
        return ThresholdPolicy("max_f1")
    match = re.fullmatch(r"(precision|recall|fpr)[=:]([-+0-9.eE]+%?)", text)
    if not match:
        raise ValueError(f"--decision_threshold {value!r} is not a policy; expected {accepted}.")
    kind, number = match.groups()
    target = float(number[:-1]) / 100 if number.endswith("%") else float(number)
    if not 0.0 <= target <= 1.0 or (kind != "fpr" and target == 0.0):
        low = "[0, 1]" if kind == "fpr" else "(0, 1]"
        raise ValueError(f"--decision_threshold {value}: the {kind} target must be in {low}, got {target:g}.")
    return ThresholdPolicy(kind, target)


def operating_points(scores, positives) -> dict[str, np.ndarray]:
    """For each distinct score `s` (decreasing), flagging `score >= s`: `threshold`, `tp`, `fp`, `precision`,
    `recall`, `fpr`, `f1`. Needs both classes present."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    num_positive, num_negative = int(positives.sum()), int((~positives).sum())
    if num_positive == 0 or num_negative == 0:
        missing = "positive" if num_positive == 0 else "negative"
        raise UnreachableTargetError(f"the split has no {missing} examples: no operating point can be measured.")
    fpr, tpr, thresholds = roc_curve(positives, scores, drop_intermediate=False)
    keep = np.isfinite(thresholds) & (thresholds <= scores.max())  # drop the leading "flag nothing" point
    fpr, tpr, thresholds = fpr[keep], tpr[keep], thresholds[keep]
    tp, fp = np.rint(tpr * num_positive), np.rint(fpr * num_negative)
    precision = tp / np.maximum(tp + fp, 1)
    f1 = np.divide(2 * precision * tpr, precision + tpr, out=np.zeros_like(tpr), where=(precision + tpr) > 0)
    return {"threshold": thresholds, "tp": tp, "fp": fp, "precision": precision, "recall": tpr, "fpr": fpr, "f1": f1}


def point_figures(scores, positives, threshold: float) -> dict[str, float | int]:
    """Precision, recall, FPR, F1 and counts when flagging `score >= threshold`."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    flagged = scores >= threshold
    tp, fp = int((flagged & positives).sum()), int((flagged & ~positives).sum())
    fn, tn = int((~flagged & positives).sum()), int((~flagged & ~positives).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else math.nan
    fpr = fp / (fp + tn) if fp + tn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "threshold": float(threshold),
        "precision": float(precision),
        "recall": float(recall),
        "fpr": float(fpr),
        "f1": float(f1),
        "flagged": tp + fp,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _between(points: dict[str, np.ndarray], index: int) -> float:
    """Halfway between the chosen distinct score and the next lower one (0 when it is the lowest)."""
    chosen = points["threshold"][index]
    lower = points["threshold"][index + 1] if index + 1 < points["threshold"].size else 0.0
    return float((chosen + lower) / 2)


def fit_binary_threshold(scores, positives, policy) -> float:
    """The threshold on `scores` that `policy` picks (see the module docstring)."""
    policy = parse_policy(policy)
    if policy.kind == "fixed":
        return float(policy.target)
    points = operating_points(scores, positives)
    if policy.kind == "max_f1":
        return _between(points, int(np.argmax(points["f1"])))
    if policy.kind == "precision":
        meets = np.flatnonzero(points["precision"] >= policy.target - 1e-12)
        if not meets.size:
            best = int(np.argmax(points["precision"]))
            raise UnreachableTargetError(
                f"precision={policy.target:g} cannot be reached: the best achievable precision is "
                f"{points['precision'][best]:.4f} (recall {points['recall'][best]:.4f} at score "
                f">= {points['threshold'][best]:.6g}). Choose a lower target or another policy."
            )
        return _between(points, int(meets[-1]))
    if policy.kind == "recall":
        meets = np.flatnonzero(points["recall"] >= policy.target - 1e-12)
        return _between(points, int(meets[0]))  # flagging everything always reaches recall 1
    meets = np.flatnonzero(points["fpr"] <= policy.target + 1e-12)
    if not meets.size:
        raise UnreachableTargetError(
            f"fpr={policy.target:g} cannot be reached while flagging anything: the lowest achievable "
            f"false-positive rate is {points['fpr'][0]:.4f} (the top-scored examples include "
            f"{int(points['fp'][0])} negatives). Choose a higher target or another policy."
        )
    return _between(points, int(meets[-1]))


def fit_decision_threshold(probabilities, labels, policy, label_names: Sequence[str], split: str | None = None):
    """The decision threshold for a model's `probabilities` (N, C) on a labeled split, and the figures it met.

    Returns `(threshold, figures)`: a float for two classes (on class 1), one per class otherwise; `figures` holds
    the policy, the split and, per positive class, the precision/recall/FPR/F1 at the threshold on this split.
    Raises `UnreachableTargetError` when a target cannot be met (naming the best achievable value).
    """
    policy = parse_policy(policy)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    keep = labels >= 0
    probabilities, labels = probabilities[keep], labels[keep]
    classes = [1] if len(label_names) == 2 else list(range(len(label_names)))
    thresholds, per_class = [], {}
    for c in classes:
        try:
            threshold = fit_binary_threshold(probabilities[:, c], labels == c, policy)
        except UnreachableTargetError as error:
            where = f" on {split}" if split else ""
            raise UnreachableTargetError(f"class {label_names[c]!r}{where}: {error}") from None
        if len(classes) > 1 and threshold == 0.0:
            threshold = float(np.nextafter(0.0, 1.0))  # per-class thresholds must be > 0
        thresholds.append(threshold)
        per_class[str(label_names[c])] = point_figures(probabilities[:, c], labels == c, threshold)
    threshold = thresholds[0] if len(classes) == 1 else thresholds
    decided = decide(probabilities, threshold)
    figures = {
        "policy": str(policy),
        "split": split,
        "num_examples": int(labels.size),
        "accuracy": float((decided == labels).mean()) if labels.size else math.nan,
        "per_class": per_class,
    }
    if len(classes) == 1:
        figures.update({k: v for k, v in per_class[str(label_names[1])].items()})
    return threshold, figures


def fit_multi_label_thresholds(probabilities, labels, policy, label_names: Sequence[str], split: str | None = None):
    """One threshold per label of a multi-label model, each chosen by `policy` on that label's probabilities.

    `labels`: multi-hot `(N, L)` (rows with -1 unlabeled, left out). Returns `(thresholds, figures)`: a list of L
    floats, and the policy, split, subset accuracy and per label the figures at its threshold (`fitted: false` and a
    `note` for a label left at 0.5 because the split has only one class of it). Raises `UnreachableTargetError`
    (naming the label) when a target cannot be met for a label the split does hold both classes of.
    """
    policy = parse_policy(policy)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    keep = (labels >= 0).all(axis=1)
    probabilities, labels = probabilities[keep], labels[keep]
    thresholds, per_label = [], {}
    for index, name in enumerate(label_names):
        scores, positives = probabilities[:, index], labels[:, index] == 1
        note = None
        if policy.kind != "fixed" and (positives.all() or not positives.any()):
            missing = "positive" if not positives.any() else "negative"
            note = (
                f"not fitted: the split has no {missing} example of this label; kept {DEFAULT_MULTI_LABEL_THRESHOLD}"
            )
            threshold = DEFAULT_MULTI_LABEL_THRESHOLD
        else:
            try:
                threshold = fit_binary_threshold(scores, positives, policy)
            except UnreachableTargetError as error:
                where = f" on {split}" if split else ""
                raise UnreachableTargetError(f"label {name!r}{where}: {error}") from None
        thresholds.append(float(threshold))
        figures = point_figures(scores, positives, threshold)
        # undefined figures (recall of a label without positives) as None: the config is JSON
        figures = {key: None if isinstance(v, float) and math.isnan(v) else v for key, v in figures.items()}
        figures["fitted"] = note is None and policy.kind != "fixed"
        if note:
            figures["note"] = note
        per_label[str(name)] = figures
    decided = decide(probabilities, thresholds, multi_label=True)
    figures = {
        "policy": str(policy),
        "split": split,
        "num_examples": int(labels.shape[0]),
        "subset_accuracy": float((decided == labels).all(axis=1).mean()) if labels.size else math.nan,
        "per_class": per_label,
    }
    return thresholds, figures


def operating_point_report(probabilities, labels, threshold, label_names: Sequence[str]) -> dict:
    """What a stored threshold gives on a labeled split: per positive class precision/recall/FPR/F1, and accuracy."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    keep = labels >= 0
    probabilities, labels = probabilities[keep], labels[keep]
    threshold = check_decision_threshold(threshold, len(label_names))
    if threshold is None:
        return {}
    classes = [1] if len(label_names) == 2 else list(range(len(label_names)))
    values = [threshold] if len(classes) == 1 else threshold
    per_class = {
        str(label_names[c]): point_figures(probabilities[:, c], labels == c, t) for c, t in zip(classes, values)
    }
    report = {"accuracy": float((decide(probabilities, threshold) == labels).mean()), "per_class": per_class}
    if len(classes) == 1:
        report.update(per_class[str(label_names[1])])
    return report


__all__ = [
    "POLICIES",
    "ThresholdPolicy",
    "UnreachableTargetError",
    "fit_binary_threshold",
    "fit_decision_threshold",
    "fit_multi_label_thresholds",
    "operating_point_report",
    "operating_points",
    "parse_policy",
    "point_figures",
]
