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
    assert figures["per_class"]["c"]["recall"] is None  # undefined: None, not NaN (the config is JSON)


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


# ------------------------------------------------------------------------------------------------ the Trainer


def test_the_trainer_trains_a_multi_label_model_with_bce_and_reports_per_label_metrics(tmp_path):
    from PIL import Image
    from tiny_models import CAPTIONS, tiny_model, tiny_processor
    from transformers import TrainingArguments

    from mmfusion.training.trainer import MMFusionTrainer

    model = tiny_model(
        "concat", problem_type="multi_label_classification", num_labels=3, id2label=dict(enumerate(NAMES))
    )
    processor = tiny_processor()
    images = [Image.new("RGB", (32, 32), (40 * i, 200 - 30 * i, 90)) for i in range(len(CAPTIONS))]
    encoded = processor(images=images, text=CAPTIONS, padding="max_length", max_length=16, return_tensors="pt")
    targets = torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 1]], dtype=torch.float32)
    rows = [{**{key: value[i] for key, value in encoded.items()}, "labels": targets[i]} for i in range(len(CAPTIONS))]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), max_steps=10, per_device_train_batch_size=6, learning_rate=1e-2,
        report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    trainer = MMFusionTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        eval_dataset=rows,
        compute_metrics=make_compute_metrics(NAMES, True),
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0]
    metrics = trainer.evaluate()
    assert {"eval_macro_auroc", "eval_micro_f1", "eval_auroc_a", "eval_f1_c"} <= set(metrics)
    with torch.no_grad():  # the loss is BCE over the labels
        logits = model(**{key: value for key, value in encoded.items()}).logits
        loss = model(**encoded, labels=targets).loss
    assert loss.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(logits, targets).item())


# ------------------------------------------------------------------------------------------------ train.py and every path

HUB_USER_SCRIPT = """
import importlib.util, json, os, sys
# A Hub user: transformers installed, mmfusion not. Drop the editable-install finder and the repository path.
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path = [p for p in sys.path if p and os.path.realpath(p) != os.path.realpath(sys.argv[1])]
assert importlib.util.find_spec("mmfusion") is None, "mmfusion is importable"
import torch
from PIL import Image
from transformers import AutoModelForSequenceClassification, AutoProcessor, pipeline
folder, images, texts = sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
images = [Image.open(path) for path in images]
model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
decisions = sys.modules[type(model.config).__module__.rsplit(".", 1)[0] + ".decisions"]
with torch.no_grad():
    outputs = model(**processor(images=images, text=texts, return_tensors="pt"))
logits = outputs.logits.double().numpy()
# the checkpoint's prediction mode: the head's sigmoids, or mixed with kNN over its labelled memory
probabilities = model.memory_probabilities(
    1 / (1 + decisions.np.exp(-logits)), torch.nn.functional.normalize(outputs.embeddings, dim=-1).numpy()
)
selected = decisions.decide(probabilities, model.config.decision_threshold, multi_label=True)
classify = pipeline("image-text-classification", model=folder, trust_remote_code=True, device="cpu")
piped = classify([{"image": image, "text": text} for image, text in zip(images, texts)], batch_size=4)
everything = classify({"image": images[0], "text": texts[0]}, threshold=0.0)
assert "mmfusion" not in sys.modules
print(json.dumps({
    "problem_type": model.config.problem_type,
    "threshold": model.config.decision_threshold,
    "remote": [[model.config.id2label[i] for i, on in enumerate(row) if on] for row in selected.tolist()],
    "pipeline": [[e["label"] for e in records if e["selected"]] for records in piped],
    "scores": [{e["label"]: e["score"] for e in records} for records in piped],
    "everything": [e["label"] for e in everything if e["selected"]],
}))
"""


@pytest.fixture(scope="module")
def mami_b_run(repo_root, tmp_path_factory):
    """train.py on a synthetic MAMI folder, task B (multi-label), 2 epochs; the test split plays validation (MAMI
    has none), so the per-label thresholds are chosen on it."""
    import subprocess
    import sys

    from conftest import TINY_TRAIN_ARGS
    from meme_folders import make_mami_multi_label

    tmp = tmp_path_factory.mktemp("mami-b")
    root = make_mami_multi_label(tmp / "mami")
    output = tmp / "run"
    args = ["--dataset", root, "--task", "B", "--validation_split", "test", "--num_train_epochs", "2",
            "--learning_rate", "3e-3", "--output_dir", output, "--cache_dir", tmp / "cache"]  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(repo_root / "train.py"), *map(str, args), *TINY_TRAIN_ARGS],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return root, output, tmp


