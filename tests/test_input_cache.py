"""Model inputs computed once: cached frozen-tower features and uint8 pixels match the uncached path, are reused,
and are rebuilt when an image or the tower's weights change."""

import json
import os

import pytest
import torch
from datasets.table import MemoryMappedTable
from PIL import Image
from tiny_models import tiny_model, tiny_processor
from torch.testing import assert_close

from mmfusion import FUSIONS as REGISTRY
from mmfusion.data import load_hateful_memes, make_demo_folder
from mmfusion.training.collator import MMFusionCollator
from mmfusion.training.inputs import IMAGE_EMBEDS, IMAGE_FEATURES, PIXELS, prepare_model_inputs

FUSIONS = [name for name, fusion in REGISTRY.items() if not fusion.joint_encoder]  # joint: test_joint.py


@pytest.fixture()
def memes(tmp_path):
    root = make_demo_folder(tmp_path / "memes", seed=5, num_train=24, num_validation=8, num_test=8)
    return tmp_path / "memes", root


def load(root, tmp_path):
    return load_hateful_memes(root, cache_dir=tmp_path / "hf-cache")["train"]


def uncached_logits(model, processor, split, indices):
    inputs = processor(images=[split[i]["image"] for i in indices], text=[split[i]["text"] for i in indices])
    with torch.no_grad():
        return model(**inputs).logits


def cached_logits(model, processor, prepared, indices):
    batch = MMFusionCollator.for_processor(processor)([prepared[i] for i in indices])
    batch.pop("labels", None)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("fusion", FUSIONS)
def test_cached_features_give_the_uncached_logits(fusion, memes, tmp_path):
    _, root = memes
    split = load(root, tmp_path)
    model, processor = tiny_model(fusion, freeze_vision_encoder=True).eval(), tiny_processor()
    prepared = prepare_model_inputs(split, processor, model, cache_dir=tmp_path / "inputs")
    # fusions that read one vector per modality cache the image embedding, the others the feature map
    column = IMAGE_EMBEDS if REGISTRY[fusion].reads_embeddings else IMAGE_FEATURES
    if not REGISTRY[fusion].needs_image:  # the text-only baseline has no vision tower: no image is even decoded
        assert not {IMAGE_EMBEDS, IMAGE_FEATURES, PIXELS, "image"} & set(prepared.column_names)
    else:
        assert column in prepared.column_names and "image" not in prepared.column_names
    indices = [0, 3, 5, 7]
    # Same computation on the same float32 pixels: equal up to float32 round-off (assert_close: rtol 1.3e-6, atol 1e-5).
    assert_close(cached_logits(model, processor, prepared, indices), uncached_logits(model, processor, split, indices))


def test_bf16_features_match_the_uncached_bf16_forward_and_have_their_own_cache(memes, tmp_path):
    _, root = memes
    split = load(root, tmp_path)
    model, processor = tiny_model("early", freeze_vision_encoder=True).eval(), tiny_processor()
    fp32 = prepare_model_inputs(split, processor, model, cache_dir=tmp_path / "inputs")
    bf16 = prepare_model_inputs(split, processor, model, autocast_dtype=torch.bfloat16, cache_dir=tmp_path / "inputs")
    assert bf16.cache_files[-1]["filename"] != fp32.cache_files[-1]["filename"]
    indices = [0, 2, 6]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached, uncached = (
            cached_logits(model, processor, bf16, indices),
            uncached_logits(model, processor, split, indices),
        )
    # The same bf16 computation of the tower, batched differently: equal up to bf16 round-off (8 bits of mantissa).
    assert_close(cached.float(), uncached.float(), atol=2e-2, rtol=2e-2)
    # and not the float32 features: the dtype is part of the cache key, so neither run reuses the other's features
    assert not torch.equal(torch.as_tensor(bf16[0][IMAGE_FEATURES]), torch.as_tensor(fp32[0][IMAGE_FEATURES]))


@pytest.mark.parametrize("fusion", ["early", "cross"])  # caches feature maps; caches both towers' embeddings
def test_caching_leaves_the_model_as_it_was(fusion, memes, tmp_path):
    _, root = memes
    model = tiny_model(fusion, freeze_vision_encoder=True, freeze_text_encoder=fusion == "cross")
    processor = tiny_processor()
    model.train()  # (the frozen tower stays in eval mode: its BatchNorm statistics are part of what is frozen)
    modes = {name: module.training for name, module in model.named_modules()}
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    prepare_model_inputs(load(root, tmp_path), processor, model, cache_dir=tmp_path / "inputs")
    # the tower ran in eval mode, in channels-last layout; afterwards modes and layout are as they were
    assert {name: module.training for name, module in model.named_modules()} == modes
    after = model.state_dict()
    assert all(tensor.is_contiguous() for tensor in after.values())  # safetensors refuses strided tensors
    assert all(torch.equal(before[name], after[name]) for name in before)
    # no weight or buffer was copied under inference mode: the Trainer's best-model reload writes into all of them
    assert [name for name, tensor in after.items() if tensor.is_inference()] == []
    model.load_state_dict(before)
    model.save_pretrained(tmp_path / "saved")


