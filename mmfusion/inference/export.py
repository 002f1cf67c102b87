"""Export a checkpoint to ONNX: `model.onnx` next to the config and processor files, optionally int8-quantized.

```
mmfusion-export outputs/demo-early-fusion exported/ [--quantize int8]
mmfusion-export outputs/demo-early-fusion exported/ --quantize int8-static --calibration demo [--calibration-size 300]
python -m mmfusion.inference.export outputs/demo-early-fusion exported/
```

The graph takes `input_ids`, `attention_mask`, `token_type_ids` (when the tokenizer makes them) and `pixel_values`
(images already resized to `config.image_size`) and returns `logits` and `embeddings` (the classifier's input, what
the labelled memory's rows are: the predictor's ONNX backend normalises them for kNN predictions and neighbours);
batch size and caption length are dynamic. A checkpoint's labelled memory (`memory.safetensors`, `memory.json`) is
copied beside the graph, with the model's fingerprint recorded in `onnx_export.json` (`model_fingerprint`).
It is traced with `torch.onnx.export(..., dynamo=True)` (torch.export), which handles every fusion in the registry
(tested per fusion).
After writing, the export is checked against PyTorch on a batch of another size and caption length.

With `--calibration DATA` (any source `mmfusion.data.load_image_text_dataset` reads), `model_int8.onnx` is also
compared with `model.onnx` on a held-out split of DATA (label agreement, metrics of both, their difference), recorded
in `onnx_export.json`; `--quantize int8-static` needs it, as its calibration rows come from DATA's training split.
"""

from __future__ import annotations

import argparse
import copy
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
from transformers import HfArgumentParser

from ..data.options import LoaderArguments
from ..evaluation.ablation import blank_image
from ..evaluation.predictions import has_label
from .backends import (
    EMBEDDINGS_OUTPUT,
    EXPORT_INFO_FILENAME,
    INT8_ONNX_FILENAME,
    MODEL_INPUT_NAMES,
    ONNX_FILENAME,
    OnnxBackend,
)
from .quantization import (
    CALIBRATION_METHODS,
    DEFAULT_OP_TYPES,
    INT8_TARGETS,
    int8_tuning,
    quantize_int8,
    quantize_int8_static,
)

logger = logging.getLogger(__name__)

# "int8": dynamic (MatMul weights, no calibration); "int8-static": calibrated QDQ, convolutions included.
QUANTIZATION_CHOICES = ("int8", "int8-static")
DEFAULT_CALIBRATION_SIZE = 300
DEFAULT_EVALUATION_SIZE = 1000
# Splits tried, in this order, for calibration (the first present) and for the held-out comparison (the first present
# that is not the calibration split and has labels); any other split comes after these.
_CALIBRATION_SPLITS = ("train",)
_HELD_OUT_SPLITS = ("validation", "dev_seen", "dev", "dev_unseen", "test", "test_seen", "test_unseen")
# Models above this size keep their weights in a side file (`model.onnx.data`): protobuf files stop at 2 GiB.
_SINGLE_FILE_LIMIT_BYTES = 1_800_000_000
# Captions of different lengths for tracing and checking: the trace must not see the caption length equal to the
# batch size or to 1, or torch.export could tie or specialise those dimensions.
_TRACE_CAPTIONS = ["a caption", "a somewhat longer caption for tracing the export"]
_CHECK_CAPTIONS = ["", "another caption", "a third caption that is clearly longer than the others were"]


