"""The evaluation report: files, JSON content, figures, markdown and the modality-ablation reading."""

import json

import numpy as np
import pytest
from PIL import Image

from mmfusion.evaluation.metrics import baseline_metrics, classification_metrics
from mmfusion.evaluation.plots import best_evaluation, plot_training_curves, training_curve_series
from mmfusion.evaluation.predictions import Predictions
from mmfusion.evaluation.report import write_eval_report

NAMES = ["not_hateful", "hateful"]


def predictions_of(ids, texts, labels, probabilities, names=None) -> Predictions:
    """A split's predictions in the order the report tests write them; class names from the width of the table."""
    probabilities = np.asarray(probabilities, dtype=float)
    names = names or (NAMES if probabilities.shape[1] == 2 else [f"class_{i}" for i in range(probabilities.shape[1])])
    return Predictions(ids=ids, probabilities=probabilities, label_names=names, true_labels=labels, texts=texts)


def binary(p1) -> np.ndarray:
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


def constant(p1: float, n: int) -> np.ndarray:
    return binary(np.full(n, p1))


def validation_split() -> Predictions:
    # predicted [0, 0, 1, 1, 0, 1, 1, 1]; errors: row 3 (p 0.95), row 4 (p 0.8), row 2 (p 0.7).
    # The unlabeled last row is confidently "hateful" and must never be listed as an error.
    p1 = [0.05, 0.3, 0.7, 0.95, 0.2, 0.6, 0.8, 0.9, 0.999]
    return predictions_of(
        ids=[f"v{i}" for i in range(9)],
        texts=[f"caption {i}" for i in range(8)] + ["unlabeled | with a pipe"],
        labels=np.array([0, 0, 0, 0, 1, 1, 1, 1, -1]),
        probabilities=binary(p1),
    )


def seen_split() -> Predictions:
    return predictions_of(
        ids=["s0", "s1", "s2", "s3"],
        texts=["a", "b", "c", "d"],
        labels=np.array([0, 1, 0, 1]),
        probabilities=binary([0.1, 0.9, 0.2, 0.8]),
    )


def unlabeled_split() -> Predictions:
    return predictions_of(
        ids=["u0", "u1", "u2"], texts=["x", "y", "z"], labels=np.full(3, -1), probabilities=binary([0.9, 0.2, 0.7])
    )


def log_history():
    history = [
        {"loss": 0.7 - 0.02 * i, "grad_norm": 1.0, "learning_rate": 1e-3, "epoch": i / 5, "step": 5 * i}
        for i in range(1, 16)
    ]
    for epoch in (1, 2, 3):
        history.append({"eval_loss": 0.7 - 0.05 * epoch, "eval_auroc": 0.5 + 0.1 * epoch, "eval_accuracy": 0.6,
                        "eval_f1": 0.5, "eval_precision": 0.5, "eval_recall": 0.5, "eval_runtime": 0.3,
                        "eval_samples_per_second": 100.0, "eval_steps_per_second": 3.0, "epoch": float(epoch),
                        "step": 25 * epoch})  # fmt: skip
    history.append({"train_runtime": 9.0, "train_loss": 0.5, "epoch": 3.0, "step": 75})
    return history


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("report")
    predictions = {"validation": validation_split(), "test_seen": seen_split(), "test_unseen": unlabeled_split()}
    ablations = {
        # The image changes nothing: a text-only model.
        "validation": {
            "full": validation_split().probabilities,
            "image_blanked": validation_split().probabilities,
            "text_emptied": constant(0.4, 9),
            "both_blanked": constant(0.3, 9),
        },
        # Either removal drops to chance: the model needs both.
        "test_seen": {"image_blanked": constant(0.5, 4), "text_emptied": constant(0.4, 4)},
    }
    report = write_eval_report(
        output_dir,
        label_names=NAMES,
        predictions=predictions,
        ablations=ablations,
        log_history=log_history(),
        num_errors=10,
    )
    return output_dir, report, predictions


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_files_written(written):
    output_dir, _, _ = written
    names = {p.name for p in output_dir.iterdir()}
    assert {
        "eval_report.json",
        "eval_report.md",
        "confusion_matrix_validation.png",
        "confusion_matrix_test_seen.png",
        "training_curves.png",
    } <= names
    assert "confusion_matrix_test_unseen.png" not in names  # unlabeled: no confusion matrix


