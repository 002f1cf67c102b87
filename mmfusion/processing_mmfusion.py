"""Processor for mmfusion: one call turns (image, caption) pairs into model inputs.

This file is copied next to every checkpoint (remote code), so it imports only transformers, torch, numpy, PIL and its
flat siblings (`torchvision_resnet.py`, copied beside it), never the `mmfusion` package itself.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, BatchFeature, ProcessorMixin
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.utils import logging

from .torchvision_resnet import torchvision_architecture

logger = logging.get_logger(__name__)

# Modes holding more than 8 bits per pixel. PIL's own convert("RGB") clips them at 255, which turns a normal
# 16-bit PNG into a white sheet, so they are rescaled to 8 bits first.
_HIGH_BIT_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_MODES_WITH_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Return `image` as an 8-bit RGB PIL image, whatever its mode.

    Transparent pixels are composited onto `background` (white: memes with a transparent background are drawn for
    a light page), 16/32-bit greyscale is rescaled rather than clipped, and palette, CMYK, YCbCr, LAB, HSV and 1-bit
    images go through PIL's conversions.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"to_rgb expects a PIL image, got {type(image).__name__}")
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        image = Image.fromarray(rescale_to_uint8(np.asarray(image)), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _MODES_WITH_ALPHA:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels already on the 0-255 scale (e.g. resized but not rescaled) rounded and clipped to uint8."""
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def rescale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Pixels of any scale as uint8: floats in [0, 1] times 255, 16-bit values divided by 257, the rest as is."""
    if pixels.dtype == np.uint8:
        return pixels
    is_float = pixels.dtype.kind == "f"
    pixels = pixels.astype(np.float64)
    if is_float and pixels.size and pixels.max() <= 1.0 and pixels.min() >= 0.0:
        pixels = pixels * 255.0  # float images in [0, 1]
    elif pixels.size and pixels.max() > 255:
        pixels = pixels / 257.0  # 16-bit range: 65535 -> 255
    return to_uint8(pixels)


def default_image_processor(image_size: int = 224, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD):
    """The notebook's transform as an HF image processor: resize to a square, scale to [0, 1], normalise (ImageNet's
    mean/std unless given: a CLIP tower wants CLIP's).

    Resizing without cropping keeps the whole meme (captions printed near the edges survive).
    """
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=list(image_mean), image_std=list(image_std)
    )


def tower_image_processor(vision_model_name_or_path: str | None, image_size: int = 224):
    """`default_image_processor` with the normalisation the vision checkpoint was trained with: its image processor's
    mean/std (CLIP's for CLIP, 0.5 for SigLIP); ImageNet's for `torchvision/<arch>` names, no checkpoint (the small
    random tower) and checkpoints that ship no image processor.

    Only the mean/std are taken: the checkpoint's own resize-and-crop would cut off captions near a meme's edges.
    """
    mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    if vision_model_name_or_path and not torchvision_architecture(vision_model_name_or_path):
        try:
            source = AutoImageProcessor.from_pretrained(vision_model_name_or_path)
        except OSError:
            logger.warning(
                f"{vision_model_name_or_path} ships no image processor: normalising with ImageNet's mean/std."
            )
        else:
            mean, std = source.image_mean, source.image_std
    return default_image_processor(image_size, image_mean=mean, image_std=std)


def limit_text_length(processor, max_text_length: int | None) -> int:
    """Make `processor` truncate captions at `max_text_length` tokens, or at its tokenizer's own limit when that is
    lower (CLIP's 77: its text tower has no position beyond); return the limit now in force. None changes nothing.

    The limit is kept as the tokenizer's `model_max_length`, which is where every tokenizer call with
    `truncation=True` stops and what `save_pretrained` writes to `tokenizer_config.json`: a processor limited before
    training (train.py's `--max_text_length`) is saved with the checkpoint, so the predictor, the pipeline and the
    ONNX export truncate captions exactly where training did, even with an older copy of this file. A limit is
    only ever lowered, since a tokenizer's own limit is a hard one.
    """
    tokenizer = processor.tokenizer
    if max_text_length is not None:
        if max_text_length < 1:
            raise ValueError(f"max_text_length must be at least 1, got {max_text_length}")
        if max_text_length > tokenizer.model_max_length:
            logger.info(
                f"Captions are truncated at {tokenizer.model_max_length} tokens (the tokenizer's limit), "
                f"not at max_text_length={max_text_length}."
            )
        tokenizer.model_max_length = min(tokenizer.model_max_length, int(max_text_length))
    return tokenizer.model_max_length


class MMFusionProcessor(ProcessorMixin):
    """Tokenizer + image processor.

    `processor(images=..., text=...)` returns `input_ids`, `attention_mask` (and `token_type_ids` when the tokenizer
    makes them) and `pixel_values` as PyTorch tensors, ready for `MMFusionForClassification`: captions are padded to
    the batch's longest and truncated to the tokenizer's `model_max_length` (in a trained checkpoint, the limit
    training truncated at: see `limit_text_length`). Images of any PIL mode are converted to RGB first (see
    `to_rgb`). Other keyword arguments go where transformers' processors send them (`max_length=`,
    `padding="max_length"`, `return_tensors=None`, `text_kwargs={...}`, `images_kwargs={...}`).
    """

    # Defaults by modality, the lowest-priority layer of transformers' processor kwargs.
    text_kwargs = {"padding": True, "truncation": True, "return_tensors": "pt"}
    images_kwargs = {"return_tensors": "pt"}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)
        # What `save_pretrained` writes for remote code; set here too so that a loaded processor equals the saved one.
        self.auto_map = {"AutoProcessor": "processing_mmfusion.MMFusionProcessor"}

    @classmethod
    def from_text_vision_pretrained(
        cls,
        text_model_name_or_path: str,
        vision_model_name_or_path: str | None,
        *,
        image_size: int = 224,
        max_text_length: int | None = None,
    ) -> MMFusionProcessor:
        """The processor for `MMFusionForClassification.from_text_vision_pretrained(text, vision, ...)`.

        The text tower's tokenizer (a dual encoder's, CLIP's or SigLIP's, when the path is one) and
        `tower_image_processor(vision_model_name_or_path, image_size)`: images resized to `image_size` (pass the
        model's `config.image_size`) without cropping, normalised with the vision checkpoint's mean/std. Captions
        are truncated at `max_text_length` tokens (default: the tokenizer's own limit; see `limit_text_length`).

        Example:
        ```python
        processor = MMFusionProcessor.from_text_vision_pretrained(
            "bert-base-uncased", "microsoft/resnet-50", image_size=224, max_text_length=128
        )
        ```
        """
        tokenizer = AutoTokenizer.from_pretrained(text_model_name_or_path)
        processor = cls(tower_image_processor(vision_model_name_or_path, image_size), tokenizer)
        limit_text_length(processor, max_text_length)
        return processor

    def __call__(self, images=None, text: str | list[str] | None = None, **kwargs) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("MMFusionProcessor needs `images`, `text` or both.")
        if images is not None:
            images = self.prepare_images(images)
        return super().__call__(images=images, text=text, **kwargs)

    @staticmethod
    def prepare_images(images):
        """RGB-convert one PIL image or a list of them; arrays and tensors are passed through unchanged."""
        if isinstance(images, Image.Image):
            return to_rgb(images)
        if isinstance(images, (list, tuple)):
            return [to_rgb(image) if isinstance(image, Image.Image) else image for image in images]
        return images

    @property
    def model_input_names(self):
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))


MMFusionProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "MMFusionProcessor",
    "default_image_processor",
    "limit_text_length",
    "rescale_to_uint8",
    "to_rgb",
    "to_uint8",
    "tower_image_processor",
]
