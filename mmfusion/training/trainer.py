"""The Trainer used by train.py: transformers' Trainer, keeping mmfusion's own model card on push_to_hub."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import Trainer

from ..ablation import ABLATIONS, blank_image
from .collator import MMFusionCollator
from .inputs import IMAGE_FEATURES


class MMFusionTrainer(Trainer):
    def create_model_card(self, *args, **kwargs):
        # train.py writes a full card (metrics, modality ablation, ethics) before pushing; the Trainer's generic
        # card would overwrite it.
        if not (Path(self.args.output_dir) / "README.md").exists():
            super().create_model_card(*args, **kwargs)

    def predict_probabilities(self, dataset, collator: MMFusionCollator | None = None) -> np.ndarray:
        """Softmax probabilities for every example of a prepared split (all processes must call this)."""
        original = self.data_collator
        if collator is not None:
            self.data_collator = collator
        try:
            logits = self.predict(dataset, metric_key_prefix="predict").predictions
        finally:
            self.data_collator = original
        logits = logits[0] if isinstance(logits, tuple) else logits
        return torch.softmax(torch.as_tensor(logits, dtype=torch.float32), dim=-1).numpy()

    def ablation_probabilities(self, dataset, processor) -> dict[str, np.ndarray]:
        """The same model scored with the image blanked, the caption emptied, and both (see mmfusion.ablation)."""
        collator: MMFusionCollator = self.data_collator
        blank_input = blank_image_input(self.model, processor, uses_features=IMAGE_FEATURES in dataset.column_names)
        return {
            name: self.predict_probabilities(dataset, collator.ablated(blank, empty, blank_input))
            for name, (blank, empty) in ABLATIONS.items()
            if blank or empty
        }


@torch.inference_mode()
def blank_image_input(model, processor, uses_features: bool) -> np.ndarray:
    """The blank image as the prepared dataset stores images: frozen-tower features or resized uint8 pixels."""
    size = model.config.image_size
    if uses_features:
        pixel_values = processor.image_processor(blank_image((size, size)), return_tensors="pt")["pixel_values"]
        device = next(model.parameters()).device
        return model.get_image_features(pixel_values.to(device))[0].float().cpu().numpy()
    resized = processor.image_processor(
        blank_image((size, size)), do_rescale=False, do_normalize=False, return_tensors="np"
    )["pixel_values"][0]
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
