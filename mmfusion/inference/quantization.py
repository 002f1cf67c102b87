"""int8 quantization of an exported graph with ONNX Runtime: static (calibrated, convolutions included) or dynamic.

**Static** (`quantize_int8_static`, `mmfusion-export --quantize int8-static --calibration DATA`): activation ranges
are measured once on a few hundred calibration rows, and the vision tower is quantized whole, convolutions included,
as QDQ (QuantizeLinear/DequantizeLinear pairs that ONNX Runtime fuses into `QLinearConv`, `QLinearAdd`, ... when it
loads the graph); the text tower's matrix multiplications are then quantized dynamically (see
`quantize_int8_static` for why). What makes it fast on an x86 CPU with AVX-512 VNNI, measured with
`benchmarks/bench_inference.py` (resnet18 tower at 224 px + BERT 4x256, 1 thread, batch 32):

- uint8 activations x int8 weights (U8S8) is the layout VNNI multiplies natively (`vpdpbusd`): an int8 GEMM runs at
  about 12x ONNX Runtime's fp32 GEMM on this machine. int8 x int8 activations fall off the fast path (8 GMAC/s
  against 317), so activations are uint8. `reduce_range` (7-bit weights) is only needed on CPUs without VNNI, where
  U8S8 products can saturate: the export picks it per CPU (`int8_target`) and records which CPU it was made for.
- Quantizing every operator of the vision tower, not only `Conv`: with the residual `Add`s, `MaxPool`, ... left in
  fp32, each one costs a DequantizeLinear/QuantizeLinear pair around it (20 % of the run time); quantized, the tower
  stays in int8 from the first convolution to the last.
- Per-channel weight scales keep the accuracy of the convolutions (BatchNorm is folded into them at export, so
  channels differ widely in range) at no measurable cost in speed; QDQ and the older QOperator format run at the
  same speed, QDQ is the format ONNX Runtime recommends.
- The 7x7 stem convolution (3 input channels) is the slowest convolution per multiply (about 20 % of the time);
  rewriting it as a space-to-depth + 4x4 convolution on 12 channels measured no faster.

**Dynamic** (`quantize_int8`, `--quantize int8`): weights of the matrix multiplications (text tower, projections,
classifier) are stored as int8 and activations are quantized on the fly, batch by batch, so no calibration data is needed. Convolutions stay fp32 by default:
ONNX Runtime runs dynamically quantized convolutions (`ConvInteger`) with a generic kernel that is much *slower* than
its fp32 convolutions, which it fuses with BatchNorm and ReLU. Measured with `benchmarks/bench_inference.py` (resnet18
tower at 224 px, 1 thread, batch 32): quantizing the convolutions too gives 6.6 pairs/s where the fp32 graph gives 21.7
in the same run; leaving them fp32 gives 25.3 (fp32: 22.3). See `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..training import precision

logger = logging.getLogger(__name__)

# Operators whose weights are quantized by default (see the module docstring for why Conv is not among them).
DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Attention")
# minmax keeps only each activation's per-batch minimum and maximum (ONNX Runtime adds ReduceMin/ReduceMax outputs
# to the graph), so any number of calibration rows fits in memory. Its `CalibMaxIntermediateOutputs` option must not
# be used: in onnxruntime 1.32 it discards the batches collected so far instead of merging their ranges.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Statically quantized outside the image-only part of the graph (see `quantize_int8_static`): convolutions, and ReLU
# and max-pooling, whose outputs keep their inputs' range. The text side's MatMul/Gemm weights are quantized
# dynamically afterwards (`DEFAULT_OP_TYPES`).
TEXT_SIDE_OP_TYPES = ("Conv", "Relu", "MaxPool")

# Which CPU an int8 graph is made for. ONNX Runtime's x86 int8 kernels multiply uint8 activations by int8 weights. With
# VNNI (AVX512-VNNI, AVX-VNNI) or AMX-INT8 each product is summed in 32 bits (`vpdpbusd`); without it, AVX2's and
# AVX-512BW's `vpmaddubsw` adds pairs of products into 16 bits, which saturates when both weights of a pair are
# large, so ONNX Runtime's documentation asks for 7-bit weights (`reduce_range`) there. Arm's dot-product
# instructions sum in 32 bits, as VNNI does.
INT8_TARGETS = {
    "vnni": "x86 with VNNI or AMX-INT8: 8-bit weights",
    "avx2": "x86 without VNNI (AVX2/AVX-512BW's vpmaddubsw sums pairs of products in 16 bits): 7-bit weights, which "
    "cannot saturate it",
    "arm": "Arm (dot-product instructions, 32-bit sums): 8-bit weights",
}
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def int8_target(flags: frozenset[str] | None = None, machine: str | None = None) -> str:
    """The `INT8_TARGETS` entry for a CPU: by default this one (its /proc/cpuinfo flags and `platform.machine()`)."""
    flags = precision.cpu_flags() if flags is None else flags
    machine = (platform.machine() if machine is None else machine).lower()
    if machine in ("aarch64", "arm64"):
        return "arm"
    return "vnni" if flags & set(VNNI_FLAGS) else "avx2"


def int8_tuning(target: str = "auto") -> dict:
    """What an int8 export is made for, as `onnx_export.json` records it (`quantization["tuned_for"]`): the target,
    whether weights are 7-bit (`reduce_range`), and the flags of the CPU that exported it."""
    if target == "auto":
        target = int8_target()
    if target not in INT8_TARGETS:
        raise ValueError(f"int8 target must be 'auto' or one of {tuple(INT8_TARGETS)}, got {target!r}")
    return {
        "target": target,
        "reduce_range": target == "avx2",
        "why": INT8_TARGETS[target],
        "exported_on": {
            "machine": platform.machine(),
            "cpu_flags": [flag for flag in precision.RELEVANT_CPU_FLAGS if flag in precision.cpu_flags()],
        },
    }


def warn_if_int8_made_for_another_cpu(export_info_path: str | os.PathLike, onnx_file: str) -> None:
    """Say so when `onnx_file` is an int8 graph made for a CPU unlike this one (read from `onnx_export.json`): 8-bit
    weights on a CPU without VNNI can saturate its int8 kernels and lose accuracy; 7-bit weights on a CPU with VNNI
    are correct but coarser than they need be."""
    path = Path(export_info_path)
    if not path.is_file():
        return
    info = json.loads(path.read_text(encoding="utf-8"))
    tuned = (info.get("quantization") or {}).get("tuned_for")
    if tuned is None or (info.get("files") or {}).get("int8") != onnx_file:
        return
    here = int8_target()
    if tuned["target"] == here:
        return
    exported_on = " ".join(tuned["exported_on"]["cpu_flags"]) or "none of the AVX2+ flags"
    this_cpu = " ".join(flag for flag in precision.RELEVANT_CPU_FLAGS if flag in precision.cpu_flags())
    advice = (
        f"export it again on this machine, or for this kind of CPU with `mmfusion-export ... --int8-target {here}`"
    )
    if not tuned["reduce_range"] and here == "avx2":
        logger.warning(
            "%s was quantized with 8-bit weights for a CPU whose int8 kernels sum in 32 bits (--int8-target %s, "
            "exported on a CPU with %s), and this "
            "CPU has no VNNI (%s): its int8 kernels sum pairs of products in 16 bits, which 8-bit weights can "
            "saturate, losing accuracy; %s.",
            onnx_file, tuned["target"], exported_on, this_cpu or "none of the AVX2+ flags", advice,
        )  # fmt: skip
    else:
        logger.info(
            "%s was quantized for another kind of CPU (--int8-target %s, exported on a CPU with %s; this one: %s): "
            "it runs correctly here; for the best "
            "accuracy, %s.",
            onnx_file, tuned["target"], exported_on, here, advice,
        )  # fmt: skip


def quantize_int8(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    per_channel: bool = False,
    reduce_range: bool = False,
) -> Path:
    """Write a dynamically int8-quantized copy of an ONNX model.

    Args:
        model_path (`str` or `os.PathLike`):
            The fp32 `.onnx` file (as written by `export_onnx`).
        output_path (`str` or `os.PathLike`):
            Where to write the quantized model.
        op_types (`Sequence[str]`, *optional*, defaults to `("MatMul", "Gemm", "Attention")`):
            Operator types to quantize; `None` quantizes every type ONNX Runtime supports, convolutions included.
        per_channel (`bool`, *optional*, defaults to `False`):
            One scale per output channel instead of one per tensor.
        reduce_range (`bool`, *optional*, defaults to `False`):
            7-bit weights, for CPUs without VNNI (see `INT8_TARGETS`; `int8_tuning` decides it per CPU).

    Returns:
        `Path`: `output_path`.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with _without_preprocessing_hint():
        quantize_dynamic(
            Path(model_path),
            output_path,
            op_types_to_quantize=list(op_types) if op_types is not None else None,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
        )
    return output_path


