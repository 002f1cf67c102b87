"""The evaluation report written after training: metrics, baselines, errors and the modality ablation.

`write_eval_report(output_dir, label_names=..., predictions={split: Predictions(...)}, ...)` writes

- `eval_report.json`: for every labeled split its metrics, the random/majority baselines, a per-class table, the
  confusion matrix (rows: true class, columns: predicted class), the modality ablation (metrics with the image
  blanked / the caption emptied / both, see `mmfusion.evaluation.ablation`) with a reading of which modality the model relies
  on, and the most confident errors; for unlabeled splits only the number of examples and the predicted label
  distribution. Strict JSON: undefined values (AUROC of a single-class split) are `null`.
- `eval_report.md`: the same as markdown tables,
- `confusion_matrix_<split>.png` for every labeled split and `training_curves.png` from the Trainer's
  `log_history` (when given and not empty).

Multi-label models (`Predictions.multi_label`): the metrics are subset accuracy, micro/macro F1, precision, recall
and AUROC at the per-label thresholds in force; the per-class table becomes a per-label table (F1, precision,
recall, AUROC, threshold, support, predicted) with micro and macro rows; there is no confusion matrix (a row may
have several labels or none, so there is no single true/predicted cell to count it in: the per-label table gives
each label's true/false positives instead) and no calibration section (temperature scaling is not fitted for them);
the modality ablation reads macro AUROC, and an error is a row whose predicted label set differs from the true one,
ranked by its most confident wrong label.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from ..decisions import is_multi_label
from ..files import atomic_write_text
from .ablation import ABLATION_TITLES, ABLATIONS, VERDICTS, modality_verdict, share_kept
from .calibration import expected_calibration_error, negative_log_likelihood, reliability_bins
from .metrics import (
    BINARY_METRICS,
    MULTICLASS_METRICS,
    MULTILABEL_METRICS,
    baseline_metrics,
    best_model_metric,
    classification_metrics,
    metric_key,
    multi_label_baselines,
    multi_label_metrics,
    multi_label_per_label_table,
    per_class_table,
)
from .plots import plot_confusion_matrix, plot_operating_curves, plot_reliability, plot_training_curves
from .predictions import Predictions, probabilities_from_logits
from .seeds import SeedSummary
from .tables import json_safe, markdown_table, strict_json
from .thresholds import UnreachableTargetError, operating_point_report, operating_points, point_figures

REPORT_JSON = "eval_report.json"
REPORT_MARKDOWN = "eval_report.md"
TRAINING_CURVES_PNG = "training_curves.png"
# What each verdict means for a split's metrics (the verdict itself is mmfusion.evaluation.ablation's).
_VERDICT_NOTES = {
    "either": "Either modality alone keeps the model's score: each carries the label on its own (redundant cues), "
    "or the evaluation data lets one modality stand in for the other.",
    "text": "Blanking the image leaves the metrics near the full model's: the model relies on the caption and "
    "largely ignores the image.",
    "image": "Emptying the caption leaves the metrics near the full model's: the model relies on the image and "
    "largely ignores the caption.",
    "both": "Removing either modality loses most of the gain: the model needs the image and the caption together.",
    "mixed": "The model uses both modalities, but neither alone keeps most of its score.",
}


def _safe_file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _distribution(classes: np.ndarray, label_names: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(classes, minlength=len(label_names)) if classes.size else np.zeros(len(label_names), int)
    return {str(name): int(counts[i]) for i, name in enumerate(label_names)}


NO_CONFUSION_MATRIX = (
    "No confusion matrix: a multi-label row may have several labels or none, so it has no single true/predicted "
    "cell; the per-label table above counts each label's true and false positives instead."
)


def headline_metric_names(label_names: Sequence[str], multi_label: bool = False) -> list[str]:
    """The metrics shown in tables: the binary set, or accuracy, macro F1 and the per-class F1s (multi-label: subset
    accuracy, micro/macro F1 and AUROC, and the per-label F1s)."""
    if multi_label:
        return [*MULTILABEL_METRICS, *(f"f1_{metric_key(name)}" for name in label_names)]
    if len(label_names) == 2:
        return list(BINARY_METRICS)
    return [*MULTICLASS_METRICS, *(f"f1_{metric_key(name)}" for name in label_names)]


def chance_level(metric: str, labels: np.ndarray, num_classes: int) -> float:
    """What guessing scores on `metric`: 0.5 AUROC, the majority-class accuracy, or the expected macro F1 of
    uniform random guesses (class c: precision = its share p_c, recall = 1/C, so F1_c = 2 p_c / (1 + C p_c)).
    Multi-hot `labels` (multi-label): 0.5 for the AUROCs; for macro F1, each label flagged at random with
    probability 1/2 (F1_c = 2 p_c / (1 + 2 p_c)); subset accuracy: the most frequent label set's share."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[(labels >= 0).all(axis=1)]
        if metric.endswith("auroc"):
            return 0.5
        shares = labels.mean(axis=0) if labels.size else np.zeros(labels.shape[1])
        if metric == "macro_f1":
            return float(np.mean(2 * shares / (1 + 2 * shares)))
        _, counts = np.unique(labels, axis=0, return_counts=True)
        return float(counts.max() / max(labels.shape[0], 1)) if counts.size else 0.0
    labels = labels[labels >= 0]
    shares = np.bincount(labels, minlength=num_classes) / max(labels.size, 1)
    if metric == "auroc":
        return 0.5
    if metric == "macro_f1":
        return float(np.mean(2 * shares / (1 + num_classes * shares)))
    return float(shares.max())


