#!/usr/bin/env python
"""How much faster int8 matrix products are than float32 on this CPU, in ONNX Runtime: the ceiling for static int8.

Times one square matrix product per format through ONNX Runtime's CPU kernels (MLAS), the kernels the int8 export
runs on: float32 `MatMul`, `MatMulInteger` with uint8 activations x int8 weights (U8S8, what
`quantize_int8_static` produces) and uint8 x uint8 (U8U8). On x86 with VNNI, U8S8 runs on `vpdpbusd` (one instruction
per 4-wide dot product, summed in 32 bits); without VNNI on `vpmaddubsw` + `vpmaddwd` (pairs summed in 16 bits, then
32), about twice float32's rate at best. A whole int8 model cannot beat its float32 ORT twin by more than this ratio
where its time is matrix work (convolutions are matrix products here), which bounds its speed-up over PyTorch eager.

    python benchmarks/bench_int8_kernels.py                # 1 thread, 1024^3
    python benchmarks/bench_int8_kernels.py --size 2048 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime
import torch
from onnx import TensorProto, helper

from mmfusion.inference.quantization import int8_target
from mmfusion.training.precision import describe_cpu

FORMATS = {  # name: (ONNX op, activation type, weight type, output type)
    "fp32": ("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT),
    "u8s8": ("MatMulInteger", TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32),
    "u8u8": ("MatMulInteger", TensorProto.UINT8, TensorProto.UINT8, TensorProto.INT32),
}


def matmul_session(fmt: str, n: int, threads: int) -> onnxruntime.InferenceSession:
    op, a_type, b_type, y_type = FORMATS[fmt]
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["y"])],
        fmt,
        [helper.make_tensor_value_info("a", a_type, [n, n]), helper.make_tensor_value_info("b", b_type, [n, n])],
        [helper.make_tensor_value_info("y", y_type, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def operands(fmt: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if fmt == "fp32":
        return {"a": rng.random((n, n), dtype=np.float32), "b": rng.random((n, n), dtype=np.float32)}
    weights = (
        rng.integers(-127, 128, (n, n), dtype=np.int8)
        if fmt == "u8s8"
        else rng.integers(0, 256, (n, n), dtype=np.uint8)
    )
    return {"a": rng.integers(0, 256, (n, n), dtype=np.uint8), "b": weights}


def gmacs(fmt: str, n: int, threads: int, repeats: int) -> float:
    session, inputs = matmul_session(fmt, n, threads), operands(fmt, n, np.random.default_rng(0))
    session.run(None, inputs)  # warm-up: packing buffers, thread pool
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, inputs)
        seconds.append(time.perf_counter() - start)
    return n**3 / statistics.median(seconds) / 1e9


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="n of the n x n x n product")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # describe_cpu() names torch's thread count
    print(f"CPU: {describe_cpu()}; int8 target of this CPU: {int8_target()}")
    print(f"onnxruntime {onnxruntime.__version__}; {args.size}^3 matrix product, {args.threads} thread(s), "
          f"median of {args.repeats}")  # fmt: skip
    rates = {}
    for fmt in FORMATS:  # interleaving would not help: each takes well under a second
        rates[fmt] = gmacs(fmt, args.size, args.threads, args.repeats)
        print(f"  {fmt:<5} {rates[fmt]:8.1f} GMAC/s   {rates[fmt] / rates['fp32']:5.2f}x fp32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
