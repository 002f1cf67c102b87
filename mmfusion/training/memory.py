"""After training: the labelled memory from the training split, and the prediction mode chosen on validation.

train.py's step 7, beside the temperature and the decision threshold (`operating_point.py`): the model's
embeddings of the training split become its memory (`mmfusion.memory.LabelledMemory`, saved beside the weights),
and the mode (`head`, `knn`, or `mix` at a weight of 0.25, 0.5 or 0.75) that scores highest on the validation split
by the selection metric (AUROC, macro-F1, or macro AUROC for multi-label tasks) goes into the config
(`prediction_mode`, `mix_weight`) with every candidate's figure (`memory_selection`). Ties keep the head (listed
first), so a model the memory does not help predicts exactly as without it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..decisions import is_multi_label
from ..evaluation.metrics import best_model_metric, classification_metrics, multi_label_metrics
from ..evaluation.predictions import config_probabilities, multi_hot
from ..fusions import FUSIONS
from ..memory import LabelledMemory, model_fingerprint

MIX_WEIGHTS = (0.25, 0.5, 0.75)

logger = logging.getLogger(__name__)


@torch.no_grad()
def split_embeddings(model, dataset, collator, batch_size: int = 64) -> np.ndarray:
    """L2-normalised embeddings (`model.embed`) of every row of a prepared split, in order (eval mode, no grad)."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    vectors = []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collator):
            batch = {key: value.to(device) for key, value in batch.items() if key != "labels"}
            vectors.append(model.embed(**batch).float().cpu().numpy())
    finally:
        model.train(training)
    return np.concatenate(vectors) if vectors else np.zeros((0, model.mmfusion.output_size), np.float32)


def build_training_memory(model, raw_split, prepared_split, collator, batch_size: int = 64) -> LabelledMemory:
    """The model's memory of a labelled split: its rows embedded by the model, with ids, labels and captions."""
    multi_label = is_multi_label(model.config)
    memory = model.empty_memory()
    labels = raw_split["label"]
    labels = multi_hot(labels, len(memory.label_names)) if multi_label else np.asarray(labels, dtype=np.int64)
    embeddings = split_embeddings(model, prepared_split, collator, batch_size)
    memory.add(
        [str(i) for i in raw_split["id"]],
        embeddings,
        labels,
        captions=raw_split["text"],
        images=image_paths(raw_split),
    )
    return memory


def image_paths(raw_split) -> list[str | None] | None:
    """Each row's image file path (for display beside a neighbour), read without decoding; None where unknown."""
    import datasets

    if not isinstance(raw_split.features.get("image"), datasets.Image):
        return None
    cells = raw_split.cast_column("image", datasets.Image(decode=False))["image"]
    return [cell.get("path") if isinstance(cell, dict) else None for cell in cells]


def selection_figure(probabilities, labels, label_names, metric: str) -> float:
    if metric == "macro_auroc":
        return float(multi_label_metrics(probabilities, labels, label_names)[metric])
    return float(classification_metrics(probabilities, np.asarray(labels), label_names)[metric])


def choose_prediction_mode(config, logits, labels, knn_scores, label_names, *, split: str, forced=None) -> dict:
    """Set `config.prediction_mode` / `mix_weight` to the best candidate on the validation split (or `forced`) and
    record every candidate's figure in `config.memory_selection`; returns that record."""
    multi_label = is_multi_label(config)
    metric = best_model_metric(len(label_names), multi_label)
    candidates = [("head", config.mix_weight), ("knn", config.mix_weight)] + [("mix", w) for w in MIX_WEIGHTS]
    figures = {}
    for mode, weight in candidates:
        config.prediction_mode, config.mix_weight = mode, weight
        probabilities = config_probabilities(logits, config, knn_scores=knn_scores)
        figures[mode if mode != "mix" else f"mix_{weight:g}"] = selection_figure(
            probabilities, labels, label_names, metric
        )
    if forced is not None:
        best = forced if forced != "mix" else "mix_0.5"
    else:  # the highest figure; NaN (undefined) never wins; ties keep the earlier candidate (head first)
        best = max(figures, key=lambda name: (np.nan_to_num(figures[name], nan=-np.inf), -list(figures).index(name)))
    config.prediction_mode = best.split("_")[0]
    config.mix_weight = float(best.split("_")[1]) if best.startswith("mix_") else 0.5
    config.memory_selection = {"split": split, "metric": metric, "chosen": best, "candidates": figures}
    if forced is not None:
        config.memory_selection["forced"] = True
    return config.memory_selection


