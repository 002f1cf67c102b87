"""Multi-label classification (issue 23): decisions, per-label thresholds, metrics, collator, predictions files."""

import math

import numpy as np
import pytest
import torch

from mmfusion.decisions import check_decision_threshold, decide, decision_order
from mmfusion.evaluation.metrics import (
    best_model_metric,
    make_compute_metrics,
    multi_label_metrics,
    multi_label_per_label_table,
)
from mmfusion.evaluation.predictions import Predictions, multi_hot
from mmfusion.evaluation.thresholds import UnreachableTargetError, fit_multi_label_thresholds
from mmfusion.training.collator import MMFusionCollator

NAMES = ["a", "b", "c"]
# label a: positives 0.9, 0.8, 0.7, negatives 0.6, 0.3, 0.2 -> max F1 (1.0) between 0.7 and 0.6
# label b: positives 0.4, 0.35, negatives 0.5, 0.3, 0.1, 0.05 -> max F1 (0.8) flagging >= 0.35: between 0.35 and 0.3
# label c: no positive example -> not fitted, kept at 0.5
SCORES = np.array(
    [
        [0.9, 0.4, 0.1],
        [0.8, 0.35, 0.2],
        [0.7, 0.5, 0.3],
        [0.6, 0.3, 0.6],
        [0.3, 0.1, 0.7],
        [0.2, 0.05, 0.1],
    ]
)
LABELS = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])