def modality_reliance(
    ablation_metrics: dict[str, dict[str, float]],
    agreement: dict[str, float],
    labels: np.ndarray,
    label_names: Sequence[str],
    both_blanked_prediction: str | None = None,
) -> dict:
    """Read the ablation table: which modality does the model need?

    The measure is the share of the full model's gain over chance that an ablation keeps,
    `(ablated - chance) / (full - chance)`, on the task's headline metric (AUROC, or accuracy where AUROC is
    undefined; macro F1 for multi-class). Returns `metric`, `chance`, `retained` per ablation, `agreement` (share of
    predictions unchanged), `summary` (`"text"`, `"image"`, `"both"`, `"either"`, `"mixed"` or `"undetermined"`)
    and human-readable `notes`.
    """
    full = ablation_metrics["full"]
    multi_label = np.asarray(labels).ndim == 2
    metric = best_model_metric(len(label_names), multi_label)
    if metric in ("auroc", "macro_auroc") and not all(
        math.isfinite(m.get(metric, math.nan)) for m in ablation_metrics.values()
    ):
        metric = "macro_f1" if multi_label else "accuracy"
    chance = chance_level(metric, labels, len(label_names))
    result = {"metric": metric, "chance": chance, "retained": {}, "agreement": dict(agreement), "notes": []}
    notes = result["notes"]
    if "image_blanked" not in ablation_metrics or "text_emptied" not in ablation_metrics:
        result["summary"] = "undetermined"
        notes.append("Both single-modality ablations (image_blanked, text_emptied) are needed for a verdict.")
        return result
    result["summary"] = modality_verdict(
        full[metric], ablation_metrics["image_blanked"][metric], ablation_metrics["text_emptied"][metric], chance
    )
    if result["summary"] == "undetermined":
        notes.append(
            f"The full model is not clearly better than chance ({metric} {full[metric]:.3f} vs {chance:.3f}), "
            "so the ablation cannot tell which modality it relies on."
        )
        return result
    for name, metrics in ablation_metrics.items():
        if name == "full":
            continue
        retained = share_kept(full[metric], metrics[metric], chance)
        result["retained"][name] = retained
        unchanged = f", {agreement[name]:.0%} of predictions unchanged" if name in agreement else ""
        notes.append(
            f"{ABLATION_TITLES.get(name, name).capitalize()}: {metric} {full[metric]:.3f} -> {metrics[metric]:.3f} "
            f"(keeps {retained:.0%} of the gain over chance{unchanged})."
        )
    notes.append(_VERDICT_NOTES[result["summary"]])
    if both_blanked_prediction is not None:
        notes.append(
            f"With both inputs blanked every example looks the same; the model then predicts "
            f"`{both_blanked_prediction}` (its prior)."
        )
    return result


def _most_confident_errors(split: Predictions, label_names: Sequence[str], count: int) -> list[dict]:
    predicted = split.label_ids
    wrong = np.flatnonzero(split.labeled & (predicted != split.true_labels))
    confidence = split.probabilities[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][: max(count, 0)]
    return [
        {
            "id": split.ids[i],
            "text": split.texts[i],
            "true_label": str(label_names[split.true_labels[i]]),
            "predicted_label": str(label_names[predicted[i]]),
            "probability": float(split.probabilities[i, predicted[i]]),
            "true_label_probability": float(split.probabilities[i, split.true_labels[i]]),
        }
        for i in order
    ]