class LogitsOnly(nn.Module):
    """The classifier with the graph's signature: named tensors in, `(logits, embeddings)` out (no loss, no output
    dataclass; the embeddings before normalisation, which the ONNX backend does)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values, token_type_ids=None):
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
        )
        return outputs.logits, outputs.embeddings


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
    #: how `model_int8.onnx` was made: method, format, types, calibration source/split/rows
    quantization: dict | None = None
    #: `model_int8.onnx` against `model.onnx` on held-out rows: label agreement, metrics of both and their change
    int8_evaluation: dict | None = None
    #: the exported model's `mmfusion.memory.model_fingerprint`: the copied memory must carry the same
    model_fingerprint: str | None = None
    #: rows of the labelled memory copied beside the graph (None: the checkpoint has none)
    memory_rows: int | None = None


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
    calibration=None,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    calibration_split: str | None = None,
    calibrate_method: str = "minmax",
    int8_target: str = "auto",
    evaluation_size: int = DEFAULT_EVALUATION_SIZE,
    opset_version: int | None = None,
    atol: float = 1e-4,
    **load_options,
) -> ExportInfo:
    r"""
    Export a checkpoint to `output_dir/model.onnx` plus its config and processor files.

    Args:
        checkpoint (`str` or `os.PathLike`):
            Checkpoint folder or Hub id (loaded with `AutoModelForSequenceClassification`, remote code allowed).
        output_dir (`str` or `os.PathLike`):
            Where to write `model.onnx`, `config.json`, the processor files and `onnx_export.json`.
        quantize (`str`, *optional*):
            Also write `model_int8.onnx`: `"int8"`, dynamically quantized (`mmfusion.inference.quantize_int8`: MatMul
            weights, no calibration); `"int8-static"`, statically quantized, convolutions included
            (`mmfusion.inference.quantize_int8_static`), calibrated on `calibration`.
        calibration (*optional*):
            Data for calibration and for the int8/fp32 comparison: anything `load_image_text_dataset` reads (a
            folder, a `.jsonl`/`.csv` file, `"demo"`, a `DatasetDict`). Required by `"int8-static"`.
        calibration_size (`int`, *optional*, defaults to 300):
            Calibration rows, drawn at random (seed 0) from `calibration_split`.
        calibration_split (`str`, *optional*):
            Default: `"train"` when present, else the first split.
        calibrate_method (`str`, *optional*, defaults to `"minmax"`):
            See `quantize_int8_static`.
        int8_target (`str`, *optional*, defaults to `"auto"`):
            The kind of CPU `model_int8.onnx` is made for (`mmfusion.inference.quantization.INT8_TARGETS`): `"vnni"`
            (8-bit weights), `"avx2"` (x86 without VNNI: 7-bit weights, which its int8 kernels cannot saturate) or
            `"arm"`; `"auto"`, this machine's. Recorded in `onnx_export.json`; loading the graph on another kind of
            CPU says so.
        evaluation_size (`int`, *optional*, defaults to 1000):
            At most this many held-out rows for the int8/fp32 comparison: the first labeled split other than the
            calibration split (validation, dev, test, ...), else the calibration split's rows not used to calibrate.
        opset_version (`int`, *optional*):
            ONNX opset; default: the exporter's.
        atol (`float`, *optional*, defaults to 1e-4):
            The export is run on a check batch with ONNX Runtime and compared with PyTorch; a larger maximum absolute
            logit difference is logged as a warning.
        load_options:
            Passed to `load_image_text_dataset` for `calibration`: the fields of `mmfusion.data.LoaderArguments`
            (`cache_dir`, `text_column`, `on_bad_rows`, ...), as `mmfusion-export` passes them.

    Returns:
        `ExportInfo`: inputs, outputs, the measured difference and the files written (also in `onnx_export.json`).
    """
    from transformers import AutoModelForSequenceClassification, AutoProcessor

    if quantize is not None and quantize not in QUANTIZATION_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZATION_CHOICES} or None, got {quantize!r}")
    if quantize == "int8-static" and calibration is None:
        raise ValueError("quantize='int8-static' needs calibration data (--calibration DATA).")
    if calibration_size < 1:
        raise ValueError(f"calibration_size must be at least 1, got {calibration_size}")
    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate_method must be one of {CALIBRATION_METHODS}, got {calibrate_method!r}")
    tuning = int8_tuning(int8_target)  # refuses an unknown target before the slow export
    splits = None
    if calibration is not None:  # loaded (and checked) before the slow export, so bad data fails fast
        splits = calibration_and_held_out(
            calibration, calibration_size, calibration_split, evaluation_size, **load_options
        )
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
    config = copy.deepcopy(model.config)
    # An export folder has no PyTorch weights, so transformers' pipeline cannot load it: do not advertise one.
    config.custom_pipelines = {}
    config.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    from ..memory import model_fingerprint, remove_memory_files

    remove_memory_files(output_dir)  # an earlier export's memory would pass for this model's
    if getattr(model, "memory", None) is not None:  # loaded and checked against the model by from_pretrained
        model.memory.save(output_dir)

    difference = max_logit_difference(model, onnx_path, sample_inputs(processor, image_size, _CHECK_CAPTIONS))
    if difference > atol:
        logger.warning("ONNX Runtime and PyTorch logits differ by up to %.3g (> %.1g).", difference, atol)
    files = {"fp32": onnx_path.name}
    quantization = evaluation = None
    int8_path = output_dir / INT8_ONNX_FILENAME
    if quantize == "int8":
        files["int8"] = quantize_int8(onnx_path, int8_path, reduce_range=tuning["reduce_range"]).name
        quantization = {"method": "dynamic", "weight_type": "int8", "op_types": list(DEFAULT_OP_TYPES)}
    elif quantize == "int8-static":
        source, calibration_rows = splits["calibration"]
        batches = calibration_batches(processor, calibration_rows, list(trace_inputs))
        files["int8"] = quantize_int8_static(
            onnx_path, int8_path, batches, calibrate_method=calibrate_method, reduce_range=tuning["reduce_range"]
        ).name
        quantization = {
            "method": "static",
            "format": "QDQ",
            "activation_type": "uint8",
            "weight_type": "int8",
            "per_channel": True,
            "image_side": "every operator, static",
            "text_side": "Conv/Relu/MaxPool static, MatMul/Gemm weights dynamic",
            "calibrate_method": calibrate_method,
            "calibration": {"source": str(calibration), "split": source, "rows": len(calibration_rows)},
        }
    if quantization is not None:
        quantization["tuned_for"] = tuning
    if quantize is not None and splits is not None:
        evaluation = compare_int8_with_fp32(output_dir, *splits["held_out"], source=str(calibration))
        logger.info(
            "int8 vs fp32 on %d held-out rows of %s: label agreement %.4f",
            evaluation["rows"],
            evaluation["split"],
            evaluation["label_agreement"],
        )
    info = ExportInfo(
        fusion=model.config.fusion,
        inputs=list(trace_inputs),
        outputs=["logits", EMBEDDINGS_OUTPUT],
        opset_version=graph_opset(onnx_path),
        max_caption_length=max_caption_length,
        torch_version=torch.__version__,
        max_abs_logit_difference=difference,
        files=files,
        quantization=quantization,
        int8_evaluation=evaluation,
        model_fingerprint=model_fingerprint(model),
        memory_rows=len(model.memory) if getattr(model, "memory", None) is not None else None,
    )
    (output_dir / EXPORT_INFO_FILENAME).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    return info


def calibration_and_held_out(
    source, calibration_size: int, calibration_split: str | None, evaluation_size: int, **load_options
) -> dict[str, tuple[str, object]]:
    """`{"calibration": (split, rows), "held_out": (split, rows)}` from any source the data layer reads.

    Calibration rows are a random sample (seed 0) of `calibration_split` (default: train, else the first split).
    Held-out rows: the first labeled split other than that one (validation, dev, test, ...), else the calibration
    split's rows that were not sampled; at most `evaluation_size` of them, in file order.
    """
    from ..data import load_image_text_dataset

    dataset_dict = load_image_text_dataset(source, **load_options)
    names = list(dataset_dict)
    if calibration_split is None:
        calibration_split = next((name for name in _CALIBRATION_SPLITS if name in dataset_dict), names[0])
    elif calibration_split not in dataset_dict:
        raise ValueError(f"{source} has no split {calibration_split!r}; available: {', '.join(names)}.")
    pool = dataset_dict[calibration_split]
    if len(pool) == 0:
        raise ValueError(f"The {calibration_split!r} split of {source} is empty: nothing to calibrate on.")
    order = np.random.default_rng(0).permutation(len(pool))
    calibration_rows = pool.select(sorted(order[:calibration_size]))

    def labeled(dataset) -> bool:
        return "label" in dataset.column_names and len(dataset) > 0 and any(map(has_label, dataset["label"]))

    ordered = [name for name in _HELD_OUT_SPLITS if name in dataset_dict] + names
    held_out_split = next(
        (name for name in ordered if name != calibration_split and labeled(dataset_dict[name])), None
    )
    if held_out_split is not None:
        held_out = dataset_dict[held_out_split]
    else:
        held_out_split = f"{calibration_split} (rows not used for calibration)"
        held_out = pool.select(sorted(order[calibration_size:]))
    held_out = held_out.select(range(min(evaluation_size, len(held_out))))
    return {"calibration": (calibration_split, calibration_rows), "held_out": (held_out_split, held_out)}


def calibration_batches(processor, dataset, input_names: list[str], batch_size: int = 16):
    """Processor outputs (numpy, restricted to `input_names`) for `dataset`'s rows, `batch_size` at a time."""
    for batch in dataset.iter(batch_size=batch_size):
        inputs = processor(images=batch["image"], text=batch["text"], return_tensors="np")
        yield {name: np.asarray(inputs[name]) for name in input_names if name in inputs}


