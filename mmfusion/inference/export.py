"""Export a checkpoint to ONNX: `model.onnx` next to the config and processor files, optionally int8-quantized.

```
mmfusion-export outputs/demo-early-fusion exported/ [--quantize int8]
python -m mmfusion.inference.export outputs/demo-early-fusion exported/
```

The graph takes `input_ids`, `attention_mask`, `token_type_ids` (when the tokenizer makes them) and `pixel_values`
(images already resized to `config.image_size`) and returns `logits`; batch size and caption length are dynamic.
It is traced with `torch.onnx.export(..., dynamo=True)` (torch.export), which handles all three fusion types.
After writing, the export is checked against PyTorch on a batch of another size and caption length.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..evaluation.ablation import blank_image
from .backends import INT8_ONNX_FILENAME, MODEL_INPUT_NAMES, ONNX_FILENAME, OnnxBackend
from .quantization import quantize_int8

logger = logging.getLogger(__name__)

EXPORT_INFO_FILENAME = "onnx_export.json"
QUANTIZATION_CHOICES = ("int8",)
# Models above this size keep their weights in a side file (`model.onnx.data`): protobuf files stop at 2 GiB.
_SINGLE_FILE_LIMIT_BYTES = 1_800_000_000
# Captions of different lengths for tracing and checking: the trace must not see the caption length equal to the
# batch size or to 1, or torch.export could tie or specialise those dimensions.
_TRACE_CAPTIONS = ["a caption", "a somewhat longer caption for tracing the export"]
_CHECK_CAPTIONS = ["", "another caption", "a third caption that is clearly longer than the others were"]


class LogitsOnly(nn.Module):
    """The classifier with the graph's signature: named tensors in, logits out (no loss, no output dataclass)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values, token_type_ids=None):
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
        ).logits


@dataclass
class ExportInfo:
    """What was exported, written as `onnx_export.json` next to the graph."""

    fusion: str
    inputs: list[str]
    outputs: list[str]
    opset_version: int
    max_caption_length: int | None
    torch_version: str
    max_abs_logit_difference: float
    files: dict[str, str] = field(default_factory=dict)


def sample_inputs(processor, image_size: int, captions: list[str]) -> dict[str, torch.Tensor]:
    """Processor outputs for blank images and `captions`, restricted to what the graph takes."""
    images = [blank_image((image_size, image_size)) for _ in captions]
    inputs = processor(images=images, text=captions, return_tensors="pt")
    return {name: inputs[name] for name in MODEL_INPUT_NAMES if name in inputs}


def dynamic_shapes_for(inputs: dict[str, torch.Tensor], max_caption_length: int | None = None) -> dict[str, dict]:
    """Batch is dynamic for every input, caption length for the text inputs; image height/width stay fixed.

    The caption length is bounded by the text tower's position embeddings (torch.export proves the bound from the
    model and refuses an unbounded dimension).
    """
    batch = torch.export.Dim("batch")
    sequence = (
        torch.export.Dim("sequence", max=max_caption_length) if max_caption_length else torch.export.Dim("sequence")
    )
    return {name: ({0: batch} if name == "pixel_values" else {0: batch, 1: sequence}) for name in inputs}