def test_json_matches_metrics(written):
    output_dir, report, predictions = written
    on_disk = strict_json(output_dir / "eval_report.json")
    assert on_disk == report
    assert on_disk["label_names"] == NAMES and on_disk["primary_metric"] == "auroc"
    validation = on_disk["splits"]["validation"]
    split = predictions["validation"]
    assert validation["metrics"] == pytest.approx(
        classification_metrics(split.probabilities, split.true_labels, NAMES)
    )
    assert validation["metrics"]["accuracy"] == pytest.approx(5 / 8)
    assert validation["metrics"]["auroc"] == pytest.approx(9 / 16)
    assert validation["baselines"] == pytest.approx(baseline_metrics(split.true_labels, NAMES))
    assert validation["num_examples"] == 9 and validation["num_labeled"] == 8
    assert validation["confusion_matrix"] == [[2, 2], [1, 3]]
    assert validation["label_distribution"] == {"not_hateful": 4, "hateful": 4}
    assert validation["predicted_distribution"] == {"not_hateful": 3, "hateful": 6}  # unlabeled row included
    assert [row["support"] for row in validation["per_class"]] == [4, 4]
    assert validation["per_class"][1]["recall"] == pytest.approx(3 / 4)


def test_most_confident_errors(written):
    _, report, _ = written
    errors = report["splits"]["validation"]["most_confident_errors"]
    assert [e["id"] for e in errors] == ["v3", "v4", "v2"]
    assert errors[0] == {
        "id": "v3",
        "text": "caption 3",
        "true_label": "not_hateful",
        "predicted_label": "hateful",
        "probability": pytest.approx(0.95),
        "true_label_probability": pytest.approx(0.05),
    }
    assert report["splits"]["test_seen"]["most_confident_errors"] == []


def test_num_errors_limits_the_list(tmp_path):
    report = write_eval_report(
        tmp_path, label_names=NAMES, predictions={"validation": validation_split()}, num_errors=2
    )
    assert [e["id"] for e in report["splits"]["validation"]["most_confident_errors"]] == ["v3", "v4"]
    assert "ablations" not in report["splits"]["validation"]
    assert report["training_curves_plot"] is None
    assert not (tmp_path / "training_curves.png").exists()


def test_unlabeled_split_has_only_counts(written):
    _, report, _ = written
    assert report["splits"]["test_unseen"] == {
        "labeled": False,
        "num_examples": 3,
        "predicted_distribution": {"not_hateful": 1, "hateful": 2},
    }


def test_ablation_table_and_reading(written):
    _, report, predictions = written
    validation = report["splits"]["validation"]
    assert list(validation["ablations"]) == ["full", "image_blanked", "text_emptied", "both_blanked"]
    assert validation["ablations"]["image_blanked"] == validation["ablations"]["full"]
    assert validation["ablations"]["text_emptied"]["auroc"] == pytest.approx(0.5)  # constant scores
    reliance = validation["modality_reliance"]
    assert reliance["summary"] == "text"
    assert reliance["retained"]["image_blanked"] == pytest.approx(1.0)
    assert reliance["agreement"]["image_blanked"] == pytest.approx(1.0)
    assert any("relies on the caption" in note for note in reliance["notes"])
    assert any("`not_hateful`" in note for note in reliance["notes"])  # both blanked -> its prior
    seen = report["splits"]["test_seen"]["modality_reliance"]
    assert seen["summary"] == "both"
    assert seen["agreement"]["image_blanked"] == pytest.approx(0.5)


def test_markdown(written):
    output_dir, _, _ = written
    markdown = (output_dir / "eval_report.md").read_text()
    assert "### Modality ablation" in markdown
    assert (
        "| input | accuracy | auroc | f1 | precision | recall | gain over chance kept | predictions unchanged |"
        in (markdown)
    )
    assert "| image blanked | 0.6250 | 0.5625 |" in markdown
    assert "**relies on the caption**" in markdown and "**needs the image and the caption together**" in markdown
    assert "### Most confident errors (3)" in markdown
    assert "| v3 | caption 3 | not_hateful | hateful | 0.9500 |" in markdown
    assert "## test_unseen (unlabeled, 3 examples)" in markdown
    assert "| not_hateful | 2 | 2 |" in markdown  # confusion matrix row
    assert "![Training curves](training_curves.png)" in markdown
    assert "unlabeled \\| with a pipe" not in markdown  # unlabeled rows are not errors


