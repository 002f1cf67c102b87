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


# Tiny dual encoders saved like the Hub's CLIP / SigLIP checkpoints: model, tokenizer and image processor files.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's own normalisation, not ImageNet's
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_MAX_LENGTH = 77


def tiny_clip_tokenizer():
    """A CLIP BPE tokenizer over single letters (no merges): real CLIP special tokens and 77-token limit."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz,":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


# The vision tower of both tiny dual encoders: a 2-layer ViT over 4x4 patches of 32 px images.
TINY_VIT = dict(
    hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8
)


def tiny_clip_checkpoint(folder, seed: int = 0):
    """A random CLIPModel (32-px images, 8-px patches, projection_dim 16) with its processor files in `folder`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = tiny_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=TINY_VIT,
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=CLIP_MEAN, image_std=CLIP_STD
    ).save_pretrained(folder)
    return model


def tiny_siglip_checkpoint(folder, seed: int = 0):
    """A random SiglipModel (heads inside the towers, no projections) with a tokenizer and image processor."""
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tokenizer = tiny_tokenizer()  # SigLIP's own needs sentencepiece; the model does not care which one
    tokenizer.model_max_length = 16
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=TINY_VIT,
    )
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return model
