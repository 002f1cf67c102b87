"""Image-text examples -> model inputs, computed once and kept in the `datasets` cache.

The straightforward loop decodes and resizes every PNG, tokenizes every caption and runs the frozen vision tower on
every step of every epoch. Here each of those happens once per dataset:

- captions are tokenized once, unpadded (the collator pads each batch to its own longest caption);
- with a frozen vision tower, its feature maps are computed once (`image_features`, float32) — training then only
  runs the part that learns;
- with a trained vision tower, images are decoded and resized once to uint8 pixels (`pixels`, 4x smaller than
  floats); the collator normalises them on the fly.

Results are Arrow files in the `datasets` cache, memory-mapped rather than loaded into RAM. Their fingerprints combine
the source dataset's fingerprint (which changes when an image or caption file changes, see `mmfusion.data`) with a
hash of everything that shapes the output: the tower's weights, the image processor's settings, the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from datasets import Array3D, Dataset, DatasetDict, Features
from datasets.fingerprint import Hasher

from ..processing_mmfusion import MMFusionProcessor, to_rgb

IMAGE_FEATURES = "image_features"
PIXELS = "pixels"
LENGTH = "length"  # caption length in tokens, for the Trainer's length-grouped sampler
_PIPELINE_VERSION = "1"


def default_cache_dir() -> Path:
    """Where inputs of datasets without cache files (built in memory) are cached."""
    return Path(os.environ.get("MMFUSION_CACHE", Path.home() / ".cache" / "mmfusion")) / "inputs"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A hash of a module's weights and buffers (BatchNorm statistics included)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    """What decides the token ids: vocabulary, normalisation, splitting, special tokens.

    Not the serialised tokenizer as a whole: it also holds the truncation/padding state that the last call left.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return _settings_fingerprint(tokenizer.get_vocab())
    definition = json.loads(backend.to_str())
    definition.pop("truncation", None)
    definition.pop("padding", None)
    return _settings_fingerprint(definition)


def _map_cached(dataset: Dataset, function, *, fingerprint: str, cache_dir: Path | None, **map_kwargs) -> Dataset:
    """`Dataset.map` that always caches on disk: next to the dataset's own cache files, or in `cache_dir`."""
    cache_file_name = None
    if not dataset.cache_files:
        directory = Path(cache_dir or default_cache_dir())
        directory.mkdir(parents=True, exist_ok=True)
        cache_file_name = str(directory / f"{fingerprint}.arrow")
    return dataset.map(
        function, new_fingerprint=fingerprint, cache_file_name=cache_file_name, load_from_cache_file=True, **map_kwargs
    )


def tokenize_captions(
    dataset: Dataset, tokenizer, max_length: int, *, cache_dir: Path | None = None, num_proc: int | None = None
) -> Dataset:
    """Add `input_ids`, `attention_mask` (and `token_type_ids`) without padding, plus their `length`."""

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=max_length)
        encoded[LENGTH] = [len(ids) for ids in encoded["input_ids"]]
        return dict(encoded)

    fingerprint = Hasher.hash(
        ["tokenize", _PIPELINE_VERSION, dataset._fingerprint, _tokenizer_fingerprint(tokenizer), max_length]
    )
    return _map_cached(
        dataset,
        tokenize,
        fingerprint=fingerprint,
        cache_dir=cache_dir,
        batched=True,
        num_proc=num_proc,
        desc="Tokenizing captions",
    )