def _label_set(row: np.ndarray, label_names: Sequence[str]) -> str:
    names = [str(label_names[i]) for i in np.flatnonzero(row > 0)]
    return ", ".join(names) if names else "(none)"


def _most_confident_multi_label_errors(split: Predictions, label_names: Sequence[str], count: int) -> list[dict]:
    """Rows whose predicted label set differs from the true one, by the confidence of their worst wrong label (a
    label flagged with probability p: p; a label missed: 1 - p)."""
    predicted, truth, probabilities = split.label_ids, split.true_labels, split.probabilities
    wrong = (predicted != truth) & split.labeled[:, None]
    confidence = np.where(wrong, np.where(predicted == 1, probabilities, 1 - probabilities), -1.0)
    rows = np.flatnonzero(wrong.any(axis=1))
    worst = confidence[rows].argmax(axis=1)
    order = np.argsort(-confidence[rows, worst], kind="stable")[: max(count, 0)]
    errors = []
    for position in order:
        i, label = int(rows[position]), int(worst[position])
        errors.append(
            {
                "id": split.ids[i],
                "text": split.texts[i],
                "true_label": _label_set(truth[i], label_names),
                "predicted_label": _label_set(predicted[i], label_names),
                "label": str(label_names[label]),
                "error": "false positive" if predicted[i, label] == 1 else "missed",
                "probability": float(probabilities[i, label]),
            }
        )
    return errors


def _multi_label_distribution(matrix: np.ndarray, label_names: Sequence[str]) -> dict[str, int]:
    """Rows per label, and rows with no label (`(none)`)."""
    matrix = np.asarray(matrix).reshape(-1, len(label_names))
    counts = {str(name): int((matrix[:, i] > 0).sum()) for i, name in enumerate(label_names)}
    counts["(none)"] = int((~(matrix > 0).any(axis=1)).sum())
    return counts


def multi_label_split_report(
    name: str,
    split: Predictions,
    label_names: Sequence[str],
    ablations: dict[str, np.ndarray] | None = None,
    num_errors: int = 10,
) -> dict:
    """`split_report` of a multi-label model's split (see the module docstring)."""
    predicted = split.label_ids
    report = {
        "labeled": bool(split.labeled.any()),
        "num_examples": len(split.ids),
        "predicted_distribution": _multi_label_distribution(predicted, label_names),
    }
    if not report["labeled"]:
        return report
    mask = split.labeled
    labels = split.true_labels
    threshold = split.threshold
    report["num_labeled"] = int(mask.sum())
    report["label_distribution"] = _multi_label_distribution(labels[mask], label_names)
    report["metrics"] = multi_label_metrics(split.probabilities, labels, label_names, threshold)
    report["baselines"] = multi_label_baselines(labels, label_names)
    report["per_class"] = multi_label_per_label_table(split.probabilities, labels, label_names, threshold)
    report["confusion_matrix"] = None
    report["confusion_matrix_note"] = NO_CONFUSION_MATRIX
    if ablations:
        table = {"full": report["metrics"]}
        agreement = {}
        for ablation in ABLATIONS:
            if ablation == "full" or ablation not in ablations:
                continue
            table[ablation] = multi_label_metrics(ablations[ablation], labels, label_names, threshold)
            decided = Predictions(
                split.ids, ablations[ablation], label_names, threshold=threshold, multi_label=True
            ).label_ids
            agreement[ablation] = float((decided == predicted).all(axis=1).mean())
        prior = None
        if "both_blanked" in ablations:
            decided = Predictions(
                split.ids, ablations["both_blanked"], label_names, threshold=threshold, multi_label=True
            ).label_ids
            sets, counts = np.unique(decided, axis=0, return_counts=True)
            prior = _label_set(sets[int(counts.argmax())], label_names)
        report["ablations"] = table
        report["modality_reliance"] = modality_reliance(table, agreement, labels[mask], label_names, prior)
    report["most_confident_errors"] = _most_confident_multi_label_errors(split, label_names, num_errors)
    return report