MAMI_LABELS = ["shaming", "stereotype", "objectification", "violence"]


def test_train_py_trains_mami_task_b_and_reports_per_label_figures(mami_b_run):
    import json

    _, output, _ = mami_b_run
    config = json.loads((output / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert config["decision_policy"] == "max_f1" and len(config["decision_threshold"]) == 4
    assert all(0 <= t <= 1 for t in config["decision_threshold"])
    figures = config["decision_figures"]
    assert figures["split"] == "test" and set(figures["per_class"]) == set(MAMI_LABELS)
    assert all(entry["fitted"] for entry in figures["per_class"].values())  # every label on both sides in test
    assert config["calibration_temperature"] == 1.0  # no temperature for multi-label

    report = json.loads((output / "eval_report.json").read_text())
    assert report["multi_label"] and report["primary_metric"] == "macro_auroc"
    test = report["splits"]["test"]
    assert [row["label"] for row in test["per_class"]] == MAMI_LABELS
    for row, threshold in zip(test["per_class"], config["decision_threshold"]):
        assert {"f1", "precision", "recall", "auroc", "threshold", "support"} <= set(row)
        assert row["threshold"] == pytest.approx(threshold) and row["support"] == 8
    assert {"micro_f1", "macro_f1", "macro_auroc", "micro_auroc", "subset_accuracy"} <= set(test["metrics"])
    assert test["confusion_matrix"] is None and "ablations" in test
    assert test["modality_reliance"]["metric"] in ("macro_auroc", "macro_f1")
    markdown = (output / "eval_report.md").read_text()
    assert "### Per label" in markdown and "| **macro** |" in markdown and "No confusion matrix" in markdown
    card = (output / "README.md").read_text()
    assert "### Per label: test" in card and "binary cross-entropy" in card and ".sigmoid()" in card
    assert "name: Macro AUROC" in card
    header = (output / "predictions_test.csv").read_text().splitlines()[0]
    assert header == "id," + ",".join(f"proba_{name}" for name in MAMI_LABELS) + ",labels"
    results = json.loads((output / "all_results.json").read_text())
    assert "eval_macro_auroc" in results and "eval_auroc_violence" in results


def test_per_label_thresholds_decide_alike_in_torch_remote_code_pipeline_and_onnx(mami_b_run, repo_root):
    """Per-label thresholds in the middle of each label's scores (so every label is flagged on some rows and not
    on others); the predictor, the checkpoint's own code without mmfusion, its pipeline and ONNX Runtime return the
    same label sets; the thresholds survive save/load and export; call-time overrides work."""
    import json
    import shutil
    import subprocess
    import sys

    from mmfusion.inference import MMFusionPredictor
    from mmfusion.inference.export import export_onnx
    from mmfusion.inference.predict import main as predict_main

    root, output, tmp = mami_b_run
    folder = tmp / "checkpoint"
    shutil.copytree(output, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    captions = dict(line.split("\t") for line in (tmp / "mami" / "test" / "Test.csv").read_text().splitlines()[1:])
    paths = sorted((tmp / "mami" / "test").glob("*.jpg"), key=lambda p: int(p.stem))[:12]
    texts = [captions[path.name] for path in paths]
    images = [str(path) for path in paths]
    scores = MMFusionPredictor.from_pretrained(folder, device="cpu").predict_probabilities(images, texts)
    ordered = np.sort(scores, axis=0)
    thresholds = [float((ordered[5, j] + ordered[6, j]) / 2) for j in range(4)]  # 6 rows above, 6 below each
    config = json.loads((folder / "config.json").read_text())
    config["decision_threshold"] = thresholds
    (folder / "config.json").write_text(json.dumps(config))

    predictor = MMFusionPredictor.from_pretrained(folder, device="cpu")
    assert predictor.multi_label and predictor.threshold == pytest.approx(thresholds)
    records = predictor.predict_batch(images, texts)
    expected = [sorted(record["labels"]) for record in records]
    assert all(sum(name in labels for labels in expected) == 6 for name in MAMI_LABELS)
    assert {len(labels) for labels in expected} != {len(MAMI_LABELS)}
    assert all(set(record["probabilities"]) == set(MAMI_LABELS) for record in records)
    assert predictor.predict(images[0], texts[0], threshold=0.0)["labels"] != []
    assert all(r["labels"] == [] for r in predictor.predict_batch(images, texts, threshold=1.0))

    result = subprocess.run(
        [sys.executable, "-I", "-c", HUB_USER_SCRIPT, str(repo_root), str(folder), json.dumps(images),
         json.dumps(texts)],
        cwd=tmp, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    hub = json.loads(result.stdout.strip().splitlines()[-1])
    assert hub["problem_type"] == "multi_label_classification" and hub["threshold"] == pytest.approx(thresholds)
    assert [sorted(labels) for labels in hub["remote"]] == expected
    assert [sorted(labels) for labels in hub["pipeline"]] == expected
    for piped, record in zip(hub["scores"], records):
        # kNN scores are rank-weighted: two memory rows whose similarities to a query differ by float noise (the
        # pipeline and the predictor batch the rows differently) swap ranks and move a score by about 1 / sum(w).
        tolerance = 1e-6 if config.get("prediction_mode", "head") == "head" else 2 / sum(range(1, config["knn_k"] + 1))
        assert piped == pytest.approx(record["probabilities"], abs=tolerance)
    assert sorted(hub["everything"]) == sorted(MAMI_LABELS)

    exported = tmp / "onnx"
    export_onnx(folder, exported)
    onnx_predictor = MMFusionPredictor.from_pretrained(exported, backend="onnx")
    assert onnx_predictor.threshold == pytest.approx(thresholds)
    assert [sorted(r["labels"]) for r in onnx_predictor.predict_batch(images, texts)] == expected

    csv_path = tmp / "predictions.csv"
    argv = [str(exported), "--backend", "onnx", "--input", root, "--split", "test", "--task", "B", "--output",
            str(csv_path), "--cache-dir", str(tmp / "cache"), "--no-progress"]  # fmt: skip
    assert predict_main(argv) == 0
    rows = csv_path.read_text().splitlines()
    assert rows[0].endswith(",labels") and len(rows) == 17
    by_id = {row.split(",")[0]: row.rsplit(",", 1)[1] for row in rows[1:]}
    assert [sorted(filter(None, by_id[path.name].split("|"))) for path in paths] == expected


def test_evaluating_a_checkpoint_keeps_its_thresholds_unless_a_policy_is_given(mami_b_run, repo_root):
    import json
    import shutil
    import subprocess
    import sys

    from conftest import TINY_TRAIN_ARGS

    root, output, tmp = mami_b_run
    folder = tmp / "evaluated"
    shutil.copytree(output, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
    stored = json.loads((folder / "config.json").read_text())["decision_threshold"]

    def evaluate(*extra):
        args = ["--model_name_or_path", folder, "--output_dir", folder, "--do_train", "false", "--dataset", root,
                "--task", "B", "--validation_split", "test", "--cache_dir", tmp / "cache", *extra]  # fmt: skip
        result = subprocess.run(
            [sys.executable, str(repo_root / "train.py"), *map(str, args), *TINY_TRAIN_ARGS],
            cwd=repo_root, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        report = json.loads((folder / "eval_report.json").read_text())
        return json.loads((folder / "config.json").read_text()), report["splits"]["test"]["per_class"]

    config, per_label = evaluate()
    assert config["decision_threshold"] == pytest.approx(stored)
    assert [row["threshold"] for row in per_label] == pytest.approx(stored)
    config, per_label = evaluate("--decision_threshold", "0.3")
    assert config["decision_threshold"] == [0.3] * 4 and config["decision_policy"] == "fixed"
    assert [row["threshold"] for row in per_label] == [0.3] * 4


def test_a_converted_multi_label_dataset_loads_back_multi_label(tmp_path):
    """`mmfusion-data convert --task B` writes List(ClassLabel); read back through `datasets.load_dataset` (as from
    the Hub) it is the same multi-label data, so `train.py --dataset org/name` trains it."""
    import datasets
    from meme_folders import make_mami

    from mmfusion.data import load_image_text_dataset
    from mmfusion.data.cli import main

    root = make_mami(tmp_path / "mami")
    assert main(["convert", root, str(tmp_path / "hub"), "--task", "B", "--cache-dir", str(tmp_path / "c")]) == 0
    hub = datasets.load_dataset(str(tmp_path / "hub"), cache_dir=str(tmp_path / "hub-cache"))
    loaded = load_image_text_dataset(hub, cache_dir=str(tmp_path / "c2"))
    original = load_image_text_dataset(root, task="B", cache_dir=str(tmp_path / "c"))
    for split in original:
        assert loaded[split].features["label"] == original[split].features["label"]
        assert (
            loaded[split]["label"]
            == original[split]["label"]
            == ([[0, 2], [], [1, 3]] if split == "train" else [[2], []])
        )
