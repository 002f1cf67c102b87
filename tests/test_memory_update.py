"""A checkpoint's labelled memory in use: mmfusion-memory add/remove (errors write nothing), neighbours from the
predictor, mmfusion-predict and the pipeline (also as remote code without mmfusion), and the prediction modes."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from mmfusion.inference import MMFusionPredictor
from mmfusion.inference.memory_update import add_to_checkpoint_memory
from mmfusion.inference.memory_update import main as memory_main
from mmfusion.inference.predict import main as predict_main
from mmfusion.memory import MEMORY_FILENAMES, knn_probabilities
from mmfusion.pipeline_mmfusion import TASK, save_pipeline_code


@pytest.fixture(scope="module")
def memory_checkpoint(trained_demo_checkpoint, tmp_path_factory):
    """The trained demo model with the demo's validation split (400 rows) as its memory, and a pipeline."""
    folder = tmp_path_factory.mktemp("memory") / "checkpoint"
    shutil.copytree(trained_demo_checkpoint.path, folder)
    save_pipeline_code(folder)
    add_to_checkpoint_memory(folder, "demo", "validation")
    return folder


@pytest.fixture
def checkpoint(memory_checkpoint, tmp_path):
    """A fresh copy per test (tests change the memory)."""
    folder = tmp_path / "checkpoint"
    shutil.copytree(memory_checkpoint, folder)
    return folder


def nearest_as_itself(neighbors: list[dict], own_id: str) -> dict:
    """A query that is a memory row finds itself among its nearest, at the best similarity (1), and returns it. Not
    necessarily first: the tiny demo model maps a cue's examples to nearly one point (top fives of 0.999997 to
    0.9999999), so which of them wins depends on the CPU's float rounding (the row was first on a Zen 4, second on a
    Zen 3)."""
    (own,) = [neighbor for neighbor in neighbors if neighbor["id"] == own_id]
    assert own["similarity"] == pytest.approx(neighbors[0]["similarity"], abs=1e-4) == pytest.approx(1.0, abs=1e-4)
    return own


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in MEMORY_FILENAMES}


def write_rows(folder, rows, test_rows, name="new.jsonl"):
    """A jsonl file of demo test pairs (their images written beside it) under new ids."""
    lines = []
    for row in rows:
        example = test_rows[row["index"]]
        image = folder / f"{row['id']}.png"
        example["image"].save(image)
        entry = {"id": row["id"], "image": image.name, "text": example["text"]}
        if row.get("label", "true") is not None:
            entry["label"] = example["label"] if row.get("label", "true") == "true" else row["label"]
        lines.append(json.dumps(entry))
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_built_memory_holds_the_split_embedded_by_the_model(memory_checkpoint, trained_demo_checkpoint):
    model = AutoModelForSequenceClassification.from_pretrained(memory_checkpoint, trust_remote_code=True).eval()
    validation = trained_demo_checkpoint.dataset["validation"]
    memory = model.memory
    assert len(memory) == len(validation) and memory.ids == [str(i) for i in validation["id"]]
    assert memory.labels.tolist() == validation["label"] and memory.captions == validation["text"]
    predictor = MMFusionPredictor.from_pretrained(memory_checkpoint, device="cpu")
    inputs = predictor.processor(images=validation[:3]["image"], text=validation[:3]["text"])
    with torch.no_grad():
        np.testing.assert_allclose(memory.embeddings[:3], model.embed(**inputs).numpy(), atol=1e-5)


def test_cli_adds_and_removes_rows_without_retraining(checkpoint, trained_demo_checkpoint, tmp_path, repo_root):
    test = trained_demo_checkpoint.dataset["test"]
    data = write_rows(tmp_path, [{"id": f"new{i}", "index": i} for i in range(4)], test)
    weights_before = (checkpoint / "model.safetensors").read_bytes()
    command = [sys.executable, "-m", "mmfusion.inference.memory_update"]
    added = subprocess.run([*command, "add", str(checkpoint), "--input", str(data)], capture_output=True, text=True)
    assert added.returncode == 0, added.stderr[-2000:]
    assert "404 rows" in added.stderr
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    assert model.memory.ids[-4:] == ["new0", "new1", "new2", "new3"]
    assert model.memory.labels[-4:].tolist() == test[:4]["label"]
    assert (checkpoint / "model.safetensors").read_bytes() == weights_before  # no gradient step, no new weights
    predictor = MMFusionPredictor.from_pretrained(checkpoint, device="cpu")
    # a pair that is now in the memory finds itself among the nearest
    record = predictor.predict(test[2]["image"], test[2]["text"], neighbors=5)
    assert nearest_as_itself(record["neighbors"], "new2")["caption"] == test[2]["text"]
    assert memory_main(["remove", str(checkpoint), "--ids", "new1,new2"]) == 0  # the CLI, in-process this time
    memory = AutoModelForSequenceClassification.from_pretrained(checkpoint).memory
    assert len(memory) == 402 and "new2" not in memory and "new3" in memory


