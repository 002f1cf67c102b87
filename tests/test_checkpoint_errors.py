"""A broken checkpoint folder fails with one error naming the file and what is wrong with it, wherever it is loaded:
train.py, mmfusion-predict and the demo app (real subprocesses)."""

import json
import shutil
import subprocess
import sys

import pytest

from mmfusion.checkpoints import CheckpointError, check_checkpoint


@pytest.fixture
def broken_copies(trained_demo_checkpoint, tmp_path):
    """name -> (folder, the file the error must name, words it must say)."""
    copies = {}

    def copy(name):
        folder = tmp_path / name
        shutil.copytree(trained_demo_checkpoint.path, folder)
        return folder

    truncated = copy("truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    copies["truncated"] = (truncated, weights, "truncated")
    header_cut = copy("header-cut")
    (header_cut / "model.safetensors").write_bytes((header_cut / "model.safetensors").read_bytes()[:40])
    copies["header-cut"] = (header_cut, header_cut / "model.safetensors", "truncated")
    no_config = copy("no-config")
    (no_config / "config.json").unlink()
    copies["no-config"] = (no_config, no_config, "config.json is missing")
    no_weights = copy("no-weights")
    (no_weights / "model.safetensors").unlink()
    copies["no-weights"] = (no_weights, no_weights / "model.safetensors", "missing")
    other_model = copy("other-model")
    config = json.loads((other_model / "config.json").read_text())
    (other_model / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    copies["other-model"] = (other_model, other_model / "config.json", "not an mmfusion checkpoint")
    return copies


CASES = ["truncated", "header-cut", "no-config", "no-weights", "other-model"]


@pytest.mark.parametrize("case", CASES)
def test_check_names_the_file(broken_copies, case):
    folder, culprit, words = broken_copies[case]
    with pytest.raises(CheckpointError) as caught:
        check_checkpoint(folder)
    assert str(culprit) in str(caught.value) and words in str(caught.value)


def test_an_intact_checkpoint_passes(trained_demo_checkpoint):
    check_checkpoint(trained_demo_checkpoint.path)


# Every entry point meets a broken checkpoint, and each kind of breakage (weights, config) meets train.py, the one
# that reads the most of a checkpoint; all five cases are checked in-process above. Each run is a fresh interpreter
# (~8 s of start-up), so not every pair is run.
ENTRY_POINT_CASES = {"truncated": ["train.py", "mmfusion-predict"], "no-config": ["train.py", "app.py"]}


@pytest.mark.parametrize("case", list(ENTRY_POINT_CASES))
def test_every_entry_point_reports_the_broken_file(broken_copies, case, repo_root, tmp_path):
    folder, culprit, words = broken_copies[case]
    image = tmp_path / "meme.png"
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(image)
    commands = {
        "train.py": [sys.executable, str(repo_root / "train.py"), "--model_name_or_path", str(folder),
                     "--do_train", "false", "--output_dir", str(tmp_path / "eval")],
        "mmfusion-predict": [sys.executable, "-m", "mmfusion.inference.predict", str(folder), "--image", str(image),
                             "--text", "hello"],
        "app.py": [sys.executable, str(repo_root / "app.py"), "--checkpoint", str(folder), "--port", "0"],
    }  # fmt: skip
    for entry_point in ENTRY_POINT_CASES[case]:
        command = commands[entry_point]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert result.returncode != 0, entry_point
        message = result.stderr + result.stdout
        assert str(culprit) in message and words in message, f"{entry_point}: {message[-2000:]}"
        assert "incomplete metadata" not in message and "model_type key" not in message, entry_point
