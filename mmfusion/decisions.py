"""From logits to a decision, the same in every inference path: temperature scaling, then the decision threshold.

Copied next to every checkpoint (remote code, imported by the config and the pipeline), so it imports numpy only.
The config carries the two numbers (`MMFusionConfig.calibration_temperature`, `MMFusionConfig.decision_threshold`, both fitted
on the validation split by train.py); `mmfusion.evaluation.predictions` (the predictor, ONNX included, train.py, the
app) and the `image-text-classification` pipeline apply them with the functions below.

- **Temperature** `T > 0`: probabilities are `softmax(logits / T)` (sigmoid for multi-label models). One scalar for
  all classes, so the predicted class (argmax) never changes; only how confident the scores are.
- **Decision threshold**: `None` decides by argmax. For two classes, one number `t` in [0, 1]: the positive class
  (class id 1) is predicted when its probability is at least `t`. For more classes, one threshold per class (one vs
  rest): the class with the largest `probability / threshold` is predicted, which for two classes is exactly the
  rule `p_1 >= t` with `t_0 = 1 - t`.
- **Multi-label** models (`problem_type="multi_label_classification"`, independent sigmoids): every label whose
  probability reaches its threshold is predicted, none or several. The threshold is one number for every label or
  one per label (in [0, 1]; 0 predicts that label always); `None` means 0.5 for every label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def check_temperature(temperature) -> float:
    """The temperature as a float; refused unless finite and > 0."""
    try:
        value = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return value


MULTI_LABEL = "multi_label_classification"
DEFAULT_MULTI_LABEL_THRESHOLD = 0.5


def is_multi_label(config) -> bool:
    """Whether a model config (or its `problem_type` string) is multi-label."""
    problem_type = config if isinstance(config, str) or config is None else getattr(config, "problem_type", None)
    return problem_type == MULTI_LABEL


def check_decision_threshold(threshold, num_labels: int | None = None, *, multi_label: bool = False):
    """A decision threshold as stored in the config: `None`, a float in [0, 1] (two classes) or one float in (0, 1]
    per class (more classes). Multi-label: a float in [0, 1] (every label) or one float in [0, 1] per label, kept as
    given. Anything else is refused with a message saying what is allowed."""
    if threshold is None:
        return None
    if multi_label:
        if isinstance(threshold, (list, tuple, np.ndarray)):
            values = [_unit_interval(value, "each per-label decision threshold") for value in threshold]
            if num_labels is not None and len(values) != num_labels:
                raise ValueError(f"decision_threshold: {len(values)} per-label thresholds for {num_labels} labels.")
            return values
        return _unit_interval(threshold, "decision_threshold")
    if isinstance(threshold, (list, tuple, np.ndarray)):
        values = [_unit_interval(value, "each per-class decision threshold") for value in threshold]
        if num_labels is not None and len(values) != num_labels:
            raise ValueError(f"decision_threshold: {len(values)} per-class thresholds for {num_labels} classes.")
        if any(value == 0 for value in values):
            raise ValueError("per-class decision thresholds must be > 0 (a class at 0 would always be predicted).")
        if num_labels == 2:  # two classes take the threshold of the positive class
            return values[1]
        return values
    value = _unit_interval(threshold, "decision_threshold")
    if num_labels is not None and num_labels > 2:
        raise ValueError(
            f"decision_threshold: one number is for two classes; this model has {num_labels}, give one threshold "
            "per class (one vs rest)."
        )
    return value


def _unit_interval(value, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise ValueError(f"{what} must be in [0, 1] (it is compared with a probability), got {value!r}")
    return number


def scaled_logits(logits, temperature: float = 1.0) -> np.ndarray:
    """`logits / temperature` as float64."""
    return np.asarray(logits, dtype=np.float64) / check_temperature(temperature)


def label_thresholds(threshold, num_labels: int) -> np.ndarray:
    """A multi-label model's threshold per label, `(num_labels,)` float64 (0.5 each for `None`)."""
    threshold = check_decision_threshold(threshold, num_labels, multi_label=True)
    if threshold is None:
        threshold = DEFAULT_MULTI_LABEL_THRESHOLD
    return np.broadcast_to(np.asarray(threshold, dtype=np.float64), (num_labels,)).copy()


def decide(probabilities, threshold=None, *, multi_label: bool = False) -> np.ndarray:
    """Predicted class ids for `(num_examples, num_classes)` probabilities (see the module docstring); multi-label:
    an `(num_examples, num_labels)` 0/1 int array, 1 where the label's probability reaches its threshold."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 1:
        return decide(probabilities[None, :], threshold, multi_label=multi_label)[0]
    if multi_label:
        return (probabilities >= label_thresholds(threshold, probabilities.shape[-1])).astype(np.int64)
    threshold = check_decision_threshold(threshold, probabilities.shape[-1])
    if threshold is None:
        return probabilities.argmax(axis=-1)
    if isinstance(threshold, float):
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return (probabilities / np.asarray(threshold, dtype=np.float64)).argmax(axis=-1)


def decision_order(probabilities: Sequence[float], threshold=None, *, multi_label: bool = False) -> list[int]:
    """Class ids of one example, the decided class first, then the others by decreasing probability. Multi-label:
    the labels predicted first, then the others, each group by decreasing probability."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if multi_label:
        selected = decide(probabilities, threshold, multi_label=True)
        return sorted(range(len(probabilities)), key=lambda i: (-selected[i], -probabilities[i]))
    decided = int(decide(probabilities, threshold))
    rest = sorted((i for i in range(len(probabilities)) if i != decided), key=lambda i: -probabilities[i])
    return [decided, *rest]


__all__ = [
    "DEFAULT_MULTI_LABEL_THRESHOLD",
    "MULTI_LABEL",
    "check_decision_threshold",
    "check_temperature",
    "decide",
    "decision_order",
    "is_multi_label",
    "label_thresholds",
    "scaled_logits",
]
