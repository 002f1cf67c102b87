"""Unimodal baselines (`fusion="text"` / `"image"`) and `text_pooling`, including sentence-transformers' default."""

import json

import pytest
import torch
from PIL import Image
from tiny_models import IMAGE_SIZE, tiny_model, tiny_processor, tiny_text_config, tiny_vision_config
from torch.testing import assert_close
from transformers import BertModel, ResNetModel

from mmfusion import MMFusionForClassification
from mmfusion.fusions import FUSIONS, fusion_names
from mmfusion.inference.predictor import MMFusionPredictor
from mmfusion.modeling_mmfusion import pool_text, sentence_transformers_pooling

CAPTIONS = ["a cat sits on the mat", "the dog barks at the mailman"]


def images():
    return [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (40, 40), (20, 30, 230))]


def test_text_only_needs_no_image_and_has_no_vision_tower():
    model = tiny_model("text").eval()
    assert model.mmfusion.vision_model is None
    inputs = tiny_processor()(text=CAPTIONS)
    outputs = model(**inputs, labels=torch.tensor([0, 1]))
    assert outputs.logits.shape == (2, 2) and outputs.loss.requires_grad
    # an image, when given, changes nothing
    with_images = tiny_processor()(images=images(), text=CAPTIONS)
    assert_close(model(**with_images).logits, outputs.logits)


def test_image_only_needs_no_caption_and_has_no_text_tower():
    model = tiny_model("image").eval()
    assert model.mmfusion.text_model is None
    pixel_values = tiny_processor()(images=images())["pixel_values"]
    logits = model(pixel_values=pixel_values).logits
    assert logits.shape == (2, 2)
    assert not torch.allclose(logits[0], logits[1])  # the images differ, so do the scores
    with_text = tiny_processor()(images=images(), text=["x", "a much longer caption that changes nothing"])
    assert_close(model(**with_text).logits, logits)


@pytest.mark.parametrize("fusion", ["text", "image"])
def test_unimodal_models_train_and_round_trip(fusion, tmp_path):
    torch.manual_seed(0)
    model = tiny_model(fusion).train()
    inputs = tiny_processor()(images=images(), text=CAPTIONS)
    labels = torch.tensor([0, 1])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = model(**inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    model.eval().save_pretrained(tmp_path)
    tiny_processor().save_pretrained(tmp_path)
    reloaded = MMFusionForClassification.from_pretrained(tmp_path).eval()
    assert_close(reloaded(**inputs).logits, model(**inputs).logits)
    predictor = MMFusionPredictor.from_pretrained(tmp_path, device="cpu")
    # the text-only predictor takes None for the image
    records = predictor.predict_batch([None, None] if fusion == "text" else images(), CAPTIONS)
    assert [record["label_id"] for record in records] == [0, 1]


def test_pool_text_modes():
    states = torch.arange(12, dtype=torch.float).view(1, 3, 4)
    mask = torch.tensor([[1, 1, 0]])
    assert_close(pool_text(None, states, mask, None, "cls"), states[:, 0])
    assert_close(pool_text(None, states, mask, None, "mean"), states[:, :2].mean(dim=1))
    assert_close(pool_text(None, states, mask, None, "pooler"), states[:, 0])  # no pooler: the first token
    pooled = torch.ones(1, 4)
    assert_close(pool_text(None, states, mask, pooled, "pooler"), pooled)


@pytest.mark.parametrize("fusion", fusion_names(uses_text_pooler=True))
def test_text_pooling_changes_what_the_classifier_reads(fusion):
    torch.manual_seed(0)
    base = tiny_model(fusion, text_pooling="cls").eval()
    mean = tiny_model(fusion, text_pooling="mean").eval()
    mean.load_state_dict(base.state_dict(), strict=False)
    assert getattr(mean.mmfusion.text_model, "pooler", None) is None  # unused, so not built
    inputs = tiny_processor()(images=images(), text=CAPTIONS)
    assert not torch.allclose(base(**inputs).logits, mean(**inputs).logits)


def write_sentence_transformers_folder(folder, pooling_config):
    BertModel(tiny_text_config(), add_pooling_layer=False).save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))


def test_sentence_transformers_checkpoint_defaults_to_its_pooling(tmp_path):
    text_folder = tmp_path / "minilm"
    write_sentence_transformers_folder(
        text_folder,
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True},
    )
    ResNetModel(tiny_vision_config()).save_pretrained(tmp_path / "vision")
    assert sentence_transformers_pooling(str(text_folder)) == "mean"
    model = MMFusionForClassification.from_text_vision_pretrained(
        str(text_folder), str(tmp_path / "vision"), fusion="text", num_labels=2, image_size=IMAGE_SIZE
    )
    assert model.config.text_pooling == "mean"
    # an explicit choice wins; a plain transformers checkpoint keeps the default
    model = MMFusionForClassification.from_text_vision_pretrained(
        str(text_folder),
        str(tmp_path / "vision"),
        fusion="concat",
        num_labels=2,
        image_size=IMAGE_SIZE,
        text_pooling="cls",
    )
    assert model.config.text_pooling == "cls"
    BertModel(tiny_text_config()).save_pretrained(tmp_path / "bert")
    assert sentence_transformers_pooling(str(tmp_path / "bert")) is None