def compare_int8_with_fp32(
    output_dir: Path, split: str, dataset, *, source: str, int8_file: str = INT8_ONNX_FILENAME
) -> dict:
    """`int8_file` (`model_int8.onnx`) against `model.onnx` on `dataset`: label agreement, metrics of both, change."""
    from ..evaluation.metrics import classification_metrics, multi_label_metrics
    from .predictor import MMFusionPredictor

    if len(dataset) == 0:
        raise ValueError(f"No held-out rows in {source} to compare int8 with fp32 on.")
    results = {}
    for name, onnx_file in (("fp32", ONNX_FILENAME), ("int8", int8_file)):
        predictor = MMFusionPredictor.from_pretrained(output_dir, backend="onnx", onnx_file=onnx_file, device="cpu")
        results[name] = predictor.predict_dataset(dataset, progress=False)
    fp32, int8 = results["fp32"], results["int8"]
    evaluation = {
        "source": source,
        "split": split,
        "rows": len(dataset),
        "label_agreement": float((fp32.label_ids == int8.label_ids).mean()),
        "max_abs_probability_difference": float(np.abs(fp32.probabilities - int8.probabilities).max()),
    }
    labels = fp32.true_labels
    if labels is not None and fp32.labeled.any():
        metrics = {}
        for name, r in results.items():
            if r.multi_label:  # at the checkpoint's per-label thresholds
                metrics[name] = multi_label_metrics(r.probabilities, labels, r.label_names, r.threshold)
            else:
                metrics[name] = classification_metrics(r.probabilities, labels, r.label_names)
        evaluation["fp32"], evaluation["int8"] = metrics["fp32"], metrics["int8"]
        evaluation["metric_change"] = {key: metrics["int8"][key] - metrics["fp32"][key] for key in metrics["fp32"]}
    return evaluation


