"""After training: temperature scaling and the decision threshold, fitted on the validation split (train.py step 7).

Both end up in the model's config (`calibration_temperature`, `calibration`, `decision_threshold`, `decision_policy`,
`decision_figures`), which every inference path reads.

Multi-label models get one threshold per label, `max_f1` per label unless `--decision_threshold` says otherwise
(0.5 on a sigmoid is rarely the best cut), and no temperature (scaling every label's logit by one number would not
change the per-label decisions, which the thresholds already set).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..decisions import is_multi_label
from ..evaluation.calibration import fit_temperature
from ..evaluation.predictions import config_probabilities, has_label, multi_hot
from ..evaluation.thresholds import (
    fit_decision_threshold,
    fit_multi_label_thresholds,
    operating_point_report,
    parse_policy,
)

MULTI_LABEL_DEFAULT_POLICY = "max_f1"

logger = logging.getLogger(__name__)


def fit_operating_point(
    config,
    validation_logits,
    validation_labels,
    label_names,
    *,
    split,
    calibrate,
    policy,
    knn_scores=None,
    choose_mode=None,
):
    """Set `config`'s temperature (when `calibrate`) and decision threshold (`policy`, see
    `mmfusion.evaluation.thresholds`) from the validation split's logits; returns what was done, for the log.

    `validation_logits` may be None (no labeled validation split): then nothing is fitted, and a policy that needs
    fitting is refused. Raises `UnreachableTargetError` for a target the validation split cannot meet.

    With a labelled memory: `knn_scores` are the validation split's kNN scores, and `choose_mode(config, logits,
    labels)` (`mmfusion.training.memory.mode_chooser`) sets the prediction mode after the temperature and before the
    threshold, which is then fitted on that mode's probabilities.
    """
    done = {}
    multi_label = is_multi_label(config)
    if multi_label:
        if choose_mode is not None and validation_logits is not None:
            done["mode"] = choose_mode(config, validation_logits, validation_labels)
        return _fit_multi_label(
            config, validation_logits, validation_labels, label_names, split, policy, done, knn_scores
        )
    if calibrate and validation_logits is not None and not multi_label:
        fit = fit_temperature(validation_logits, validation_labels, split=split)
        config.calibration_temperature = fit.temperature
        config.calibration = fit.to_dict()
        done["temperature"] = fit
    if choose_mode is not None and validation_logits is not None:
        done["mode"] = choose_mode(config, validation_logits, validation_labels)
    if policy is None:
        return done
    policy = parse_policy(policy)
    if policy.kind == "fixed":
        config.decision_threshold = policy.target if len(label_names) == 2 else [policy.target] * len(label_names)
        config.decision_policy = "fixed"
        config.decision_figures = None
        if validation_logits is not None:
            probabilities = config_probabilities(validation_logits, config, knn_scores=knn_scores)
            figures = operating_point_report(probabilities, validation_labels, config.decision_threshold, label_names)
            config.decision_figures = {"policy": "fixed", "split": split, **figures}
    else:
        if validation_logits is None:
            raise ValueError(
                f"--decision_threshold {policy} is chosen on the validation split, and this run has no labeled "
                "validation split; give a number instead, or a validation split (--validation_split)."
            )
        probabilities = config_probabilities(validation_logits, config, knn_scores=knn_scores)
        threshold, figures = fit_decision_threshold(probabilities, validation_labels, policy, label_names, split=split)
        config.decision_threshold, config.decision_policy, config.decision_figures = threshold, str(policy), figures
    done["threshold"] = config.decision_threshold
    return done


def _fit_multi_label(config, logits, labels, label_names, split, policy, done, knn_scores=None):
    """Per-label thresholds: `policy` (default `max_f1`) on the validation split's sigmoids; a fixed number is
    applied to every label; without a labeled validation split and without a policy, nothing (0.5 per label)."""
    if policy is None:
        if logits is None:
            return done
        policy = MULTI_LABEL_DEFAULT_POLICY
    policy = parse_policy(policy)
    if policy.kind != "fixed" and logits is None:
        raise ValueError(
            f"--decision_threshold {policy} is chosen on the validation split, and this run has no labeled "
            "validation split; give a number instead, or a validation split (--validation_split)."
        )
    if logits is not None:
        probabilities = config_probabilities(logits, config, knn_scores=knn_scores)
        labels = multi_hot(labels, len(label_names))
        thresholds, figures = fit_multi_label_thresholds(probabilities, labels, policy, label_names, split=split)
    else:
        thresholds, figures = [float(policy.target)] * len(label_names), None
    name = "fixed" if policy.kind == "fixed" else str(policy)
    if figures is not None:
        figures["policy"] = name
    config.decision_threshold, config.decision_policy, config.decision_figures = thresholds, name, figures
    done["threshold"] = thresholds
    for name, entry in ((figures or {}).get("per_class") or {}).items():
        if entry.get("note"):
            logger.warning("Decision threshold of label %r: %s", name, entry["note"])
    return done


def run_operating_point(
    trainer, raw, prepared, splits, model_args, output_dir, *, save: bool, trained: bool = True, knn_scores=None
) -> dict:
    """train.py's step: predict the validation split, fit, and save the config beside the weights when `save`.

    `trained`: the model was trained in this run, so a multi-label model gets its default per-label thresholds
    (`max_f1`) even without a policy; a checkpoint only evaluated keeps its own unless a policy is given.
    `knn_scores`: `{split: kNN scores}` when the model has a labelled memory (`mmfusion.training.memory`); a memory
    built in this run (`model_args.build_memory`) gets its prediction mode chosen here, on the validation split.
    Returns `{split: logits}` for the split it predicted, so that train.py does not predict it twice."""
    config = trainer.model.config
    validation = splits.get("validation")
    labeled = validation is not None and any(has_label(label) for label in raw[validation]["label"])
    policy = model_args.decision_threshold
    multi_label = is_multi_label(config)
    validation_scores = (knn_scores or {}).get(validation)
    choose_mode = None
    if validation_scores is not None and labeled and trained and getattr(model_args, "build_memory", False):
        from .memory import mode_chooser

        names = raw[validation].features["label"]
        names = (names.feature if multi_label else names).names
        choose_mode = mode_chooser(validation_scores, names, split=validation, forced=model_args.prediction_mode)
    if not (model_args.calibrate or policy is not None or (multi_label and trained) or choose_mode is not None):
        return {}
    logits = trainer.predict_logits(prepared[validation]) if labeled else None
    if multi_label:
        labels = raw[validation]["label"] if labeled else None
        label_names = raw[validation or next(iter(raw))].features["label"].feature.names
    else:
        labels = np.asarray(raw[validation]["label"]) if labeled else None
        label_names = raw[validation or next(iter(raw))].features["label"].names
    done = fit_operating_point(
        config,
        logits,
        labels,
        label_names,
        split=validation,
        calibrate=model_args.calibrate,
        policy=policy,
        knn_scores=validation_scores,
        choose_mode=choose_mode,
    )
    if "temperature" in done:
        fit = done["temperature"]
        logger.info(
            "Temperature scaling on %s: T = %.4g, NLL %.4f -> %.4f, ECE %.4f -> %.4f%s",
            validation,
            fit.temperature,
            fit.nll_before,
            fit.nll_after,
            fit.ece_before,
            fit.ece_after,
            f" ({fit.note})" if fit.note else "",
        )
    if "threshold" in done:
        logger.info("Decision threshold (%s): %s", config.decision_policy, config.decision_threshold)
    if save and trainer.is_world_process_zero():
        config.save_pretrained(Path(output_dir))
    return {validation: logits} if logits is not None else {}


__all__ = ["fit_operating_point", "run_operating_point"]
