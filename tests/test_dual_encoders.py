"""CLIP and SigLIP checkpoints as towers: one-call loading, their embeddings, processors, and every fusion on them."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_checkpoint import logits_seen_by_a_hub_user
from tiny_models import (
    CLIP_MAX_LENGTH,
    CLIP_MEAN,
    CLIP_STD,
    tiny_clip_checkpoint,
    tiny_siglip_checkpoint,
)
from torch.testing import assert_close
from transformers import CLIPTextModel, CLIPVisionModel

from mmfusion import FUSIONS, MMFusionForClassification, MMFusionProcessor
from mmfusion.fusions import fusion_names
from mmfusion.training.arguments import ModelArguments
from mmfusion.training.inputs import tokenize_captions
from mmfusion.training.setup import build_processor, resolve_image_size

CHECKPOINTS = {"clip": tiny_clip_checkpoint, "siglip": tiny_siglip_checkpoint}
EMBEDDING_FUSIONS = [
    name for name, fusion in FUSIONS.items() if not fusion.needs_bert_like_text and not fusion.joint_encoder
]
CAPTIONS = ["a cat sits on the mat", "the dog barks", "look at this sunset", "putting bows on your pet"]


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def dual_encoder(request, tmp_path_factory):
    """(kind, folder, the dual encoder model) for a tiny random CLIP and SigLIP saved with processor files."""
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, CHECKPOINTS[request.param](folder)


def processor_for(folder) -> MMFusionProcessor:
    model_args = ModelArguments(text_model_name_or_path=str(folder), vision_model_name_or_path=str(folder))
    return build_processor(model_args, resolve_image_size(model_args), train_texts=None)


def example_batch(processor, kind: str):
    images = [
        Image.new("RGB", (40, 36), colour) for colour in ((200, 30, 30), (30, 30, 200), (30, 200, 30), (9, 9, 9))
    ]
    return processor(images=images, text=CAPTIONS)  # padded to the longest caption


def test_one_checkpoint_gives_both_towers_with_their_projections(dual_encoder):
    kind, folder, reference = dual_encoder
    model = MMFusionForClassification.from_text_vision_pretrained(str(folder), str(folder), fusion="cross").eval()
    towers = model.mmfusion
    for tower, source in ((towers.text_model, reference.text_model), (towers.vision_model, reference.vision_model)):
        loaded = tower.state_dict()
        for name, value in source.state_dict().items():
            matching = [key for key in loaded if key == name or key.endswith("." + name)]
            assert len(matching) == 1, name
            assert torch.equal(loaded[matching[0]], value), name
    assert model.config.image_size == reference.config.vision_config.image_size
    if kind == "clip":
        assert model.config.projection_dim == reference.config.projection_dim
        assert torch.equal(towers.text_projection.weight, reference.text_projection.weight)
        assert torch.equal(towers.visual_projection.weight, reference.visual_projection.weight)
    else:  # SigLIP's heads live inside its towers
        assert model.config.projection_dim is None and towers.text_projection is None

    # the embeddings the fusions read are the dual encoder's own joint-space embeddings
    processor = processor_for(folder)
    batch = example_batch(processor, kind)
    if kind == "siglip":  # SigLIP's own usage: captions padded to the full length, no attention mask
        text_inputs = {
            "input_ids": processor.tokenizer(CAPTIONS, padding="max_length", return_tensors="pt")["input_ids"]
        }
    else:
        text_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        expected_text = reference.get_text_features(**text_inputs)
        expected_image = reference.get_image_features(pixel_values=batch["pixel_values"])
        text = model.text_embeddings(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        image = model.image_embeddings(pixel_values=batch["pixel_values"])
    assert_close(text, getattr(expected_text, "pooler_output", expected_text))
    assert_close(image, getattr(expected_image, "pooler_output", expected_image))
    # a caption's embedding does not depend on how its batch was padded (SigLIP reads the last position)
    alone = processor(text=CAPTIONS[1:2])
    with torch.no_grad():
        single = model.text_embeddings(input_ids=alone["input_ids"], attention_mask=alone["attention_mask"])
    assert alone["input_ids"].shape[1] < batch["input_ids"].shape[1]
    assert_close(single[0], text[1], atol=1e-5, rtol=1e-4)


def test_separately_saved_clip_towers_still_load(tmp_path):
    reference = tiny_clip_checkpoint(tmp_path / "clip")
    text = CLIPTextModel(reference.config.text_config)
    text.load_state_dict(reference.text_model.state_dict(), strict=False)
    text.save_pretrained(tmp_path / "text")
    CLIPVisionModel(reference.config.vision_config).save_pretrained(tmp_path / "vision")
    model = MMFusionForClassification.from_text_vision_pretrained(
        str(tmp_path / "text"), str(tmp_path / "vision"), fusion="concat"
    )
    assert model.config.projection_dim is None  # no projections in tower-only checkpoints: the pooled outputs
    assert model.mmfusion.fusion.output_size == 32 + 32


def test_processor_uses_the_checkpoints_normalisation_and_token_limit(tmp_path):
    tiny_clip_checkpoint(tmp_path)
    processor = processor_for(tmp_path)
    assert tuple(processor.image_processor.image_mean) == pytest.approx(CLIP_MEAN)
    assert tuple(processor.image_processor.image_std) == pytest.approx(CLIP_STD)
    assert processor.image_processor.size == {"height": 32, "width": 32}
    image = Image.new("RGB", (32, 32), (255, 0, 0))
    pixels = processor(images=image, text="a")["pixel_values"][0]
    expected_red = (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert pixels[0].mean().item() == pytest.approx(expected_red, abs=1e-4)
    long_caption = " ".join(["abc"] * 200)
    assert processor(text=long_caption)["input_ids"].shape[-1] == CLIP_MAX_LENGTH
    import datasets

    tokenized = tokenize_captions(datasets.Dataset.from_dict({"text": [long_caption]}), processor, 128)
    assert tokenized[0]["length"] == CLIP_MAX_LENGTH  # train.py's default 128 would run past CLIP's positions


def test_early_fusion_with_a_dual_encoder_text_tower_is_refused_naming_what_works(dual_encoder):
    _, folder, _ = dual_encoder
    with pytest.raises(ValueError, match="With this tower use fusion= " + ", ".join(EMBEDDING_FUSIONS)):
        MMFusionForClassification.from_text_vision_pretrained(str(folder), str(folder), fusion="early")


@pytest.mark.parametrize("fusion", EMBEDDING_FUSIONS)
def test_every_supported_fusion_trains_and_round_trips(dual_encoder, fusion, tmp_path):
    kind, folder, _ = dual_encoder
    torch.manual_seed(0)
    model = MMFusionForClassification.from_text_vision_pretrained(
        str(folder),
        str(folder),
        fusion=fusion,
        num_labels=2,
        classifier_dropout=0.0,
        fusion_pre_output_dropout=0.0,
        freeze_text_encoder=True,  # the recipe's setting: only the fusion head learns
        freeze_vision_encoder=True,
    )
    batch = dict(example_batch(processor_for(folder), kind))
    labels = torch.tensor([0, 1, 1, 0])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(30):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses

    model.eval()
    model.save_pretrained(tmp_path)
    reloaded = MMFusionForClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert_close(reloaded(**batch).logits, model(**batch).logits)


def test_hub_user_without_mmfusion_loads_dual_encoder_models(dual_encoder, tmp_path, repo_root):
    kind, folder, _ = dual_encoder
    processor = processor_for(folder)
    expected, folders = {}, []
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    for fusion in fusion_names(reads_embeddings=True, needs_text=True, needs_image=True):
        saved = tmp_path / fusion
        model = MMFusionForClassification.from_text_vision_pretrained(
            str(folder), str(folder), fusion=fusion, num_labels=2, freeze_text_encoder=True, freeze_vision_encoder=True
        ).eval()
        model.save_pretrained(saved)
        processor.save_pretrained(saved)
        with torch.no_grad():
            expected[str(saved)] = model(**processor(images=image, text="a cat sits on the mat")).logits
        folders.append(str(saved))
    got = logits_seen_by_a_hub_user(repo_root, tmp_path, folders)
    for saved in folders:
        assert_close(torch.tensor(got[saved]), expected[saved])


def test_cached_embeddings_give_the_logits_of_the_uncached_model(dual_encoder, tmp_path):
    """Both towers frozen: captions and images are encoded once (`text_embeds`, `image_embeds`), same logits."""
    import datasets

    from mmfusion.training.collator import MMFusionCollator
    from mmfusion.training.inputs import IMAGE_EMBEDS, PIXELS, TEXT_EMBEDS, prepare_model_inputs

    kind, folder, _ = dual_encoder
    processor = processor_for(folder)
    model = MMFusionForClassification.from_text_vision_pretrained(
        str(folder), str(folder), fusion="cross", num_labels=2, freeze_text_encoder=True, freeze_vision_encoder=True
    ).eval()
    images = [Image.new("RGB", (40 + 3 * i, 36), (40 * i, 200 - 30 * i, 90)) for i in range(len(CAPTIONS))]
    dataset = datasets.Dataset.from_dict(
        {"image": images, "text": CAPTIONS, "label": [0, 1, 1, 0]},
        features=datasets.Features(
            {"image": datasets.Image(), "text": datasets.Value("string"), "label": datasets.Value("int64")}
        ),
    )
    cached = prepare_model_inputs(dataset, processor, model, cache_dir=tmp_path / "cache")
    assert {TEXT_EMBEDS, IMAGE_EMBEDS} <= set(cached.column_names)
    uncached = prepare_model_inputs(
        dataset, processor, model, use_image_features=False, use_text_embeddings=False, cache_dir=tmp_path / "cache"
    )
    assert PIXELS in uncached.column_names and TEXT_EMBEDS not in uncached.column_names
    collator = MMFusionCollator.for_processor(processor)
    cached_batch, uncached_batch = collator(list(cached)), collator(list(uncached))
    assert "input_ids" not in cached_batch and "pixel_values" not in cached_batch
    with torch.no_grad():
        cached_logits = model(**cached_batch).logits
        uncached_logits = model(**uncached_batch).logits
    assert_close(cached_logits, uncached_logits, atol=1e-5, rtol=1e-4)
    # and a second preparation is read from the cache, not recomputed
    again = prepare_model_inputs(dataset, processor, model, cache_dir=tmp_path / "cache")
    assert np.array_equal(np.stack(again[TEXT_EMBEDS]), np.stack(cached[TEXT_EMBEDS]))


def readme_block(repo_root, heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    after = readme[readme.index(heading) :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


def test_the_readme_clip_example_runs_on_a_tiny_clip(repo_root, tmp_path, monkeypatch):
    """The README's CLIP example, with a tiny local CLIP for the Hub checkpoint: one call builds the processor."""
    folder = tmp_path / "clip"
    tiny_clip_checkpoint(folder)
    Image.new("RGB", (60, 48), (200, 30, 30)).save(tmp_path / "meme.png")
    monkeypatch.chdir(tmp_path)
    code = readme_block(repo_root, "### CLIP towers").replace('"openai/clip-vit-large-patch14"', repr(str(folder)))
    namespace = {"Image": Image}  # imported by the README's first example
    exec(code, namespace)
    processor, model = namespace["processor"], namespace["model"]
    assert namespace["probabilities"].shape == (1, 2)
    assert processor.tokenizer.model_max_length == CLIP_MAX_LENGTH
    assert tuple(processor.image_processor.image_mean) == pytest.approx(CLIP_MEAN)
    assert processor.image_processor.size == {"height": model.config.image_size, "width": model.config.image_size}
