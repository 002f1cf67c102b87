import io

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import IMAGE_SIZE, tiny_processor
from torch.testing import assert_close

from mmfusion import MMFusionProcessor, to_rgb


def test_processor_returns_model_inputs_for_a_batch():
    processor = tiny_processor()
    images = [Image.new("RGB", (60, 30), "red"), Image.new("RGB", (20, 80), "blue")]
    inputs = processor(images=images, text=["a cat", "the dog barks at the mailman"], return_tensors="pt")
    assert set(inputs) >= {"input_ids", "attention_mask", "pixel_values"}
    assert inputs["pixel_values"].shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert inputs["input_ids"].shape[0] == 2 and inputs["attention_mask"][0].sum() < inputs["attention_mask"][1].sum()


def test_imagenet_normalisation_by_default():
    processor = tiny_processor()
    pixels = processor(images=Image.new("RGB", (8, 8), (255, 0, 0)), return_tensors="pt")["pixel_values"]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert_close(pixels[0, :, 0, 0], (torch.tensor([1.0, 0.0, 0.0]) - mean) / std, atol=1e-5, rtol=1e-5)


def cmyk_jpeg():
    buffer = io.BytesIO()
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(buffer, format="JPEG")
    return Image.open(io.BytesIO(buffer.getvalue()))


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (16, 16), 128),
        Image.new("RGB", (16, 16), "green").convert("P"),
        Image.new("RGBA", (16, 16), (0, 0, 255, 128)),
        cmyk_jpeg(),
        Image.fromarray(np.full((16, 16), 30000, dtype=np.uint16)),
        Image.new("1", (16, 16), 1),
    ],
    ids=["L", "P", "RGBA", "CMYK", "I;16", "1"],
)
def test_any_pil_mode_becomes_rgb_model_input(image):
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    pixels = tiny_processor()(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE) and torch.isfinite(pixels).all()


def test_sixteen_bit_images_are_rescaled_not_clipped():
    grey = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))  # half of 65535
    assert np.asarray(to_rgb(grey))[0, 0].tolist() == [128, 128, 128]


def test_transparency_is_composited_on_white():
    transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(transparent))[0, 0].tolist() == [255, 255, 255]


def test_processor_round_trips_through_save_pretrained(tmp_path):
    processor = tiny_processor()
    processor.save_pretrained(tmp_path)
    reloaded = MMFusionProcessor.from_pretrained(tmp_path)
    image, text = Image.new("RGB", (40, 30), (10, 200, 30)), ["perfect solitude on a crowded beach"]
    for key, value in processor(images=image, text=text).items():
        assert torch.equal(reloaded(images=image, text=text)[key], value)


def test_processor_kwargs_reach_the_tokenizer_and_the_image_processor(tmp_path):
    # transformers' processor conventions (issue 15): flat kwargs go where they apply, per-modality dicts work too
    processor = tiny_processor()
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    padded = processor(images=[image, image], text=["a cat", "a dog"], padding="max_length", max_length=12)
    assert padded["input_ids"].shape == (2, 12)
    unnormalised = processor(images=image, images_kwargs={"do_normalize": False})["pixel_values"]
    assert_close(unnormalised[0, :, 0, 0], torch.tensor([10, 200, 30]) / 255.0, atol=1e-3, rtol=0)
    as_lists = processor(text="a cat", return_tensors=None)
    assert isinstance(as_lists["input_ids"], list)
    processor.save_pretrained(tmp_path)
    assert MMFusionProcessor.from_pretrained(tmp_path).to_dict() == processor.to_dict()
