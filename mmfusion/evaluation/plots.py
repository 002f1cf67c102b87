"""Figures of the evaluation report, drawn with matplotlib's Agg canvas.

Figures are built with the object-oriented API (`matplotlib.figure.Figure`), never `pyplot`, so drawing needs no
display, does not switch the process-wide backend and leaves no figure open.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
# Eval metrics drawn against the epoch, when logged (per-class metrics would crowd the plot).
HEADLINE_EVAL_METRICS = ("accuracy", "auroc", "f1", "precision", "recall", "macro_f1", "micro_f1", "macro_auroc")
_EVAL_BOOKKEEPING = ("loss", "runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


def _save(figure: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI)
    return path


def plot_confusion_matrix(matrix, label_names: Sequence[str], path: str | Path, title: str | None = None) -> Path:
    """Counts (rows: true class, columns: predicted class), each cell annotated with its count and row share."""
    matrix = np.asarray(matrix, dtype=np.int64)
    num_classes = len(label_names)
    if matrix.shape != (num_classes, num_classes):
        raise ValueError(f"Expected a {num_classes}x{num_classes} matrix for {list(label_names)}, got {matrix.shape}")
    side = max(4.5, 1.3 * num_classes + 2.5)
    figure = Figure(figsize=(side + 1.0, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    axes.set_xticks(range(num_classes), labels=list(label_names), rotation=30, ha="right")
    axes.set_yticks(range(num_classes), labels=list(label_names))
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or "Confusion matrix")
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros(matrix.shape, dtype=np.float64), where=row_totals > 0)
    threshold = matrix.max() / 2
    for i in range(num_classes):
        for j in range(num_classes):
            colour = "white" if matrix[i, j] > threshold else "black"
            axes.text(j, i, f"{matrix[i, j]}\n({shares[i, j]:.0%})", ha="center", va="center", color=colour)
    return _save(figure, path)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _during_training(log_history: Sequence[dict]) -> list[dict]:
    """The log entries up to the Trainer's end-of-training summary (the one with `train_runtime`)."""
    for index, entry in enumerate(log_history):
        if "train_runtime" in entry:
            return list(log_history[: index + 1])
    return list(log_history)


def best_evaluation(log_history: Sequence[dict], best_step: int | None) -> dict | None:
    """The evaluation entry logged at `best_step` (the Trainer's `state.best_global_step`), if there is one."""
    if best_step is None:
        return None
    for entry in _during_training(log_history):
        if entry.get("step") == best_step and any(key.startswith("eval_") for key in entry):
            return entry
    return None


def training_curve_series(log_history: Sequence[dict]) -> dict[str, dict[str, list]]:
    """The series `plot_training_curves` draws, from a Trainer's `state.log_history`.

    Returns `{"train_loss": {"x": steps, "y": losses}, "eval_loss": {"x": steps, ...},
    "eval_<metric>": {"x": epochs (steps when no epoch is logged), "y": values}, ...}`; empty series are left out.
    Training entries are those with `loss` (the final summary's `train_loss` is skipped); evaluation entries those
    with `eval_loss` or another `eval_*` metric, logged during training: evaluations after the training summary
    (train.py re-evaluating the best checkpoint at the end) are left out, or they would be drawn at the last step as
    a jump that looks like a last-epoch gain.
    """
    series: dict[str, dict[str, list]] = {}

    def add(name: str, x, y) -> None:
        if _finite(x) and _finite(y):
            entry = series.setdefault(name, {"x": [], "y": []})
            entry["x"].append(float(x))
            entry["y"].append(float(y))

    for entry in _during_training(log_history):
        step = entry.get("step")
        if "loss" in entry:
            add("train_loss", step, entry["loss"])
        eval_keys = [key for key in entry if key.startswith("eval_")]
        if not eval_keys:
            continue
        add("eval_loss", step, entry.get("eval_loss"))
        x = entry.get("epoch", step)
        for key in eval_keys:
            name = key[len("eval_") :]
            if name in _EVAL_BOOKKEEPING:
                continue
            add(key, x, entry[key])
    eval_metrics = [key for key in series if key.startswith("eval_") and key != "eval_loss"]
    headline = [key for key in eval_metrics if key[len("eval_") :] in HEADLINE_EVAL_METRICS]
    for key in set(eval_metrics) - set(headline or eval_metrics):
        del series[key]
    return series


