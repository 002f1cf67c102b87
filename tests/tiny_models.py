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


def train_patch_demo_model(dataset, seed: int = 0, max_steps: int = 1500, target_accuracy: float = 0.98):
    """A tiny early-fusion model trained in-process on the demo with a spatial image cue
    (`load_demo_dataset(image_cue="patch")`), for checking that explanations point at the cues; 300 steps take about
    30 s on one thread.

    Recipe, and why (`tests/conftest.py`'s `trained_demo_checkpoint` is the colour demo's):
    - 64 px images and a trainable 2-stage ResNet (width 8): an 8x8 last feature map, fine enough for Grad-CAM to
      point at a 14-20 px patch. A frozen random CNN read through one pooled token reached only ~85 % on the
      patch's colour.
    - `text_pooling="mean"`: BERT's pooler over [CLS] starts almost constant across inputs and training sat on a
      plateau (3000 steps, chance accuracy); the mean over the caption's tokens carries the keyword from the start.
    - Auxiliary heads, thrown away: the caption's cue (`demo_cues`, label-smoothed, as in `trained_demo_checkpoint`),
      and whether a warm and whether a cold patch is present, also on the same pictures with the patch painted over
      (so the tower learns a detector for each colour, not one colour as the other's absence, which Grad-CAM,
      positive evidence only, could not show).
    - Stops once validation accuracy reaches `target_accuracy` (checked every 50 steps), at most `max_steps`. The
      faithfulness test and benchmark train a fixed 300 steps (`target_accuracy` above 1): stopping at the first
      98 % left less localised heat maps.

    Returns `(model, processor, validation_accuracy)`, the model in eval mode.
    """
    import torch
    import torch.nn.functional as F

    from mmfusion.data import demo_cue_box, demo_cues
    from mmfusion.inference.faithfulness import box_mask, delete_pixels

    image_size, max_length, hidden = 64, 16, 32
    train, validation = dataset["train"][:], dataset["validation"][:]
    cues = torch.tensor([demo_cues(image, text) for image, text in zip(train["image"], train["text"])]).long()
    tokenizer = train_wordpiece_tokenizer(train["text"], vocab_size=200, model_max_length=max_length)
    processor = MMFusionProcessor(default_image_processor(image_size), tokenizer)
    config = tiny_config(
        "early",
        text_config=dict(
            model_type="bert",
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=2 * hidden,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_position_embeddings=32,
        ),
        vision_config=small_vision_config(width=8, num_stages=2),
        image_size=image_size,
        num_image_tokens=1,
        text_pooling="mean",
        id2label=dict(enumerate(dataset["train"].features["label"].names)),
    )

    def encode(split):
        inputs = processor(images=split["image"], text=split["text"], padding="max_length", max_length=max_length)
        return dict(inputs), torch.tensor(split["label"])

    # The same pictures with the patch painted over in the image's median colour: no cue at all. The image-cue heads
    # must tell "warm patch" and "cold patch" each from "no patch", so the vision tower learns a detector for each.
    blank = [delete_pixels(image, box_mask(demo_cue_box(image), *image.size)) for image in train["image"]]
    presence = torch.stack([1 - cues[:, 0], cues[:, 0]], dim=1).float()  # [cold present, warm present]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to thread synchronisation
    try:
        torch.manual_seed(seed)
        model = MMFusionForClassification(config)
        (train_inputs, train_labels), (val_inputs, val_labels) = encode(train), encode(validation)
        blank_pixels = processor.image_processor(blank, return_tensors="pt")["pixel_values"]
        cue_heads = torch.nn.Linear(hidden, 4)  # [cold, warm patch present (2), caption cue logits (2)]
        optimizer = torch.optim.AdamW([*model.parameters(), *cue_heads.parameters()], lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        validation_accuracy = 0.0
        for step in range(1, max_steps + 1):
            model.train()
            batch = torch.randint(0, len(train_labels), (32,), generator=generator)
            inputs = {name: tensor[batch] for name, tensor in train_inputs.items()}
            half = batch[:16]
            inputs = {name: torch.cat([tensor, tensor[:16]]) for name, tensor in inputs.items()}
            inputs["pixel_values"][32:] = blank_pixels[half]
            outputs = model.mmfusion(**inputs)
            pooled = outputs.pooler_output
            logits, cue_logits = model.classifier(pooled[:32]), cue_heads(pooled)
            image_targets = torch.cat([presence[batch], torch.zeros(16, 2)])
            loss = (
                F.cross_entropy(logits, train_labels[batch])
                + F.binary_cross_entropy_with_logits(cue_logits[:, :2], 0.1 + 0.8 * image_targets)
                + 3.0 * F.cross_entropy(cue_logits[:32, 2:], cues[batch, 1], label_smoothing=0.2)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 50 == 0:
                model.eval()
                with torch.no_grad():
                    predicted = model(**val_inputs).logits.argmax(-1)
                validation_accuracy = (predicted == val_labels).float().mean().item()
                if validation_accuracy >= target_accuracy:
                    break
    finally:
        torch.set_num_threads(threads)
    return model.eval(), processor, validation_accuracy
