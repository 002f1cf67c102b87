"""Resume only the run that wrote the checkpoints: rerunning train.py into an output folder continues its last
checkpoint, and a command with other training settings must not silently continue a run made with the old ones.

The settings that shape the trained weights (the model and data arguments, and the Trainer's optimisation
arguments) are recorded in `<output_dir>/run_settings.json` when training starts. A rerun that would resume from the
folder's last checkpoint compares its own settings with them first, before any data is loaded:

- the same settings: it resumes (the README's "rerun the same command");
- other settings (another learning rate, number of epochs, dataset, fusion...): it stops, naming each difference
  and the ways on. Resuming would mix two runs: the old run's weights, optimizer moments and step count under the
  new schedule (a 3-epoch run resumed as a 12-epoch one continues from its decayed end, not from step 0);
- `--resume_from_checkpoint PATH` given explicitly: the user chose to continue that checkpoint; the differences are
  logged as a warning and the new settings recorded.

Settings read only after training (the decision threshold, calibration, memory, report and prediction options)
may change between runs freely.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from ..files import atomic_write_text
from .output_lock import OutputDirError

logger = logging.getLogger(__name__)

RUN_SETTINGS_FILENAME = "run_settings.json"
# Model and data arguments that only act after training (operating point, memory, reports, which splits to predict,
# how a joint model is saved) or change how, not what, is computed (caches, attention kernel): free to change.
AFTER_TRAINING = frozenset(
    {
        "cache_dir",
        "cache_image_features",
        "cache_text_embeddings",
        "unimodal_baselines",
        "calibrate",
        "decision_threshold",
        "build_memory",
        "prediction_mode",
        "knn_k",
        "vision_language_save",
        "attn_implementation",
        "test_split",
        "predict_splits",
        "max_eval_samples",
        "report_num_errors",
        "report_explained_errors",
    }
)
# The Trainer's arguments that shape the weights (its others are about logging, saving, evaluation and hardware).
OPTIMISATION = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_ratio",
    "warmup_steps",
    "optim",
    "optim_args",
    "label_smoothing_factor",
    "seed",
    "data_seed",
    "precision",
)


def run_settings(model_args, data_args, training_args) -> dict:
    """The settings of a training run that shape its weights, as plain JSON values."""
    settings = {}
    for arguments in (model_args, data_args):
        for field in dataclasses.fields(arguments):
            if field.name not in AFTER_TRAINING:
                settings[field.name] = _plain(getattr(arguments, field.name))
    for name in OPTIMISATION:
        if hasattr(training_args, name):
            settings[name] = _plain(getattr(training_args, name))
    return settings


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return json.loads(json.dumps(value, default=str))  # tuples -> lists, anything odd -> its str


def checkpoint_to_resume(settings: dict, training_args) -> str | None:
    """The checkpoint training resumes from: `--resume_from_checkpoint`, else the output folder's last one, else
    None. Raises `OutputDirError` when the folder's last checkpoint was made with other `settings` (`run_settings`;
    see the module docstring); warns when an explicit checkpoint was."""
    output_dir = Path(training_args.output_dir)
    explicit = training_args.resume_from_checkpoint
    checkpoint = explicit or (get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None)
    if checkpoint is None:
        return None
    try:
        differences = _differences(output_dir / RUN_SETTINGS_FILENAME, settings)
    except OutputDirError as error:
        if not explicit:
            raise
        logger.warning("%s Continuing %s as asked.", error, checkpoint)
        differences = ""
    if differences and not explicit:
        raise OutputDirError(
            f"Output folder {output_dir} holds checkpoints of a run with other settings ({differences}; recorded in "
            f"{output_dir / RUN_SETTINGS_FILENAME}). Resuming {checkpoint} would continue that run under the new "
            "settings, with its weights, optimizer state and step count. Rerun its own command to resume it, choose "
            "another --output_dir to start a new run, or pass --resume_from_checkpoint "
            f"{checkpoint} to continue it with these settings on purpose."
        )
    if differences:
        logger.warning("Continuing %s with settings other than its run's: %s.", checkpoint, differences)
    return checkpoint


def _differences(recorded_file: Path, settings: dict) -> str:
    """'name: old -> new' for each setting that differs from the recorded run's ('' when the same, or when the
    folder predates the record). Settings only one side knows (another mmfusion version's) are not compared."""
    try:
        recorded = json.loads(recorded_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ""
    except json.JSONDecodeError as error:
        raise OutputDirError(
            f"{recorded_file}, line {error.lineno}, column {error.colno}: not the JSON train.py writes ({error.msg}), "
            "so the run that made this folder's checkpoints cannot be compared with this one. Restore the file, "
            "choose another --output_dir, or pass --resume_from_checkpoint to continue a checkpoint on purpose."
        ) from error
    if not isinstance(recorded, dict):
        raise OutputDirError(f"{recorded_file}: expected a JSON object of settings, found {type(recorded).__name__}.")
    return ", ".join(
        f"{name}: {json.dumps(recorded[name])} -> {json.dumps(settings[name])}"
        for name in sorted(set(recorded) & set(settings))
        if recorded[name] != settings[name]
    )


def record_run_settings(settings: dict, training_args) -> None:
    """Write the run's `settings` into its output folder (main process; atomically, so a kill leaves the old or the
    new file, never half of one)."""
    if not training_args.should_save:
        return
    atomic_write_text(
        Path(training_args.output_dir) / RUN_SETTINGS_FILENAME, json.dumps(settings, indent=2, sort_keys=True) + "\n"
    )


__all__ = ["RUN_SETTINGS_FILENAME", "checkpoint_to_resume", "record_run_settings", "run_settings"]