@torch.inference_mode()
def encode_images(
    dataset: Dataset,
    model,
    image_processor,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    cache_dir: Path | None = None,
) -> Dataset:
    """Replace `image` by the frozen vision tower's feature maps (`image_features`, float32 (C, H, W))."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    towers = model.base_model
    was_training = towers.vision_model.training
    towers.vision_model.eval()

    def features_of(images) -> np.ndarray:
        pixel_values = image_processor([to_rgb(image) for image in images], return_tensors="pt")["pixel_values"]
        # channels-last: oneDNN's fast convolution layout on CPU (about a quarter faster on resnet18), fine on GPU
        pixel_values = pixel_values.to(device).contiguous(memory_format=torch.channels_last)
        return model.get_image_features(pixel_values).float().cpu().numpy()

    feature_shape = _feature_map_shape(features_of, model.config.image_size)
    fingerprint = Hasher.hash(
        [
            "image-features",
            _PIPELINE_VERSION,
            dataset._fingerprint,
            weights_fingerprint(towers.vision_model),
            _settings_fingerprint(image_processor.to_dict()),
        ]
    )
    features = Features({**{k: v for k, v in dataset.features.items() if k != "image"}})
    features[IMAGE_FEATURES] = Array3D(shape=feature_shape, dtype="float32")
    try:
        return _map_cached(
            dataset,
            lambda batch: {IMAGE_FEATURES: features_of(batch["image"])},
            fingerprint=fingerprint,
            cache_dir=cache_dir,
            batched=True,
            batch_size=batch_size,
            remove_columns=["image"],
            features=features,
            desc="Encoding images with the frozen vision tower (once)",
        )
    finally:
        towers.vision_model.train(was_training)


def _feature_map_shape(features_of, image_size: int) -> tuple[int, int, int]:
    from PIL import Image

    sample = features_of([Image.new("RGB", (image_size, image_size))])[0]
    if sample.ndim != 3:
        raise ValueError(
            f"Feature caching stores (C, H, W) feature maps; this vision tower returns shape {sample.shape}."
        )
    return tuple(int(d) for d in sample.shape)


def resize_images(dataset: Dataset, image_processor, *, cache_dir: Path | None = None) -> Dataset:
    """Replace `image` by its resized uint8 pixels (`pixels`, (3, H, W)); normalisation is left to the collator."""

    def pixels_of(batch):
        resized = image_processor(
            [to_rgb(image) for image in batch["image"]], do_rescale=False, do_normalize=False, return_tensors="np"
        )["pixel_values"]
        return {PIXELS: np.clip(np.rint(resized), 0, 255).astype(np.uint8)}

    size = image_processor.size
    shape = (3, size["height"], size["width"])
    fingerprint = Hasher.hash(
        ["pixels", _PIPELINE_VERSION, dataset._fingerprint, _settings_fingerprint(image_processor.to_dict())]
    )
    features = Features({**{k: v for k, v in dataset.features.items() if k != "image"}})
    features[PIXELS] = Array3D(shape=shape, dtype="uint8")
    return _map_cached(
        dataset,
        pixels_of,
        fingerprint=fingerprint,
        cache_dir=cache_dir,
        batched=True,
        batch_size=64,
        remove_columns=["image"],
        features=features,
        desc="Decoding and resizing images (once)",
    )


def prepare_model_inputs(
    dataset: Dataset | DatasetDict,
    processor: MMFusionProcessor,
    model,
    *,
    max_length: int = 128,
    use_image_features: bool | None = None,
    feature_batch_size: int = 32,
    cache_dir: Path | None = None,
) -> Dataset | DatasetDict:
    """Tokenize captions and cache image features (frozen vision tower) or resized pixels, for one split or all.

    `use_image_features` defaults to `model.config.freeze_vision_encoder`: features of a tower that is trained would
    go stale after the first step.
    """
    if isinstance(dataset, DatasetDict):
        return DatasetDict(
            {
                name: prepare_model_inputs(
                    split,
                    processor,
                    model,
                    max_length=max_length,
                    use_image_features=use_image_features,
                    feature_batch_size=feature_batch_size,
                    cache_dir=cache_dir,
                )
                for name, split in dataset.items()
            }
        )
    if use_image_features is None:
        use_image_features = model.config.freeze_vision_encoder
    if use_image_features and not model.config.freeze_vision_encoder:
        raise ValueError("Precomputed image features need a frozen vision tower (freeze_vision_encoder=True).")
    dataset = tokenize_captions(dataset, processor.tokenizer, max_length, cache_dir=cache_dir)
    if use_image_features:
        dataset = encode_images(
            dataset, model, processor.image_processor, batch_size=feature_batch_size, cache_dir=cache_dir
        )
    else:
        dataset = resize_images(dataset, processor.image_processor, cache_dir=cache_dir)
    # dtype=None keeps the stored dtypes (uint8 pixels stay uint8); the numpy formatter's default widens every
    # integer array to int64, 8x the bytes per batch.
    return dataset.with_format("numpy", dtype=None)


__all__ = [
    "IMAGE_FEATURES",
    "LENGTH",
    "PIXELS",
    "encode_images",
    "prepare_model_inputs",
    "resize_images",
    "tokenize_captions",
    "weights_fingerprint",
]