@contextmanager
def _without_preprocessing_hint() -> Iterator[None]:
    """Silence ONNX Runtime's "consider to run pre-processing before quantization" warning (on the root logger).

    Its pre-processing (`quant_pre_process`) fails on torch.export graphs ("Incomplete symbolic shape inference")
    unless symbolic shape inference is skipped, and then measured no faster than quantizing the export directly.
    """

    def drop_hint(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(drop_hint)
    try:
        yield
    finally:
        root.removeFilter(drop_hint)


def quantize_int8_static(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calibration_batches: Iterable[Mapping[str, np.ndarray]],
    *,
    op_types: Sequence[str] | None = None,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    image_input: str = "pixel_values",
    reduce_range: bool = False,
) -> Path:
    """Write a statically int8-quantized (QDQ) copy of an ONNX model, calibrated on `calibration_batches`.

    Every node that depends on the image alone (the vision tower, up to where it meets the text) is quantized
    statically, whatever its type; elsewhere only `TEXT_SIDE_OP_TYPES`, and then the text side's MatMul/Gemm weights
    dynamically (as `quantize_int8` does: activations quantized per batch, on the fly). Why not statically everywhere:

    - the text side's additions, multiplications and selections build and apply the attention mask, whose padding
      positions hold the most negative float: an int8 range stretched to cover it leaves no resolution for the
      attention scores (measured on the demo model: label agreement with fp32 fell from 100 % to 31 %);
    - static ranges for the text MatMuls' activations (attention scores, caption-dependent) cost accuracy for no speed:
      on the realistic benchmark model, AUROC on the demo test split moved by 0.0085 against fp32 with them static,
      0.0022 with them dynamic, at the same throughput (the convolutions are where the time goes).

    Args:
        model_path (`str` or `os.PathLike`):
            The fp32 `.onnx` file (as written by `export_onnx`).
        output_path (`str` or `os.PathLike`):
            Where to write the quantized model.
        calibration_batches (iterable of `dict[str, np.ndarray]`):
            Model inputs by name (`calibration_batches` in `mmfusion.inference.export` makes them from a dataset);
            the graph's activation ranges are measured on them. A few hundred representative rows are enough.
        op_types (`Sequence[str]`, *optional*):
            Operator types to quantize everywhere instead (no image/text distinction); default: as described above.
        per_channel (`bool`, *optional*, defaults to `True`):
            One weight scale per output channel.
        calibrate_method (`str`, *optional*, defaults to `"minmax"`):
            `"minmax"`, `"entropy"` or `"percentile"` (the last two keep histograms of every activation: slower, and
            memory-hungry for large calibration sets).
        image_input (`str`, *optional*, defaults to `"pixel_values"`):
            The graph input holding the images.
        reduce_range (`bool`, *optional*, defaults to `False`):
            7-bit weights, for CPUs without VNNI (see `INT8_TARGETS`; `int8_tuning` decides it per CPU).

    Returns:
        `Path`: `output_path`.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibrate_method not in CALIBRATION_METHODS:
        raise ValueError(f"calibrate_method must be one of {CALIBRATION_METHODS}, got {calibrate_method!r}")
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[calibrate_method]

    batches = iter(calibration_batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("No calibration batches: static quantization needs at least one calibration row.")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = itertools.chain([first], batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else dict(batch)

    nodes_to_quantize = None
    if op_types is None:
        import onnx

        graph = onnx.load(os.fspath(model_path), load_external_data=False).graph
        image_nodes = set(image_only_nodes(graph, image_input))
        nodes_to_quantize = [
            node.name for node in graph.node if node.name in image_nodes or node.op_type in TEXT_SIDE_OP_TYPES
        ]
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with _without_preprocessing_hint():
        quantize_static(
            Path(model_path),
            output_path,
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types) if op_types is not None else None,
            nodes_to_quantize=nodes_to_quantize,
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=method,
        )
    if op_types is None:
        quantize_int8(output_path, output_path, reduce_range=reduce_range)
    return output_path


def image_only_nodes(graph, image_input: str = "pixel_values") -> list[str]:
    """Names of the nodes of `graph` whose inputs derive from `image_input` and from no other graph input.

    ONNX graphs list nodes in topological order, so one pass carries every tensor's set of graph inputs forward.
    """
    initializers = {tensor.name for tensor in graph.initializer}
    sources: dict[str, frozenset[str]] = {
        value.name: frozenset([value.name]) for value in graph.input if value.name not in initializers
    }
    if image_input not in sources:
        raise ValueError(f"The graph has no input {image_input!r}; its inputs: {', '.join(sources)}")
    image_only = []
    for node in graph.node:
        depends = frozenset().union(*(sources.get(name, frozenset()) for name in node.input if name))
        for output in node.output:
            sources[output] = depends
        if depends == {image_input}:
            image_only.append(node.name)
    return image_only
