"""Processor for mmfusion: one call turns (image, caption) pairs into model inputs.

This file is copied next to every checkpoint (remote code), so it imports only transformers, torch, numpy, PIL and its
flat siblings (`torchvision_resnet.py`, copied beside it), never the `mmfusion` package itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, BatchFeature, ProcessorMixin
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


# Where a joint model's checkpoint keeps the vision-language model's own processor (its tokenizer, image processor,
# chat template), beside the mmfusion processor's files.
VISION_LANGUAGE_PROCESSOR_FOLDER = "vision_language_processor"


def limit_image_pixels(image_processor, max_pixels: int | None) -> None:
    """Make a vision-language image processor pass images of at most `max_pixels` pixels (larger ones are resized
    down, aspect ratio kept): Qwen2-VL's `max_pixels` (its `size["longest_edge"]` counts pixels); for processors that
    bound the longest side instead (Idefics3/SmolVLM), the side of a square of that many pixels; processors that
    resize every image to the model's fixed input size (LLaVA, PaliGemma) are left as they are."""
    if max_pixels is None:
        return
    if max_pixels < 1:
        raise ValueError(f"vision_language_max_pixels must be at least 1, got {max_pixels}")
    size = dict(getattr(image_processor, "size", None) or {})
    if hasattr(image_processor, "merge_size") and "longest_edge" in size:  # Qwen2-VL family: pixels
        size["longest_edge"] = int(max_pixels)
        size["shortest_edge"] = min(size.get("shortest_edge") or max_pixels, int(max_pixels))
        if hasattr(image_processor, "max_pixels"):
            image_processor.max_pixels = int(max_pixels)
    elif "longest_edge" in size:  # a bound on the longest side
        size["longest_edge"] = math.isqrt(int(max_pixels))
    elif set(size) & {"height", "width", "shortest_edge"}:
        return  # LLaVA, PaliGemma: every image is resized (and cropped) to the model's own fixed input size
    else:
        raise ValueError(
            f"{type(image_processor).__name__} has no pixel or side limit mmfusion knows how to set "
            f"(size={size}); set its own size instead of vision_language_max_pixels."
        )
    image_processor.size = size


