"""Distributed training through train.py as users launch it: `accelerate launch` with the repository's configs, two
processes. On CPU (DDP over gloo): gradient accumulation and a resume after SIGKILL give the weights of a plain run,
and a checkpoint written by two processes reloads to the metrics the run reported. FSDP: refused on CPU with its
reason; on two GPUs, trained and reloaded like DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file
from test_train import run_train

from mmfusion.training.arguments import parse_arguments

CPU = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
# 32 training examples = one optimizer step per epoch for 2 processes x 16 (or x 8 x 2 accumulated): every step sees
# whole micro-batches of the same size, so accumulated and plain steps average the same 32 losses. No dropout (the
# small text tower has none) and no evaluation during training: nothing but the batch size differs between the runs.
RUN = ["--max_train_samples", "32", "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "2",
       "--save_total_limit", "20", "--eval_strategy", "no", "--load_best_model_at_end", "false",
       "--do_predict", "false", "--classifier_dropout", "0", "--seed", "7"]  # fmt: skip
# accelerate (1.16) turns FSDP on only for GPU-type process groups; see check_fsdp_device in
# mmfusion/training/arguments.py.
FSDP_NEEDS_GPUS = (
    "FSDP through accelerate needs 2 CUDA GPUs: on the CPU, accelerate's AcceleratorState makes the processes "
    "MULTI_CPU and never FSDP (only MULTI_GPU/XPU/... become FSDP), so train.py refuses an FSDP config there"
)


def launch_command(repo_root, config, port, args):
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(repo_root / "configs" / "accelerate" / config), "--main_process_port", str(port),
        str(repo_root / "train.py"), *map(str, args),
    ]  # fmt: skip


def launch(repo_root, config, port, args, env=CPU):
    return subprocess.run(
        launch_command(repo_root, config, port, args),
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def assert_same_weights(got_dir, expected_dir, skip=()):
    expected = load_file(expected_dir / "model.safetensors")
    got = load_file(got_dir / "model.safetensors")
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        if not name.endswith(skip):
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=name)


def assert_reloads_to_the_reported_metrics(repo_root, output, dataset, tiny_train_args, tmp_path, atol=1e-5):
    """The saved checkpoint, evaluated again in a fresh single process, gives the metrics the training run reported
    for the final weights: what was saved is what was trained."""
    reported = json.loads((output / "all_results.json").read_text())
    again = run_train(
        repo_root,
        ["--model_name_or_path", output, "--do_train", "false", "--dataset", dataset, "--do_predict", "false",
         "--output_dir", tmp_path / "reloaded", *tiny_train_args],
        env={**os.environ, **CPU},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-4000:]
    reloaded = json.loads((tmp_path / "reloaded" / "all_results.json").read_text())
    for key in ("eval_loss", "eval_auroc", "test_loss", "test_accuracy"):
        assert reloaded[key] == pytest.approx(reported[key], abs=atol), key


@pytest.fixture(scope="module")
def reference_run(repo_root, tiny_memes_folder, tiny_train_args, tmp_path_factory):
    """2 processes x 16 examples, no accumulation, uninterrupted; checkpoints every 2 steps. Launched as the README
    writes it (its log is kept beside the output folder, see the test of that below)."""
    output = tmp_path_factory.mktemp("reference") / "run"
    result = launch(repo_root, "cpu_ddp.yaml", 29551, ["--dataset", tiny_memes_folder, "--output_dir", output,
                                                       *tiny_train_args, *RUN])  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    (output.parent / "launch.log").write_text(result.stdout + result.stderr)
    for rank in (0, 1):
        assert f"[rank {rank}/2] trained 8 steps on 32 examples" in result.stdout + result.stderr
    # training moved the weights, so equal final weights below are not equal starting points
    with pytest.raises(AssertionError):
        assert_same_weights(output, output / "checkpoint-2")
    return output


def test_accelerate_launch_with_the_cpu_ddp_config_as_the_readme_writes_it(reference_run):
    """The reference run is the README's command, `accelerate launch --config_file configs/accelerate/cpu_ddp.yaml
    train.py ...`, without --use_cpu / --ddp_backend: on a machine without CUDA train.py must join the two processes
    itself, not run two independent trainings into one folder."""
    log = (reference_run.parent / "launch.log").read_text()
    for rank in (0, 1):
        assert f"[rank {rank}/2] trained 8 steps on 32 examples" in log
    assert "[rank 0/1]" not in log
    # one run over both ranks, one set of results
    assert json.loads((reference_run / "checkpoint-8" / "trainer_state.json").read_text())["global_step"] == 8
    assert json.loads((reference_run / "all_results.json").read_text())["test_accuracy"] >= 0


def test_gradient_accumulation_under_two_processes_matches_the_doubled_batch(
    repo_root, tiny_memes_folder, tiny_train_args, reference_run, tmp_path
):
    output = tmp_path / "accumulated"
    result = launch(
        repo_root,
        "cpu_ddp.yaml",
        29552,
        ["--dataset", tiny_memes_folder, "--output_dir", output, *tiny_train_args, *RUN,
         "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 8
    # Attention key biases have an exactly zero gradient (softmax ignores a score added to every key); AdamW turns
    # the float noise of that zero (~1e-9, which depends on the summation order) into steps of the learning rate's
    # size (7e-4 measured), so they are the one thing the batch split changes. Every other weight agrees to 6e-8.
    assert_same_weights(output, reference_run, skip=("attention.self.key.bias",))


def test_sigkill_under_two_processes_then_resume_matches_an_uninterrupted_run(
    repo_root, tiny_memes_folder, tiny_train_args, reference_run, tmp_path
):
    output = tmp_path / "interrupted"
    args = ["--dataset", tiny_memes_folder, "--output_dir", output, *tiny_train_args, *RUN]
    launcher = subprocess.Popen(
        launch_command(repo_root, "cpu_ddp.yaml", 29553, args),
        cwd=repo_root,
        env={**os.environ, **CPU},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # checkpoint-2 is complete once rank 0 wrote trainer_state.json (its last file) and rank 1 its RNG state
    checkpoint = output / "checkpoint-2"
    deadline = time.time() + 240
    while launcher.poll() is None and time.time() < deadline and not checkpoint_complete(checkpoint):
        time.sleep(0.02)
    assert launcher.poll() is None, f"the run ended (exit code {launcher.returncode}) before it could be killed"
    # like a lost machine: the launcher and both training processes (torch's launcher starts each in its own
    # session, so killing the launcher's process group would leave them running)
    processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    launcher.wait()
    psutil.wait_procs(processes, timeout=30)
    assert checkpoint_complete(checkpoint), "checkpoint-2 was not written before the kill"
    assert not (output / "model.safetensors").exists(), "training finished before it could be killed"

    resumed = launch(repo_root, "cpu_ddp.yaml", 29553, [*args, "--resume_from_checkpoint", checkpoint])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_same_weights(output, reference_run)


def checkpoint_complete(checkpoint) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        torch.load(checkpoint / "rng_state_1.pth", weights_only=False)
    except (OSError, ValueError, RuntimeError, EOFError):
        return False
    return True


def test_a_checkpoint_written_by_two_processes_reloads_to_the_reported_metrics(
    repo_root, tiny_memes_folder, tiny_train_args, reference_run, tmp_path
):
    assert_reloads_to_the_reported_metrics(repo_root, reference_run, tiny_memes_folder, tiny_train_args, tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("requested_by", ["accelerate launch", "--fsdp"])
def test_fsdp_on_cpu_is_refused_with_the_reason(requested_by, monkeypatch, tmp_path):
    # In-process, to spare a launch (~10 s): `accelerate launch --config_file configs/accelerate/fsdp.yaml` tells
    # the processes to use FSDP through this variable (run by hand: both processes stop with this error).
    argv = ["--output_dir", str(tmp_path)]
    if requested_by == "accelerate launch":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    else:
        argv.append("--fsdp")
    with pytest.raises(RuntimeError, match="FSDP was requested.*configs/accelerate/cpu_ddp.yaml"):
        parse_arguments(argv)


def test_a_launch_asking_for_processes_that_did_not_start_is_warned(monkeypatch, caplog, tmp_path):
    # In-process, with the environment accelerate's single-process launcher gives its one process when asked for
    # several (`accelerate launch --num_processes 2 train.py` without GPUs: MASTER_PORT but no WORLD_SIZE); the real
    # launch is run for mmfusion-predict in tests/test_predict.py.
    from mmfusion.inference.sharding import warn_once

    warn_once.cache_clear()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    with caplog.at_level("WARNING"):
        parse_arguments(["--output_dir", str(tmp_path)])
        assert "started this one alone" not in caplog.text  # one process asked for: no MASTER_PORT
        monkeypatch.setenv("MASTER_PORT", "29500")
        parse_arguments(["--output_dir", str(tmp_path)])
    assert "asked for several processes but started this one alone" in caplog.text
    assert "configs/accelerate/cpu_ddp.yaml" in caplog.text


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=FSDP_NEEDS_GPUS)
def test_fsdp_on_two_gpus_trains_and_saves_a_checkpoint_that_reloads(
    repo_root, tiny_memes_folder, tiny_train_args, tmp_path
):
    output = tmp_path / "fsdp"
    result = launch(
        repo_root,
        "fsdp.yaml",
        29551,
        ["--dataset", tiny_memes_folder, "--output_dir", output, *tiny_train_args, *RUN],
        env={"OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        assert f"[rank {rank}/2] trained 8 steps on 32 examples" in result.stdout + result.stderr
    # reloaded on the CPU: GPU convolutions (TF32) round differently
    assert_reloads_to_the_reported_metrics(repo_root, output, tiny_memes_folder, tiny_train_args, tmp_path, atol=1e-3)