def test_every_refused_request_names_its_cause_and_writes_nothing(
    checkpoint, trained_demo_checkpoint, tmp_path, capsys
):
    test = trained_demo_checkpoint.dataset["test"]
    before = snapshot(checkpoint)
    validation_id = str(trained_demo_checkpoint.dataset["validation"][5]["id"])

    def refused(argv, *messages):
        assert memory_main(argv) == 1
        error = capsys.readouterr().err
        for message in messages:
            assert message in error, error
        assert snapshot(checkpoint) == before

    duplicate = write_rows(tmp_path, [{"id": "fresh", "index": 0}, {"id": validation_id, "index": 1}], test, "d.jsonl")
    refused(["add", str(checkpoint), "--input", str(duplicate)], "already in the memory", repr(validation_id))
    twice = write_rows(tmp_path, [{"id": "same", "index": 0}, {"id": "same", "index": 1}], test, "t.jsonl")
    refused(["add", str(checkpoint), "--input", str(twice)], "t.jsonl, line 2", "duplicate id 'same'")
    unlabeled = write_rows(tmp_path, [{"id": "a", "index": 0, "label": None}, {"id": "b", "index": 1, "label": None}],
                           test, "u.jsonl")  # fmt: skip
    refused(["add", str(checkpoint), "--input", str(unlabeled)], "u.jsonl", "labelled examples only")
    partly = write_rows(tmp_path, [{"id": "ok", "index": 0}, {"id": "nolabel", "index": 1, "label": None}],
                        test, "p.jsonl")  # fmt: skip
    refused(["add", str(checkpoint), "--input", str(partly)], "p.jsonl, line 2, id 'nolabel'", "'label'")
    bad_label = write_rows(tmp_path, [{"id": "weird", "index": 0, "label": "spam"}], test, "b.jsonl")
    refused(["add", str(checkpoint), "--input", str(bad_label)], "b.jsonl", "spam")
    missing = write_rows(tmp_path, [{"id": "gone", "index": 0}], test, "m.jsonl")
    (tmp_path / "gone.png").unlink()
    refused(["add", str(checkpoint), "--input", str(missing)], "m.jsonl", "line 1", "gone")
    refused(["remove", str(checkpoint), "--ids", validation_id, "nope"], "not in the memory", "'nope'")
    # a memory built by another model: the same files beside other weights
    other = tmp_path / "other"
    shutil.copytree(checkpoint, other)
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint)
    with torch.no_grad():
        model.mmfusion.text_model.embeddings.word_embeddings.weight.mul_(1.5)
    model.memory = None
    model.save_pretrained(other)  # new weights; the stale memory files are removed ...
    for name, data in before.items():  # ... and put back, as a careless copy would
        (other / name).write_bytes(data)
    fresh = write_rows(tmp_path, [{"id": "fresh", "index": 0}], test, "f.jsonl")
    assert memory_main(["add", str(other), "--input", str(fresh)]) == 1
    assert "built by another model" in capsys.readouterr().err
    assert snapshot(other) == before
    assert memory_main(["remove", str(other), "--ids", validation_id]) == 1
    assert "built by another model" in capsys.readouterr().err
    assert snapshot(other) == before