@pytest.mark.parametrize("name", ["confusion_matrix_validation.png", "training_curves.png"])
def test_figures_are_valid_images(written, name):
    output_dir, _, _ = written
    with Image.open(output_dir / name) as image:
        image.verify()
    with Image.open(output_dir / name) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert 300 <= width <= 2500 and 300 <= height <= 2500
        # not a blank canvas
        assert len(set(image.convert("L").getdata())) > 10


def test_training_curve_series():
    series = training_curve_series(log_history())
    assert series["train_loss"]["x"][:2] == [5.0, 10.0] and len(series["train_loss"]["y"]) == 15
    assert series["eval_loss"]["x"] == [25.0, 50.0, 75.0]
    assert series["eval_auroc"]["x"] == [1.0, 2.0, 3.0]
    assert series["eval_auroc"]["y"] == pytest.approx([0.6, 0.7, 0.8])
    assert "eval_runtime" not in series and "eval_samples_per_second" not in series


def test_curves_leave_out_the_final_evaluation_of_the_kept_checkpoint(tmp_path):
    # train.py evaluates the best checkpoint (epoch 2) again after training: logged at the last step, after the
    # Trainer's summary. Drawn, it would look like a jump in the last epoch.
    history = log_history() + [{"eval_loss": 0.6, "eval_auroc": 0.7, "epoch": 3.0, "step": 75}]
    series = training_curve_series(history)
    assert series["eval_auroc"]["x"] == [1.0, 2.0, 3.0]
    assert series["eval_auroc"]["y"] == pytest.approx([0.6, 0.7, 0.8])
    assert series["eval_loss"]["x"] == [25.0, 50.0, 75.0]
    assert best_evaluation(history, best_step=50)["epoch"] == 2.0
    assert best_evaluation(history, best_step=None) is None
    assert plot_training_curves(history, tmp_path / "curves.png", best_step=50) == tmp_path / "curves.png"


def test_training_curves_without_data(tmp_path):
    assert plot_training_curves([{"train_runtime": 1.0, "epoch": 1.0}], tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_single_class_split_gives_null_auroc(tmp_path):
    split = predictions_of(["a", "b"], ["x", "y"], np.array([1, 1]), binary([0.8, 0.3]))
    report = write_eval_report(tmp_path, label_names=NAMES, predictions={"validation": split})
    assert report["splits"]["validation"]["metrics"]["auroc"] is None
    assert strict_json(tmp_path / "eval_report.json")["splits"]["validation"]["metrics"]["accuracy"] == 0.5
    assert "| auroc | n/a |" in (tmp_path / "eval_report.md").read_text()


def test_three_class_report(tmp_path):
    names = ["negative", "neutral", "positive"]
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]])
    split = predictions_of(["a", "b", "c", "d"], ["w", "x", "y", "z"], np.array([0, 1, 2, 2]), probabilities, names)
    report = write_eval_report(tmp_path, label_names=names, predictions={"validation": split})
    assert report["primary_metric"] == "macro_f1"
    assert report["splits"]["validation"]["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert "f1_neutral" in report["splits"]["validation"]["metrics"]
    with Image.open(tmp_path / "confusion_matrix_validation.png") as image:
        assert image.size[0] >= 300


def test_bad_ablations_are_refused(tmp_path):
    predictions = {"validation": validation_split()}
    with pytest.raises(ValueError, match="Unknown ablation"):
        write_eval_report(
            tmp_path,
            label_names=NAMES,
            predictions=predictions,
            ablations={"validation": {"no_image": constant(0.5, 9)}},
        )
    with pytest.raises(ValueError, match="shape"):
        write_eval_report(
            tmp_path,
            label_names=NAMES,
            predictions=predictions,
            ablations={"validation": {"image_blanked": constant(0.5, 3)}},
        )
    with pytest.raises(ValueError, match="no predictions"):
        write_eval_report(
            tmp_path,
            label_names=NAMES,
            predictions=predictions,
            ablations={"test": {"image_blanked": constant(0.5, 9)}},
        )


def test_evaluation_rows_also_in_train_are_flagged(tmp_path):
    report = write_eval_report(
        tmp_path,
        label_names=NAMES,
        predictions={"validation": validation_split(), "test_seen": seen_split()},
        overlap={"validation": ["v1", "v4"]},
    )
    assert report["splits"]["validation"]["also_in_train"] == {"count": 2, "ids": ["v1", "v4"]}
    assert "also_in_train" not in report["splits"]["test_seen"]
    markdown = (tmp_path / "eval_report.md").read_text()
    assert markdown.count("evaluation rows also in train") == 1
    assert "**Warning: 2 evaluation rows also in train**" in markdown
