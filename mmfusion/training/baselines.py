"""Unimodal baselines trained beside the fused model (`train.py --unimodal_baselines true`).

The Hateful Memes paper reports Text BERT and Image-Grid next to every fusion, and MMF ships `unimodal_text` and
`unimodal_image`: a fusion is only worth its image if it beats the text-only model trained the same way. Each
baseline is the same run (data, towers, recipe, seed) with `fusion` set to `text` or `image`, written to
`<output_dir>/baselines/<fusion>/` with its own checkpoint and report.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..evaluation.report import REPORT_JSON

BASELINE_FUSIONS = ("text", "image")
BASELINES_DIR = "baselines"


def baseline_arguments(model_args, training_args) -> dict[str, tuple]:
    """`{fusion: (model_args, training_args)}` for each unimodal baseline of a run."""
    if model_args.model_name_or_path:
        raise ValueError(
            "--unimodal_baselines trains new text-only and image-only models from the towers: give "
            "--text_model_name_or_path/--vision_model_name_or_path (or neither, for the small random towers), "
            "not --model_name_or_path."
        )
    runs = {}
    for fusion in BASELINE_FUSIONS:
        output_dir = Path(training_args.output_dir) / BASELINES_DIR / fusion
        runs[fusion] = (
            replace(model_args, fusion=fusion, unimodal_baselines=False),
            replace(
                training_args,
                output_dir=str(output_dir),
                push_to_hub=False,
                # the ResNet tower has no gradient checkpointing (transformers' ResNetModel does not support it)
                gradient_checkpointing=training_args.gradient_checkpointing and fusion == "text",
            ),
        )
    return runs


def read_baseline_reports(output_dir: str | Path) -> dict[str, dict]:
    """`{fusion: eval_report}` of the baselines written under `output_dir` (those that exist)."""
    reports = {}
    for fusion in BASELINE_FUSIONS:
        path = Path(output_dir) / BASELINES_DIR / fusion / REPORT_JSON
        if path.exists():
            reports[fusion] = json.loads(path.read_text())
    return reports


__all__ = ["BASELINES_DIR", "BASELINE_FUSIONS", "baseline_arguments", "read_baseline_reports"]