def test_prediction_modes_follow_the_config_in_predictor_and_pipeline(checkpoint, trained_demo_checkpoint):
    from transformers import pipeline

    test = trained_demo_checkpoint.dataset["test"]
    images, texts = test[:6]["image"], test[:6]["text"]
    head = MMFusionPredictor.from_pretrained(checkpoint, device="cpu").predict_probabilities(images, texts)
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(prediction_mode="mix", mix_weight=0.25, knn_k=7)
    (checkpoint / "config.json").write_text(json.dumps(config))
    predictor = MMFusionPredictor.from_pretrained(checkpoint, device="cpu")
    model = predictor.backend.model
    with torch.no_grad():
        embeddings = model.embed(**predictor.processor(images=images, text=texts)).numpy()
    knn = knn_probabilities(model.memory.knn_scores(embeddings, 7))
    expected = 0.75 * head + 0.25 * knn
    np.testing.assert_allclose(predictor.predict_probabilities(images, texts), expected, atol=1e-5)
    assert not np.allclose(expected, head, atol=1e-3)  # the memory moved the scores
    classify = pipeline(TASK, model=str(checkpoint), trust_remote_code=True, device="cpu")
    results = classify([{"image": image, "text": text} for image, text in zip(images, texts)], batch_size=4)
    labels = predictor.label_names
    got = [[{r["label"]: r["score"] for r in result}[name] for name in labels] for result in results]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_cli_neighbors_for_a_pair_and_a_file(checkpoint, trained_demo_checkpoint, tmp_path, capsys):
    test = trained_demo_checkpoint.dataset["test"]
    test[0]["image"].save(tmp_path / "meme.png")
    argv = [str(checkpoint), "--image", str(tmp_path / "meme.png"), "--text", test[0]["text"], "--neighbors", "2"]
    assert predict_main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    predictor = MMFusionPredictor.from_pretrained(checkpoint, device="cpu")
    expected = predictor.predict(tmp_path / "meme.png", test[0]["text"], neighbors=2)["neighbors"]
    assert [n["id"] for n in record["neighbors"]] == [n["id"] for n in expected] and len(expected) == 2
    assert record["neighbors"][0]["similarity"] >= record["neighbors"][1]["similarity"]
    assert set(record["neighbors"][0]) == {"id", "label", "similarity", "caption", "image"}
    data = write_rows(tmp_path, [{"id": f"q{i}", "index": i} for i in range(3)], test)
    output = tmp_path / "out.json"
    assert predict_main([str(checkpoint), "--input", str(data), "--neighbors", "3", "--output", str(output)]) == 0
    records = json.loads(output.read_text())
    assert [r["id"] for r in records] == ["q0", "q1", "q2"] and all(len(r["neighbors"]) == 3 for r in records)
    with pytest.raises(SystemExit):
        predict_main([str(checkpoint), "--input", str(data), "--neighbors", "3", "--output", str(tmp_path / "o.csv")])
    assert "a .json --output" in capsys.readouterr().err


