"""Predictions for a whole file or split: ids, class probabilities, predicted labels, and how to write them out.

CSV files use the Hateful Memes challenge format (`mmfusion.predictions`); JSON files hold one record per example,
the same record `MMFusionPredictor.predict` returns for one pair, plus its `id`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..predictions import prediction_columns, prediction_rows, write_predictions_csv

OUTPUT_FORMATS = (".csv", ".json")


def prediction_record(probabilities: np.ndarray, label_names: Sequence[str]) -> dict[str, Any]:
    """`{"label": name, "label_id": int, "probabilities": {name: p}}` for one example's probabilities."""
    label_id = int(np.argmax(probabilities))
    return {
        "label": label_names[label_id],
        "label_id": label_id,
        "probabilities": {name: float(p) for name, p in zip(label_names, probabilities)},
    }


@dataclass
class FilePredictions:
    """Predictions for the rows of one split, in file order.

    Iterating yields one record per row: `{"id", "label", "label_id", "probabilities"}`.

    Attributes:
        ids (`list[str]`): example ids, in the order of the input.
        probabilities (`np.ndarray`): `(num_examples, num_labels)` class probabilities.
        label_names (`list[str]`): class names, in class-id order.
        true_labels (`np.ndarray`, *optional*): the labels of the input (-1 for unlabeled rows).
        split (`str`, *optional*): the split that was predicted.
        report (`mmfusion.data.LoadReport`, *optional*): the data layer's load report (rows skipped with
            `on_bad_rows="skip"`, and why).
    """

    ids: list[str]
    probabilities: np.ndarray
    label_names: list[str]
    true_labels: np.ndarray | None = None
    split: str | None = None
    report: Any = None

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"id": self.ids[index], **prediction_record(self.probabilities[index], self.label_names)}

    @property
    def label_ids(self) -> np.ndarray:
        """Predicted class ids."""
        return self.probabilities.argmax(axis=1)

    @property
    def labels(self) -> list[str]:
        """Predicted class names."""
        return [self.label_names[i] for i in self.label_ids]

    @property
    def skipped_ids(self) -> list[str]:
        """Ids of the input rows left out as bad rows (`on_bad_rows="skip"`)."""
        return list(self.report.skipped_ids) if self.report is not None else []

    def rows(self) -> list[list]:
        """Rows of the challenge-format table (header: `columns()`)."""
        return prediction_rows(self.ids, self.probabilities, self.label_names)

    def columns(self) -> list[str]:
        """`id,proba,label` for two classes, `id,proba_<name>...,label` otherwise."""
        return prediction_columns(self.label_names)

    def to_pandas(self):
        """The challenge-format table as a `pandas.DataFrame`."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=self.columns())

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the challenge-format CSV."""
        return write_predictions_csv(path, self.ids, self.probabilities, self.label_names)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write a JSON list of records (`id`, `label`, `label_id`, `probabilities`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(list(self), indent=2) + "\n", encoding="utf-8")
        return path

    def save(self, path: str | os.PathLike) -> Path:
        """Write `.csv` (challenge format) or `.json` (records), chosen by the file extension."""
        suffix = Path(path).suffix.lower()
        if suffix == ".csv":
            return self.to_csv(path)
        if suffix == ".json":
            return self.to_json(path)
        raise ValueError(f"Unsupported output file {path}: use one of {', '.join(OUTPUT_FORMATS)}.")