def _check_ablations(
    ablations: dict[str, dict[str, np.ndarray]] | None, predictions: dict[str, Predictions]
) -> dict[str, dict[str, np.ndarray]]:
    checked = {}
    for split, by_name in (ablations or {}).items():
        if split not in predictions:
            raise ValueError(f"Ablations given for split {split!r}, which has no predictions.")
        checked[split] = {}
        for name, probabilities in by_name.items():
            if name not in ABLATIONS:
                raise ValueError(f"Unknown ablation {name!r}; expected one of {', '.join(ABLATIONS)}.")
            probabilities = np.asarray(probabilities, dtype=np.float64)
            if probabilities.shape != predictions[split].probabilities.shape:
                raise ValueError(
                    f"Ablation {name!r} of split {split!r} has probabilities of shape {probabilities.shape}, "
                    f"expected {predictions[split].probabilities.shape}."
                )
            checked[split][name] = probabilities
    return checked


def split_report(
    name: str,
    split: Predictions,
    label_names: Sequence[str],
    ablations: dict[str, np.ndarray] | None = None,
    num_errors: int = 10,
) -> dict:
    """The report of one split (see the module docstring); no files written."""
    if split.probabilities.shape[1] != len(label_names):
        raise ValueError(
            f"Split {name!r}: probabilities have {split.probabilities.shape[1]} columns for {len(label_names)} "
            f"classes {list(label_names)}."
        )
    if split.multi_label:
        return multi_label_split_report(name, split, label_names, ablations, num_errors)
    predicted = split.label_ids  # decided with the split's threshold (argmax without one)
    report = {
        "labeled": bool(split.labeled.any()),
        "num_examples": len(split.ids),
        "predicted_distribution": _distribution(predicted, label_names),
    }
    if not report["labeled"]:
        return report
    mask = split.labeled
    labels = split.true_labels[mask]
    report["num_labeled"] = int(mask.sum())
    report["label_distribution"] = _distribution(labels, label_names)
    report["metrics"] = classification_metrics(split.probabilities, split.true_labels, label_names)
    report["baselines"] = baseline_metrics(split.true_labels, label_names)
    report["per_class"] = per_class_table(split.probabilities, split.true_labels, label_names)
    report["confusion_matrix"] = confusion_matrix(
        labels, predicted[mask], labels=list(range(len(label_names)))
    ).tolist()
    if ablations:
        table = {"full": report["metrics"]}
        agreement = {}
        for ablation in ABLATIONS:
            if ablation == "full" or ablation not in ablations:
                continue
            table[ablation] = classification_metrics(ablations[ablation], split.true_labels, label_names)
            agreement[ablation] = float((ablations[ablation].argmax(axis=1) == predicted).mean())
        prior = None
        if "both_blanked" in ablations:
            counts = np.bincount(ablations["both_blanked"].argmax(axis=1), minlength=len(label_names))
            prior = str(label_names[int(counts.argmax())])
        report["ablations"] = table
        report["modality_reliance"] = modality_reliance(table, agreement, split.true_labels, label_names, prior)
    report["most_confident_errors"] = _most_confident_errors(split, label_names, num_errors)
    calibration = calibration_entry(split)
    if calibration:
        report["calibration"] = calibration
    if split.threshold is not None:
        report["operating_point"] = operating_point_report(
            split.probabilities, split.true_labels, split.threshold, label_names
        )
    return report


def calibration_entry(split: Predictions) -> dict:
    """ECE and NLL of the split's scores before temperature scaling (its logits) and after (its probabilities: the
    head's, when the model predicts with its labelled memory); none for a multi-label model (no temperature is
    fitted for it)."""
    if split.logits is None or split.multi_label or not split.labeled.any():
        return {}
    before = probabilities_from_logits(split.logits, dtype="float64")
    after = _calibrated(split)
    labels = split.true_labels
    entry = {
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "nll_before": negative_log_likelihood(split.logits, labels),
    }
    with np.errstate(divide="ignore"):
        log_probabilities = np.log(np.clip(after, 1e-300, 1.0))
    entry["nll_after"] = negative_log_likelihood(log_probabilities, labels)
    return entry


def _calibrated(split: Predictions) -> np.ndarray:
    """The temperature-scaled head's probabilities of a split (what temperature scaling is measured on)."""
    return split.head_probabilities if split.head_probabilities is not None else split.probabilities


