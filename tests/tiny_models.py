"""Tiny towers, tokenizer and processor for tests: built in-process, never downloaded."""

from __future__ import annotations

from mmfusion import MMFusionConfig, MMFusionForClassification, MMFusionProcessor, default_image_processor
from mmfusion.training.presets import small_text_config, small_vision_config
from mmfusion.training.tokenization import train_wordpiece_tokenizer

IMAGE_SIZE = 32
CAPTIONS = [
    "a cat sits on the mat",
    "the dog barks at the mailman",
    "look at this sunset, breathtaking",
    "perfect solitude on a crowded beach",
    "its their character not their color that matters",
    "putting bows on your pet",
]


def tiny_tokenizer():
    return train_wordpiece_tokenizer(CAPTIONS * 4, vocab_size=120)


def tiny_text_config(vocab_size: int = 120, **overrides):
    values = dict(
        hidden_size=32, num_layers=2, num_attention_heads=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    values.update(overrides)
    return small_text_config(vocab_size, **values)


def tiny_vision_config(**overrides):
    # 3 stages at 32 px -> a 2x2 feature grid (4 image tokens)
    return small_vision_config(width=8, num_stages=3, **overrides)


def tiny_config(fusion: str = "early", **overrides) -> MMFusionConfig:
    values = dict(
        text_config=tiny_text_config(),
        vision_config=tiny_vision_config(),
        fusion=fusion,
        num_image_tokens=4,
        image_size=IMAGE_SIZE,
        fusion_hidden_size=16,
        fusion_num_heads=2,
        classifier_dropout=0.0,
    )
    values.update(overrides)
    return MMFusionConfig(**values)


def tiny_model(fusion: str = "early", **overrides) -> MMFusionForClassification:
    return MMFusionForClassification(tiny_config(fusion, **overrides))


def tiny_processor(tokenizer=None) -> MMFusionProcessor:
    return MMFusionProcessor(default_image_processor(IMAGE_SIZE), tokenizer or tiny_tokenizer())