HUB_USER_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, os, sys
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path = [p for p in sys.path if p and os.path.realpath(p) != os.path.realpath(sys.argv[1])]
    assert importlib.util.find_spec("mmfusion") is None, "mmfusion is importable"
    from transformers import pipeline
    classify = pipeline("image-text-classification", model=sys.argv[2], trust_remote_code=True, device="cpu")
    result = classify({"image": sys.argv[3], "text": sys.argv[4]}, neighbors=5)
    assert "mmfusion" not in sys.modules
    print(json.dumps(result))
    """
)


def test_pipeline_without_mmfusion_returns_neighbours(checkpoint, trained_demo_checkpoint, tmp_path, repo_root):
    row = trained_demo_checkpoint.dataset["validation"][7]  # a memory row: it is its own nearest neighbour
    row["image"].save(tmp_path / "meme.png")
    script = tmp_path / "hub_user.py"
    script.write_text(HUB_USER_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(repo_root), str(checkpoint), str(tmp_path / "meme.png"), row["text"]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    expected = MMFusionPredictor.from_pretrained(checkpoint, device="cpu").predict(
        tmp_path / "meme.png", row["text"], neighbors=5
    )
    assert [n["id"] for n in got["neighbors"]] == [n["id"] for n in expected["neighbors"]]
    assert nearest_as_itself(got["neighbors"], str(row["id"]))["caption"] == row["text"]
    np.testing.assert_allclose(
        [n["similarity"] for n in got["neighbors"]], [n["similarity"] for n in expected["neighbors"]], atol=1e-5
    )
    assert got["labels"][0]["label"] == expected["label"]


def test_onnx_export_carries_the_memory_and_the_mode(checkpoint, trained_demo_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from mmfusion.inference.export import export_onnx

    config = json.loads((checkpoint / "config.json").read_text())
    config.update(prediction_mode="knn", knn_k=5)
    (checkpoint / "config.json").write_text(json.dumps(config))
    info = export_onnx(checkpoint, tmp_path / "onnx")
    assert info.outputs == ["logits", "embeddings"] and info.memory_rows == 400
    test = trained_demo_checkpoint.dataset["test"]
    images, texts = test[:5]["image"], test[:5]["text"]
    torch_predictor = MMFusionPredictor.from_pretrained(checkpoint, device="cpu")
    onnx_predictor = MMFusionPredictor.from_pretrained(tmp_path / "onnx", backend="onnx", device="cpu")
    ours = torch_predictor.predict_batch(images, texts, neighbors=4)
    theirs = onnx_predictor.predict_batch(images, texts, neighbors=4)
    for a, b in zip(ours, theirs):
        assert [n["id"] for n in a["neighbors"]] == [n["id"] for n in b["neighbors"]]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)
    # a memory from another model beside the graph is refused
    export_info = json.loads((tmp_path / "onnx" / "onnx_export.json").read_text())
    export_info["model_fingerprint"] = "0" * 16
    (tmp_path / "onnx" / "onnx_export.json").write_text(json.dumps(export_info))
    with pytest.raises(ValueError, match="built by another model"):
        MMFusionPredictor.from_pretrained(tmp_path / "onnx", backend="onnx", device="cpu")


def test_the_app_shows_the_nearest_labelled_examples_beside_the_verdict(
    memory_checkpoint, trained_demo_checkpoint, tmp_path, repo_root
):
    import importlib.util

    pytest.importorskip("gradio")
    spec = importlib.util.spec_from_file_location("mmfusion_demo_app", repo_root / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    predictor = MMFusionPredictor.from_pretrained(memory_checkpoint, device="cpu")
    row = trained_demo_checkpoint.dataset["validation"][3]  # in the memory: found first
    row["image"].save(tmp_path / "meme.png")
    rows, note = app.nearest_examples(predictor, str(tmp_path / "meme.png"), row["text"])
    expected = predictor.predict(tmp_path / "meme.png", row["text"], neighbors=app.NEIGHBOR_COUNT)["neighbors"]
    assert [r[0] for r in rows] == [n["id"] for n in expected]
    own = nearest_as_itself(expected, str(row["id"]))
    assert own["label"] == predictor.label_names[row["label"]] and own["caption"] == row["text"]
    assert "Prediction mode `head`" in note and "400 labelled examples" in note
    assert {"/classify", "/neighbors", "/explain"} <= set(app.build_demo(predictor).get_api_info()["named_endpoints"])
    plain = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path, device="cpu")
    assert app.nearest_examples(plain, str(tmp_path / "meme.png"), row["text"])[0] == []


def test_train_py_builds_the_memory_and_chooses_the_mode_on_validation(tmp_path, repo_root, tiny_train_args):
    import importlib.util

    import pandas as pd

    from mmfusion.data import load_demo_dataset

    spec = importlib.util.spec_from_file_location("train_script", repo_root / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    output = tmp_path / "run"
    train.main([*tiny_train_args, "--output_dir", str(output), "--fusion", "align", "--num_train_epochs", "1",
                "--max_train_samples", "96", "--max_eval_samples", "48", "--report_explained_errors", "0",
                "--knn_k", "7"])  # fmt: skip
    config = json.loads((output / "config.json").read_text())
    selection = config["memory_selection"]
    assert selection["split"] == "validation" and selection["metric"] == "auroc"
    assert set(selection["candidates"]) == {"head", "knn", "mix_0.25", "mix_0.5", "mix_0.75"}
    best = max(selection["candidates"].values())
    assert selection["candidates"][selection["chosen"]] == best and config["knn_k"] == 7
    assert config["prediction_mode"] == selection["chosen"].split("_")[0]
    model = AutoModelForSequenceClassification.from_pretrained(output)
    demo = load_demo_dataset()
    assert model.memory.ids == [str(i) for i in demo["train"]["id"][:96]]
    assert all(path and path.endswith(".png") for path in model.memory.images)  # shown beside a neighbour
    # the predictions train.py wrote are the predictor's, in the chosen mode
    written = pd.read_csv(output / "predictions_test.csv", dtype={"id": str})
    predictions = MMFusionPredictor.from_pretrained(output, device="cpu").predict_dataset(
        demo["test"].select(range(len(written))), progress=False
    )
    assert predictions.ids == written["id"].tolist()
    np.testing.assert_allclose(predictions.probabilities[:, 1], written["proba"], atol=1e-5)
