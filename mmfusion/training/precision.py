"""Which floating-point precision fits the hardware: bf16 only where it is native.

A CPU without bf16 instructions (AVX512-BF16 or AMX on x86; the BF16 extension on Arm) emulates bf16 autocast, and
training becomes many times slower (measured on an AVX2-only Zen 3: 15x). `--precision auto` picks bf16
on GPUs and CPUs that compute it natively, fp16 on GPUs without bf16, fp32 otherwise (the default is still fp32, so
results do not change with the machine until the published figures are re-measured); an explicit `--bf16 true` on a
CPU without native bf16 is kept, with one warning that says why it will be slow.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CPU flags (as /proc/cpuinfo spells them) that decide CPU speed of bf16 and int8 work; shown beside benchmark figures.
RELEVANT_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86, x86 (AMX), Arm (cpuinfo "Features")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them in /proc/cpuinfo (`flags` on x86, `Features` on Arm); empty
    where that file does not exist."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return bool(cpu_flags() & set(NATIVE_BF16_FLAGS)) or (
        platform.system() == "Darwin" and platform.machine() == "arm64"  # Apple M2 and later; M1 emulates
    )


def describe_cpu() -> str:
    """One line for benchmark output: the CPU's model, cores and the flags that matter for bf16 and int8."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    present = [flag for flag in RELEVANT_CPU_FLAGS if flag in cpu_flags()]
    native = "native bf16" if cpu_has_native_bf16() else "no native bf16 (emulated)"
    return f"{model}, {torch.get_num_threads()} threads; {' '.join(present) or 'none of the AVX2+ flags'}; {native}"


def auto_precision(on_gpu: bool) -> str:
    """bf16 where native (GPU with bf16, CPU with bf16 instructions), fp16 on other GPUs, else fp32."""
    if on_gpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


_warned = False


def resolve_precision(training_args) -> str:
    """Set `training_args.bf16`/`fp16` (and `use_cpu` for CPU bf16, which the Trainer requires) from its `precision`
    field, before `TrainingArguments.__post_init__` validates them. Explicit `--bf16`/`--fp16` flags win over `auto`
    and `fp32` (the default, so existing commands and configs keep their meaning). Returns the precision in force."""
    global _warned
    on_gpu = torch.cuda.is_available() and not training_args.use_cpu
    choice = training_args.precision
    if choice not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}; got {choice!r}")
    explicit = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else None
    if choice in ("auto", "fp32"):
        choice = explicit or (auto_precision(on_gpu) if choice == "auto" else "fp32")
    training_args.precision = choice  # what is in force, as saved with the run's arguments
    training_args.bf16, training_args.fp16 = choice == "bf16", choice == "fp16"
    if choice == "bf16" and not on_gpu:
        training_args.use_cpu = True
        if not cpu_has_native_bf16() and not _warned:
            _warned = True
            logger.warning(
                "bf16 on a CPU without native bf16 instructions (no avx512_bf16 / amx_bf16 among its flags): torch "
                "emulates it and training runs many times slower than in fp32 (15x on an AVX2-only Zen 3). Use "
                "--precision auto (or fp32) on this machine."
            )
    return choice


__all__ = ["PRECISIONS", "auto_precision", "cpu_flags", "cpu_has_native_bf16", "describe_cpu", "resolve_precision"]
