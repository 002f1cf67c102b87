"""Precision that fits the hardware: bf16 only where native; a warning where it is asked for but emulated."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from mmfusion.training import precision
from mmfusion.training.arguments import parse_arguments

AVX2_ONLY = frozenset({"fpu", "sse2", "avx", "avx2", "fma"})  # an AMD Zen 3 / Intel Haswell-style CPU
ZEN4 = AVX2_ONLY | {"avx512f", "avx512_vnni", "avx512_bf16"}


@pytest.fixture()
def cpu(monkeypatch):
    """Pretend to be a CPU-only machine with the given /proc/cpuinfo flags (the detection's boundary)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "_warned", False)

    def use(flags):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))

    return use


@pytest.fixture()
def warnings_logged(caplog):
    caplog.set_level(logging.WARNING, logger=precision.logger.name)
    return lambda: [r.getMessage() for r in caplog.records if "without native bf16" in r.getMessage()]


@pytest.mark.parametrize(
    ("flags", "argv", "expected"),
    [
        (AVX2_ONLY, [], "fp32"),
        (AVX2_ONLY, ["--precision", "auto"], "fp32"),
        (ZEN4, ["--precision", "auto"], "bf16"),
        (ZEN4, [], "fp32"),  # the default keeps every machine's results as they were
        (AVX2_ONLY, ["--bf16", "true"], "bf16"),  # explicit wins, with a warning (below)
        (ZEN4, ["--precision", "fp32", "--bf16", "true"], "bf16"),
    ],
)
def test_precision_in_force(cpu, flags, argv, expected):
    cpu(flags)
    _, _, training_args = parse_arguments([*argv, "--output_dir", "unused"])
    assert training_args.precision == expected
    assert training_args.bf16 == (expected == "bf16") and not training_args.fp16
    assert training_args.use_cpu or expected == "fp32"  # the Trainer needs use_cpu for bf16 on a CPU


def test_explicit_bf16_on_a_cpu_without_it_warns_once_with_the_reason(cpu, warnings_logged):
    cpu(AVX2_ONLY)
    parse_arguments(["--bf16", "true", "--output_dir", "unused"])
    parse_arguments(["--bf16", "true", "--output_dir", "unused"])
    messages = warnings_logged()
    assert len(messages) == 1 and "avx512_bf16" in messages[0] and "slower" in messages[0]


def test_no_warning_where_bf16_is_native(cpu, warnings_logged):
    cpu(ZEN4)
    parse_arguments(["--bf16", "true", "--output_dir", "unused"])
    assert warnings_logged() == []


def test_the_cpu_line_names_the_flags_that_matter():
    line = precision.describe_cpu()
    assert ("native bf16" in line) and (("avx2" in line) == ("avx2" in precision.cpu_flags()))


def test_a_real_bf16_run_on_this_machine_warns_exactly_when_it_lacks_native_bf16(
    repo_root, tiny_memes_folder, tiny_train_args, tmp_path
):
    command = [
        sys.executable, str(repo_root / "train.py"), "--dataset", str(tiny_memes_folder),
        "--output_dir", str(tmp_path / "run"), "--bf16", "true", "--max_steps", "1", "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "false", "--do_eval", "false", "--do_predict", "false",
        *tiny_train_args,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    warned = "without native bf16" in result.stderr
    assert warned == (not precision.cpu_has_native_bf16())