def caption_length_limit(model: nn.Module, processor) -> int | None:
    """The longest caption (in tokens) the model takes: its position embeddings' and the tokenizer's limit.

    The tokenizer's `model_max_length` is, in a trained checkpoint, the limit training truncated captions at
    (`limit_text_length`): the export folder's processor files keep it, and the graph is traced up to it."""
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
            output_names=["logits", EMBEDDINGS_OUTPUT],
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


def build_parser() -> HfArgumentParser:
    # How to read --calibration DATA: `LoaderArguments`, parsed from the one dataclass as in every command that loads
    # data; the plain help formatter keeps this command's own "default: ..." wording.
    parser = HfArgumentParser(
        LoaderArguments,
        prog="mmfusion-export",
        description="Export an mmfusion checkpoint to ONNX (model.onnx + config + processor files).",
        epilog="The data options (--image-column, --on-bad-rows, ...) apply to --calibration DATA and are the same in "
        "train.py, mmfusion-data and mmfusion-predict.",
        formatter_class=argparse.HelpFormatter,
    )
    parser.add_argument("checkpoint", help="checkpoint folder or Hub id")
    parser.add_argument("output_dir", help="folder to write model.onnx and the processor files to")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATION_CHOICES,
        help="also write model_int8.onnx: int8 = dynamic (MatMul weights only, no calibration), int8-static = "
        "calibrated on --calibration, convolutions included (fastest on CPUs with VNNI)",
    )
    parser.add_argument(
        "--calibration",
        metavar="DATA",
        help="calibration data (a Hateful-Memes-layout folder, .jsonl/.csv/.tsv file, or 'demo'); also used to "
        "compare int8 with fp32 on a held-out split (reported in onnx_export.json)",
    )
    parser.add_argument(
        "--calibration-size",
        type=int,
        default=DEFAULT_CALIBRATION_SIZE,
        metavar="N",
        help=f"calibration rows, sampled from the train split (default: {DEFAULT_CALIBRATION_SIZE})",
    )
    parser.add_argument("--calibration-split", help="split to calibrate on (default: train, else the first split)")
    parser.add_argument("--calibrate-method", choices=CALIBRATION_METHODS, default="minmax", help="default: minmax")
    parser.add_argument(
        "--int8-target",
        choices=("auto", *INT8_TARGETS),
        default="auto",
        help="the kind of CPU model_int8.onnx is made for: vnni (8-bit weights), avx2 (x86 without VNNI: 7-bit "
        "weights, which its int8 kernels cannot saturate), arm; default: auto, this machine's",
    )
    parser.add_argument(
        "--evaluation-size",
        type=int,
        default=DEFAULT_EVALUATION_SIZE,
        metavar="N",
        help=f"at most N held-out rows for the int8/fp32 comparison (default: {DEFAULT_EVALUATION_SIZE})",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: the exporter's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.quantize == "int8-static" and args.calibration is None:
        build_parser().error("--quantize int8-static needs --calibration DATA")
    from ..data import BadRowError

    try:
        info = export_onnx(
            args.checkpoint,
            args.output_dir,
            quantize=args.quantize,
            calibration=args.calibration,
            calibration_size=args.calibration_size,
            calibration_split=args.calibration_split,
            calibrate_method=args.calibrate_method,
            int8_target=args.int8_target,
            evaluation_size=args.evaluation_size,
            opset_version=args.opset,
            **LoaderArguments.from_namespace(args).as_loader_kwargs(),
        )
    except (BadRowError, OSError, ValueError) as error:
        print(f"mmfusion-export: error: {error}", file=sys.stderr)
        return 1
    written = ", ".join(info.files.values())
    print(
        f"Wrote {written} to {args.output_dir} ({info.fusion} fusion; inputs: {', '.join(info.inputs)}; "
        f"max |logit difference| vs PyTorch: {info.max_abs_logit_difference:.2e})"
    )
    if info.int8_evaluation is not None:
        evaluation = info.int8_evaluation
        changes = ", ".join(f"{key} {value:+.4f}" for key, value in evaluation.get("metric_change", {}).items())
        print(
            f"int8 vs fp32 on {evaluation['rows']} rows of {evaluation['split']}: label agreement "
            f"{evaluation['label_agreement']:.2%}" + (f"; metric change: {changes}" if changes else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
