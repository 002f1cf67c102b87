"""A model's predictions on one split (ids, class probabilities, true labels) and the files they are written to.

CSV files use the Hateful Memes challenge format: `id,proba,label` for two classes (`proba` = probability of class
1, `label` = predicted class id), `id,proba_<class name>...,label` otherwise. Multi-label models write
`id,proba_<label name>...,labels`, `labels` being the names of the labels predicted (each at or above its
threshold), joined by `|` (empty: no label applies). JSON files hold one record per example: the record
`MMFusionPredictor.predict` returns for one pair, plus its `id`.

Multi-label true labels are multi-hot: `(num_examples, num_labels)` 0/1, a row of -1 for an unlabeled example
(`multi_hot` turns the datasets' lists of class ids, `None` for unlabeled, into that).

Light on purpose (numpy and torch only): the predictor imports it without pulling in scikit-learn or matplotlib.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..decisions import check_decision_threshold, check_temperature, decide
from ..files import atomic_write_text

OUTPUT_FORMATS = (".csv", ".json")
LABEL_SEPARATOR = "|"  # between the predicted labels of a multi-label row in the CSV


def has_label(value) -> bool:
    """Whether a dataset row's label is there: a class id >= 0, or (multi-label) a list of class ids, empty included."""
    if value is None:
        return False
    if isinstance(value, (list, tuple, np.ndarray)):
        return True
    return int(value) >= 0


def multi_hot(labels, num_labels: int) -> np.ndarray:
    """`(len(labels), num_labels)` int64: 1 for each class id in a row's list, a row of -1 for `None` (unlabeled).
    An empty list is a labeled row where no label applies (all 0). Rows already multi-hot pass through."""
    labels = list(labels)
    result = np.zeros((len(labels), num_labels), dtype=np.int64)
    for row, value in enumerate(labels):
        if value is None:
            result[row] = -1
            continue
        value = np.asarray(value).reshape(-1)
        if value.size == num_labels and value.dtype.kind == "f":  # already a multi-hot row (the collator's floats)
            result[row] = np.where(value < 0, -1, value > 0.5)
            continue
        ids = value.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= num_labels):
            raise ValueError(f"Label ids {ids.tolist()} out of range for {num_labels} labels.")
        result[row, ids] = 1
    return result


def probabilities_from_logits(
    logits, problem_type: str | None = None, dtype: str = "float32", temperature: float = 1.0
) -> np.ndarray:
    """Class probabilities from logits: softmax over the classes, independent sigmoids for multi-label models.

    The one place every mmfusion inference path (predictor on PyTorch or ONNX Runtime, train.py, the app) turns
    logits into probabilities; `temperature` (the config's, fitted by temperature scaling) divides the logits first.
    Computed by torch in `dtype`. float32 is what predictions and reports use; `compute_metrics` asks for float64,
    where probabilities that float32 rounds to exactly 1.0 keep their order (AUROC is a ranking metric).
    """
    import torch

    logits = torch.as_tensor(np.asarray(logits), dtype=getattr(torch, dtype))
    temperature = check_temperature(temperature)
    if temperature != 1.0:
        logits = logits / temperature
    if problem_type == "multi_label_classification":
        return torch.sigmoid(logits).numpy()
    return torch.softmax(logits, dim=-1).numpy()


def config_probabilities(logits, config, temperature: float | None = None, knn_scores=None) -> np.ndarray:
    """`probabilities_from_logits` with a model config's problem type and temperature (or `temperature` instead).

    `knn_scores`: the examples' kNN scores over the model's labelled memory (`LabelledMemory.knn_scores`); given, the
    config's `prediction_mode` is applied (`mmfusion.memory.combine_probabilities`: head, kNN or their mix). Without
    them the head's probabilities are returned (what the modality ablation and training-time metrics read)."""
    if temperature is None:
        temperature = getattr(config, "calibration_temperature", 1.0)
    problem_type = getattr(config, "problem_type", None)
    head = probabilities_from_logits(logits, problem_type, temperature=temperature)
    mode = getattr(config, "prediction_mode", "head")
    if knn_scores is None or mode == "head":
        return head
    from ..memory import combine_probabilities

    multi_label = problem_type == "multi_label_classification"
    return combine_probabilities(head, knn_scores, mode, config.mix_weight, multi_label).astype(head.dtype)


def prediction_columns(label_names: Sequence[str], multi_label: bool = False) -> list[str]:
    if multi_label:
        return ["id", *(f"proba_{name}" for name in label_names), "labels"]
    if len(label_names) == 2:
        return ["id", "proba", "label"]
    return ["id", *(f"proba_{name}" for name in label_names), "label"]


