"""The model card (`README.md`) written next to a trained checkpoint.

`write_model_card(output_dir, config=..., eval_report=..., dataset_name=..., base_models=[...],
template_path="model_card.md")` renders the Jinja template at the repository root with
`huggingface_hub.ModelCard.from_template`: Hub metadata (library, pipeline tag, tags, datasets, metrics and a
`model-index` holding the evaluation results of `eval_report.json`), then the description, usage, training,
evaluation (with the modality ablation), intended use, limitations and ethics sections, and for a run repeated over
seeds (the sweep) the mean ± std of its metrics. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..configuration_mmfusion import MMFusionConfig
from ..files import atomic_write_text
from ..fusions import FUSIONS
from .report import (
    ablation_markdown,
    headline_metric_names,
    multi_label_thresholds_line,
    per_label_markdown,
    unimodal_markdown,
)
from .seeds import SeedSummary
from .tables import markdown_table

MODEL_CARD = "README.md"  # the Hub shows a repository's README.md as its model card
TASK_TYPE = "text-classification"  # closest Hub task; see the comment in the template's metadata
TASK_NAME = "Image+text classification"
# report metric -> (Hub metric id, display name, metric args)
TRAINING_SPLITS = ("train",)  # scored in the report, but never shown as evaluation results in `model-index`
_HUB_METRICS = {
    "accuracy": ("accuracy", "Accuracy", None),
    "auroc": ("roc_auc", "AUROC", None),
    "f1": ("f1", "F1", None),
    "precision": ("precision", "Precision", None),
    "recall": ("recall", "Recall", None),
    "macro_f1": ("f1", "Macro F1", {"average": "macro"}),
    "subset_accuracy": ("accuracy", "Subset accuracy", None),
    "micro_f1": ("f1", "Micro F1", {"average": "micro"}),
    "macro_auroc": ("roc_auc", "Macro AUROC", {"average": "macro"}),
}
MULTI_LABEL_HUB_METRICS = ("subset_accuracy", "micro_f1", "macro_f1", "macro_auroc")


def is_hateful_memes(dataset_name: str) -> bool:
    """Whether the card is about the Hateful Memes data, judged by its name (the synthetic `demo` set is not)."""
    return "hatefulmemes" in re.sub(r"[\s_-]+", "", dataset_name.lower())


def hub_base_models(base_models: Sequence[str]) -> list[str]:
    """The base models that are Hub model ids (torchvision weights and local folders are not)."""
    return [
        name
        for name in base_models
        if name and not name.startswith("torchvision/") and not Path(name).exists() and not name.startswith(".")
    ]


def dataset_type_slug(dataset_name: str) -> str:
    """`model-index` dataset type for data that is not on the Hub: `hateful_memes`, `demo`, or a slug of the
    folder name / `<folder>_<file stem>` (`data/sentiment/train.jsonl` -> `sentiment_train`)."""
    if is_hateful_memes(dataset_name):
        return "hateful_memes"
    path = Path(dataset_name)
    name = f"{path.parent.name}_{path.stem}" if path.suffix and path.parent.name else (path.stem or dataset_name)
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "data"


def _tower_description(sub_config, kind: str) -> str:
    model_type = getattr(sub_config, "model_type", "?")
    name = getattr(sub_config, "_name_or_path", "") or getattr(sub_config, "name_or_path", "")
    if kind == "text":
        shape = f"{getattr(sub_config, 'num_hidden_layers', '?')} layers, hidden size {sub_config.hidden_size}"
    else:
        sizes = getattr(sub_config, "hidden_sizes", None)
        depths = getattr(sub_config, "depths", None)
        shape = (
            f"stages of {sizes} channels, depths {depths}"
            if sizes
            else f"hidden size {getattr(sub_config, 'hidden_size', '?')}"
        )
    origin = f", from `{name}`" if name else ""
    return f"`{model_type}` ({shape}{origin})"


def eval_results_from_report(
    eval_report: dict, *, dataset_type: str, dataset_name: str, dataset_id: str | None = None
) -> list[EvalResult]:
    """One `EvalResult` per labeled split and headline metric; the training split and undefined values (AUROC of a
    single-class split) are left out."""
    label_names = eval_report["label_names"]
    multi_label = bool(eval_report.get("multi_label"))
    binary = len(label_names) == 2 and not multi_label
    keys = ("accuracy", "auroc", "f1", "precision", "recall") if binary else ("accuracy", "macro_f1")
    if multi_label:
        keys = MULTI_LABEL_HUB_METRICS
    results = []
    for split, entry in eval_report["splits"].items():
        if not entry.get("labeled") or "metrics" not in entry or split in TRAINING_SPLITS:
            continue
        for key in keys:
            value = entry["metrics"].get(key)
            if value is None:
                continue
            metric_type, display, args = _HUB_METRICS[key]
            if binary and key in ("f1", "precision", "recall"):
                display = f"{display} ({label_names[1]})"
            results.append(
                EvalResult(
                    task_type=TASK_TYPE,
                    task_name=TASK_NAME,
                    dataset_type=dataset_id or dataset_type,
                    dataset_name=dataset_name,
                    dataset_split=split,
                    metric_type=metric_type,
                    metric_name=display,
                    metric_value=float(value),
                    metric_args=args,
                )
            )
    return results


def _results_table(eval_report: dict) -> str:
    label_names = eval_report["label_names"]
    multi_label = bool(eval_report.get("multi_label"))
    headline = [key for key in headline_metric_names(label_names, multi_label) if not key.startswith("f1_")]
    baseline_keys = {
        "random_macro_f1" if multi_label else "random_accuracy": "random-guess "
        + ("macro F1" if multi_label else "accuracy"),
        "majority_subset_accuracy" if multi_label else "majority_accuracy": "majority-"
        + ("label-set subset accuracy" if multi_label else "class accuracy"),
    }
    rows, per_label = [], []
    for split, entry in eval_report["splits"].items():
        if not entry.get("labeled"):
            continue
        baselines = entry.get("baselines", {})
        rows.append(
            [
                f"{split} (training data)" if split in TRAINING_SPLITS else split,
                entry.get("num_labeled", entry["num_examples"]),
                *(entry["metrics"].get(key) for key in headline),
                *(baselines.get(key) for key in baseline_keys),
            ]
        )
        if multi_label and split not in TRAINING_SPLITS:
            table = per_label_markdown(entry)
            per_label += [f"### Per label: {split}", "", *table[2:]]
    if not rows:
        return "No labeled evaluation split."
    header = ["split", "examples", *headline, *baseline_keys.values()]
    # with --unimodal_baselines: the fused model against text-only and image-only models trained the same way
    lines = [*markdown_table(header, rows), *per_label, *unimodal_markdown(eval_report)[2:]]
    return "\n".join(lines).rstrip()


def _training_table(training_summary: dict | None) -> str:
    if not training_summary:
        return ""
    rows = []
    for key, value in training_summary.items():
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, default=str)
        rows.append([key, value if not isinstance(value, float) else f"{value:.6g}"])
    return "\n".join(markdown_table(["setting", "value"], rows)).rstrip()


def _sections(config: MMFusionConfig, eval_report: dict, dataset_name: str, base_models: Sequence[str]) -> dict:
    label_names = eval_report["label_names"]
    hateful = is_hateful_memes(dataset_name)
    demo = dataset_name.strip().lower() == "demo"
    splits = eval_report["splits"]
    split_sizes = ", ".join(
        f"{name} ({entry.get('num_labeled', entry['num_examples'])} {'labeled' if entry['labeled'] else 'unlabeled'})"
        for name, entry in splits.items()
    )
    if hateful:
        training_data = (
            "[Hateful Memes](https://ai.meta.com/blog/hateful-memes-challenge-and-data-set/) (Kiela et al., 2020): "
            "memes - an image and the caption written on it - labeled hateful or not. The set includes *benign "
            "confounders* (the same caption with another image, or the same image with another caption, flipping "
            "the label), so that a model must combine both modalities. "
            f"Loaded from `{dataset_name}`."
        )
    elif demo:
        training_data = (
            "mmfusion's synthetic `demo` dataset (generated locally, not real memes): coloured pictures with a short "
            "caption whose label is the XOR of the picture's colour family and the caption's keyword, so that "
            "neither modality alone carries any information. A smoke test of the pipeline, not a real task."
        )
    else:
        training_data = f"`{dataset_name}`: image+caption pairs with {len(label_names)} classes."
    training_data += f"\n\nEvaluated splits: {split_sizes}."
    multi_label = bool(eval_report.get("multi_label"))
    binary = len(label_names) == 2 and not multi_label
    results_intro = (
        "Predicted class = the most probable one. "
        + (
            f"AUROC is computed on P(`{label_names[1]}`) (the Hateful Memes challenge's metric); F1, precision "
            f"and recall treat `{label_names[1]}` as the positive class."
            if binary
            else "Macro F1 is the unweighted mean of the per-class F1 scores."
        )
        + " Baselines: uniformly random guesses and always predicting the majority class."
    )
    if multi_label:
        results_intro = (
            "Multi-label: every label scores independently (sigmoid), and a row gets every label at or above its "
            "threshold, possibly none. "
            + multi_label_thresholds_line(eval_report.get("decision"))
            + " Subset accuracy counts a row right only when its whole label set is; micro F1 pools every (row, "
            "label) decision, macro F1 and macro AUROC average the labels. Baselines: each label flagged at random "
            "(macro F1) and always predicting the most frequent label set (subset accuracy)."
        )
    ablations = [
        {"split": name, "markdown": "\n".join(ablation_markdown(entry, label_names)).rstrip()}
        for name, entry in splits.items()
        if entry.get("ablations")
    ]
    if hateful:
        intended_use = (
            "Research on multimodal hateful-content detection: benchmarking fusion strategies, studying which "
            "modality a model relies on, and error analysis. At most a *triage aid* that ranks content for trained "
            "human reviewers, and only after evaluation on the target platform's own data."
        )
    else:
        intended_use = (
            f"Classifying image+caption pairs into {', '.join(f'`{n}`' for n in label_names)} on data like the "
            "training data, for research and prototyping. Evaluate on your own data before relying on it."
        )
    limitations = [
        "The caption is an input of its own: the model does not read text rendered inside the image (run OCR "
        "first when the caption is not available).",
        "Probabilities are not calibrated; choose a decision threshold on held-out data from the target domain.",
        "Text the text tower's tokenizer was not pretrained on (other languages, scripts, heavy slang or coded "
        "language) is handled poorly.",
        "Memes and online language change quickly: new templates, slurs and dog whistles are missed, and "
        "performance on data unlike the training data is unknown.",
    ]
    if hateful:
        limitations.insert(
            0,
            "Hateful meme detection is hard: models are far from human accuracy on Hateful Memes, and most "
            "mistakes come from examples whose meaning needs world knowledge or the interplay of image and caption.",
        )
    if not base_models:
        limitations.insert(0, "Randomly initialised towers: a demonstration model, not useful on real data.")
    for entry in splits.values():
        summary = entry.get("modality_reliance", {}).get("summary")
        if summary in ("text", "image"):
            limitations.append(
                f"The modality ablation shows that the model relies mostly on the {summary}: content whose meaning "
                "lies in the combination of image and caption is likely to be misclassified."
            )
            break
    ethics = [
        "Classifiers of hateful or offensive content can encode and amplify bias: mentions of identity groups "
        "(religion, ethnicity, nationality, gender, sexual orientation, disability) may be flagged because they "
        "co-occur with hate in the training data, while hate in under-represented dialects or coded language is "
        "missed. Measure error rates per group before any use.",
        "Not for automated moderation without human review: false positives silence people, often members of the "
        "groups the content targets, and false negatives let hate through. Keep humans in the loop and give "
        "affected users a way to appeal.",
        "The training and evaluation data contain hateful and offensive material. Protect the people who "
        "inspect it; `eval_report.md` next to the checkpoint quotes captions of misclassified examples, so review "
        "it before publishing.",
    ]
    if hateful:
        ethics.insert(
            0,
            "The Hateful Memes data is distributed by Meta under its own licence, which restricts its use and "
            "redistribution (research use; read the `LICENSE.txt` shipped with the data). This model is derived "
            "from it: check the licence before using or sharing the model beyond research.",
        )
    frozen = [
        name
        for name, flag in (("text tower", config.freeze_text_encoder), ("vision tower", config.freeze_vision_encoder))
        if flag
    ]
    fusion_description = FUSIONS[config.fusion].description.format(**config.to_dict())
    text_tower = _tower_description(config.text_config, "text")
    vision_tower = (
        _tower_description(config.vision_config, "vision") + f", {config.image_size}x{config.image_size} px images"
    )
    vision_language = getattr(config, "vision_language_config", None)
    if vision_language is not None:  # a joint model: one vision-language model is both towers
        source = getattr(config, "vision_language_model_name_or_path", None)
        text_tower = vision_tower = (
            f"`{vision_language.model_type}` vision-language model (language model: "
            f"{_tower_description(vision_language.get_text_config(), 'text')}"
            + (f", from `{source}`" if source else "")
            + f"; LoRA r={config.lora_r})"
        )
    return {
        "fusion": config.fusion,
        "fusion_description": fusion_description,
        "text_tower": text_tower,
        "vision_tower": vision_tower,
        "base_model_names": list(base_models),
        "label_names": label_names,
        "num_labels": len(label_names),
        "frozen": ", ".join(frozen) if frozen else "nothing (both towers fine-tuned)",
        "modality_dropout": config.modality_dropout,
        "training_data": training_data,
        "results_intro": results_intro,
        "results_table": _results_table(eval_report),
        "ablations": ablations,
        "intended_use": intended_use,
        "limitations": limitations,
        "ethics": ethics,
        "hateful": hateful,
        # multi-label: independent sigmoids (softmax otherwise)
        "score_expression": ".sigmoid()[0]" if multi_label else ".softmax(dim=-1)[0]",
    }


def write_model_card(
    output_dir: str | Path,
    *,
    config: MMFusionConfig | dict,
    eval_report: dict,
    dataset_name: str,
    base_models: list[str],
    template_path: str | Path,
    training_summary: dict | None = None,
    model_id: str | None = None,
    dataset_id: str | None = None,
    license: str | None = None,
    seed_summary: SeedSummary | None = None,
) -> Path:
    """Render `template_path` (the repo's `model_card.md`) into `output_dir/README.md` and return its path.

    `eval_report` is the dict `write_eval_report` returned (or `eval_report.json` loaded). `base_models` are the
    pretrained towers the model started from (Hub ids in the metadata; `torchvision/...` and local folders are
    only named in the text). `training_summary`: settings and results shown as a table (e.g. learning rate, epochs,
    train runtime). `model_id`: the Hub repo used in the usage snippet and `model-index` (default:
    `your-username/<output_dir name>`). `dataset_id`: the Hub dataset id the data came from, for the `datasets`
    metadata and `model-index` (local folders and files are not Hub datasets, so there is no default). `license`: the model's licence identifier, if decided.
    `seed_summary`: the spread of the metrics over the seeds the run was repeated with (the sweep writes the card
    again with it once every seed has run).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(config, dict):
        config = MMFusionConfig(**config)
    label_names = list(eval_report["label_names"])
    model_id = model_id or f"your-username/{output_dir.resolve().name}"
    hateful = is_hateful_memes(dataset_name)
    dataset_display = "Hateful Memes" if hateful else dataset_name
    eval_results = eval_results_from_report(
        eval_report, dataset_type=dataset_type_slug(dataset_name), dataset_name=dataset_display, dataset_id=dataset_id
    )
    tags = ["mmfusion", "multimodal", "image-text-classification", f"{config.fusion}-fusion"]
    if hateful:
        tags.append("hateful-memes")
    metrics = sorted({result.metric_type for result in eval_results}) or None
    card_data = ModelCardData(
        model_name=model_id.split("/")[-1] if eval_results else None,
        library_name="transformers",
        pipeline_tag=TASK_TYPE,
        tags=tags,
        datasets=[dataset_id] if dataset_id else None,
        base_model=hub_base_models(base_models) or None,
        metrics=metrics,
        eval_results=eval_results or None,
        license=license,
    )
    sections = _sections(config, eval_report, dataset_name, base_models)
    task = "hateful-meme detection" if hateful else f"{len(label_names)}-class image+text classification"
    if eval_report.get("multi_label"):
        task = f"{len(label_names)}-label (multi-label) image+text classification"
    objective = (
        "the binary cross-entropy of each label (multi-label)"
        if eval_report.get("multi_label")
        else "the cross-entropy of the class labels"
    )
    procedure = (
        f"Fine-tuned with the Hugging Face `Trainer` (mmfusion's `train.py`) on {objective}; model selection on the "
        f"validation `{eval_report.get('primary_metric', 'accuracy')}`."
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_id=model_id,
        model_title=f"{model_id.split('/')[-1]}: {FUSIONS[config.fusion].title} {task}",
        summary=(
            f"An image+text classifier ({sections['fusion']} fusion of a text and a vision tower) for {task} "
            f"({', '.join(label_names)}), built with mmfusion on transformers."
        ),
        training_procedure=procedure,
        training_table=_training_table(training_summary),
        seed_summary=seed_summary.markdown() if seed_summary is not None else None,
        **sections,
    )
    path = output_dir / MODEL_CARD
    atomic_write_text(path, _with_metadata_comments(str(card), Path(template_path).read_text(encoding="utf-8")))
    return path


def _with_metadata_comments(card_text: str, template_text: str) -> str:
    """Put the template's YAML comments (why `pipeline_tag` is text-classification...) back into the metadata block:
    `ModelCard` re-serialises the metadata, which drops comments."""
    match = re.match(r"---\n(.*?)\n---\n", template_text, flags=re.DOTALL)
    comments = [line for line in (match[1].splitlines() if match else []) if line.lstrip().startswith("#")]
    if not comments or not card_text.startswith("---\n"):
        return card_text
    return "---\n" + "\n".join(comments) + "\n" + card_text[len("---\n") :]


__all__ = [
    "MODEL_CARD",
    "dataset_type_slug",
    "eval_results_from_report",
    "hub_base_models",
    "is_hateful_memes",
    "write_model_card",
]
