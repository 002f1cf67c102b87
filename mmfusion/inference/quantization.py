"""Dynamic int8 quantization of an exported graph with ONNX Runtime.

Weights of the matrix multiplications (text tower, projections, classifier) are stored as int8 and activations are
quantized on the fly, batch by batch, so no calibration data is needed. Convolutions stay fp32 by default:
ONNX Runtime runs dynamically quantized convolutions (`ConvInteger`) with a generic kernel that is much *slower* than
its fp32 convolutions, which it fuses with BatchNorm and ReLU. Measured with `benchmarks/bench_inference.py` (resnet18
tower at 224 px, 1 thread, batch 32): quantizing the convolutions too gives 6.6 pairs/s where the fp32 graph gives 21.7
in the same run; leaving them fp32 gives 25.3 (fp32: 22.3). See `benchmarks/RESULTS.md`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# Operators whose weights are quantized by default (see the module docstring for why Conv is not among them).
DEFAULT_OP_TYPES = ("MatMul", "Gemm", "Attention")


def quantize_int8(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    op_types: Sequence[str] | None = DEFAULT_OP_TYPES,
    per_channel: bool = False,
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
