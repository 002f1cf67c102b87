"""train.py end to end, as users run it: real subprocesses, real Trainer runs on tiny models and data."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

# No per-epoch evaluation, checkpoints or predictions: a recipe's test accuracy in the least CI time.
QUICK_RUN = ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
             "--do_predict", "false", "--disable_tqdm", "true"]  # fmt: skip


def run_train(repo_root, args, timeout=300, **popen_kwargs):
    return subprocess.run(
        [sys.executable, str(repo_root / "train.py"), *map(str, args)],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen_kwargs,
    )


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_end_to_end_writes_checkpoint_report_predictions_and_card(
    repo_root, tiny_memes_folder, tiny_train_args, tmp_path
):
    output = tmp_path / "run"
    result = run_train(
        repo_root,
        ["--dataset", tiny_memes_folder, "--output_dir", output, "--num_train_epochs", "2", *tiny_train_args],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Final metrics" in result.stdout

    # a self-contained checkpoint
    for name in (
        "model.safetensors",
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "modeling_mmfusion.py",
        "configuration_mmfusion.py",
        "processing_mmfusion.py",
        "pipeline_mmfusion.py",
        "explanations.py",
    ):
        assert (output / name).exists(), name
    assert "image-text-classification" in json.loads((output / "config.json").read_text())["custom_pipelines"]
    results = json.loads((output / "all_results.json").read_text())
    assert {"eval_auroc", "eval_accuracy", "test_auroc", "test_accuracy"} <= set(results)

    # evaluation report with the modality ablation
    report = json.loads((output / "eval_report.json").read_text())
    assert (output / "eval_report.md").read_text().count("Modality ablation") >= 1
    assert {"dev", "test", "test_unseen"} <= set(report["splits"])
    assert "image_blanked" in json.dumps(report["splits"]["dev"])
    # the most confident errors explained (a PNG grid per labeled split with errors)
    for split in ("dev", "test"):
        if report["splits"][split]["most_confident_errors"]:
            grid = output / report["splits"][split]["most_confident_errors_explained"]
            with Image.open(grid) as image:
                assert image.size[0] > 200
            assert f"]({grid.name})" in (output / "eval_report.md").read_text()

    # predictions: labeled and unlabeled splits, ids in file order
    unseen_ids = [
        json.loads(line)["id"] for line in (tiny_memes_folder / "test_unseen.jsonl").read_text().splitlines()
    ]
    rows = read_csv(output / "predictions_test_unseen.csv")
    assert [row["id"] for row in rows] == unseen_ids
    assert all(0.0 <= float(row["proba"]) <= 1.0 and row["label"] in {"0", "1"} for row in rows)
    assert len(read_csv(output / "predictions_dev.csv")) == 16
    assert not (output / "predictions_train.csv").exists()

    # plots are real images
    for name in ("training_curves.png", "confusion_matrix_dev.png", "confusion_matrix_test.png"):
        with Image.open(output / name) as image:
            image.verify()
            assert image.size[0] > 200 and image.size[1] > 200

    # the model card carries the evaluation results as model-index
    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "transformers"
    eval_results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert eval_results[("test", "roc_auc")] == pytest.approx(results["test_auroc"], abs=1e-4)


def test_two_process_cpu_ddp_with_torchrun(repo_root, tiny_memes_folder, tiny_train_args, tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(repo_root / "train.py"),
        "--dataset",
        str(tiny_memes_folder),
        "--output_dir",
        str(output),
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "4",
        "--eval_strategy",
        "no",
        "--load_best_model_at_end",
        "false",
        "--do_eval",
        "false",
        "--do_predict",
        "false",
        "--ddp_backend",
        "gloo",
        "--use_cpu",
        "true",
        *tiny_train_args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    for rank in (0, 1):
        assert f"[rank {rank}/2] trained 4 steps" in result.stdout + result.stderr
    checkpoints = sorted(path.name for path in output.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4"]
    assert (output / "checkpoint-4" / "model.safetensors").exists()


def test_sigkill_then_resume_matches_an_uninterrupted_run(repo_root, tiny_memes_folder, tiny_train_args, tmp_path):
    args = [
        "--dataset",
        tiny_memes_folder,
        "--num_train_epochs",
        "8",
        "--save_total_limit",
        "20",
        "--do_predict",
        "false",
        "--seed",
        "7",
        *tiny_train_args,
    ]
    reference = run_train(repo_root, [*args, "--output_dir", tmp_path / "reference"])
    assert reference.returncode == 0, reference.stderr[-4000:]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, str(repo_root / "train.py"), *map(str, args), "--output_dir", str(interrupted)],
        cwd=repo_root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first_checkpoint = interrupted / "checkpoint-3" / "trainer_state.json"
    deadline = time.time() + 240
    while not first_checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first_checkpoint.exists(), "no checkpoint was written before the kill"
    assert not (interrupted / "all_results.json").exists(), "training finished before it could be killed"

    resumed = run_train(repo_root, [*args, "--output_dir", interrupted])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resuming from the last checkpoint" in resumed.stderr + resumed.stdout

    expected = load_file(tmp_path / "reference" / "model.safetensors")
    got = load_file(interrupted / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, msg=name)
    reference_results = json.loads((tmp_path / "reference" / "all_results.json").read_text())
    resumed_results = json.loads((interrupted / "all_results.json").read_text())
    for key in ("eval_auroc", "eval_accuracy", "eval_loss", "test_accuracy"):
        assert resumed_results[key] == pytest.approx(reference_results[key], abs=1e-6), key


def test_two_run_sweep_with_the_real_train_script(repo_root, tiny_memes_folder, tiny_train_args, tmp_path):
    base = {"dataset": str(tiny_memes_folder), "num_train_epochs": 1, "do_predict": False}
    flags = dict(zip(tiny_train_args[::2], tiny_train_args[1::2]))
    base.update({flag.lstrip("-"): yaml.safe_load(value) for flag, value in flags.items()})
    sweep = {
        "base": base,
        "metric": "eval_accuracy",
        "runs": [
            {"name": "adamw_fast", "optim": "adamw_torch", "learning_rate": 1e-3},
            {"name": "sgd_frozen_text", "optim": "sgd", "learning_rate": 1e-2, "freeze_text_encoder": True},
        ],
    }
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmfusion.training.sweep",
            str(sweep_file),
            "--output-root",
            str(tmp_path / "sweep"),
            "--train-script",
            str(repo_root / "train.py"),
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = json.loads((tmp_path / "sweep" / "sweep_results.json").read_text())
    runs = table["runs"]
    assert {run["name"] for run in runs} == {"adamw_fast", "sgd_frozen_text"}
    assert all(run["status"] == "ok" for run in runs)
    values = [run["results"]["eval_accuracy"] for run in runs]
    assert values == sorted(values, reverse=True) and [run["rank"] for run in runs] == [1, 2]
    assert (tmp_path / "sweep" / "sweep_results.md").exists()


# concat stands for the additive fusions: late fusion (the average of a text head's and an image head's logits) is a
# sum of a text score and an image score too, and stays near chance the same way (not run, to keep CI short).
@pytest.mark.parametrize(("fusion", "solves_it"), [("cross", True), ("align", True), ("concat", False)])
def test_interaction_fusions_learn_the_xor_task_that_concat_cannot(repo_root, tmp_path, fusion, solves_it):
    """The demo's label is image cue XOR caption cue: Hate-CLIPper's cross and align fusions (a product of the two
    embeddings) represent it and reach >= 90 % test accuracy with the demo's small random towers; concat (a sum of a
    text score and an image score) stays near chance. Light dropout: Hate-CLIPper's 0.4 is for 8,500 real memes."""
    output = tmp_path / fusion
    result = run_train(
        repo_root,
        [
            "--fusion",
            fusion,
            "--fusion_pre_output_dropout",
            "0.1",
            "--fusion_map_dropout",
            "0",
            "--classifier_dropout",
            "0",
            "--output_dir",
            output,
            *QUICK_RUN,
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    accuracy = json.loads((output / "all_results.json").read_text())["test_accuracy"]
    if solves_it:
        assert accuracy >= 0.9, accuracy
    else:
        assert accuracy <= 0.65, accuracy


def test_demo_recipe_learns_the_xor_task(repo_root, tmp_path):
    """The zero-argument run's recipe (demo data, small random towers, 12 epochs) beats 90 % test accuracy.

    Per-epoch evaluation and checkpoints are switched off to keep CI short; the README quotes the full run.
    """
    output = tmp_path / "demo"
    result = run_train(
        repo_root,
        [
            "--output_dir",
            output,
            *QUICK_RUN,
        ],
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads((output / "all_results.json").read_text())
    assert results["test_accuracy"] >= 0.9, results


def test_unimodal_baselines_are_trained_beside_the_fused_model(
    repo_root, tiny_memes_folder, tiny_train_args, tmp_path
):
    output = tmp_path / "run"
    args = ["--dataset", tiny_memes_folder, "--output_dir", output, "--num_train_epochs", "1", *tiny_train_args]
    result = run_train(repo_root, [*args, "--unimodal_baselines", "true"])
    assert result.returncode == 0, result.stderr[-4000:]
    for fusion in ("text", "image"):
        baseline = output / "baselines" / fusion
        assert json.loads((baseline / "config.json").read_text())["fusion"] == fusion
        assert (baseline / "eval_report.json").exists() and (baseline / "model.safetensors").exists()
    report = json.loads((output / "eval_report.json").read_text())
    comparison = report["unimodal_baselines"]
    assert set(comparison) == {"dev", "test"}  # the labeled evaluation splits (test_unseen has no labels)
    text_report = json.loads((output / "baselines" / "text" / "eval_report.json").read_text())
    assert comparison["test"]["text-only"] == text_report["splits"]["test"]["metrics"]
    assert set(comparison["dev"]) == {"fused (early)", "text-only", "image-only"}
    markdown = (output / "eval_report.md").read_text()
    assert "## Fused vs unimodal baselines" in markdown
    table = markdown.split("## Fused vs unimodal baselines")[1]
    assert "| text-only |" in table and "| image-only |" in table and "| fused (early) |" in table
    assert "| text-only |" in (output / "README.md").read_text()  # the model card shows them too
