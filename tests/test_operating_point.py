"""Moderation practice: temperature scaling, decision thresholds chosen on validation, and every inference path
(PyTorch predictor, remote code, pipeline, ONNX) deciding the same way with them."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoProcessor, pipeline

from mmfusion import MMFusionConfig
from mmfusion.decisions import check_decision_threshold, decide, decision_order
from mmfusion.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from mmfusion.evaluation.predictions import Predictions, probabilities_from_logits
from mmfusion.evaluation.thresholds import (
    UnreachableTargetError,
    fit_binary_threshold,
    fit_decision_threshold,
    parse_policy,
    point_figures,
)
from mmfusion.inference import MMFusionPredictor, export_onnx
from mmfusion.inference.predict import main as predict_main
from mmfusion.pipeline_mmfusion import TASK, save_pipeline_code
from mmfusion.training.operating_point import fit_operating_point

# ------------------------------------------------------------------------------------------------ calibration


def overconfident_logits(count=2000, sharpen=4.0, seed=0):
    """Labels drawn from calibrated probabilities, logits sharpened `sharpen` times: the right temperature is it."""
    rng = np.random.default_rng(seed)
    calibrated = rng.normal(0, 1.5, size=(count, 3))
    probabilities = probabilities_from_logits(calibrated, dtype="float64")
    labels = np.array([rng.choice(3, p=p) for p in probabilities])
    return calibrated * sharpen, labels


def test_temperature_scaling_recovers_the_sharpening_and_keeps_the_ranking():
    logits, labels = overconfident_logits()
    fit = fit_temperature(logits, labels, split="validation")
    assert fit.temperature == pytest.approx(4.0, rel=0.1)
    assert fit.nll_after < fit.nll_before and fit.ece_after < fit.ece_before / 2
    assert fit.nll_after == pytest.approx(negative_log_likelihood(logits, labels, fit.temperature))
    after = probabilities_from_logits(logits, dtype="float64", temperature=fit.temperature)
    np.testing.assert_array_equal(after.argmax(1), logits.argmax(1))  # no label changes
    # a fresh sample from the same source (a "test split") is better calibrated too
    test_logits, test_labels = overconfident_logits(seed=1)
    before = expected_calibration_error(probabilities_from_logits(test_logits, dtype="float64"), test_labels)
    scaled = probabilities_from_logits(test_logits, dtype="float64", temperature=fit.temperature)
    assert expected_calibration_error(scaled, test_labels) < before / 2


def test_expected_calibration_error_on_known_cases():
    # 10 examples at confidence 0.9, 9 right: calibrated
    probabilities = np.tile([0.1, 0.9], (10, 1))
    labels = np.array([1] * 9 + [0])
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.0)
    # all at 0.9, all wrong: ECE 0.9; unlabeled rows are left out
    assert expected_calibration_error(probabilities, np.array([0] * 10)) == pytest.approx(0.9)
    assert expected_calibration_error(np.vstack([probabilities, [[0.5, 0.5]]]), np.array([0] * 10 + [-1])) == (
        pytest.approx(0.9)
    )


def test_a_separated_validation_split_leaves_the_temperature_at_one():
    """A model that gets every validation example right: the NLL falls forever as T -> 0; no estimate, T stays 1."""
    logits = np.array([[3.0, -3.0], [-2.0, 2.0], [4.0, -1.0], [-1.0, 5.0]])
    labels = np.array([0, 1, 0, 1])
    config = MMFusionConfig(id2label={0: "a", 1: "b"})
    done = fit_operating_point(config, logits, labels, ["a", "b"], split="validation", calibrate=True, policy=None)
    assert config.calibration_temperature == 1.0
    assert "cannot be estimated" in config.calibration["note"] and done["temperature"].ece_after == (
        done["temperature"].ece_before
    )


# ------------------------------------------------------------------------------------------------ thresholds

# scores decreasing; positives: 1 1 0 1 0 1 0 0 0 0 (4 positives, 6 negatives)
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
POSITIVES = np.array([1, 1, 0, 1, 0, 1, 0, 0, 0, 0], dtype=bool)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("precision=0.9", 0.75),  # >= 0.8: precision 1, recall 0.5; >= 0.7 drops to 0.67
        ("precision=1.0", 0.75),
        ("recall=0.75", 0.55),  # >= 0.6: recall 0.75 (the highest such threshold)
        ("recall=1", 0.35),
        ("fpr=0.2", 0.55),  # at most 1 of 6 negatives flagged
        ("fpr=0", 0.75),
        ("max_f1", 0.35),  # >= 0.4: precision 4/6, recall 1, F1 0.8 (the best)
        ("0.42", 0.42),
    ],
)
def test_each_policy_finds_the_known_threshold_and_meets_its_target(policy, expected):
    threshold = fit_binary_threshold(SCORES, POSITIVES, policy)
    assert threshold == pytest.approx(expected)
    figures = point_figures(SCORES, POSITIVES, threshold)
    kind, target = parse_policy(policy).kind, parse_policy(policy).target
    if kind in ("precision", "recall"):
        assert figures[kind] >= target
    if kind == "fpr":
        assert figures["fpr"] <= target


def test_an_unreachable_target_names_the_best_achievable_value():
    positives = POSITIVES.copy()
    positives[0] = False  # the top-scored example is a negative: precision 1.0 is out of reach
    with pytest.raises(
        UnreachableTargetError, match=r"precision=1 cannot be reached: the best achievable precision is 0\.5000"
    ):
        fit_binary_threshold(SCORES, positives, "precision=1.0")
    with pytest.raises(UnreachableTargetError, match=r"lowest achievable false-positive rate is 0\.1429"):
        fit_binary_threshold(SCORES, positives, "fpr=0.1")


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "precision=1.2", "recall=0", "fpr=2", "best", "nan", "precision"])
def test_thresholds_and_targets_outside_zero_one_are_refused(bad):
    with pytest.raises(ValueError):
        parse_policy(bad)


def test_out_of_range_thresholds_are_refused_everywhere(trained_demo_checkpoint):
    for bad in (1.5, -0.01, float("nan"), [0.5, 1.2]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            check_decision_threshold(bad)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        MMFusionConfig(decision_threshold=1.5)
    with pytest.raises(ValueError, match="temperature"):
        MMFusionConfig(calibration_temperature=0)
    predictor = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path, device="cpu")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predictor.predict_batch([np.zeros((8, 8, 3), np.uint8)], ["x"], threshold=2)
    with pytest.raises(SystemExit):
        predict_main([str(trained_demo_checkpoint.path), "--image", "x.png", "--text", "", "--threshold", "1.2"])


def test_multiclass_thresholds_are_one_vs_rest_and_the_binary_rule_is_their_special_case():
    rng = np.random.default_rng(0)
    probabilities = probabilities_from_logits(rng.normal(0, 2, size=(300, 3)), dtype="float64")
    labels = np.array([rng.choice(3, p=p) for p in probabilities])
    thresholds, figures = fit_decision_threshold(probabilities, labels, "recall=0.8", ["a", "b", "c"])
    assert len(thresholds) == 3 and all(f["recall"] >= 0.8 for f in figures["per_class"].values())
    # two classes: argmax(p / t) with t = (1 - t1, t1) is exactly p1 >= t1
    binary = probabilities_from_logits(rng.normal(0, 2, size=(500, 2)), dtype="float64")
    for t in (0.2, 0.5, 0.8):
        np.testing.assert_array_equal(decide(binary, t), (binary / [1 - t, t]).argmax(1))
    assert decision_order([0.7, 0.3], 0.25) == [1, 0] and decision_order([0.7, 0.3], None) == [0, 1]


def test_predictions_decide_with_their_threshold():
    probabilities = np.array([[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]])
    split = Predictions(ids=["a", "b", "c"], probabilities=probabilities, label_names=["no", "yes"], threshold=0.25)
    assert split.label_ids.tolist() == [1, 1, 0]
    assert [row[2] for row in split.rows()] == [1, 1, 0]
    assert split[0]["label"] == "yes"
    assert Predictions(ids=["a"], probabilities=probabilities[:1], label_names=["no", "yes"]).label_ids.tolist() == [0]


# ------------------------------------------------------------------------------------------------ train.py


def test_train_calibrates_an_overconfident_model_and_records_the_operating_point(repo_root, tiny_train_args, tmp_path):
    """Concat fusion cannot represent the demo's XOR label; trained long on 64 examples it memorises them and is
    confidently wrong on half of the rest. Temperature scaling must lower validation and test ECE without touching
    accuracy or AUROC; max_f1 is chosen on validation and stored with the figures it met."""
    output = tmp_path / "run"
    # no labelled memory: this is about the head's temperature (a kNN or mixed mode would not keep argmax)
    args = ["--fusion", "concat", "--max_train_samples", "64", "--max_eval_samples", "200", "--num_train_epochs",
            "40", "--learning_rate", "3e-3", "--classifier_dropout", "0", "--eval_strategy", "no", "--save_strategy",
            "no", "--load_best_model_at_end", "false", "--decision_threshold", "max_f1", "--output_dir", output,
            "--build_memory", "false"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(repo_root / "train.py"), *map(str, args), *tiny_train_args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    config = json.loads((output / "config.json").read_text())
    assert config["calibration_temperature"] > 1.5, config["calibration"]
    assert config["decision_policy"] == "max_f1" and 0 <= config["decision_threshold"] <= 1
    assert config["decision_figures"]["split"] == "validation"
    report = json.loads((output / "eval_report.json").read_text())
    for split in ("validation", "test"):
        calibration = report["splits"][split]["calibration"]
        assert calibration["ece_after"] < calibration["ece_before"] - 0.05, (split, calibration)
        assert (output / calibration["reliability_plot"]).is_file()
        assert (output / report["splits"][split]["operating_curves_plot"]).is_file()
        assert "precision" in report["splits"][split]["operating_point"]
    # the threshold met on validation what the config says it met
    point = report["splits"]["validation"]["operating_point"]
    assert point["f1"] == pytest.approx(config["decision_figures"]["f1"])
    # accuracy (argmax) and AUROC unchanged by the temperature
    predictor = MMFusionPredictor.from_pretrained(output, device="cpu")
    raw = MMFusionPredictor.from_pretrained(output, device="cpu", temperature=1.0)
    from mmfusion.data import load_demo_dataset

    test = load_demo_dataset()["test"].select(range(200))
    calibrated, uncalibrated = (
        predictor.predict_dataset(test, progress=False),
        raw.predict_dataset(test, progress=False),
    )
    np.testing.assert_array_equal(calibrated.probabilities.argmax(1), uncalibrated.probabilities.argmax(1))
    labels = np.asarray(test["label"])
    auroc = roc_auc_score(labels, calibrated.probabilities[:, 1])
    assert auroc == pytest.approx(roc_auc_score(labels, uncalibrated.probabilities[:, 1]), abs=1e-6)
    markdown = (output / "eval_report.md").read_text()
    assert "### Calibration" in markdown and "### Operating point" in markdown


# ------------------------------------------------------------------------------------------------ every path


def test_the_stored_threshold_survives_save_load_remote_code_pipeline_and_onnx(trained_demo_checkpoint, tmp_path):
    """One threshold that overrules argmax on some examples; PyTorch, remote code, the pipeline and ONNX Runtime
    decide those examples alike."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(trained_demo_checkpoint.path, folder)
    save_pipeline_code(folder)
    test = trained_demo_checkpoint.dataset["test"].select(range(48))
    images, texts = list(test["image"]), list(test["text"])
    raw = MMFusionPredictor.from_pretrained(folder, device="cpu").predict_batch(images, texts)
    p1 = np.sort([record["probabilities"]["hateful"] for record in raw])
    # a threshold in a gap between two scores above 0.5 (so argmax and the threshold disagree on some), with room
    gaps = [(p1[i + 1] - p1[i], i) for i in range(len(p1) - 1) if p1[i] > 0.5 and p1[i + 1] < 0.999]
    width, index = max(gaps) if gaps else (0, len(p1) // 2)
    threshold = float((p1[index] + p1[index + 1]) / 2) if width else 0.9
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    config.calibration_temperature, config.decision_threshold, config.decision_policy = 1.5, threshold, "fixed"
    config.save_pretrained(folder)
    assert (folder / "decisions.py").is_file()

    predictor = MMFusionPredictor.from_pretrained(folder, device="cpu")
    assert predictor.threshold == pytest.approx(threshold) and predictor.temperature == 1.5
    expected = [record["label"] for record in predictor.predict_batch(images, texts)]
    argmax = [max(r["probabilities"], key=r["probabilities"].get) for r in predictor.predict_batch(images, texts)]
    assert expected != argmax  # the threshold decides something argmax would not

    # remote code: transformers only, the decision rule from the checkpoint's own decisions.py
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    decisions_module = sys.modules[type(model.config).__module__.rsplit(".", 1)[0] + ".decisions"]
    with torch.no_grad():
        logits = model(**processor(images=images, text=texts, return_tensors="pt")).logits.numpy()
    scaled = probabilities_from_logits(logits, temperature=model.config.calibration_temperature)
    remote = decisions_module.decide(scaled, model.config.decision_threshold)
    assert [model.config.id2label[int(i)] for i in remote] == expected

    classify = pipeline(TASK, model=str(folder), trust_remote_code=True, device="cpu")
    piped = classify([{"image": image, "text": text} for image, text in zip(images, texts)], batch_size=16)
    assert [records[0]["label"] for records in piped] == expected
    overridden = classify({"image": images[0], "text": texts[0]}, threshold=0.0)
    assert overridden[0]["label"] == "hateful"

    exported = tmp_path / "onnx"
    export_onnx(folder, exported)
    onnx_predictor = MMFusionPredictor.from_pretrained(exported, backend="onnx")
    assert [record["label"] for record in onnx_predictor.predict_batch(images, texts)] == expected
    # call-time override everywhere
    assert {r["label"] for r in onnx_predictor.predict_batch(images, texts, threshold=1.0)} <= {"not_hateful"}
    assert {r["label"] for r in predictor.predict_batch(images, texts, threshold=0.0)} == {"hateful"}
