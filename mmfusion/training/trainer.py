"""The Trainer used by train.py: transformers' Trainer, plus class probabilities and the modality ablation of a split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer

from ..decisions import is_multi_label
from ..evaluation.ablation import ABLATIONS, blank_image
from ..evaluation.predictions import Predictions, config_probabilities
from ..files import atomic_write_text
from .collator import MMFusionCollator, VisionLanguageCollator
from .inputs import IMAGE_EMBEDS, IMAGE_FEATURES, TEXT_EMBEDS, resized_uint8_pixels


class MMFusionTrainer(Trainer):
    """transformers' Trainer plus `fusion_learning_rate`: a learning rate of its own for the fresh layers (fusion
    and classifier), e.g. 10x the pretrained towers' `learning_rate` (None: one learning rate for all)."""

    def __init__(self, *args, fusion_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fusion_learning_rate = fusion_learning_rate

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.fusion_learning_rate is None:
            return optimizer
        model = model if model is not None else self.model
        # The model says which parameters belong to its towers (their projections included); the rest is fresh.
        base = model.base_model
        towers = base.tower_parameter_names(prefix="" if base is model else f"{model.base_model_prefix}.")
        fresh = {id(p) for name, p in model.named_parameters() if name not in towers}
        groups = []
        for group in optimizer.param_groups:  # the Trainer's decay / no-decay groups, each split towers / fresh
            for is_fresh in (False, True):
                params = [p for p in group["params"] if (id(p) in fresh) == is_fresh]
                if params:
                    lr = self.fusion_learning_rate if is_fresh else group["lr"]
                    groups.append({**group, "params": params, "lr": lr})
        optimizer.param_groups.clear()  # nothing has stepped yet: regroup the same parameters in place
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def create_model_card(self, *args, **kwargs):
        # train.py writes a full card (metrics, modality ablation, ethics) before pushing; the Trainer's generic
        # card would overwrite it.
        if not (Path(self.args.output_dir) / "README.md").exists():
            super().create_model_card(*args, **kwargs)

    def save_metrics(self, split, metrics, combined=True):
        """The Trainer's `<split>_results.json` (and the merged `all_results.json`), each written atomically."""
        if not self.is_world_process_zero():
            return
        output_dir = Path(self.args.output_dir)
        atomic_write_text(output_dir / f"{split}_results.json", json.dumps(metrics, indent=4, sort_keys=True))
        if combined:
            path = output_dir / "all_results.json"
            merged = json.loads(path.read_text()) if path.exists() else {}
            merged.update(metrics)
            atomic_write_text(path, json.dumps(merged, indent=4, sort_keys=True))

    def predict_logits(self, dataset, collator: MMFusionCollator | None = None) -> np.ndarray:
        """Logits for every example of a prepared split (all processes must call this)."""
        original = self.data_collator
        if collator is not None:
            self.data_collator = collator
        try:
            logits = self.predict(dataset, metric_key_prefix="predict").predictions
        finally:
            self.data_collator = original
        return np.asarray(logits[0] if isinstance(logits, tuple) else logits)

    def predict_probabilities(self, dataset, collator: MMFusionCollator | None = None) -> np.ndarray:
        """Class probabilities (the config's temperature applied) for every example of a prepared split (all
        processes must call this)."""
        return config_probabilities(self.predict_logits(dataset, collator), self.model.config)

    def predict_split(
        self, raw_split, prepared_split, name: str | None = None, logits=None, knn_scores=None
    ) -> Predictions:
        """The model's predictions on one split: `prepared_split` scored (or its `logits`, when already computed),
        `raw_split`'s ids, captions and labels; decided with the config's decision threshold. `knn_scores` (the
        split's, over the model's labelled memory): the config's prediction mode is applied."""
        logits = self.predict_logits(prepared_split) if logits is None else logits
        multi_label = is_multi_label(self.model.config)
        feature = raw_split.features["label"]
        return Predictions(
            ids=raw_split["id"],
            probabilities=config_probabilities(logits, self.model.config, knn_scores=knn_scores),
            head_probabilities=config_probabilities(logits, self.model.config) if knn_scores is not None else None,
            label_names=(feature.feature if multi_label else feature).names,
            true_labels=raw_split["label"],
            texts=raw_split["text"],
            split=name,
            threshold=getattr(self.model.config, "decision_threshold", None),
            logits=logits,
            multi_label=multi_label,
        )

    def ablation_probabilities(self, dataset, processor) -> dict[str, np.ndarray]:
        """The same model scored with the image blanked, the caption emptied, and both (see mmfusion.evaluation.ablation)."""
        collator: MMFusionCollator = self.data_collator
        if isinstance(collator, VisionLanguageCollator):  # raw images and captions, blanked before the processor
            size = self.model.config.image_size
            return {
                name: self.predict_probabilities(dataset, collator.ablated(blank, empty, blank_image((size, size))))
                for name, (blank, empty) in ABLATIONS.items()
                if blank or empty
            }
        columns = dataset.column_names
        blank_input = blank_image_input(
            self.model, processor, uses_features=IMAGE_FEATURES in columns, uses_embeddings=IMAGE_EMBEDS in columns
        )
        empty_input = empty_text_input(self.model, collator) if TEXT_EMBEDS in columns else None
        return {
            name: self.predict_probabilities(dataset, collator.ablated(blank, empty, blank_input, empty_input))
            for name, (blank, empty) in ABLATIONS.items()
            if blank or empty
        }


@torch.inference_mode()
def blank_image_input(model, processor, uses_features: bool, uses_embeddings: bool = False) -> np.ndarray:
    """The blank image as the prepared dataset stores images: frozen-tower features or embedding, or resized uint8
    pixels."""
    size = model.config.image_size
    if uses_features or uses_embeddings:
        pixel_values = processor.image_processor(blank_image((size, size)), return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(next(model.parameters()).device)
        if uses_embeddings:
            return model.image_embeddings(pixel_values=pixel_values)[0].float().cpu().numpy()
        return model.get_image_features(pixel_values).last_hidden_state[0].float().cpu().numpy()
    return resized_uint8_pixels(processor.image_processor, blank_image((size, size)))


@torch.inference_mode()
def empty_text_input(model, collator: MMFusionCollator) -> np.ndarray:
    """The empty caption as cached text embeddings store captions: its embedding, padded as the collator pads."""
    empty = list(collator.empty_text_ids)
    inputs = collator.pad_text([{"input_ids": empty, "attention_mask": [1] * len(empty)}])
    device = next(model.parameters()).device
    return model.text_embeddings(**{key: value.to(device) for key, value in inputs.items()})[0].float().cpu().numpy()
