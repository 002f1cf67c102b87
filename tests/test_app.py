"""The Gradio demo: importable without launching, a clear message without a checkpoint, and a real round trip."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from gradio_client import Client, handle_file

from mmfusion.inference import MMFusionPredictor, modality_report


@pytest.fixture(scope="module")
def app_module(repo_root):
    spec = importlib.util.spec_from_file_location("mmfusion_demo_app", repo_root / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds and launches nothing
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, log_path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"app.py did not answer on {url} within {timeout:.0f} s:\n{log_path.read_text()}")


def test_missing_default_checkpoint_says_to_train_first(app_module, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no outputs/demo-early-fusion here
    monkeypatch.delenv("MMFUSION_CHECKPOINT", raising=False)
    assert app_module.resolve_checkpoint(None) == "outputs/demo-early-fusion"
    assert app_module.main([]) == 2
    assert "run `python train.py` first" in capsys.readouterr().err

    monkeypatch.setenv("MMFUSION_CHECKPOINT", str(tmp_path / "elsewhere"))
    assert app_module.resolve_checkpoint(None) == str(tmp_path / "elsewhere")
    assert app_module.resolve_checkpoint("given") == "given"
    with pytest.raises(app_module.CheckpointNotFoundError, match="elsewhere"):
        app_module.load_predictor(str(tmp_path / "elsewhere"))


def test_build_demo_exposes_the_classify_endpoint(app_module, trained_demo_checkpoint):
    demo = app_module.build_demo(MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path))
    assert "/classify" in demo.get_api_info()["named_endpoints"]


def test_served_app_answers_a_gradio_client_with_a_real_image(trained_demo_checkpoint, repo_root, tmp_path):
    example = trained_demo_checkpoint.dataset["test"][0]
    image_path = tmp_path / f"{example['id']}.png"
    example["image"].save(image_path)
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "MMFUSION_CHECKPOINT": ""}
    log_path = tmp_path / "app.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(repo_root / "app.py"), "--checkpoint", str(trained_demo_checkpoint.path),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, process, log_path)
        client = Client(url, verbose=False)
        label, table, verdict, decision = client.predict(
            handle_file(str(image_path)), example["text"], api_name="/classify"
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode is not None

    predictor = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path)
    expected = modality_report(predictor, image_path, example["text"])
    names = predictor.label_names
    assert label["label"] == expected.predicted_label == names[example["label"]]  # the trained model is right here
    confidences = {item["label"]: item["confidence"] for item in label["confidences"]}
    assert confidences == pytest.approx(expected.probabilities["full"], abs=1e-5)
    assert table["headers"] == ["input", *names]
    assert [row[0] for row in table["data"]] == ["image + caption", "image blanked", "caption emptied", "both removed"]
    for row, probabilities in zip(table["data"], expected.probabilities.values()):
        assert row[1:] == pytest.approx([probabilities[name] for name in names], abs=1e-3)
    assert verdict == expected.explanation
    assert f"Decision: `{expected.predicted_label}`" in decision and "Decision rule" in decision


def test_the_app_shows_the_threshold_in_force_and_has_clickable_examples(app_module, trained_demo_checkpoint):
    predictor = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path, threshold=0.3)
    assert "P(hateful) ≥ **0.3**" in app_module.threshold_in_force(predictor)
    plain = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path)
    assert "most probable class" in app_module.threshold_in_force(plain)
    examples = app_module.demo_examples(4)
    assert len(examples) == 4 and all(os.path.isfile(path) and text for path, text in examples)
    demo = app_module.build_demo(predictor, examples)
    assert "/classify" in demo.get_api_info()["named_endpoints"]


def test_the_app_explains_the_decision(app_module, trained_demo_checkpoint, tmp_path):
    predictor = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path)
    example = trained_demo_checkpoint.dataset["test"][0]
    image_path = tmp_path / "meme.png"
    example["image"].save(image_path)
    heatmap, words, note = app_module.explain(predictor, str(image_path), example["text"])
    assert heatmap.size == example["image"].size and heatmap.mode == "RGB"
    assert [word for word, _ in words] == example["text"].split()
    assert all(-1.0 <= score <= 1.0 for _, score in words) and max(abs(score) for _, score in words) == 1.0
    assert f"Why `{predictor.predict(str(image_path), example['text'])['label']}`" in note
    demo = app_module.build_demo(predictor)
    assert {"/classify", "/explain"} <= set(demo.get_api_info()["named_endpoints"])


def test_examples_come_from_the_checkpoints_validation_split(app_module, tiny_memes_folder, tmp_path):
    def card(dataset, split):
        folder = tmp_path / f"card-{split}-{len(dataset)}"
        folder.mkdir()
        (folder / "README.md").write_text(
            "---\nmodel-index:\n- name: m\n  results:\n  - task:\n      type: text-classification\n"
            f"    dataset:\n      name: {dataset}\n      type: {dataset}\n      split: {split}\n"
            "    metrics:\n    - type: accuracy\n      value: 1.0\n---\n"
        )
        return str(folder)

    examples, split = app_module.checkpoint_examples(card(str(tiny_memes_folder), "dev"), 3)
    assert split == "dev" and len(examples) == 3
    rows = (tiny_memes_folder / "dev.jsonl").read_text().splitlines()[:3]
    assert [text for _, text in examples] == [json.loads(row)["text"] for row in rows]
    assert all(os.path.isfile(path) for path, _ in examples)
    assert app_module.checkpoint_examples(card("demo", "validation"), 2)[1] == "demo"
    assert app_module.checkpoint_examples(card(str(tmp_path / "gone"), "dev")) is None
    assert app_module.checkpoint_examples(str(tmp_path)) is None  # no model card
