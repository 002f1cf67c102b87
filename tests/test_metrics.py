"""Metrics against values computed by hand on small arrays."""

import math

import numpy as np
import pytest
from transformers import EvalPrediction

from mmfusion.evaluation.metrics import (
    baseline_metrics,
    best_model_metric,
    classification_metrics,
    make_compute_metrics,
    per_class_table,
)

BINARY_NAMES = ["not_hateful", "hateful"]
SENTIMENT_NAMES = ["negative", "neutral", "positive"]


def binary_case():
    # P(hateful) per row; the last row is unlabeled and would be a false positive if it counted.
    p1 = np.array([0.1, 0.6, 0.4, 0.8, 0.9, 0.99])
    labels = np.array([0, 0, 1, 1, 1, -1])
    return np.stack([1 - p1, p1], axis=1), labels


def three_class_case():
    predicted = [0, 1, 1, 1, 2, 0, 2, 1]
    labels = np.array([0, 0, 1, 1, 2, 2, 2, -1])
    probabilities = np.full((len(predicted), 3), 0.2)
    probabilities[np.arange(len(predicted)), predicted] = 0.6
    return probabilities, labels


def test_binary_metrics_match_hand_computed_values():
    probabilities, labels = binary_case()
    metrics = classification_metrics(probabilities, labels, BINARY_NAMES)
    # predicted [0, 1, 0, 1, 1] vs labels [0, 0, 1, 1, 1]: TP 2, FP 1, FN 1, TN 1
    assert set(metrics) == {"accuracy", "auroc", "f1", "precision", "recall"}
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    # positives {0.4, 0.8, 0.9} vs negatives {0.1, 0.6}: 5 of 6 pairs ordered correctly
    assert metrics["auroc"] == pytest.approx(5 / 6)
    assert all(type(value) is float for value in metrics.values())


def test_unlabeled_rows_are_excluded():
    probabilities, labels = binary_case()
    keep = labels >= 0
    assert classification_metrics(probabilities, labels, BINARY_NAMES) == classification_metrics(
        probabilities[keep], labels[keep], BINARY_NAMES
    )
    with pytest.raises(ValueError, match="No labeled rows"):
        classification_metrics(probabilities, np.full(len(labels), -1), BINARY_NAMES)


def test_binary_auroc_is_nan_with_a_single_class():
    probabilities, _ = binary_case()
    metrics = classification_metrics(probabilities, np.array([1, 1, 1, 1, 1, -1]), BINARY_NAMES)
    assert math.isnan(metrics["auroc"])
    assert metrics["accuracy"] == pytest.approx(3 / 5)  # rows 2 (0.4) and 0 (0.1) are missed
    assert metrics["precision"] == pytest.approx(1.0)


def test_three_class_metrics_match_hand_computed_values():
    probabilities, labels = three_class_case()
    metrics = classification_metrics(probabilities, labels, SENTIMENT_NAMES)
    # negative: P 1/2 R 1/2 F1 1/2; neutral: P 2/3 R 1 F1 0.8; positive: P 1 R 2/3 F1 0.8
    expected = {
        "accuracy": 5 / 7,
        "macro_f1": (0.5 + 0.8 + 0.8) / 3,
        "precision_negative": 0.5,
        "recall_negative": 0.5,
        "f1_negative": 0.5,
        "precision_neutral": 2 / 3,
        "recall_neutral": 1.0,
        "f1_neutral": 0.8,
        "precision_positive": 1.0,
        "recall_positive": 2 / 3,
        "f1_positive": 0.8,
    }
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value), key


def test_per_class_table_supports_and_names():
    probabilities, labels = three_class_case()
    table = per_class_table(probabilities, labels, SENTIMENT_NAMES)
    assert [row["label"] for row in table] == SENTIMENT_NAMES
    assert [row["support"] for row in table] == [2, 2, 3]
    assert table[1]["f1"] == pytest.approx(0.8)


def test_shape_and_label_checks():
    probabilities, labels = three_class_case()
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(probabilities, labels, BINARY_NAMES)
    with pytest.raises(ValueError, match="out of range"):
        classification_metrics(probabilities, np.array([0, 0, 1, 1, 2, 2, 3, -1]), SENTIMENT_NAMES)


def test_baselines():
    labels = np.array([0, 0, 1, 1, 1, -1, -1])
    baselines = baseline_metrics(labels, BINARY_NAMES, seed=3)
    assert set(baselines) == {"random_accuracy", "majority_accuracy"}
    assert baselines["majority_accuracy"] == pytest.approx(3 / 5)
    assert baselines == baseline_metrics(labels, BINARY_NAMES, seed=3)  # deterministic for a seed
    assert 0.0 <= baselines["random_accuracy"] <= 1.0

    many = np.random.default_rng(1234).integers(0, 3, size=6000)  # not the baseline's own stream (seed 0)
    three = baseline_metrics(many, SENTIMENT_NAMES)
    assert three["random_accuracy"] == pytest.approx(1 / 3, abs=0.01)
    assert three["majority_accuracy"] == pytest.approx(np.bincount(many).max() / many.size)
    assert baseline_metrics(np.zeros(4000, int), BINARY_NAMES)["random_accuracy"] == pytest.approx(0.5, abs=0.01)
    assert baseline_metrics(np.zeros(4000, int), BINARY_NAMES)["majority_accuracy"] == 1.0
    draws = {baseline_metrics(labels, BINARY_NAMES, seed=s)["random_accuracy"] for s in range(10)}
    assert len(draws) > 1  # the seed matters


def test_compute_metrics_applies_softmax_to_logits():
    probabilities, labels = three_class_case()
    logits = np.log(probabilities) + 7.0  # softmax(log p + c) == p
    compute_metrics = make_compute_metrics(SENTIMENT_NAMES)
    expected = classification_metrics(probabilities, labels, SENTIMENT_NAMES)
    assert compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)) == pytest.approx(expected)
    assert compute_metrics(EvalPrediction(predictions=(logits, np.zeros(3)), label_ids=labels)) == pytest.approx(
        expected
    )

    binary_probabilities, binary_labels = binary_case()
    binary = make_compute_metrics(BINARY_NAMES)(
        EvalPrediction(predictions=np.log(binary_probabilities), label_ids=binary_labels)
    )
    assert binary["auroc"] == pytest.approx(5 / 6)


def test_best_model_metric():
    assert best_model_metric(2) == "auroc"
    assert best_model_metric(3) == "macro_f1"
    with pytest.raises(ValueError):
        best_model_metric(1)