def test_per_label_max_f1_thresholds_have_the_known_answer():
    thresholds, figures = fit_multi_label_thresholds(SCORES, LABELS, "max_f1", NAMES, split="validation")
    assert thresholds == pytest.approx([0.65, 0.325, 0.5])
    assert figures["policy"] == "max_f1" and figures["split"] == "validation"
    assert figures["per_class"]["a"]["f1"] == 1.0 and figures["per_class"]["a"]["fitted"]
    assert figures["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert not figures["per_class"]["c"]["fitted"] and "no positive example" in figures["per_class"]["c"]["note"]


def test_per_label_target_policies_and_unreachable_targets_name_the_label():
    thresholds, _ = fit_multi_label_thresholds(SCORES, LABELS, "recall=0.5", NAMES)
    assert thresholds[0] == pytest.approx(0.75)  # flag 0.9 and 0.8: recall 2/3, the fewest flags reaching 1/2
    with pytest.raises(UnreachableTargetError, match="label 'b' on dev: precision=1 cannot be reached"):
        fit_multi_label_thresholds(SCORES, LABELS, "precision=1", NAMES, split="dev")
    fixed, _ = fit_multi_label_thresholds(SCORES, LABELS, "0.3", NAMES)
    assert fixed == [0.3, 0.3, 0.3]
    unlabeled = np.vstack([LABELS, -np.ones((1, 3), dtype=int)])  # an unlabeled row is left out
    assert fit_multi_label_thresholds(np.vstack([SCORES, [[0.0, 0.99, 0.0]]]), unlabeled, "max_f1", NAMES)[0] == (
        pytest.approx([0.65, 0.325, 0.5])
    )


def test_decisions_return_every_label_above_its_threshold():
    probabilities = np.array([[0.7, 0.3, 0.9], [0.1, 0.2, 0.3]])
    assert decide(probabilities, None, multi_label=True).tolist() == [[1, 0, 1], [0, 0, 0]]  # 0.5 each
    assert decide(probabilities, [0.8, 0.25, 0.95], multi_label=True).tolist() == [[0, 1, 0], [0, 0, 0]]
    assert decide(probabilities, 0.1, multi_label=True).tolist() == [[1, 1, 1], [1, 1, 1]]
    assert decision_order(probabilities[0], [0.8, 0.25, 0.95], multi_label=True) == [1, 2, 0]
    # a per-label list is kept as given, even for two labels (single-label models keep class 1's threshold)
    assert check_decision_threshold([0.2, 0.7], 2, multi_label=True) == [0.2, 0.7]
    assert check_decision_threshold([0.2, 0.7], 2) == 0.7
    assert check_decision_threshold([0.0, 1.0], 2, multi_label=True) == [0.0, 1.0]  # 0: always, 1: only at 1
    with pytest.raises(ValueError, match="3 per-label thresholds for 2 labels"):
        check_decision_threshold([0.2, 0.7, 0.1], 2, multi_label=True)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        check_decision_threshold([0.2, 1.5], 2, multi_label=True)


def test_metrics_per_label_micro_macro_and_auroc():
    metrics = multi_label_metrics(SCORES, LABELS, NAMES, threshold=[0.65, 0.325, 0.5])
    assert metrics["f1_a"] == 1.0 and metrics["auroc_a"] == 1.0
    assert metrics["f1_b"] == pytest.approx(0.8) and metrics["precision_b"] == pytest.approx(2 / 3)
    assert math.isnan(metrics["auroc_c"])  # a label without positives has no AUROC...
    assert metrics["macro_auroc"] == pytest.approx((1.0 + metrics["auroc_b"]) / 2)  # ...and is left out of the mean
    assert metrics["macro_f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    # micro: tp 3 + 2, fp 0 + 1 + 2 (c flags 0.6, 0.7), fn 0
    assert metrics["micro_precision"] == pytest.approx(5 / 8) and metrics["micro_recall"] == 1.0
    assert metrics["subset_accuracy"] == pytest.approx(3 / 6)
    table = multi_label_per_label_table(SCORES, LABELS, NAMES, threshold=[0.65, 0.325, 0.5])
    assert [row["threshold"] for row in table] == [0.65, 0.325, 0.5]
    assert [row["support"] for row in table] == [3, 2, 0] and [row["predicted"] for row in table] == [3, 3, 2]
    # lists of label ids (None: unlabeled) read the same as multi-hot rows
    as_lists = [[0, 1], [0, 1], [0], [], [], [], None]
    scores = np.vstack([SCORES, [[0.5, 0.5, 0.5]]])
    assert multi_label_metrics(scores, as_lists, NAMES, [0.65, 0.325, 0.5]) == pytest.approx(metrics, nan_ok=True)
    assert best_model_metric(3, multi_label=True) == "macro_auroc" and best_model_metric(2) == "auroc"


def test_compute_metrics_reads_the_trainers_multi_hot_float_labels():
    from transformers import EvalPrediction

    logits = np.log(SCORES / (1 - SCORES))
    compute = make_compute_metrics(NAMES, multi_label=True)
    metrics = compute(EvalPrediction(predictions=logits, label_ids=LABELS.astype(np.float32)))
    assert metrics["auroc_a"] == 1.0 and "macro_auroc" in metrics and "subset_accuracy" in metrics


def test_collator_makes_multi_hot_float_targets_and_an_empty_set_is_a_target():
    collator = MMFusionCollator(pad_token_id=0, num_labels=3)
    rows = [{"input_ids": [1, 2], "attention_mask": [1, 1], "label": label} for label in ([0, 2], [], [1])]
    batch = collator(rows)
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert "labels" not in collator([*rows, {"input_ids": [3], "attention_mask": [1], "label": None}])
    with pytest.raises(ValueError, match="num_labels"):
        MMFusionCollator(pad_token_id=0)(rows)


def test_predictions_records_and_csv(tmp_path):
    labels = [[0, 1], [], None]
    predictions = Predictions(
        ids=["x", "y", "z"],
        probabilities=[[0.9, 0.4, 0.1], [0.2, 0.1, 0.3], [0.6, 0.35, 0.8]],
        label_names=NAMES,
        true_labels=labels,
        threshold=[0.5, 0.3, 0.9],
        multi_label=True,
    )
    assert predictions.labeled.tolist() == [True, True, False]
    assert predictions.true_labels.tolist() == multi_hot(labels, 3).tolist() == [[1, 1, 0], [0, 0, 0], [-1, -1, -1]]
    assert predictions.labels == [["a", "b"], [], ["a", "b"]]
    assert predictions[0] == {
        "id": "x",
        "labels": ["a", "b"],
        "label_ids": [0, 1],
        "probabilities": {"a": 0.9, "b": 0.4, "c": 0.1},
    }
    path = predictions.to_csv(tmp_path / "predictions.csv")
    lines = path.read_text().splitlines()
    assert lines[0] == "id,proba_a,proba_b,proba_c,labels"
    assert lines[1].endswith(",a|b") and lines[2].endswith(",")