def _write_split_figures(output_dir: Path, split_name: str, split: Predictions, entry: dict, label_names) -> None:
    """The reliability diagram and (two classes) the precision-recall and ROC curves of one labeled split."""
    part = _safe_file_part(split_name)
    if "calibration" in entry:
        bins = {
            "before temperature scaling": reliability_bins(probabilities_from_logits(split.logits), split.true_labels)
        }
        bins["after"] = reliability_bins(_calibrated(split), split.true_labels)
        filename = f"reliability_{part}.png"
        plot_reliability(bins, output_dir / filename, title=f"Reliability diagram: {split_name}")
        entry["calibration"]["reliability_plot"] = filename
    if len(label_names) != 2 or split.multi_label:
        return
    mask = split.labeled
    scores, positives = split.probabilities[mask, 1], split.true_labels[mask] == 1
    try:
        points = operating_points(scores, positives)
    except UnreachableTargetError:  # a single-class split has no curves
        return
    threshold = 0.5 if split.threshold is None else split.threshold
    chosen = point_figures(scores, positives, threshold)
    filename = f"operating_curves_{part}.png"
    plot_operating_curves(points, chosen, output_dir / filename, title=f"{split_name}: operating point marked")
    entry["operating_curves_plot"] = filename


# ---------------------------------------------------------------------------------------------------------------
# Markdown


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def ablation_markdown(split: dict, label_names: Sequence[str], multi_label: bool | None = None) -> list[str]:
    """The ablation table of one split's report entry and its reading, as markdown lines (`multi_label`: None reads
    it from the split's metrics)."""
    if multi_label is None:
        multi_label = "subset_accuracy" in split["ablations"].get("full", {})
    headline = headline_metric_names(label_names, multi_label)
    reliance = split["modality_reliance"]
    rows = []
    for name, metrics in split["ablations"].items():
        rows.append(
            [
                ABLATION_TITLES.get(name, name),
                *(metrics.get(key) for key in headline),
                _percent(reliance["retained"].get(name, 1.0 if name == "full" else None)),
                _percent(reliance["agreement"].get(name, 1.0 if name == "full" else None)),
            ]
        )
    lines = markdown_table(["input", *headline, "gain over chance kept", "predictions unchanged"], rows)
    lines += [
        f"**Reading** (`{reliance['metric']}`, chance = {reliance['chance']:.3f}): "
        f"the model **{VERDICTS.get(reliance['summary'], reliance['summary'])}**.",
        "",
    ]
    return lines + [f"- {note}" for note in reliance["notes"]] + [""]


def operating_point_markdown(split_name: str, split: dict, decision: dict | None) -> list[str]:
    """The split's figures at the decision threshold in force, and its precision-recall / ROC curves."""
    point = split.get("operating_point")
    if not point and not split.get("operating_curves_plot"):
        return []
    lines = ["### Operating point", ""]
    if point:
        policy = (decision or {}).get("decision_policy") or "fixed"
        lines += [
            f"Decision threshold `{(decision or {}).get('decision_threshold')}` (policy `{policy}`, chosen on "
            f"`{((decision or {}).get('decision_figures') or {}).get('split')}`); the metrics above are argmax's.",
            "",
        ]
        rows = [
            [name, f["threshold"], f["precision"], f["recall"], f["fpr"], f["f1"], f["flagged"]]
            for name, f in point["per_class"].items()
        ]
        lines += markdown_table(["class", "threshold", "precision", "recall", "FPR", "F1", "flagged"], rows)
    else:
        lines += ["No decision threshold: the most probable class is predicted (for two classes, at 0.5).", ""]
    if split.get("operating_curves_plot"):
        lines += [f"![Precision-recall and ROC curves, {split_name}]({split['operating_curves_plot']})", ""]
    return lines


def calibration_markdown(split_name: str, split: dict, decision: dict | None) -> list[str]:
    """Expected calibration error before / after temperature scaling, and the reliability diagram."""
    calibration = split.get("calibration")
    if not calibration:
        return []
    temperature = (decision or {}).get("calibration_temperature", 1.0)
    lines = ["### Calibration", ""]
    lines += markdown_table(
        ["scores", "ECE", "NLL"],
        [
            ["before temperature scaling", calibration["ece_before"], calibration["nll_before"]],
            [f"after (T = {temperature:.4g})", calibration["ece_after"], calibration["nll_after"]],
        ],
    )
    if calibration.get("reliability_plot"):
        lines += [f"![Reliability diagram, {split_name}]({calibration['reliability_plot']})", ""]
    return lines


