import csv

import numpy as np
import pytest

from mmfusion.evaluation.predictions import write_predictions_csv


def read(path):
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_binary_file_is_the_challenge_format(tmp_path):
    path = write_predictions_csv(
        tmp_path / "p.csv", ["01235", "42953"], np.array([[0.9, 0.1], [0.2, 0.8]]), ["not_hateful", "hateful"]
    )
    rows = read(path)
    assert rows[0] == ["id", "proba", "label"]
    assert rows[1][0] == "01235" and float(rows[1][1]) == pytest.approx(0.1) and rows[1][2] == "0"
    assert rows[2][2] == "1"


def test_multiclass_file_has_one_probability_column_per_class(tmp_path):
    names = ["negative", "neutral", "positive"]
    rows = read(write_predictions_csv(tmp_path / "p.csv", ["a"], np.array([[0.1, 0.2, 0.7]]), names))
    assert rows[0] == ["id", "proba_negative", "proba_neutral", "proba_positive", "label"]
    assert rows[1][-1] == "2"


def test_shape_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        write_predictions_csv(tmp_path / "p.csv", ["a", "b"], np.array([[0.5, 0.5]]), ["x", "y"])