def prediction_rows(
    ids: Sequence[str], probabilities: np.ndarray, label_names: Sequence[str], threshold=None, multi_label=False
) -> list[list]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape != (len(ids), len(label_names)):
        raise ValueError(
            f"probabilities must have shape (len(ids), num_classes) = ({len(ids)}, {len(label_names)}); "
            f"got {probabilities.shape}"
        )
    predicted = decide(probabilities, threshold, multi_label=multi_label)
    if multi_label:
        return [
            [str(i), *map(float, p), LABEL_SEPARATOR.join(str(n) for n, on in zip(label_names, c) if on)]
            for i, p, c in zip(ids, probabilities, predicted)
        ]
    if len(label_names) == 2:
        return [[str(i), float(p[1]), int(c)] for i, p, c in zip(ids, probabilities, predicted)]
    return [[str(i), *map(float, p), int(c)] for i, p, c in zip(ids, probabilities, predicted)]


def write_predictions_csv(
    path: str | os.PathLike,
    ids: Sequence[str],
    probabilities: np.ndarray,
    label_names: Sequence[str],
    threshold=None,
    multi_label: bool = False,
) -> Path:
    """Write the challenge-format CSV: one row per example, `probabilities` being (num_examples, num_classes); the
    `label` column is decided with `threshold` (see `mmfusion.decisions`; `None`: argmax; multi-label: the
    `labels` column)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(prediction_columns(label_names, multi_label))
    writer.writerows(prediction_rows(ids, probabilities, label_names, threshold, multi_label))
    return atomic_write_text(path, buffer.getvalue())


def prediction_record(
    probabilities: np.ndarray, label_names: Sequence[str], threshold=None, multi_label: bool = False
) -> dict[str, Any]:
    """`{"label": name, "label_id": int, "probabilities": {name: p}}` for one example's probabilities; the label is
    decided with `threshold` (see `mmfusion.decisions`; `None`: argmax). Multi-label: `{"labels": [names],
    "label_ids": [ids], "probabilities": {name: p}}`, every label at or above its threshold (0.5 for `None`), by
    decreasing probability; empty when none is."""
    if multi_label:
        selected = decide(probabilities, threshold, multi_label=True)
        ids = sorted(np.flatnonzero(selected).tolist(), key=lambda i: -float(probabilities[i]))
        return {
            "labels": [label_names[i] for i in ids],
            "label_ids": ids,
            "probabilities": {name: float(p) for name, p in zip(label_names, probabilities)},
        }
    label_id = int(decide(probabilities, threshold))
    return {
        "label": label_names[label_id],
        "label_id": label_id,
        "probabilities": {name: float(p) for name, p in zip(label_names, probabilities)},
    }


@dataclass
class Predictions:
    """Predictions for the rows of one split, in input order; what train.py reports on and the predictor returns.

    Iterating yields one record per row: `{"id", "label", "label_id", "probabilities"}` (multi-label: `{"id",
    "labels", "label_ids", "probabilities"}`).

    Attributes:
        ids (`list[str]`): example ids, in the order of the input.
        probabilities (`np.ndarray`): `(num_examples, num_labels)` class probabilities (stored as float64).
        label_names (`list[str]`): class names, in class-id order.
        true_labels (`np.ndarray`, *optional*): the input's labels, -1 for unlabeled rows (default: all unlabeled).
            Multi-label: multi-hot `(num_examples, num_labels)`, or the datasets' lists of class ids (`None`:
            unlabeled), turned multi-hot.
        texts (`list[str]`, *optional*): the captions (the report quotes them next to its most confident errors).
        split (`str`, *optional*): the split that was predicted.
        report (`mmfusion.data.LoadReport`, *optional*): the data layer's load report (rows skipped with
            `on_bad_rows="skip"`, and why).
        threshold (`float` or `list[float]`, *optional*): the decision threshold the labels are decided with (see
            `mmfusion.decisions`); default: argmax.
        logits (`np.ndarray`, *optional*): the logits before temperature scaling (the report's calibration section
            compares the scores before and after).
        multi_label (`bool`, *optional*): the model is multi-label (independent sigmoids, every label at or above
            its threshold predicted).
        neighbors (`list[list[dict]]`, *optional*): per row, the nearest labelled examples of the model's memory
            (`{"id", "label", "similarity", "caption", "image"}`, best first), when asked for; in each record.
        head_probabilities (`np.ndarray`, *optional*): the classifier head's probabilities (temperature applied) when
            `probabilities` come from another prediction mode (kNN over the labelled memory, or a mix); the report's
            calibration section measures the temperature on these.
    """

    ids: list[str]
    probabilities: np.ndarray
    label_names: list[str]
    true_labels: np.ndarray | None = None
    texts: list[str] | None = None
    split: str | None = None
    report: Any = None
    threshold: Any = None
    logits: np.ndarray | None = None
    multi_label: bool = False
    neighbors: list[list[dict]] | None = None
    head_probabilities: np.ndarray | None = None

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        self.label_names = [str(name) for name in self.label_names]
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
        count = len(self.ids)
        if self.probabilities.shape != (count, len(self.label_names)):
            raise ValueError(
                f"Predictions: {count} ids and {len(self.label_names)} classes, but probabilities of shape "
                f"{self.probabilities.shape}; expected ({count}, {len(self.label_names)})."
            )
        if self.multi_label:
            labels = [None] * count if self.true_labels is None else self.true_labels
            if not (isinstance(labels, np.ndarray) and labels.ndim == 2):
                labels = multi_hot(labels, len(self.label_names))
            self.true_labels = np.asarray(labels).astype(np.int64)
        elif self.true_labels is None:
            self.true_labels = np.full(count, -1, dtype=np.int64)
        else:
            self.true_labels = np.asarray(self.true_labels).reshape(-1).astype(np.int64)
        if self.true_labels.shape[0] != count:
            raise ValueError(f"Predictions: {count} ids but {self.true_labels.shape[0]} true labels.")
        self.texts = [""] * count if self.texts is None else ["" if t is None else str(t) for t in self.texts]
        if len(self.texts) != count:
            raise ValueError(f"Predictions: {count} ids but {len(self.texts)} texts.")
        self.threshold = check_decision_threshold(self.threshold, len(self.label_names), multi_label=self.multi_label)
        if self.head_probabilities is not None:
            self.head_probabilities = np.asarray(self.head_probabilities, dtype=np.float64)
        if self.logits is not None:
            self.logits = np.asarray(self.logits, dtype=np.float64)
            if self.logits.shape != self.probabilities.shape:
                raise ValueError(
                    f"Predictions: logits of shape {self.logits.shape}, probabilities {self.probabilities.shape}."
                )

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = {
            "id": self.ids[index],
            **prediction_record(self.probabilities[index], self.label_names, self.threshold, self.multi_label),
        }
        if self.neighbors is not None:
            record["neighbors"] = self.neighbors[index]
        return record

    @property
    def label_ids(self) -> np.ndarray:
        """Predicted class ids (decided with `threshold`); multi-label: `(num_examples, num_labels)` 0/1."""
        return decide(self.probabilities, self.threshold, multi_label=self.multi_label)

    @property
    def labels(self) -> list:
        """Predicted class names; multi-label: a list of names per row."""
        if self.multi_label:
            return [[self.label_names[i] for i in np.flatnonzero(row)] for row in self.label_ids]
        return [self.label_names[i] for i in self.label_ids]

    @property
    def labeled(self) -> np.ndarray:
        """Boolean mask of the rows that have a true label."""
        if self.multi_label:
            return (self.true_labels >= 0).all(axis=1)
        return self.true_labels >= 0

    @property
    def skipped_ids(self) -> list[str]:
        """Ids of the input rows left out as bad rows (`on_bad_rows="skip"`)."""
        return list(self.report.skipped_ids) if self.report is not None else []

    def rows(self) -> list[list]:
        """Rows of the challenge-format table (header: `columns()`)."""
        return prediction_rows(self.ids, self.probabilities, self.label_names, self.threshold, self.multi_label)

    def columns(self) -> list[str]:
        """`id,proba,label` for two classes, `id,proba_<name>...,label` otherwise (multi-label: `...,labels`)."""
        return prediction_columns(self.label_names, self.multi_label)

    def to_pandas(self):
        """The challenge-format table as a `pandas.DataFrame`."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=self.columns())

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the challenge-format CSV."""
        return write_predictions_csv(
            path, self.ids, self.probabilities, self.label_names, self.threshold, self.multi_label
        )

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write a JSON list of records (`id`, `label`, `label_id`, `probabilities`)."""
        return atomic_write_text(path, json.dumps(list(self), indent=2) + "\n")

    def save(self, path: str | os.PathLike) -> Path:
        """Write `.csv` (challenge format) or `.json` (records), chosen by the file extension."""
        suffix = Path(path).suffix.lower()
        if suffix == ".csv":
            return self.to_csv(path)
        if suffix == ".json":
            return self.to_json(path)
        raise ValueError(f"Unsupported output file {path}: use one of {', '.join(OUTPUT_FORMATS)}.")


# The name the predictor's results went by before predictions had one home; kept for users who import it.
FilePredictions = Predictions

__all__ = [
    "FilePredictions",
    "LABEL_SEPARATOR",
    "config_probabilities",
    "has_label",
    "multi_hot",
    "OUTPUT_FORMATS",
    "Predictions",
    "prediction_columns",
    "prediction_record",
    "prediction_rows",
    "probabilities_from_logits",
    "write_predictions_csv",
]