def multi_label_thresholds_line(decision: dict | None) -> str:
    """How a multi-label model's per-label thresholds were chosen, for the report and the card."""
    decision = decision or {}
    thresholds = decision.get("decision_threshold")
    if thresholds is None:
        return "Labels are predicted at probability >= 0.5 each (no per-label thresholds were chosen)."
    split = (decision.get("decision_figures") or {}).get("split")
    where = f" on `{split}`" if split else ""
    return (
        f"Each label is predicted when its probability reaches its own threshold (policy "
        f"`{decision.get('decision_policy') or 'fixed'}`{where}; the `threshold` column); the metrics are at those "
        "thresholds, except AUROC, which takes none."
    )


def per_label_markdown(split: dict) -> list[str]:
    """A multi-label split's per-label table, with its micro and macro rows."""
    metrics = split["metrics"]
    rows = [
        [
            row["label"],
            row["f1"],
            row["precision"],
            row["recall"],
            row["auroc"],
            row["threshold"],
            row["support"],
            row["predicted"],
        ]
        for row in split["per_class"]
    ]
    for average in ("micro", "macro"):
        rows.append(
            [
                f"**{average}**",
                metrics.get(f"{average}_f1"),
                metrics.get(f"{average}_precision"),
                metrics.get(f"{average}_recall"),
                metrics.get(f"{average}_auroc"),
                "",
                "",
                "",
            ]
        )
    header = ["label", "F1", "precision", "recall", "AUROC", "threshold", "support", "predicted"]
    return ["### Per label", "", *markdown_table(header, rows)]


UNIMODAL_TITLES = {"text": "text-only", "image": "image-only"}


def unimodal_comparison(fusion: str, report: dict, baseline_reports: dict[str, dict]) -> dict:
    """`{split: {model: metrics}}`: the fused model and each unimodal baseline (`{fusion: its eval report}`) on every
    labeled split they share, the Hateful Memes paper's layout."""
    comparison = {}
    for split_name, entry in report["splits"].items():
        if not entry.get("labeled"):
            continue
        rows = {f"fused ({fusion})": entry["metrics"]}
        for baseline, baseline_report in baseline_reports.items():
            baseline_entry = baseline_report["splits"].get(split_name, {})
            if baseline_entry.get("labeled"):
                rows[UNIMODAL_TITLES.get(baseline, baseline)] = baseline_entry["metrics"]
        comparison[split_name] = rows
    return comparison


def unimodal_markdown(report: dict) -> list[str]:
    """The comparison table: one row per model, the headline metrics of each split as columns."""
    comparison = report.get("unimodal_baselines")
    if not comparison:
        return []
    multi_label = bool(report.get("multi_label"))
    headline = [key for key in headline_metric_names(report["label_names"], multi_label) if not key.startswith("f1_")]
    if len(report["label_names"]) > 2 or multi_label:
        headline = [*headline, *(f"f1_{metric_key(name)}" for name in report["label_names"])]
    models = list(dict.fromkeys(model for rows in comparison.values() for model in rows))
    header = ["model", *(f"{split} {metric}" for split in comparison for metric in headline)]
    rows = [
        [model, *(comparison[split].get(model, {}).get(metric) for split in comparison for metric in headline)]
        for model in models
    ]
    intro = (
        "The fused model next to text-only and image-only models trained with the same data, towers, recipe and "
        "seed (`--unimodal_baselines`; their checkpoints and reports are in `baselines/`). A fusion that does not "
        "beat the text-only row gains nothing from the image."
    )
    return ["## Fused vs unimodal baselines", "", intro, "", *markdown_table(header, rows)]


