"""train.py refuses what would corrupt or waste a run: a folder another run holds, an unwritable folder, a training
split without labels. Real subprocesses, as users run it."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from mmfusion.training.output_lock import LOCK_FILENAME, OutputDirError, OutputDirLock


def train_command(repo_root, *args):
    return [sys.executable, str(repo_root / "train.py"), *map(str, args)]


def test_second_run_into_the_same_folder_refuses_while_the_first_holds_it(
    repo_root, tiny_memes_folder, tiny_train_args, tmp_path
):
    output = tmp_path / "run"
    arguments = ["--dataset", tiny_memes_folder, "--output_dir", output, "--num_train_epochs", "3", *tiny_train_args]
    first = subprocess.Popen(
        train_command(repo_root, *arguments), cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (output / LOCK_FILENAME).exists():
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first run never took the output folder"
            time.sleep(0.05)
        # Hold the first run where it is (alive, holding the folder) however slowly the second one starts up.
        first.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        second = subprocess.run(
            train_command(repo_root, *arguments), cwd=repo_root, capture_output=True, text=True, timeout=120
        )
        refused_after = time.monotonic() - started
        assert second.returncode != 0
        assert f"Output folder {output} is in use by another run (PID {first.pid}" in second.stderr
        assert "Generating" not in second.stderr  # refused before loading any data
        assert refused_after < 60
    finally:
        first.send_signal(signal.SIGCONT)
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    # the first run's outputs are whole and its lock is gone
    assert json.loads((output / "all_results.json").read_text())["test_accuracy"] >= 0
    assert not (output / LOCK_FILENAME).exists()
    assert not list(output.glob(".*.tmp"))


def test_a_stale_lock_from_a_killed_run_is_taken_over(tmp_path):
    # a process that has exited: its PID is no longer alive
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILENAME).write_text(json.dumps({"pid": int(gone.stdout), "host": os.uname().nodename}))
    with OutputDirLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILENAME).exists()


def test_a_live_lock_is_refused(tmp_path):
    with OutputDirLock(tmp_path):
        with pytest.raises(OutputDirError, match=f"PID {os.getpid()}"):
            OutputDirLock(tmp_path).acquire()


def test_unwritable_output_folder_fails_in_the_first_seconds_naming_it(repo_root, tiny_train_args, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    output = (
        blocker / "run"
    )  # cannot exist: its parent is a file (tests run as root, so permissions would not stop it)
    started = time.monotonic()
    result = subprocess.run(
        train_command(repo_root, "--output_dir", output, *tiny_train_args),
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"Output folder {output} cannot be created" in result.stderr
    assert "Generating" not in result.stderr  # refused before the data was even loaded
    assert time.monotonic() - started < 60


def test_training_split_with_unlabeled_rows_is_refused_before_anything_is_built(
    repo_root, tiny_memes_folder, tiny_train_args, tmp_path
):
    # test_unseen has no labels (the challenge's hidden test split); training on it must stop before any model exists
    result = subprocess.run(
        train_command(
            repo_root, "--dataset", tiny_memes_folder, "--train_split", "test_unseen", "--output_dir", tmp_path / "out",
            *tiny_train_args,
        ),
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "The 'test_unseen' split has 10 unlabeled rows of 10" in result.stderr
    assert "--label_column" in result.stderr
    assert "did not return a loss" not in result.stderr
    assert "Model:" not in result.stderr and not list((tmp_path / "out").glob("checkpoint-*"))


def test_a_rerun_with_other_settings_does_not_resume_the_old_run(
    repo_root, tiny_memes_folder, tiny_train_args, tmp_path
):
    """Rerunning into a folder resumes its last checkpoint: with other settings (here a learning rate and a number of
    epochs) that would train the old run's weights on under a new schedule, so train.py refuses before any work,
    naming each difference, and leaves every file as it was; naming the checkpoint continues it on purpose."""
    import importlib.util

    from mmfusion.training.arguments import parse_arguments
    from mmfusion.training.resume import checkpoint_to_resume, run_settings

    output = tmp_path / "run"
    arguments = ["--dataset", tiny_memes_folder, "--output_dir", output, "--num_train_epochs", "1",
                 "--do_predict", "false", *tiny_train_args]  # fmt: skip
    first = subprocess.run(train_command(repo_root, *arguments), cwd=repo_root, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    files = {path: path.read_bytes() for path in output.rglob("*") if path.is_file()}
    (checkpoint,) = output.glob("checkpoint-*")

    spec = importlib.util.spec_from_file_location("train_script", repo_root / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    changed = [*map(str, arguments), "--learning_rate", "5e-4", "--num_train_epochs", "2"]
    with pytest.raises(OutputDirError) as refused:
        train.main(changed)
    message = str(refused.value)
    assert f"Output folder {output} holds checkpoints of a run with other settings" in message
    assert "learning_rate: 0.001 -> 0.0005" in message and "num_train_epochs: 1.0 -> 2.0" in message
    assert "seed" not in message  # only what differs
    assert f"--resume_from_checkpoint {checkpoint}" in message
    assert {path: path.read_bytes() for path in output.rglob("*") if path.is_file()} == files

    # the same settings resume; an explicit checkpoint is continued with the new settings
    same = parse_arguments(list(map(str, arguments)))
    assert checkpoint_to_resume(run_settings(*same), same[2]) == str(checkpoint)
    explicit = parse_arguments([*changed, "--resume_from_checkpoint", str(checkpoint)])
    assert checkpoint_to_resume(run_settings(*explicit), explicit[2]) == str(checkpoint)

    # a damaged record cannot be compared: refused with its file and line, unless the checkpoint is named
    record = output / "run_settings.json"
    record.write_text('{\n  "learning_rate": 0.001,\n  "seed": \n}\n', encoding="utf-8")
    with pytest.raises(OutputDirError, match=rf"{re.escape(str(record))}, line 4, column 1: not the JSON"):
        checkpoint_to_resume(run_settings(*same), same[2])
    assert checkpoint_to_resume(run_settings(*explicit), explicit[2]) == str(checkpoint)
