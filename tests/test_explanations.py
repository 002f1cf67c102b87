"""Explanations (`mmfusion.explanations`, `MMFusionPredictor.explain`): Integrated Gradients on the caption as captum
computes it, Grad-CAM on the image, every fusion, frozen towers left as they were, and the sanity check on the demo
(the cues found by a trained model, not by one whose towers are randomised)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import CAPTIONS, tiny_model, tiny_processor

from mmfusion.explanations import baseline_input_ids, class_log_odds, explain_pairs, grad_cam
from mmfusion.fusions import FUSIONS


def _images(count, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.mark.parametrize("fusion", ["early", "cross"])
def test_caption_attributions_equal_captums_integrated_gradients(processor, fusion):
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = tiny_model(fusion).eval()
    images, texts, steps = _images(2), CAPTIONS[:2], 16
    ours = explain_pairs(model, processor, images, texts, steps=steps, adaptive=False)
    inputs = processor(images=images, text=texts, return_tensors="pt")
    targets = torch.tensor([e.label_id for e in ours])

    def forward(input_ids, attention_mask, token_type_ids, pixel_values):
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
        ).logits
        return torch.stack([class_log_odds(logits, torch.full((len(logits),), c), model.config) for c in (0, 1)], 1)

    baseline = baseline_input_ids(inputs["input_ids"], inputs["attention_mask"], processor.tokenizer, model.config)
    integrated = captum_attr.LayerIntegratedGradients(forward, model.get_input_embeddings())
    theirs = integrated.attribute(
        inputs["input_ids"],
        baselines=baseline,
        additional_forward_args=(inputs["attention_mask"], inputs["token_type_ids"], inputs["pixel_values"]),
        target=targets,
        n_steps=steps,
        method="riemann_middle",
    ).sum(-1)
    for index, explanation in enumerate(ours):
        mask = inputs["attention_mask"][index].bool()
        ids = inputs["input_ids"][index][mask]
        special = torch.isin(ids, torch.tensor(processor.tokenizer.all_special_ids))
        expected = theirs[index][mask][~special]
        np.testing.assert_allclose(explanation.token_attributions, expected.detach().numpy(), atol=1e-5)
        assert explanation.words == texts[index].split()


def test_heat_map_is_grad_cam_of_the_last_feature_map(processor):
    captum_attr = pytest.importorskip("captum.attr")
    torch.manual_seed(0)
    model = tiny_model("attention").eval()
    images, texts = _images(2, seed=1), CAPTIONS[2:4]
    ours = explain_pairs(model, processor, images, texts, targets=[1, 0], steps=2)
    inputs = processor(images=images, text=texts, return_tensors="pt")

    def forward(pixel_values):  # Grad-CAM differentiates the class's logit
        return model(**{**inputs, "pixel_values": pixel_values}).logits

    last_stage = model.mmfusion.vision_model.encoder.stages[-1]
    cam = captum_attr.LayerGradCam(forward, last_stage).attribute(
        inputs["pixel_values"], target=torch.tensor([1, 0]), relu_attributions=True
    )
    for index, explanation in enumerate(ours):
        expected = cam[index, 0].detach().numpy()
        expected = expected / expected.max() if expected.max() > 0 else expected
        assert explanation.heatmap.shape == expected.shape == (2, 2)
        np.testing.assert_allclose(explanation.heatmap, expected, atol=1e-5)


def test_grad_cam_reshapes_vit_patch_tokens_to_their_grid():
    features = torch.randn(2, 1 + 9, 5)  # [CLS] + a 3x3 patch grid
    gradients = torch.randn(2, 10, 5)
    cam = grad_cam(features, gradients)
    assert cam.shape == (2, 3, 3)
    expected = torch.relu((features[:, 1:] * gradients[:, 1:].mean(1, keepdim=True)).sum(-1)).reshape(2, 3, 3)
    expected = expected / expected.flatten(1).amax(1).clamp(min=1e-12).view(2, 1, 1)
    torch.testing.assert_close(cam, expected)


@pytest.mark.parametrize("fusion", [name for name, fusion in FUSIONS.items() if not fusion.joint_encoder])
def test_every_fusion_explains_and_frozen_towers_stay_frozen(processor, fusion):
    torch.manual_seed(0)
    model = tiny_model(fusion, freeze_text_encoder=True, freeze_vision_encoder=True).train()
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    explanations = explain_pairs(model, processor, _images(2), CAPTIONS[:2], steps=64)
    assert model.training and model.config.freeze_text_encoder and model.config.freeze_vision_encoder
    assert {name: p.requires_grad for name, p in model.named_parameters()} == before
    assert all(p.grad is None for p in model.parameters())
    for explanation, text in zip(explanations, CAPTIONS[:2]):
        assert 0.0 <= explanation.score <= 1.0
        if FUSIONS[fusion].needs_text:
            assert explanation.words == text.split()
            assert abs(explanation.text_delta) < 0.02  # completeness: the attributions add up to the score change
        else:
            assert explanation.words == [] and explanation.text_delta is None
        if FUSIONS[fusion].needs_image:
            assert explanation.heatmap.shape == (2, 2) and 0 <= explanation.heatmap.min() <= explanation.heatmap.max()
            assert explanation.heatmap_image(48, 40).shape == (40, 48)
        else:
            assert explanation.heatmap is None
        assert set(explanation.to_dict()) >= {"label", "score", "words", "word_attributions", "heatmap"}


# --- the demo ---------------------------------------------------------------------------------------------------


def test_explanations_find_the_demo_cues_and_a_randomised_model_does_not(trained_demo_checkpoint):
    """The sanity check (figures in benchmarks/RESULTS.md): on demo test pairs, a trained model's caption
    attributions rank the keyword first and deleting the picture moves its score far more than deleting the filler
    words; with the towers randomised (Adebayo et al. 2018) both fail."""
    from mmfusion import MMFusionForClassification, MMFusionProcessor
    from mmfusion.inference.explain import demo_sanity_figures, passes_demo_sanity, randomized_towers

    model = MMFusionForClassification.from_pretrained(trained_demo_checkpoint.path).eval()
    processor = MMFusionProcessor.from_pretrained(trained_demo_checkpoint.path)
    test = trained_demo_checkpoint.dataset["test"][:60]
    trained = demo_sanity_figures(model, processor, test["image"], test["text"])
    assert passes_demo_sanity(trained), trained
    assert trained["keyword_top1"] >= 0.9 and trained["caption_matters"] >= 0.3
    for seed in (1, 2):
        randomised = demo_sanity_figures(randomized_towers(model, seed), processor, test["image"], test["text"])
        assert not passes_demo_sanity(randomised), randomised
        assert randomised["keyword_top1_all"] < 0.5


def test_predictor_explains_its_decision(trained_demo_checkpoint):
    from mmfusion.inference import MMFusionPredictor

    predictor = MMFusionPredictor.from_pretrained(trained_demo_checkpoint.path, device="cpu")
    test = trained_demo_checkpoint.dataset["test"][:3]
    explanation = predictor.explain(test["image"][0], test["text"][0])
    prediction = predictor.predict(test["image"][0], test["text"][0])
    assert explanation.label == prediction["label"]
    assert explanation.score == pytest.approx(prediction["probabilities"][prediction["label"]], abs=1e-5)
    other = predictor.explain(
        test["image"][0], test["text"][0], target="hateful" if prediction["label_id"] == 0 else 0
    )
    assert other.label != explanation.label
    # a threshold that decides the other class is explained as decided
    forced = predictor.explain(
        test["image"][0], test["text"][0], threshold=0.0 if prediction["label_id"] == 0 else 1.0
    )
    assert forced.label_id == 1 - prediction["label_id"] or prediction["probabilities"]["hateful"] == 1.0
    batch = predictor.explain_batch(test["image"], test["text"])
    assert [e.label for e in batch] == [r["label"] for r in predictor.predict_batch(test["image"], test["text"])]
    with pytest.raises(ValueError, match="Unknown class"):
        predictor.explain(test["image"][0], test["text"][0], target="nope")


def test_cli_explain_writes_a_png_per_example(trained_demo_checkpoint, tiny_memes_folder, tmp_path, capsys):
    import json

    from mmfusion.inference.predict import main

    folder = tmp_path / "explained"
    command = [str(trained_demo_checkpoint.path), "--input", str(tiny_memes_folder), "--split", "test_unseen"]
    command += ["--output", str(tmp_path / "p.csv"), "--explain", str(folder), "--explain-max", "3", "--no-progress"]
    assert main([*command, "--explain-steps", "8"]) == 0
    records = [json.loads(line) for line in (folder / "explanations.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (tiny_memes_folder / "test_unseen.jsonl").read_text().splitlines()][:3]
    assert [r["id"] for r in records] == [row["id"] for row in rows]
    predicted = (tmp_path / "p.csv").read_text().splitlines()[1:4]
    assert [r["label_id"] for r in records] == [int(line.split(",")[2]) for line in predicted]
    for record in records:
        png = folder / record["png"]
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(png).size[0] > 100
    image = tiny_memes_folder / rows[0]["img"]
    pair = ["--image", str(image), "--text", rows[0]["text"], "--explain", str(tmp_path / "one")]
    assert main([str(trained_demo_checkpoint.path), *pair, "--explain-steps", "8"]) == 0
    assert (tmp_path / "one" / f"00000_{image.stem}.png").is_file()
    with pytest.raises(SystemExit):
        main([str(trained_demo_checkpoint.path), *pair, "--backend", "onnx"])
    assert "--explain needs gradients" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("fusion", ["cross", "attention"])
def test_dual_encoder_towers_explain_on_their_patch_grid(kind, fusion, tmp_path):
    """CLIP/SigLIP towers: Grad-CAM on the vision tower's patch tokens reshaped to its grid ([CLS] dropped), IG through
    a text tower that pads the ids itself (SigLIP)."""
    from tiny_models import tiny_clip_checkpoint, tiny_siglip_checkpoint

    from mmfusion import MMFusionForClassification
    from mmfusion.training.arguments import ModelArguments
    from mmfusion.training.setup import build_processor, resolve_image_size

    source = {"clip": tiny_clip_checkpoint, "siglip": tiny_siglip_checkpoint}[kind](tmp_path)
    torch.manual_seed(0)
    model = MMFusionForClassification.from_text_vision_pretrained(
        str(tmp_path), str(tmp_path), fusion=fusion, num_labels=2, freeze_text_encoder=True, freeze_vision_encoder=True
    ).eval()
    arguments = ModelArguments(text_model_name_or_path=str(tmp_path), vision_model_name_or_path=str(tmp_path))
    processor = build_processor(arguments, resolve_image_size(arguments), train_texts=None)
    explanations = explain_pairs(model, processor, _images(2), ["a cat sits on the mat", "the dog barks"], steps=32)
    vision = source.config.vision_config
    side = vision.image_size // vision.patch_size
    for explanation, text in zip(explanations, ["a cat sits on the mat", "the dog barks"]):
        assert explanation.heatmap.shape == (side, side)
        assert explanation.words == text.split()
        assert abs(explanation.text_delta) < 0.05 * max(1.0, abs(explanation.log_odds - explanation.baseline_log_odds))
