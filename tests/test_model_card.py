"""The model card: Hub metadata (model-index from the evaluation report) and the body's sections, offline."""

import numpy as np
import pytest
from huggingface_hub import ModelCard
from tiny_models import tiny_config

from mmfusion.evaluation.model_card import write_model_card
from mmfusion.evaluation.predictions import Predictions
from mmfusion.evaluation.report import write_eval_report

BINARY = ["not_hateful", "hateful"]
SENTIMENT = ["negative", "neutral", "positive"]


def predictions_of(ids, texts, labels, probabilities, names=None) -> Predictions:
    """A split's predictions in the order the report tests write them; class names from the width of the table."""
    probabilities = np.asarray(probabilities, dtype=float)
    names = names or (BINARY if probabilities.shape[1] == 2 else [f"class_{i}" for i in range(probabilities.shape[1])])
    return Predictions(ids=ids, probabilities=probabilities, label_names=names, true_labels=labels, texts=texts)


def binary(p1):
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


@pytest.fixture
def hateful_report(tmp_path):
    predictions = {
        "validation": predictions_of(
            [f"{i:05d}" for i in range(6)],
            ["its their character", "putting bows on your pet", "c", "d", "e", "f"],
            np.array([0, 0, 0, 1, 1, 1]),
            binary([0.1, 0.4, 0.7, 0.3, 0.8, 0.9]),
        ),
        "test_seen": predictions_of(["t0", "t1", "t2"], ["x", "y", "z"], np.array([0, 1, 1]), binary([0.2, 0.9, 0.4])),
        "test_unseen": predictions_of(["u0"], ["w"], np.array([-1]), binary([0.6])),
        "train": predictions_of(["r0", "r1"], ["p", "q"], np.array([0, 1]), binary([0.1, 0.9])),
    }
    validation = predictions["validation"].probabilities
    ablations = {"validation": {"image_blanked": validation, "text_emptied": binary(np.full(6, 0.45))}}
    return write_eval_report(tmp_path / "run", label_names=BINARY, predictions=predictions, ablations=ablations)


def index_results(card: ModelCard) -> dict:
    return {(r.dataset_split, r.metric_type): r for r in card.data.eval_results}


def test_binary_card_metadata_and_model_index(tmp_path, repo_root, hateful_report):
    config = tiny_config("early", id2label=dict(enumerate(BINARY)))
    path = write_model_card(
        tmp_path / "run",
        config=config,
        eval_report=hateful_report,
        dataset_name="data/hateful_memes",
        base_models=["bert-base-uncased", "torchvision/resnet18"],
        template_path=repo_root / "model_card.md",
        training_summary={"learning_rate": 5e-6, "num_train_epochs": 30, "optim": "adamw_torch"},
        model_id="someone/mmfusion-hateful-memes",
        dataset_id="someone/hateful_memes",
    )
    assert path == tmp_path / "run" / "README.md"
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-classification"
    assert {"mmfusion", "multimodal", "image-text-classification", "hateful-memes", "early-fusion"} <= set(data.tags)
    assert data.base_model == ["bert-base-uncased"]  # torchvision weights are not a Hub model
    assert data.datasets == ["someone/hateful_memes"]
    assert set(data.metrics) == {"accuracy", "roc_auc", "f1", "precision", "recall"}
    assert data.model_name == "mmfusion-hateful-memes"

    results = index_results(card)
    # unlabeled split: no results; the training split is scored in the report but is no evaluation result
    assert {split for split, _ in results} == {"validation", "test_seen"}
    for split in ("validation", "test_seen"):
        metrics = hateful_report["splits"][split]["metrics"]
        assert results[(split, "accuracy")].metric_value == pytest.approx(metrics["accuracy"])
        assert results[(split, "roc_auc")].metric_value == pytest.approx(metrics["auroc"])
        assert results[(split, "f1")].metric_value == pytest.approx(metrics["f1"])
        assert results[(split, "precision")].metric_value == pytest.approx(metrics["precision"])
        assert results[(split, "recall")].metric_value == pytest.approx(metrics["recall"])
        assert results[(split, "accuracy")].task_type == "text-classification"
        assert results[(split, "accuracy")].dataset_type == "someone/hateful_memes"

    text = path.read_text()
    assert "# pipeline_tag: the Hub has no image+text *classification* task" in text  # the comment is kept
    body = card.text
    for heading in (
        "## Model description",
        "## How to use",
        "## Training data",
        "## Training procedure",
        "## Evaluation results",
        "### Modality ablation: validation",
        "## Intended use",
        "## Limitations",
        "## Ethical considerations",
    ):
        assert heading in body, heading
    assert "AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)" in body
    assert "AutoProcessor.from_pretrained(repo, trust_remote_code=True)" in body
    assert 'repo = "someone/mmfusion-hateful-memes"' in body
    assert "**early fusion**" in body and "`torchvision/resnet18`" in body
    assert "LICENSE.txt" in body and "human review" in body and "bias" in body
    assert "| learning_rate | 5e-06 |" in body
    validation_accuracy = hateful_report["splits"]["validation"]["metrics"]["accuracy"]
    assert f"| validation | 6 | {validation_accuracy:.4f} |" in body
    assert "**relies on the caption**" in body  # image_blanked == full
    assert "| train (training data) | 2 |" in body
    assert "{{" not in body and "{%" not in body


def test_three_class_card_without_hub_dataset(tmp_path, repo_root):
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]])
    report = write_eval_report(
        tmp_path,
        label_names=SENTIMENT,
        predictions={
            "validation": predictions_of(list("abcd"), list("wxyz"), np.array([0, 1, 2, 2]), probabilities, SENTIMENT)
        },
    )
    config = tiny_config("concat", id2label=dict(enumerate(SENTIMENT)))
    path = write_model_card(
        tmp_path / "card",
        config=config.to_dict(),
        eval_report=report,
        dataset_name="data/sentiment/train.jsonl",
        base_models=[],
        template_path=repo_root / "model_card.md",
    )
    card = ModelCard.load(path)
    assert "hateful-memes" not in card.data.tags and "concat-fusion" in card.data.tags
    assert card.data.datasets is None  # a local file is not a Hub dataset
    assert card.data.base_model is None
    results = index_results(card)
    assert set(results) == {("validation", "accuracy"), ("validation", "f1")}
    assert results[("validation", "f1")].metric_value == pytest.approx(
        report["splits"]["validation"]["metrics"]["macro_f1"]
    )
    assert results[("validation", "f1")].metric_args == {"average": "macro"}
    assert results[("validation", "accuracy")].dataset_type == "sentiment_train"
    assert "Randomly initialised towers" in card.text
    assert "Modality ablation" not in card.text  # no ablation given
    assert "LICENSE.txt" not in card.text  # Hateful Memes licence only for Hateful Memes
    assert "human review" in card.text  # ethics always present
