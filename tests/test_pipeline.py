"""The `image-text-classification` pipeline shipped in checkpoints: a transformers-only user gets the predictor's scores."""

import io
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from mmfusion.inference import MMFusionPredictor
from mmfusion.pipeline_mmfusion import TASK, save_pipeline_code

HUB_USER_SCRIPT = textwrap.dedent(
    """
    import importlib.util, io, json, os, sys
    # A Hub user: transformers installed, mmfusion not. Drop the editable-install finder and the repository path.
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path = [p for p in sys.path if p and os.path.realpath(p) != os.path.realpath(sys.argv[1])]
    assert importlib.util.find_spec("mmfusion") is None, "mmfusion is importable"
    from PIL import Image
    from transformers import pipeline
    folder, cases = sys.argv[2], json.loads(open(sys.argv[3]).read())
    classify = pipeline("image-text-classification", model=folder, trust_remote_code=True, device="cpu")
    def as_input(case):  # the three kinds of image a user hands over: a path, bytes, a PIL image
        path = case["image"]
        image = {"path": path, "bytes": open(path, "rb").read(), "pil": Image.open(path)}[case["kind"]]
        return {"image": image, "text": case["text"]}
    pairs = [as_input(case) for case in cases]
    results = {
        "single": [classify(pair) for pair in pairs],
        "batched": classify(pairs, batch_size=4),
        "top_1": classify(pairs, batch_size=3, top_k=1),
    }
    explained = [classify(pair, explain=True, explain_steps=16) for pair in pairs[:2]]
    batched = classify(pairs[:3], batch_size=2, explain=True, explain_steps=16)
    assert [r["explanation"].words for r in batched[:2]] == [r["explanation"].words for r in explained]
    assert [r["labels"][0]["label"] for r in batched[:2]] == [r["labels"][0]["label"] for r in explained]
    results["explained"] = [{"labels": r["labels"], "explanation": r["explanation"].to_dict()} for r in explained]
    assert "mmfusion" not in sys.modules
    print(json.dumps(results))
    """
)


def as_scores(records: list[dict]) -> dict[str, float]:
    return {record["label"]: record["score"] for record in records}


@pytest.fixture(scope="module")
def pipeline_checkpoint(trained_demo_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline") / "checkpoint"
    shutil.copytree(trained_demo_checkpoint.path, folder)
    save_pipeline_code(folder)
    return folder


def test_save_pipeline_code_registers_the_task_and_ships_the_file(pipeline_checkpoint):
    config = json.loads((pipeline_checkpoint / "config.json").read_text())
    entry = config["custom_pipelines"][TASK]
    assert entry["impl"] == "pipeline_mmfusion.ImageTextClassificationPipeline"
    assert entry["pt"] == ["AutoModelForSequenceClassification"]
    assert (pipeline_checkpoint / "pipeline_mmfusion.py").is_file()
    assert config["auto_map"]["AutoModelForSequenceClassification"] == "modeling_mmfusion.MMFusionForClassification"


def test_save_pipeline_code_needs_a_saved_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        save_pipeline_code(tmp_path)


def test_pipeline_without_mmfusion_gives_the_predictors_scores(
    pipeline_checkpoint, trained_demo_checkpoint, tmp_path, repo_root
):
    test = trained_demo_checkpoint.dataset["test"]
    cases, images, texts = [], [], []
    for index, kind in enumerate(["path", "bytes", "pil", "path", "bytes", "pil", "path"]):
        row = test[index]
        path = tmp_path / f"{index}.png"
        # one transparent image: the processor composites it onto white, the same for both
        image = row["image"].convert("RGBA") if index == 2 else row["image"]
        if index == 2:
            image.putalpha(128)
        image.save(path)
        text = row["text"] if index != 3 else ""
        cases.append({"image": str(path), "kind": kind, "text": text})
        images.append(str(path))
        texts.append(text)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = tmp_path / "hub_user.py"
    script.write_text(HUB_USER_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(repo_root), str(pipeline_checkpoint), str(tmp_path / "cases.json")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])

    predictor = MMFusionPredictor.from_pretrained(pipeline_checkpoint, device="cpu", batch_size=3)
    expected = [record["probabilities"] for record in predictor.predict_batch(images, texts)]
    labels = predictor.label_names
    for mode in ("single", "batched"):
        assert len(got[mode]) == len(expected)
        for records, probabilities in zip(got[mode], expected):
            assert [record["label"] for record in records] == sorted(labels, key=lambda n: -probabilities[n])
            scores = as_scores(records)
            np.testing.assert_allclose([scores[n] for n in labels], [probabilities[n] for n in labels], atol=1e-6)
    top_1 = [records[0]["label"] for records in got["top_1"]]
    assert top_1 == [max(probabilities, key=probabilities.get) for probabilities in expected]
    assert all(len(records) == 1 for records in got["top_1"])
    # explain=True: the decision and the explanation MMFusionPredictor.explain gives (the same code, copied)
    for result, image, text in zip(got["explained"], images, texts):
        ours = predictor.explain(image, text, steps=16)
        assert result["labels"][0]["label"] == ours.label
        assert result["explanation"]["words"] == ours.words
        np.testing.assert_allclose(result["explanation"]["word_attributions"], ours.word_attributions, atol=1e-6)
        np.testing.assert_allclose(result["explanation"]["heatmap"], ours.heatmap, atol=1e-5)
    # the model has learned the demo task: these are not near-uniform scores that would match anything
    true_labels = [labels[test[index]["label"]] for index in range(len(cases)) if index not in (2, 3)]
    assert [top_1[index] for index in range(len(cases)) if index not in (2, 3)] == true_labels


def test_pipeline_in_process_rejects_bad_inputs(pipeline_checkpoint, tmp_path):
    from transformers import pipeline

    classify = pipeline(TASK, model=str(pipeline_checkpoint), trust_remote_code=True, device="cpu")
    with pytest.raises(ValueError, match="takes a dict"):
        classify("just a caption")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        classify({"image": str(tmp_path / "missing.png"), "text": "x"})
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="cannot read image the image bytes"):
        classify({"image": buffer.getvalue()[:20], "text": "x"})