def test_old_configs_without_text_pooling_keep_the_pooler(tmp_path):
    tiny_model("early").save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    del config["text_pooling"]
    config_path.write_text(json.dumps(config))
    model = MMFusionForClassification.from_pretrained(tmp_path)
    assert model.config.text_pooling == "pooler" and model.mmfusion.text_model.pooler is not None


@pytest.mark.parametrize("fusion", ["text", "image"])
def test_unimodal_models_export_to_onnx(fusion, tmp_path):
    pytest.importorskip("onnxruntime")
    from mmfusion.inference.export import main as export_main

    tiny_model(fusion).eval().save_pretrained(tmp_path / "model")
    tiny_processor().save_pretrained(tmp_path / "model")
    assert export_main([str(tmp_path / "model"), str(tmp_path / "onnx")]) == 0
    onnx = MMFusionPredictor.from_pretrained(tmp_path / "onnx", backend="onnx")
    torch_predictor = MMFusionPredictor.from_pretrained(tmp_path / "model", device="cpu")
    # the graph keeps the common input signature (an unused image input for the text-only model)
    expected = torch_predictor.predict_probabilities(images(), CAPTIONS)
    assert_close(
        torch.tensor(onnx.predict_probabilities(images(), CAPTIONS)), torch.tensor(expected), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("fusion", [name for name, fusion in FUSIONS.items() if "image_gate" in fusion.settings])
def test_image_gate_starts_from_the_text_alone_and_learns(fusion):
    torch.manual_seed(0)
    model = tiny_model(fusion, image_gate=True).eval()
    inputs = tiny_processor()(images=images(), text=CAPTIONS)
    swapped = dict(inputs, pixel_values=inputs["pixel_values"].flip(0))
    gate = model.mmfusion.fusion.image_gate
    ungated = tiny_model(fusion).eval()
    assert ungated.mmfusion.fusion.image_gate is None
    ungated_change = (ungated(**inputs).logits - ungated(**swapped).logits).abs().max().item()
    assert ungated_change > 1e-3
    # at initialisation the image barely moves the scores (early: 1/1000 of a caption token's weight per image
    # token; attention, concat: not at all) ...
    gated_change = (model(**inputs).logits - model(**swapped).logits).abs().max().item()
    assert gated_change < (0.1 * ungated_change if fusion == "early" else 1e-6)
    # ... but the gate gets a gradient, so training can open it ...
    model.train()
    model(**inputs, labels=torch.tensor([0, 1])).loss.backward()
    assert gate.grad.abs().item() > 0
    # ... and once open, the image counts
    with torch.no_grad():
        gate.fill_(1.0)
    model.eval()
    assert (model(**inputs).logits - model(**swapped).logits).abs().max().item() > 10 * gated_change


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_closed_early_fusion_gate_encodes_the_caption_as_the_text_tower_alone(attn_implementation):
    """The dilution this gate exists for: image tokens zeroed are not enough (their keys are the projection bias and
    still draw attention); with the gate closed the caption's states are the tower's own, image or no image."""
    torch.manual_seed(0)
    model = tiny_model("early", image_gate=True, text_pooling="mean", attn_implementation=attn_implementation).eval()
    with torch.no_grad():
        model.mmfusion.fusion.image_gate.fill_(0.0)  # closed: clamped to the floor, 1e-6
    inputs = tiny_processor()(images=images(), text=CAPTIONS)
    tower = model.mmfusion.text_model
    alone = tower(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    expected = pool_text(tower, alone, inputs["attention_mask"], pooling="mean")
    fused = model.mmfusion(**inputs).pooler_output
    assert_close(fused, expected, atol=1e-4, rtol=0)


def test_fusion_learning_rate_gives_the_fresh_layers_their_own(tmp_path):
    from transformers import TrainingArguments

    from mmfusion.training.trainer import MMFusionTrainer

    model = tiny_model("early")
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, report_to="none", use_cpu=True)
    trainer = MMFusionTrainer(model=model, args=args, fusion_learning_rate=1e-2)
    optimizer = trainer.create_optimizer()
    rates = {}
    names = {id(p): name for name, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[names[id(p)]] = group["lr"]
    assert rates["classifier.weight"] == rates["mmfusion.fusion.image_projection.weight"] == 1e-2
    assert rates["mmfusion.text_model.embeddings.word_embeddings.weight"] == 1e-4
    assert len(rates) == sum(1 for p in model.parameters() if p.requires_grad)