def run_memory_step(trainer, raw, prepared, splits, model_args) -> dict:
    """train.py's step, before the operating point: build the memory from the training split (every process computes
    it; the main process saves it with the model) and return every other split's kNN scores, `{split: scores}`
    (empty when the model has no memory). `mode_chooser` then picks the mode on validation, inside
    `run_operating_point` (after the temperature, before the threshold)."""
    model = trainer.model
    collator, batch_size = trainer.data_collator, trainer.args.per_device_eval_batch_size
    if getattr(model, "memory", None) is not None and model.memory.fingerprint != model_fingerprint(model):
        logger.warning("The labelled memory loaded with the model no longer matches its trained weights: dropped.")
        model.memory = None
    build = model_args.build_memory and trainer.args.do_train
    if build and FUSIONS[model.config.fusion].joint_encoder:
        # A joint model is saved with its LoRA update merged (or as an adapter): the weights a memory's fingerprint
        # is taken from change on save, so a memory built now would be refused when the checkpoint is loaded.
        logger.info("No labelled memory for a joint model yet (its saved weights differ from the trained ones).")
        build = False
    if build and trainer.is_fsdp_enabled:
        # FSDP2 leaves the trained weights sharded (DTensors): the memory's fingerprint cannot sample them (".numpy()
        # is not supported for tensor subclasses", checked with torch's fully_shard on CPU). The saved checkpoint
        # holds the gathered weights; the memory is built from it in one process.
        logger.info(
            "No labelled memory from an FSDP run (its weights are sharded); build it from the saved checkpoint: "
            "mmfusion-memory add %s --input DATA --split %s",
            trainer.args.output_dir,
            splits["train"],
        )
        build = False
    if build:
        model.config.knn_k = model_args.knn_k
        train = splits["train"]
        model.memory = build_training_memory(model, raw[train], prepared[train], collator, batch_size)
        logger.info("Labelled memory: %d rows of the %s split (dim %d)", len(model.memory), train, model.memory.dim)
    if getattr(model, "memory", None) is None:
        return {}
    return {
        name: model.memory.knn_scores(
            split_embeddings(model, prepared[name], collator, batch_size), model.config.knn_k
        )
        for name in raw
        if name != splits["train"]
    }


def mode_chooser(knn_scores, label_names, *, split: str, forced=None):
    """The callable `fit_operating_point` runs on the validation split's logits and labels (see
    `choose_prediction_mode`)."""

    def choose(config, logits, labels):
        selection = choose_prediction_mode(config, logits, labels, knn_scores, label_names, split=split, forced=forced)
        logger.info("Prediction mode on %s (%s): %s; candidates %s", split, selection["metric"], selection["chosen"],
                    selection["candidates"])  # fmt: skip
        return selection

    return choose


def metrics_in_mode(results: dict, predictions: dict, splits: dict, config) -> dict:
    """When the model predicts with its memory (mode `knn`/`mix`), `results`' `eval_*`/`test_*` metrics become those
    of the probabilities it predicts (what the report, the model card and the predictor give; the Trainer computed
    them from the head's logits), the head's kept as `eval_head_*`/`test_head_*`. Same metric definitions as the
    Trainer's `compute_metrics` (argmax; multi-label: 0.5 per label)."""
    if getattr(config, "prediction_mode", "head") == "head":
        return results
    for role, prefix in (("validation", "eval"), ("test", "test")):
        split = predictions.get(splits.get(role))
        if split is None or not split.labeled.any():
            continue
        if split.multi_label:
            metrics = multi_label_metrics(split.probabilities, split.true_labels, split.label_names)
        else:
            metrics = classification_metrics(split.probabilities, split.true_labels, split.label_names)
        for key, value in metrics.items():
            name = f"{prefix}_{key}"
            if name in results and isinstance(value, (int, float)):
                results[f"{prefix}_head_{key}"], results[name] = results[name], value
    return results


__all__ = [
    "MIX_WEIGHTS",
    "metrics_in_mode",
    "build_training_memory",
    "choose_prediction_mode",
    "mode_chooser",
    "run_memory_step",
    "split_embeddings",
]
