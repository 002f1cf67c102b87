"""Batches of prepared examples -> model inputs (runs in the DataLoader workers)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .columns import DATASET_INDEX, IMAGE_EMBEDS, IMAGE_FEATURES, PIXELS, TEXT_EMBEDS, TEXT_INPUTS


def collate_labels(rows: list[dict], num_labels: int | None = None) -> dict[str, torch.Tensor]:
    """`{"labels": ...}`: class ids (long), or multi-hot floats for a multi-label task (`num_labels` classes); `{}`
    when a row is unlabeled (-1 or None: no loss)."""
    values = [row["label"] for row in rows]
    if any(value is None for value in values):
        return {}
    if isinstance(values[0], (list, tuple, np.ndarray)):
        if num_labels is None:
            raise ValueError("Multi-label rows (a list of classes each) need the collator's `num_labels`.")
        targets = torch.zeros((len(values), num_labels), dtype=torch.float32)
        for index, value in enumerate(values):
            targets[index, list(value)] = 1.0
        return {"labels": targets}
    labels = [int(value) for value in values]
    if min(labels) < 0:  # unlabeled rows (-1) get no loss
        return {}
    return {"labels": torch.tensor(labels, dtype=torch.long)}


@dataclass(frozen=True)
class MMFusionCollator:
    """Pads captions to the longest in the batch and turns cached images into `image_features` or `pixel_values`;
    cached embeddings (`text_embeds`, `image_embeds`, see `mmfusion.training.inputs`) go to the model as they are,
    in place of the captions / images.

    Args:
        pad_token_id: the tokenizer's padding id.
        image_mean, image_std, rescale_factor: the image processor's normalisation, applied to cached uint8 pixels.
        pad_to_multiple_of: round the padded length up (8 suits tensor cores; 1 = no rounding).
        num_labels: set for a multi-label task (the rows' `label` is a list of class ids): labels become
            `(batch, num_labels)` multi-hot float vectors, the targets of the model's binary cross-entropy. An empty
            list is a valid target (no label applies); `None` is an unlabeled row.
        blank_image / blank_text: the modality ablation: replace every image by `blank_image_input` (the blank
            image's cached features, embedding or pixels) and/or every caption by `empty_text_ids` (or, with cached
            text embeddings, by `blank_text_input`, the empty caption's embedding; see
            `mmfusion.evaluation.ablation`).
    """

    pad_token_id: int
    image_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    image_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    rescale_factor: float = 1 / 255
    pad_to_multiple_of: int = 1
    blank_image: bool = False
    blank_text: bool = False
    blank_image_input: np.ndarray | None = None
    empty_text_ids: tuple[int, ...] | None = None
    blank_text_input: np.ndarray | None = None
    num_labels: int | None = None

    @classmethod
    def for_processor(cls, processor, **kwargs) -> MMFusionCollator:
        image_processor = processor.image_processor
        return cls(
            pad_token_id=processor.tokenizer.pad_token_id,
            image_mean=tuple(image_processor.image_mean),
            image_std=tuple(image_processor.image_std),
            rescale_factor=image_processor.rescale_factor,
            empty_text_ids=tuple(processor.tokenizer("")["input_ids"]),
            **kwargs,
        )

    def ablated(
        self,
        blank_image: bool,
        blank_text: bool,
        blank_image_input: np.ndarray | None = None,
        blank_text_input: np.ndarray | None = None,
    ):
        if blank_image and blank_image_input is None and self.blank_image_input is None:
            raise ValueError("Blanking images needs the blank image's cached input (`blank_image_input`).")
        return replace(
            self,
            blank_image=blank_image,
            blank_text=blank_text,
            blank_image_input=blank_image_input if blank_image_input is not None else self.blank_image_input,
            blank_text_input=blank_text_input if blank_text_input is not None else self.blank_text_input,
        )

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        first = rows[0]
        if TEXT_EMBEDS in first:
            if self.blank_text and self.blank_text_input is None:
                raise ValueError("Emptying cached captions needs the empty caption's embedding (`blank_text_input`).")
            batch = {TEXT_EMBEDS: self._stack(rows, TEXT_EMBEDS, self.blank_text, self.blank_text_input).float()}
        else:
            batch = self.pad_text(rows)
        if IMAGE_EMBEDS in first:
            batch[IMAGE_EMBEDS] = self._stack(rows, IMAGE_EMBEDS).float()
        elif IMAGE_FEATURES in first:
            batch[IMAGE_FEATURES] = self._stack(rows, IMAGE_FEATURES).float()
        elif PIXELS in first:
            batch["pixel_values"] = self._normalise(self._stack(rows, PIXELS))
        # else: no image column, prepared for a model without a vision tower (the text-only baseline)
        if "label" in first:
            batch.update(self.labels(rows))
        if DATASET_INDEX in first:  # RGCL's trainer finds each example's mined neighbours by it
            batch[DATASET_INDEX] = torch.tensor([int(row[DATASET_INDEX]) for row in rows], dtype=torch.long)
        return batch

    def labels(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """See `collate_labels`."""
        return collate_labels(rows, self.num_labels)

    def pad_text(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """The rows' tokens (or, when blanking the text, the empty caption's) padded into a batch."""
        if self.blank_text:
            empty = list(self.empty_text_ids)
            captions = [{"input_ids": empty, "attention_mask": [1] * len(empty), "token_type_ids": [0] * len(empty)}]
            captions = captions * len(rows)
        else:
            captions = rows
        keys = [key for key in TEXT_INPUTS if key in captions[0]]
        longest = max(len(caption["input_ids"]) for caption in captions)
        length = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {}
        for key in keys:
            fill = self.pad_token_id if key == "input_ids" else 0
            padded = np.full((len(captions), length), fill, dtype=np.int64)
            for index, caption in enumerate(captions):
                values = caption[key]
                padded[index, : len(values)] = values
            batch[key] = torch.from_numpy(padded)
        return batch

    def _stack(self, rows: list[dict], key: str, blank: bool | None = None, blank_input=None) -> torch.Tensor:
        blank = self.blank_image if blank is None else blank
        blank_input = self.blank_image_input if blank_input is None else blank_input
        if blank:
            stacked = np.broadcast_to(blank_input, (len(rows), *blank_input.shape))
            return torch.from_numpy(np.ascontiguousarray(stacked))
        return torch.from_numpy(np.stack([np.asarray(row[key]) for row in rows]))

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.image_mean).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std).view(1, -1, 1, 1)
        return (pixels.float() * self.rescale_factor - mean) / std


@dataclass(frozen=True)
class VisionLanguageCollator:
    """A joint model's batches: the rows' images and captions through its processor (`MMFusionProcessor` wrapping
    the vision-language model's own), the call the predictor and the pipeline make, so training sees the prompts
    they build. Nothing is cached: the image tokens and pixel patches depend on each image's size.

    `blank_image` / `blank_text`: the modality ablation (every image replaced by `blank_image_input`, a PIL image of
    the ImageNet mean colour; every caption by the empty one)."""

    processor: Any
    num_labels: int | None = None
    blank_image: bool = False
    blank_text: bool = False
    blank_image_input: Any = None

    def ablated(self, blank_image: bool, blank_text: bool, blank_image_input=None, blank_text_input=None):
        if blank_image and blank_image_input is None and self.blank_image_input is None:
            raise ValueError("Blanking images needs the blank image (`blank_image_input`).")
        return replace(
            self,
            blank_image=blank_image,
            blank_text=blank_text,
            blank_image_input=blank_image_input if blank_image_input is not None else self.blank_image_input,
        )

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        images = [self.blank_image_input if self.blank_image else row["image"] for row in rows]
        texts = ["" if self.blank_text or row["text"] is None else row["text"] for row in rows]
        batch = dict(self.processor(images=images, text=texts, return_tensors="pt"))
        if "label" in rows[0]:
            batch.update(collate_labels(rows, self.num_labels))
        return batch


def collator_for(processor, *, num_labels: int | None = None, **kwargs):
    """The training collator for `processor`: a joint model's (`VisionLanguageCollator`) or `MMFusionCollator`."""
    if getattr(processor, "is_vision_language", False):
        return VisionLanguageCollator(processor, num_labels=num_labels)
    return MMFusionCollator.for_processor(processor, num_labels=num_labels, **kwargs)
