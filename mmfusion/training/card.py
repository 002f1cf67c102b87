"""The model card of a `train.py` run: what `write_model_card` is told, taken from the run's arguments.

`train.py` writes the card right after training. The sweep writes it again once every seed of a run has finished,
with the summary over the seeds: from the run's folder alone (its train.py config, the saved model config and
`eval_report.json`), so that both cards come from the same inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers.utils import CONFIG_NAME

from ..configuration_mmfusion import MMFusionConfig
from ..data import is_hub_name
from ..evaluation.model_card import write_model_card
from ..evaluation.report import REPORT_JSON
from ..evaluation.seeds import SeedSummary
from .arguments import parse_arguments

MODEL_CARD_TEMPLATE = "model_card.md"  # the card's Jinja template, beside train.py at the repository root


def card_arguments(model_args, data_args, training_args) -> dict:
    """`write_model_card`'s keyword arguments that train.py's arguments decide: the data, the towers the model
    started from, the Hub ids and the training settings shown in the card."""
    return {
        "dataset_name": data_args.dataset,
        "base_models": [
            name
            for name in (
                model_args.model_name_or_path,
                model_args.text_model_name_or_path,
                model_args.vision_model_name_or_path,
            )
            if name
        ],
        "model_id": training_args.hub_model_id,
        "dataset_id": data_args.dataset if is_hub_name(data_args.dataset) else None,
        "training_summary": {
            "epochs": training_args.num_train_epochs,
            "learning_rate": training_args.learning_rate,
            "batch_size": training_args.per_device_train_batch_size,
            "optimizer": str(training_args.optim),
            "seed": training_args.seed,
        },
    }


def can_rewrite_model_card(output_dir: str | Path) -> bool:
    """Whether the run's folder holds what `rewrite_model_card` reads (a trained model's config and the report)."""
    output_dir = Path(output_dir)
    return (output_dir / CONFIG_NAME).is_file() and (output_dir / REPORT_JSON).is_file()


def rewrite_model_card(
    output_dir: str | Path, config_file: str | Path, template_path: str | Path, seed_summary: SeedSummary | None = None
) -> Path:
    """Write `output_dir/README.md` again as train.py wrote it after training with `config_file` (the run's
    `train.py` config file), now with `seed_summary`. The model config and the report are read back from
    `output_dir`, where the run saved them (see `can_rewrite_model_card`)."""
    output_dir = Path(output_dir)
    model_args, data_args, training_args = parse_arguments([str(config_file)])
    return write_model_card(
        output_dir,
        config=MMFusionConfig.from_pretrained(output_dir),
        eval_report=json.loads((output_dir / REPORT_JSON).read_text(encoding="utf-8")),
        template_path=template_path,
        seed_summary=seed_summary,
        **card_arguments(model_args, data_args, training_args),
    )


__all__ = ["MODEL_CARD_TEMPLATE", "can_rewrite_model_card", "card_arguments", "rewrite_model_card"]
