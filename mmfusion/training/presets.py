"""Small tower shapes for randomly initialised models: the demo run, tests and CPU benchmarks.

Real work starts from pretrained towers (`MMFusionForClassification.from_text_vision_pretrained`); these shapes
exist so that everything can run offline on a laptop CPU.
"""

from __future__ import annotations

from transformers import BertConfig, ResNetConfig


def small_text_config(vocab_size: int, hidden_size: int = 64, num_layers: int = 2, **overrides) -> BertConfig:
    """A BERT with `num_layers` layers of width `hidden_size` (64-wide heads, 4x feed-forward), for training from
    scratch.

    Two departures from BERT's pretraining defaults, both measured on the demo task (label = XOR of an image cue and
    a text cue, so no single modality carries any signal): BERT's 0.02 init keeps a small random encoder in the
    near-linear regime of its GELUs, where the image-text interaction has almost no gradient, and dropout noise
    drowns what little there is. With init 1/sqrt(width) and no dropout, early fusion leaves the chance-level plateau
    in the first epoch; with BERT's defaults it stays at chance for 20 epochs.
    """
    values = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // 64),
        intermediate_size=4 * hidden_size,
        max_position_embeddings=512,
        initializer_range=hidden_size**-0.5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return BertConfig(**values)


def small_vision_config(width: int = 16, num_stages: int = 4, **overrides) -> ResNetConfig:
    """A basic-block ResNet with one block per stage and channels doubling from `width` (resnet18-like layout)."""
    values = dict(
        embedding_size=width,
        hidden_sizes=[width * 2**stage for stage in range(num_stages)],
        depths=[1] * num_stages,
        layer_type="basic",
    )
    values.update(overrides)
    return ResNetConfig(**values)


def resnet18_config() -> ResNetConfig:
    """resnet18's shape (what the notebook and the benchmark reference use)."""
    return ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic")