def render_markdown(report: dict, seed_summary: SeedSummary | None = None) -> str:
    """`eval_report.md` from a report dict (as returned by `write_eval_report`), ending with `seed_summary` (the
    spread of the metrics over the seeds the run was repeated with, by the sweep) when given."""
    label_names = report["label_names"]
    multi_label = bool(report.get("multi_label"))
    lines = [
        "# Evaluation report",
        "",
        f"{'Labels (multi-label: each row has any number of them)' if multi_label else 'Classes'}: "
        f"{', '.join(f'`{name}`' for name in label_names)}. Headline metric: `{report['primary_metric']}`.",
        "",
    ]
    if multi_label:
        lines += [multi_label_thresholds_line(report.get("decision")), ""]
    lines += unimodal_markdown(report)
    for split_name, split in report["splits"].items():
        if not split["labeled"]:
            lines += [f"## {split_name} (unlabeled, {split['num_examples']} examples)", ""]
            lines += ["Predicted label distribution:", ""]
            lines += markdown_table(["label", "predicted"], list(split["predicted_distribution"].items()))
            continue
        unlabeled = split["num_examples"] - split["num_labeled"]
        extra = f", {unlabeled} unlabeled rows left out" if unlabeled else ""
        lines += [f"## {split_name} ({split['num_labeled']} labeled examples{extra})", ""]
        if split.get("also_in_train"):
            lines += [
                f"> **Warning: {split['also_in_train']['count']} evaluation rows also in train** (same id, image and "
                "text), so every metric below is inflated.",
                "",
            ]
        lines += ["### Metrics", ""]
        rows = [[key, value] for key, value in split["metrics"].items()]
        rows += [[f"baseline: {key}", value] for key, value in split["baselines"].items()]
        lines += markdown_table(["metric", "value"], rows)
        if multi_label:
            lines += per_label_markdown(split)
        else:
            lines += ["### Per class", ""]
            lines += markdown_table(
                ["class", "precision", "recall", "f1", "support", "predicted"],
                [
                    [row["label"], row["precision"], row["recall"], row["f1"], row["support"], predicted]
                    for row, predicted in zip(split["per_class"], split["predicted_distribution"].values())
                ],
            )
        if split.get("confusion_matrix") is None:
            lines += [split.get("confusion_matrix_note", NO_CONFUSION_MATRIX), ""]
        else:
            lines += ["### Confusion matrix (rows: true, columns: predicted)", ""]
            lines += markdown_table(
                ["true \\ predicted", *label_names],
                [[name, *counts] for name, counts in zip(label_names, split["confusion_matrix"])],
            )
        if split.get("confusion_matrix_plot"):
            lines += [f"![Confusion matrix, {split_name}]({split['confusion_matrix_plot']})", ""]
        lines += operating_point_markdown(split_name, split, report.get("decision"))
        lines += calibration_markdown(split_name, split, report.get("decision"))
        if "ablations" in split:
            lines += ["### Modality ablation", ""]
            lines += [
                "The same model scored with one or both inputs removed (blank image = ImageNet-mean grey, empty "
                "caption = `[CLS] [SEP]`). A modality whose removal leaves the metrics near the full model's is "
                "one the model does not rely on.",
                "",
            ]
            lines += ablation_markdown(split, label_names, multi_label)
        errors = split["most_confident_errors"]
        lines += [f"### Most confident errors ({len(errors)})", ""]
        if errors and multi_label:
            lines += [
                "Rows whose predicted label set differs from the true one, by their most confident wrong label "
                "(flagged: its probability; missed: one minus it).",
                "",
            ]
            lines += markdown_table(
                ["id", "text", "true", "predicted", "worst label", "error", "probability"],
                [
                    [
                        e["id"],
                        e["text"],
                        e["true_label"],
                        e["predicted_label"],
                        e["label"],
                        e["error"],
                        e["probability"],
                    ]
                    for e in errors
                ],
            )
        elif errors:
            lines += markdown_table(
                ["id", "text", "true", "predicted", "probability"],
                [[e["id"], e["text"], e["true_label"], e["predicted_label"], e["probability"]] for e in errors],
            )
        else:
            lines += ["No errors.", ""]
        if split.get("most_confident_errors_explained"):
            lines += [
                f"![Most confident errors explained, {split_name}]({split['most_confident_errors_explained']})",
                "",
                "Why the model decided as it did, for the most confident errors: the image with the Grad-CAM heat map "
                "of the predicted class, and the caption's words coloured by their Integrated Gradients attribution "
                "(red: towards the predicted class, blue: against).",
                "",
            ]
    if report.get("training_curves_plot"):
        lines += ["## Training curves", "", f"![Training curves]({report['training_curves_plot']})", ""]
    sections = ["\n".join(lines).rstrip()]
    if seed_summary is not None:
        sections.append(seed_summary.markdown().rstrip())
    return "\n\n".join(sections) + "\n"


def write_report_markdown(output_dir: str | Path, seed_summary: SeedSummary | None = None) -> Path:
    """Write `eval_report.md` again from the `eval_report.json` beside it, with `seed_summary` (see
    `render_markdown`): how the sweep adds the summary over seeds once every seed has run."""
    output_dir = Path(output_dir)
    report = json.loads((output_dir / REPORT_JSON).read_text(encoding="utf-8"))
    return atomic_write_text(output_dir / REPORT_MARKDOWN, render_markdown(report, seed_summary))