class MMFusionProcessor(ProcessorMixin):
    """Tokenizer + image processor; for a joint model (`fusion="joint"`), the vision-language model's own processor.

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

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        prompt_template: str | None = None,
        vision_language_max_pixels: int | None = None,
        **kwargs,
    ):
        super().__init__(image_processor, tokenizer, **kwargs)
        # What `save_pretrained` writes for remote code; set here too so that a loaded processor equals the saved one.
        self.auto_map = {"AutoProcessor": "processing_mmfusion.MMFusionProcessor"}
        # A joint model's processor: the prompt (`{caption}` in it) and the vision-language model's own processor,
        # which builds it through its chat template (`from_vision_language_pretrained`; saved in a subfolder).
        self.prompt_template = prompt_template
        self.vision_language_max_pixels = vision_language_max_pixels
        self.vision_language_processor = None

    @classmethod
    def from_vision_language_pretrained(
        cls,
        vision_language_model_name_or_path: str,
        *,
        config=None,
        prompt_template: str | None = None,
        max_pixels: int | None = None,
        **kwargs,
    ) -> MMFusionProcessor:
        """The processor of a joint model (`MMFusionForClassification.from_vision_language_pretrained`): the
        vision-language model's own processor (its tokenizer, image processor and chat template), the prompt
        template and the image pixel limit, both taken from the model's `config` when given (its `prompt_template`
        and `vision_language_max_pixels`). `kwargs` go to `AutoProcessor.from_pretrained`."""
        from .fusions import DEFAULT_PROMPT_TEMPLATE

        if prompt_template is None:
            prompt_template = getattr(config, "prompt_template", None) or DEFAULT_PROMPT_TEMPLATE
        if max_pixels is None and config is not None:
            max_pixels = getattr(config, "vision_language_max_pixels", None)
        inner = AutoProcessor.from_pretrained(vision_language_model_name_or_path, **kwargs)
        return cls.wrapping(inner, prompt_template=prompt_template, max_pixels=max_pixels)

    @classmethod
    def wrapping(cls, vision_language_processor, *, prompt_template: str, max_pixels: int | None = None):
        """An mmfusion processor around a vision-language model's own processor (see `from_vision_language_pretrained`)."""
        if "{caption}" not in prompt_template:
            raise ValueError(f"prompt_template must contain {{caption}}; got {prompt_template!r}.")
        if getattr(vision_language_processor, "chat_template", None) is None:
            raise ValueError(
                f"{type(vision_language_processor).__name__} has no chat template: the joint prompt is built with "
                "the model's own chat template (an instruction-tuned checkpoint ships one)."
            )
        limit_image_pixels(vision_language_processor.image_processor, max_pixels)
        processor = cls(
            vision_language_processor.image_processor,
            vision_language_processor.tokenizer,
            prompt_template=prompt_template,
            vision_language_max_pixels=max_pixels,
        )
        processor.vision_language_processor = vision_language_processor
        return processor

    @property
    def is_vision_language(self) -> bool:
        return getattr(self, "vision_language_processor", None) is not None

    def to_dict(self):
        # The wrapped processor is saved in its own folder; left out here, or `to_dict` would deep-copy its tokenizer.
        inner = self.__dict__.pop("vision_language_processor", None)
        try:
            return super().to_dict()
        finally:
            self.vision_language_processor = inner

    def save_pretrained(self, save_directory, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if self.is_vision_language:
            self.vision_language_processor.save_pretrained(Path(save_directory) / VISION_LANGUAGE_PROCESSOR_FOLDER)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        processor = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if processor.prompt_template is not None:  # a joint model's: its vision-language processor, in the subfolder
            inner = AutoProcessor.from_pretrained(
                pretrained_model_name_or_path, subfolder=VISION_LANGUAGE_PROCESSOR_FOLDER, **kwargs
            )
            processor.vision_language_processor = inner
            processor.image_processor, processor.tokenizer = inner.image_processor, inner.tokenizer
        return processor

    def joint_prompts(self, texts: list[str]) -> list[str]:
        """Each caption in the prompt template, as the vision-language model's chat template lays out a user turn
        with the image first, followed by the generation prompt (the model would answer next). Captions longer than
        the tokenizer's `model_max_length` tokens are cut there (`limit_text_length`)."""
        limit = self.tokenizer.model_max_length
        prompts = []
        for caption in texts:
            caption = "" if caption is None else str(caption)
            ids = self.tokenizer(caption, add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                caption = self.tokenizer.decode(ids[:limit])
            messages = [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "text", "text": self.prompt_template.format(caption=caption)},
                    ],
                }
            ]
            prompts.append(
                self.vision_language_processor.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            )
        return prompts

    def joint_inputs(self, images, text, return_tensors="pt", **ignored) -> BatchFeature:
        """Model inputs of a joint model: one prompt per (image, caption) pair, left-padded (the last position is
        every row's last prompt token), with whatever the vision-language processor adds (`pixel_values`, Qwen2-VL's
        `image_grid_thw`, ...). Padding and truncation options meant for captions alone are ignored: the prompt
        holds the image's tokens, which must never be cut."""
        if images is None:
            raise ValueError("A joint vision-language model reads the image and the caption together: pass images.")
        images = [images] if isinstance(images, Image.Image) else list(images)
        texts = [text] if text is None or isinstance(text, str) else list(text)
        if len(texts) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(texts)} captions; pass one caption per image.")
        inputs = self.vision_language_processor(
            images=[[image] for image in images],
            text=self.joint_prompts(texts),
            padding=True,
            padding_side="left",
            return_tensors=return_tensors,
        )
        return BatchFeature(dict(inputs), tensor_type=return_tensors)

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
        if self.is_vision_language:
            return self.joint_inputs(images, text, **kwargs)
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
        if self.is_vision_language:
            return list(self.vision_language_processor.model_input_names)
        return list(dict.fromkeys(self.tokenizer.model_input_names + self.image_processor.model_input_names))


MMFusionProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "MMFusionProcessor",
    "default_image_processor",
    "VISION_LANGUAGE_PROCESSOR_FOLDER",
    "limit_image_pixels",
    "limit_text_length",
    "rescale_to_uint8",
    "to_rgb",
    "to_uint8",
    "tower_image_processor",
]
