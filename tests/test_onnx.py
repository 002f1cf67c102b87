"""ONNX export (every fusion type) against PyTorch, the ONNX predictor backend, and int8 quantization on a trained model."""

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from tiny_models import tiny_model, tiny_processor
from transformers import AutoModelForSequenceClassification, AutoProcessor

from mmfusion.fusions import fusion_names
from mmfusion.inference import INT8_ONNX_FILENAME, ONNX_FILENAME, MMFusionPredictor, OnnxBackend, export_onnx
from mmfusion.inference.export import main as export_main

FUSIONS = fusion_names(reads_embeddings=False, joint_encoder=False)  # embedding fusions: test_fusions_export.py
BATCH_SIZES = [1, 3, 8]
CAPTIONS = {
    "short": ["hi"],
    "long": ["the dog barks at the mailman and the cat sits on the mat looking at this breathtaking sunset " * 2],
}


def random_images(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, size=(40, 36, 3), dtype=np.uint8)) for _ in range(count)]


def graph_input_shapes(path) -> dict[str, list]:
    """Input name -> dims, a dim being its symbolic name (str) when dynamic, else its size."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        node.name: [dim.dim_param or dim.dim_value for dim in node.type.tensor_type.shape.dim] for node in graph.input
    }


@pytest.mark.parametrize("fusion", FUSIONS)
def test_export_matches_pytorch_for_every_batch_size_and_caption_length(fusion, tmp_path):
    checkpoint, exported = tmp_path / "checkpoint", tmp_path / "onnx"
    torch.manual_seed(0)
    model = tiny_model(fusion, id2label={0: "not_hateful", 1: "hateful"})
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # logits of a random model are tiny; make a 1e-4 tolerance mean something
    model.save_pretrained(checkpoint)
    tiny_processor().save_pretrained(checkpoint)

    info = export_onnx(checkpoint, exported)

    files = {path.name for path in exported.iterdir()}
    assert {ONNX_FILENAME, "config.json", "processor_config.json", "tokenizer.json", "onnx_export.json"} <= files
    assert json.loads((exported / "onnx_export.json").read_text())["fusion"] == fusion
    shapes = graph_input_shapes(exported / ONNX_FILENAME)
    assert list(shapes) == info.inputs
    assert set(shapes) == {"input_ids", "attention_mask", "token_type_ids", "pixel_values"}
    batch, sequence = shapes["input_ids"]
    assert isinstance(batch, str) and isinstance(sequence, str)  # symbolic, i.e. dynamic
    assert shapes["attention_mask"] == shapes["token_type_ids"] == [batch, sequence]
    assert shapes["pixel_values"] == [batch, 3, 32, 32]

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(exported)  # the copied processor files
    session = OnnxBackend(exported / ONNX_FILENAME)
    for batch_size in BATCH_SIZES:
        for length, caption in CAPTIONS.items():
            inputs = processor(images=random_images(batch_size, batch_size), text=caption * batch_size)
            with torch.no_grad():
                expected = model(**inputs).logits.numpy()
            actual = session.logits({name: tensor.numpy() for name, tensor in inputs.items()})
            assert actual.shape == (batch_size, 2)
            difference = np.abs(actual - expected).max()
            assert difference <= 1e-4, f"batch {batch_size}, {length} captions: max |diff| {difference:.2e}"
    assert np.ptp(expected[:, 1] - expected[:, 0]) > 0.1  # the inputs do move the logits

    # The predictor on ONNX Runtime gives the PyTorch predictor's answers.
    images, texts = random_images(4, 99), ["a cat", "", "the dog barks at the mailman", "look"]
    on_torch = MMFusionPredictor.from_pretrained(checkpoint).predict_batch(images, texts)
    on_onnx = MMFusionPredictor.from_pretrained(exported, backend="onnx").predict_batch(images, texts)
    for torch_result, onnx_result in zip(on_torch, on_onnx):
        assert onnx_result["label"] == torch_result["label"]
        assert onnx_result["probabilities"] == pytest.approx(torch_result["probabilities"], abs=1e-5)


@pytest.fixture(scope="module")
def trained_export(trained_demo_checkpoint, tmp_path_factory):
    """The trained demo model exported with the command-line tool, fp32 and int8."""
    exported = tmp_path_factory.mktemp("trained-onnx")
    assert export_main([str(trained_demo_checkpoint.path), str(exported), "--quantize", "int8"]) == 0
    return exported


def test_int8_agrees_with_fp32_on_the_demo_test_split(trained_demo_checkpoint, trained_export):
    test_split = trained_demo_checkpoint.dataset["test"]
    engines = {
        "torch": MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path, batch_size=100),
        "fp32": MMFusionPredictor.from_pretrained(trained_export, backend="onnx", batch_size=100),
        "int8": MMFusionPredictor.from_pretrained(
            trained_export, backend="onnx", onnx_file=INT8_ONNX_FILENAME, batch_size=100
        ),
    }
    results = {name: engine.predict_dataset(test_split, progress=False) for name, engine in engines.items()}
    labels = results["fp32"].true_labels
    auroc = {name: roc_auc_score(labels, result.probabilities[:, 1]) for name, result in results.items()}
    accuracy = (results["fp32"].label_ids == labels).mean()

    agreement = (results["int8"].label_ids == results["fp32"].label_ids).mean()
    print(f"demo test split: accuracy {accuracy:.3f}, AUROC {auroc}, int8/fp32 label agreement {agreement:.4f}")
    # The model learned the task (so agreement is measured on confident, meaningful predictions) ...
    assert accuracy >= 0.9 and auroc["fp32"] >= 0.95, (accuracy, auroc)
    # ... ONNX Runtime fp32 is the PyTorch model ...
    np.testing.assert_allclose(results["fp32"].probabilities, results["torch"].probabilities, atol=1e-4)
    # ... and int8 keeps its decisions.
    assert agreement >= 0.99, f"int8 agrees with fp32 on {agreement:.2%} of the test split"
    assert auroc["fp32"] - auroc["int8"] <= 0.01, auroc
    assert (trained_export / INT8_ONNX_FILENAME).stat().st_size < (trained_export / ONNX_FILENAME).stat().st_size


def int8_weight_range(graph_path) -> tuple[int, int]:
    """The smallest and largest stored int8 weight of a quantized graph."""
    weights = [
        onnx.numpy_helper.to_array(tensor)
        for tensor in onnx.load(str(graph_path)).graph.initializer
        if tensor.data_type == onnx.TensorProto.INT8 and tensor.dims
    ]
    assert weights, f"no int8 weights in {graph_path}"
    return int(min(w.min() for w in weights)), int(max(w.max() for w in weights))


@pytest.fixture(scope="module")
def exports_by_int8_target(trained_demo_checkpoint, tmp_path_factory):
    """The trained demo model exported (dynamic int8) for a CPU with VNNI and for one without."""
    exports = {}
    for target in ("vnni", "avx2"):
        exports[target] = tmp_path_factory.mktemp(f"int8-{target}")
        command = [str(trained_demo_checkpoint.path), str(exports[target]), "--quantize", "int8"]
        assert export_main([*command, "--int8-target", target]) == 0
    return exports


@pytest.mark.parametrize(
    ("flags", "machine", "expected"),
    [
        ({"avx2", "fma", "avx512f", "avx512_vnni"}, "x86_64", "vnni"),
        ({"avx2", "fma", "avx_vnni"}, "x86_64", "vnni"),  # Alder Lake and later: VNNI without AVX-512
        ({"avx2", "fma", "avx512f", "amx_int8"}, "x86_64", "vnni"),
        ({"avx2", "fma"}, "x86_64", "avx2"),  # AMD Zen 3, Intel before Cascade Lake
        ({"avx2", "fma", "avx512f", "avx512bw"}, "x86_64", "avx2"),  # Skylake-SP: AVX-512 without VNNI
        ({"asimd", "asimddp"}, "aarch64", "arm"),
    ],
)
def test_the_int8_target_follows_the_cpus_instructions(monkeypatch, flags, machine, expected):
    from mmfusion.inference import quantization
    from mmfusion.training import precision

    assert quantization.int8_target(frozenset(flags), machine) == expected
    # what "auto" reads: this machine's /proc/cpuinfo flags and architecture, mocked at that boundary
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(quantization.platform, "machine", lambda: machine)
    tuning = quantization.int8_tuning("auto")
    assert tuning["target"] == expected and tuning["reduce_range"] == (expected == "avx2")
    assert set(tuning["exported_on"]["cpu_flags"]) <= flags
    with pytest.raises(ValueError, match="int8 target must be 'auto' or one of"):
        quantization.int8_tuning("avx3")


def test_int8_exports_keep_7_bit_weights_for_cpus_without_vnni_and_record_their_target(
    exports_by_int8_target, trained_export
):
    """Without VNNI, ONNX Runtime's int8 kernels sum pairs of uint8 x int8 products in 16 bits: weights for such CPUs
    are 7-bit (reduce_range), which cannot saturate it; weights for VNNI CPUs use all 8 bits."""
    low, high = int8_weight_range(exports_by_int8_target["avx2"] / INT8_ONNX_FILENAME)
    assert -64 <= low and high <= 64, (low, high)
    low, high = int8_weight_range(exports_by_int8_target["vnni"] / INT8_ONNX_FILENAME)
    assert low < -64 or high > 64, (low, high)
    for target, folder in exports_by_int8_target.items():
        tuned = json.loads((folder / "onnx_export.json").read_text())["quantization"]["tuned_for"]
        assert tuned["target"] == target and tuned["reduce_range"] == (target == "avx2")
    # the default export is made for this machine, and says which CPU that was
    from mmfusion.inference.quantization import int8_target
    from mmfusion.training.precision import RELEVANT_CPU_FLAGS, cpu_flags

    tuned = json.loads((trained_export / "onnx_export.json").read_text())["quantization"]["tuned_for"]
    assert tuned["target"] == int8_target()
    assert tuned["exported_on"]["cpu_flags"] == [flag for flag in RELEVANT_CPU_FLAGS if flag in cpu_flags()]


def test_loading_int8_made_for_vnni_on_a_cpu_without_it_says_so(exports_by_int8_target, monkeypatch, caplog):
    from mmfusion.inference import quantization
    from mmfusion.training import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(quantization.platform, "machine", lambda: "x86_64")
    folder = exports_by_int8_target["vnni"]
    with caplog.at_level("WARNING", logger=quantization.__name__):
        MMFusionPredictor.from_pretrained(folder, backend="onnx", onnx_file=INT8_ONNX_FILENAME)
    (warning,) = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "quantized with 8-bit weights" in warning and "avx512_vnni" not in warning.split("CPU has no VNNI")[1]
    assert "--int8-target avx2" in warning
    caplog.clear()
    with caplog.at_level("WARNING", logger=quantization.__name__):
        # the fp32 graph, and the graph made for this kind of CPU, load without a word
        MMFusionPredictor.from_pretrained(folder, backend="onnx")
        MMFusionPredictor.from_pretrained(exports_by_int8_target["avx2"], backend="onnx", onnx_file=INT8_ONNX_FILENAME)
    assert not [record for record in caplog.records if record.levelname == "WARNING"]


def test_explaining_with_onnx_stops_and_names_the_pytorch_checkpoint(trained_demo_checkpoint, trained_export):
    """ONNX graphs carry no gradients, so explanations (Integrated Gradients, Grad-CAM) are PyTorch-only: asking an
    ONNX predictor for one stops with what to load instead (mmfusion-predict --explain: tests/test_explanations.py)."""
    predictor = MMFusionPredictor.from_pretrained(trained_export, backend="onnx")
    example = trained_demo_checkpoint.dataset["test"][0]
    with pytest.raises(ValueError, match=r"ONNX graph does not give .*model\.onnx.*PyTorch checkpoint") as raised:
        predictor.explain(example["image"], example["text"])
    assert "backend='torch'" in str(raised.value)
    with pytest.raises(ValueError, match="PyTorch checkpoint"):
        predictor.explain_batch([example["image"]], [example["text"]])
    # the PyTorch checkpoint it names does explain the same pair
    explained = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path).explain(
        example["image"], example["text"]
    )
    assert explained.label == predictor.predict(example["image"], example["text"])["label"]


def test_static_int8_export_from_the_command_line(trained_demo_checkpoint, tmp_path):
    """`mmfusion-export --quantize int8-static --calibration demo`: a QDQ graph, convolutions included, that keeps
    fp32's decisions on the held-out split, with the comparison recorded in onnx_export.json."""
    import subprocess
    import sys

    exported = tmp_path / "static"
    command = [sys.executable, "-m", "mmfusion.inference.export", str(trained_demo_checkpoint.path), str(exported)]
    result = subprocess.run(
        [*command, "--quantize", "int8-static", "--calibration", "demo", "--calibration-size", "64"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "label agreement" in result.stdout

    info = json.loads((exported / "onnx_export.json").read_text())
    assert info["files"] == {"fp32": ONNX_FILENAME, "int8": INT8_ONNX_FILENAME}
    assert info["quantization"]["method"] == "static"
    assert info["quantization"]["calibration"] == {"source": "demo", "split": "train", "rows": 64}
    tuned_for = info["quantization"]["tuned_for"]  # this machine's kind of CPU; 7-bit weights where it has no VNNI
    low, high = int8_weight_range(exported / INT8_ONNX_FILENAME)
    assert tuned_for["reduce_range"] == (max(-low, high) <= 64) == (tuned_for["target"] == "avx2"), (tuned_for, low)
    evaluation = info["int8_evaluation"]
    assert evaluation["split"] == "validation" and evaluation["rows"] == 400
    assert evaluation["fp32"]["accuracy"] >= 0.9  # a model that learned the task, so agreement means something
    assert evaluation["label_agreement"] >= 0.99, evaluation
    assert abs(evaluation["metric_change"]["auroc"]) <= 0.01, evaluation
    assert evaluation["metric_change"]["accuracy"] == pytest.approx(
        evaluation["int8"]["accuracy"] - evaluation["fp32"]["accuracy"]
    )

    # Every convolution runs on int8 inputs and weights (QDQ: a DequantizeLinear feeds each of them).
    graph = onnx.load(str(exported / INT8_ONNX_FILENAME)).graph
    producers = {output: node.op_type for node in graph.node for output in node.output}
    convolutions = [node for node in graph.node if node.op_type == "Conv"]
    assert convolutions and all(producers.get(node.input[0]) == "DequantizeLinear" for node in convolutions)
    assert all(producers.get(node.input[1]) == "DequantizeLinear" for node in convolutions)

    # The predictor runs it and keeps the PyTorch model's decisions on the test split.
    test_split = trained_demo_checkpoint.dataset["test"]
    int8 = MMFusionPredictor.from_pretrained(exported, backend="onnx", onnx_file=INT8_ONNX_FILENAME, batch_size=100)
    reference = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path, batch_size=100)
    agreement = (
        int8.predict_dataset(test_split, progress=False).label_ids
        == reference.predict_dataset(test_split, progress=False).label_ids
    ).mean()
    assert agreement >= 0.99, agreement


def test_static_int8_needs_calibration_data(trained_demo_checkpoint, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmfusion.inference.export",
            str(trained_demo_checkpoint.path),
            str(tmp_path / "out"),
            "--quantize",
            "int8-static",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "--quantize int8-static needs --calibration DATA" in result.stderr
    assert not (tmp_path / "out").exists()
