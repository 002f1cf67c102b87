"""Prediction files in the Hateful Memes challenge format.

Binary tasks: `id,proba,label` where `proba` is the probability of class 1 and `label` the predicted class id.
Multi-class tasks: `id,proba_<class name>...,label`, one probability column per class, in class-id order.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def prediction_columns(label_names: Sequence[str]) -> list[str]:
    if len(label_names) == 2:
        return ["id", "proba", "label"]
    return ["id", *(f"proba_{name}" for name in label_names), "label"]


def prediction_rows(ids: Sequence[str], probabilities: np.ndarray, label_names: Sequence[str]) -> list[list]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape != (len(ids), len(label_names)):
        raise ValueError(
            f"probabilities must have shape (len(ids), num_classes) = ({len(ids)}, {len(label_names)}); "
            f"got {probabilities.shape}"
        )
    predicted = probabilities.argmax(axis=1)
    if len(label_names) == 2:
        return [[str(i), float(p[1]), int(c)] for i, p, c in zip(ids, probabilities, predicted)]
    return [[str(i), *map(float, p), int(c)] for i, p, c in zip(ids, probabilities, predicted)]


def write_predictions_csv(
    path: str | Path, ids: Sequence[str], probabilities: np.ndarray, label_names: Sequence[str]
) -> Path:
    """Write one row per example; `probabilities` is (num_examples, num_classes) softmax output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(prediction_columns(label_names))
        writer.writerows(prediction_rows(ids, probabilities, label_names))
    return path