def test_cached_uint8_pixels_give_the_uncached_logits(memes, tmp_path):
    _, root = memes
    split = load(root, tmp_path)
    model, processor = tiny_model("early").eval(), tiny_processor()  # trained tower: pixels, not features
    prepared = prepare_model_inputs(split, processor, model, cache_dir=tmp_path / "inputs")
    assert PIXELS in prepared.column_names and prepared[0][PIXELS].dtype.name == "uint8"
    indices = [1, 2, 4]
    # Resized pixels are rounded to uint8 before caching: at most half a grey level from the float path.
    assert_close(
        cached_logits(model, processor, prepared, indices),
        uncached_logits(model, processor, split, indices),
        atol=1e-3,
        rtol=1e-3,
    )


def test_second_preparation_reuses_the_cache_and_memory_maps_it(memes, tmp_path):
    _, root = memes
    model, processor = tiny_model("early", freeze_vision_encoder=True).eval(), tiny_processor()
    first = prepare_model_inputs(load(root, tmp_path), processor, model)
    files = [entry["filename"] for entry in first.cache_files]
    modified = {name: os.stat(name).st_mtime_ns for name in files}
    second = prepare_model_inputs(load(root, tmp_path), processor, model)
    assert [entry["filename"] for entry in second.cache_files] == files
    assert {name: os.stat(name).st_mtime_ns for name in files} == modified  # not rewritten
    assert isinstance(second._data, MemoryMappedTable)


def test_changed_image_file_invalidates_its_features(memes, tmp_path):
    folder, root = memes
    model, processor = tiny_model("early", freeze_vision_encoder=True).eval(), tiny_processor()
    before = prepare_model_inputs(load(root, tmp_path), processor, model)
    first_row = json.loads((folder / "train.jsonl").read_text().splitlines()[0])
    image_path = folder / first_row["img"].lstrip("/")
    index = list(before["id"]).index(str(first_row["id"]))
    Image.new("RGB", (64, 64), (0, 255, 0)).save(image_path)  # a different picture under the same name

    after = prepare_model_inputs(load(root, tmp_path), processor, model)
    assert after.cache_files[0]["filename"] != before.cache_files[0]["filename"]
    assert not torch.equal(
        torch.as_tensor(after[index][IMAGE_FEATURES]), torch.as_tensor(before[index][IMAGE_FEATURES])
    )
    other = (index + 1) % len(after)
    assert torch.equal(torch.as_tensor(after[other][IMAGE_FEATURES]), torch.as_tensor(before[other][IMAGE_FEATURES]))


def test_changed_tower_weights_invalidate_the_features(memes, tmp_path):
    _, root = memes
    model, processor = tiny_model("early", freeze_vision_encoder=True).eval(), tiny_processor()
    before = prepare_model_inputs(load(root, tmp_path), processor, model)
    with torch.no_grad():
        model.mmfusion.vision_model.embedder.embedder.convolution.weight.mul_(1.5)
    after = prepare_model_inputs(load(root, tmp_path), processor, model)
    assert after.cache_files[-1]["filename"] != before.cache_files[-1]["filename"]
    assert not torch.equal(torch.as_tensor(after[0][IMAGE_FEATURES]), torch.as_tensor(before[0][IMAGE_FEATURES]))


def test_captions_are_padded_per_batch_not_to_the_longest_in_the_dataset(memes, tmp_path):
    _, root = memes
    model, processor = tiny_model("early", freeze_vision_encoder=True).eval(), tiny_processor()
    prepared = prepare_model_inputs(load(root, tmp_path), processor, model)
    lengths = [len(ids) for ids in prepared["input_ids"]]
    shortest = sorted(range(len(lengths)), key=lengths.__getitem__)[:2]
    batch = MMFusionCollator.for_processor(processor)([prepared[i] for i in shortest])
    assert batch["input_ids"].shape[1] == max(lengths[i] for i in shortest) < max(lengths)
    assert list(prepared["length"]) == lengths