def format_metrics_table(results: dict[str, float]) -> str:
    """train.py's closing table: one row per split and metric of `{"<split>_<metric>": value}` (timings left out)."""
    rows = sorted(
        (key.split("_", 1)[0], key.split("_", 1)[1], value)
        for key, value in results.items()
        if isinstance(value, float) and "_" in key and not key.endswith(("runtime", "per_second"))
    )
    lines = ["", "Final metrics", f"{'split':<8} {'metric':<28} {'value':>8}"]
    lines += [f"{split:<8} {metric:<28} {value:>8.4f}" for split, metric, value in rows]
    return "\n".join(lines)


def write_eval_report(
    output_dir: str | Path,
    *,
    label_names: Sequence[str],
    predictions: dict[str, Predictions],
    ablations: dict[str, dict[str, np.ndarray]] | None = None,
    log_history: list[dict] | None = None,
    best_step: int | None = None,
    overlap: dict[str, list[str]] | None = None,
    num_errors: int = 10,
    fusion: str | None = None,
    unimodal_baselines: dict[str, dict] | None = None,
    config=None,
) -> dict:
    """Write `eval_report.json`, `eval_report.md` and the figures to `output_dir`; return the report dict.

    `ablations[split][name]` are the same model's probabilities on `split` with the inputs of ablation `name`
    (`image_blanked`, `text_emptied`, `both_blanked` from `mmfusion.evaluation.ablation.ABLATIONS`; `full` is
    `predictions[split]` and may be omitted). Ablations of an unlabeled split are ignored. The returned dict is what
    `eval_report.json` holds (NaN as None). `unimodal_baselines` (`{"text": report, "image": report}`, the baselines'
    own eval reports) adds the comparison of the fused model (`fusion`) with them, per split. `config` (the model's):
    its temperature and decision threshold are quoted (`decision`) beside each split's calibration and operating
    point sections.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    label_names = [str(name) for name in label_names]
    ablations = _check_ablations(ablations, predictions)
    multi_label = any(split.multi_label for split in predictions.values()) or is_multi_label(config)
    report = {
        "label_names": label_names,
        "num_labels": len(label_names),
        "multi_label": multi_label,
        "primary_metric": best_model_metric(len(label_names), multi_label),
        "splits": {},
        "training_curves_plot": None,
    }
    if config is not None:
        report["decision"] = {
            key: getattr(config, key, None)
            for key in (
                "calibration_temperature",
                "calibration",
                "decision_threshold",
                "decision_policy",
                "decision_figures",
            )
        }
    for split_name, split in predictions.items():
        split_ablations = {k: v for k, v in ablations.get(split_name, {}).items() if k != "full"}
        entry = split_report(split_name, split, label_names, split_ablations, num_errors)
        if split_name in (overlap or {}):  # rows also in train (same id, image and text) inflate every metric
            entry["also_in_train"] = {"count": len(overlap[split_name]), "ids": list(overlap[split_name])[:20]}
        if entry["labeled"]:
            if entry.get("confusion_matrix") is not None:
                filename = f"confusion_matrix_{_safe_file_part(split_name)}.png"
                plot_confusion_matrix(
                    entry["confusion_matrix"],
                    label_names,
                    output_dir / filename,
                    title=f"Confusion matrix: {split_name}",
                )
                entry["confusion_matrix_plot"] = filename
            _write_split_figures(output_dir, split_name, split, entry, label_names)
        report["splits"][split_name] = entry
    if unimodal_baselines:
        report["unimodal_baselines"] = unimodal_comparison(fusion or "fused", report, unimodal_baselines)
    if log_history and plot_training_curves(log_history, output_dir / TRAINING_CURVES_PNG, best_step) is not None:
        report["training_curves_plot"] = TRAINING_CURVES_PNG
    report = json_safe(report)
    atomic_write_text(output_dir / REPORT_JSON, strict_json(report))
    atomic_write_text(output_dir / REPORT_MARKDOWN, render_markdown(report))
    return report


__all__ = [
    "format_metrics_table",
    "REPORT_JSON",
    "REPORT_MARKDOWN",
    "Predictions",
    "ablation_markdown",
    "chance_level",
    "headline_metric_names",
    "multi_label_split_report",
    "multi_label_thresholds_line",
    "per_label_markdown",
    "modality_reliance",
    "render_markdown",
    "split_report",
    "unimodal_comparison",
    "unimodal_markdown",
    "write_eval_report",
    "write_report_markdown",
]
