"""The two-tower fusions that read embeddings export to ONNX with parity, on BERT+ResNet and CLIP."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_clip_checkpoint, tiny_model, tiny_processor, tiny_siglip_checkpoint
from transformers import AutoModelForSequenceClassification, AutoProcessor

from mmfusion import MMFusionForClassification
from mmfusion.fusions import fusion_names
from mmfusion.inference import ONNX_FILENAME, OnnxBackend, export_onnx
from mmfusion.training.arguments import ModelArguments
from mmfusion.training.setup import build_processor, resolve_image_size

pytest.importorskip("onnxruntime")

NEW_FUSIONS = fusion_names(reads_embeddings=True, needs_text=True, needs_image=True)
CAPTIONS = ["", "a cat", "a much longer caption about a dog that barks at the mailman"]


def check_parity(checkpoint, exported):
    info = export_onnx(checkpoint, exported)
    assert json.loads((exported / "onnx_export.json").read_text())["fusion"] == info.fusion
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(exported, trust_remote_code=True)
    session = OnnxBackend(exported / ONNX_FILENAME)
    size = model.config.image_size
    generator = np.random.default_rng(0)
    for batch_size in (1, 3):
        images = [Image.fromarray(generator.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in CAPTIONS]
        inputs = processor(images=images[:batch_size], text=CAPTIONS[:batch_size])
        with torch.no_grad():
            expected = model(**inputs).logits.numpy()
        actual = session.logits({name: tensor.numpy() for name, tensor in inputs.items()})
        np.testing.assert_allclose(actual, expected, atol=1e-4)
    assert np.ptp(expected[:, 1] - expected[:, 0]) > 0.01  # the inputs do move the logits
    return info


@pytest.mark.parametrize("fusion", NEW_FUSIONS)
def test_new_fusions_export_with_parity_on_bert_and_resnet(fusion, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(fusion)
    with torch.no_grad():
        model.classifier.weight.mul_(50)  # logits of a random model are tiny; make a 1e-4 tolerance mean something
    model.save_pretrained(tmp_path / "checkpoint")
    tiny_processor().save_pretrained(tmp_path / "checkpoint")
    check_parity(tmp_path / "checkpoint", tmp_path / "onnx")


@pytest.mark.parametrize(("kind", "fusion"), [("clip", "cross"), ("clip", "concat"), ("siglip", "cross")])
def test_dual_encoder_tower_models_export_with_parity(kind, fusion, tmp_path):
    (tiny_clip_checkpoint if kind == "clip" else tiny_siglip_checkpoint)(tmp_path / "clip")
    model = MMFusionForClassification.from_text_vision_pretrained(
        str(tmp_path / "clip"), str(tmp_path / "clip"), fusion=fusion, num_labels=2
    )
    with torch.no_grad():
        model.classifier.weight.mul_(50)
    model.save_pretrained(tmp_path / "checkpoint")
    model_args = ModelArguments(
        text_model_name_or_path=str(tmp_path / "clip"), vision_model_name_or_path=str(tmp_path / "clip")
    )
    build_processor(model_args, resolve_image_size(model_args), None).save_pretrained(tmp_path / "checkpoint")
    info = check_parity(tmp_path / "checkpoint", tmp_path / "onnx")
    if kind == "clip":
        assert "token_type_ids" not in info.inputs  # CLIP's tokenizer makes none