def export_onnx(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    quantize: str | None = None,
    opset_version: int | None = None,
    atol: float = 1e-4,
) -> ExportInfo:
    r"""
    Export a checkpoint to `output_dir/model.onnx` plus its config and processor files.

    Args:
        checkpoint (`str` or `os.PathLike`):
            Checkpoint folder or Hub id (loaded with `AutoModelForSequenceClassification`, remote code allowed).
        output_dir (`str` or `os.PathLike`):
            Where to write `model.onnx`, `config.json`, the processor files and `onnx_export.json`.
        quantize (`str`, *optional*):
            `"int8"`: also write `model_int8.onnx`, dynamically quantized (`mmfusion.inference.quantize_int8`).
        opset_version (`int`, *optional*):
            ONNX opset; default: the exporter's.
        atol (`float`, *optional*, defaults to 1e-4):
            The export is run on a check batch with ONNX Runtime and compared with PyTorch; a larger maximum absolute
            logit difference is logged as a warning.

    Returns:
        `ExportInfo`: inputs, outputs, the measured difference and the files written (also in `onnx_export.json`).
    """
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    if quantize is not None and quantize not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZATION_CHOICES} or None, got {quantize!r}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        os.fspath(checkpoint), trust_remote_code=True, dtype=torch.float32
    ).eval()
    processor = AutoProcessor.from_pretrained(os.fspath(checkpoint), trust_remote_code=True)
    image_size = model.config.image_size

    onnx_path = output_dir / ONNX_FILENAME
    # Files of an earlier export into the same folder would pass for this model's.
    for stale in (INT8_ONNX_FILENAME, ONNX_FILENAME + ".data", EXPORT_INFO_FILENAME):
        (output_dir / stale).unlink(missing_ok=True)
    trace_inputs = sample_inputs(processor, image_size, _TRACE_CAPTIONS)
    max_caption_length = caption_length_limit(model, processor)
    write_onnx_graph(
        model, trace_inputs, onnx_path, max_caption_length=max_caption_length, opset_version=opset_version
    )
    model.config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)

    difference = max_logit_difference(model, onnx_path, sample_inputs(processor, image_size, _CHECK_CAPTIONS))
    if difference > atol:
        logger.warning("ONNX Runtime and PyTorch logits differ by up to %.3g (> %.1g).", difference, atol)
    files = {"fp32": onnx_path.name}
    if quantize == "int8":
        files["int8"] = quantize_int8(onnx_path, output_dir / INT8_ONNX_FILENAME).name
    info = ExportInfo(
        fusion=model.config.fusion,
        inputs=list(trace_inputs),
        outputs=["logits"],
        opset_version=graph_opset(onnx_path),
        max_caption_length=max_caption_length,
        torch_version=torch.__version__,
        max_abs_logit_difference=difference,
        files=files,
    )
    (output_dir / EXPORT_INFO_FILENAME).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return info


def caption_length_limit(model: nn.Module, processor) -> int | None:
    """The longest caption (in tokens) the model takes: its position embeddings' and the tokenizer's limit."""
    limits = [
        getattr(model.config.text_config, "max_position_embeddings", None),
        getattr(processor.tokenizer, "model_max_length", None),
    ]
    limits = [int(limit) for limit in limits if limit is not None and limit < 1_000_000]  # "no limit" is ~1e30
    return min(limits) if limits else None


def write_onnx_graph(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    path: Path,
    *,
    max_caption_length: int | None = None,
    opset_version: int | None = None,
) -> Path:
    """Trace `model` on `inputs` with torch.export and write the ONNX graph (dynamic batch and caption length)."""
    num_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with warnings.catch_warnings():
        # The exporter notes that the inputs share the "batch"/"sequence" dims (by design), once per input.
        warnings.filterwarnings("ignore", message=r".*will not be used, since it shares the same shape constraints.*")
        torch.onnx.export(
            LogitsOnly(model).eval(),
            args=(),
            kwargs=inputs,
            f=path,
            dynamo=True,
            dynamic_shapes=dynamic_shapes_for(inputs, max_caption_length),
            input_names=list(inputs),
            output_names=["logits"],
            opset_version=opset_version,
            external_data=num_bytes > _SINGLE_FILE_LIMIT_BYTES,
            verbose=False,
        )
    return path


def graph_opset(path: Path) -> int:
    """The default-domain opset an ONNX file was written with."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def max_logit_difference(model: nn.Module, onnx_path: Path, inputs: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between PyTorch's and ONNX Runtime's logits on `inputs`."""
    with torch.inference_mode():
        expected = model(**inputs).logits.float().numpy()
    actual = OnnxBackend(onnx_path).logits({name: tensor.numpy() for name, tensor in inputs.items()})
    return float(np.abs(expected - actual).max())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfusion-export",
        description="Export an mmfusion checkpoint to ONNX (model.onnx + config + processor files).",
    )
    parser.add_argument("checkpoint", help="checkpoint folder or Hub id")
    parser.add_argument("output_dir", help="folder to write model.onnx and the processor files to")
    parser.add_argument(
        "--quantize", choices=QUANTIZATION_CHOICES, help="also write a dynamically quantized model_int8.onnx"
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: the exporter's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        info = export_onnx(args.checkpoint, args.output_dir, quantize=args.quantize, opset_version=args.opset)
    except (OSError, ValueError) as error:
        print(f"mmfusion-export: error: {error}", file=sys.stderr)
        return 1
    written = ", ".join(info.files.values())
    print(
        f"Wrote {written} to {args.output_dir} ({info.fusion} fusion; inputs: {', '.join(info.inputs)}; "
        f"max |logit difference| vs PyTorch: {info.max_abs_logit_difference:.2e})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