def plot_training_curves(log_history: Sequence[dict], path: str | Path, best_step: int | None = None) -> Path | None:
    """Left: training loss (and eval loss) against the step. Right: eval metrics against the epoch.

    `best_step` (the Trainer's `state.best_global_step`): the evaluation the kept model comes from, marked on both.

    Returns the path written, or None (nothing written) when the history holds no loss and no eval metric.
    """
    series = training_curve_series(log_history)
    if not series:
        return None
    eval_metrics = sorted(key for key in series if key not in ("train_loss", "eval_loss"))
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    loss_axes, metric_axes = figure.subplots(1, 2)
    for key, style in (("train_loss", "-"), ("eval_loss", "o--")):
        if key in series:
            loss_axes.plot(series[key]["x"], series[key]["y"], style, label=key.replace("_", " "))
    loss_axes.set_xlabel("step")
    loss_axes.set_ylabel("cross-entropy loss")
    loss_axes.set_title("Loss")
    if "train_loss" in series or "eval_loss" in series:
        loss_axes.legend()
    else:
        loss_axes.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=loss_axes.transAxes)
    uses_epochs = any("epoch" in entry for entry in log_history if any(k.startswith("eval_") for k in entry))
    for key in eval_metrics:
        metric_axes.plot(series[key]["x"], series[key]["y"], "o-", label=key[len("eval_") :])
    best = best_evaluation(log_history, best_step)
    if best is not None:
        best_x = best.get("epoch", best["step"]) if uses_epochs else best["step"]
        loss_axes.axvline(best["step"], color="grey", linestyle=":", label="kept model")
        metric_axes.axvline(best_x, color="grey", linestyle=":", label="kept model")
        loss_axes.legend()
    metric_axes.set_xlabel("epoch" if uses_epochs else "step")
    metric_axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    metric_axes.set_title("Evaluation metrics")
    if eval_metrics:
        metric_axes.legend()
    else:
        metric_axes.text(0.5, 0.5, "no evaluation logged", ha="center", va="center", transform=metric_axes.transAxes)
    return _save(figure, path)


def plot_reliability(bins_by_name: dict[str, list[dict]], path: str | Path, title: str | None = None) -> Path:
    """Reliability diagram: accuracy against mean confidence per confidence bin, one curve per `{name: bins}`
    (`mmfusion.evaluation.calibration.reliability_bins`, e.g. before and after temperature scaling); the diagonal is
    perfect calibration, marker area shows how many examples a bin holds."""
    figure = Figure(figsize=(5.5, 5), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, bins in bins_by_name.items():
        filled = [b for b in bins if b["count"]]
        total = max(sum(b["count"] for b in filled), 1)
        axes.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], "-", label=name, alpha=0.8)
        axes.scatter(
            [b["confidence"] for b in filled],
            [b["accuracy"] for b in filled],
            s=[10 + 300 * b["count"] / total for b in filled],
            alpha=0.6,
        )
    axes.set_xlim(0, 1.02)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("confidence (top-class probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(title or "Reliability diagram")
    axes.legend(loc="upper left")
    return _save(figure, path)


def plot_operating_curves(points: dict, chosen: dict | None, path: str | Path, title: str | None = None) -> Path:
    """Precision-recall (left) and ROC (right) curves from `mmfusion.evaluation.thresholds.operating_points`, the
    operating point `chosen` (`point_figures` of the threshold in force: precision, recall, fpr, threshold) marked."""
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    pr_axes, roc_axes = figure.subplots(1, 2)
    pr_axes.plot(points["recall"], points["precision"], "-")
    roc_axes.plot([0, *points["fpr"]], [0, *points["recall"]], "-")
    roc_axes.plot([0, 1], [0, 1], ":", color="grey")
    if chosen is not None:
        label = f"threshold {chosen['threshold']:.3g}"
        pr_axes.plot([chosen["recall"]], [chosen["precision"]], "o", color="red", label=label)
        roc_axes.plot([chosen["fpr"]], [chosen["recall"]], "o", color="red", label=label)
        pr_axes.legend(loc="lower left")
        roc_axes.legend(loc="lower right")
    pr_axes.set_xlabel("recall")
    pr_axes.set_ylabel("precision")
    pr_axes.set_title("Precision-recall")
    roc_axes.set_xlabel("false-positive rate")
    roc_axes.set_ylabel("true-positive rate (recall)")
    roc_axes.set_title("ROC")
    for axes in (pr_axes, roc_axes):
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.02, 1.02)
    if title:
        figure.suptitle(title)
    return _save(figure, path)


__all__ = [
    "HEADLINE_EVAL_METRICS",
    "best_evaluation",
    "plot_confusion_matrix",
    "plot_operating_curves",
    "plot_reliability",
    "plot_training_curves",
    "training_curve_series",
]
