"""Image-text examples -> model inputs, computed once and kept in the `datasets` cache.

The straightforward loop decodes and resizes every PNG, tokenizes every caption and runs the frozen vision tower on
every step of every epoch. Here each of those happens once per dataset:

- captions are tokenized once, unpadded (the collator pads each batch to its own longest caption);
- with a frozen vision tower, its feature maps are computed once (`image_features`, float32) — training then only
  runs the part that learns; for the fusions that read one vector per modality (`Fusion.reads_embeddings`) the
  image embeddings instead (`image_embeds`, float32 (D,));
- with a frozen text tower and such a fusion, the text embeddings too (`text_embeds`): with both towers frozen
  (CLIP + cross fusion, Hate-CLIPper's recipe) an epoch runs the fusion head alone;
- with a trained vision tower, images are decoded and resized once to uint8 pixels (`pixels`, 4x smaller than
  floats); the collator normalises them on the fly;
- for a model without a vision tower (the text-only baseline), no image is decoded at all.

Results are Arrow files in the `datasets` cache, memory-mapped rather than loaded into RAM. Their fingerprints combine
the source dataset's fingerprint (which changes when an image or caption file changes, see `mmfusion.data`) with a
hash of everything that shapes the output: the tower's weights, the image processor's settings, the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import Array3D, Dataset, DatasetDict, Features
from datasets.fingerprint import Hasher

from ..fusions import FUSIONS, fusion_names
from ..parallel import image_thread_pool
from ..processing_mmfusion import MMFusionProcessor, limit_text_length, to_rgb, to_uint8
from .collator import MMFusionCollator
from .columns import IMAGE_EMBEDS, IMAGE_FEATURES, LENGTH, PIXELS, TEXT_EMBEDS, TEXT_INPUTS

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


def _map_cached(
    dataset: Dataset, function, *, fingerprint: str, cache_dir: Path | None, state=None, **map_kwargs
) -> Dataset:
    """`Dataset.map` that always caches on disk: next to the dataset's own cache files, or in `cache_dir`.

    With `state` (accelerate's `PartialState` of a launch with several processes, `launcher_state()`), each process
    maps one share of the rows (`_map_sharded`); every process must then make the same call."""
    if state is not None and state.num_processes > 1 and len(dataset):
        return _map_sharded(dataset, function, fingerprint=fingerprint, cache_dir=cache_dir, state=state, **map_kwargs)
    return dataset.map(
        function,
        new_fingerprint=fingerprint,
        cache_file_name=_cache_file_name(dataset, fingerprint, cache_dir),
        load_from_cache_file=True,
        **map_kwargs,
    )


def _cache_file_name(dataset: Dataset, fingerprint: str, cache_dir: Path | None) -> str | None:
    """None (`datasets` puts it next to the dataset's cache files), or `cache_dir/<fingerprint>.arrow` for a dataset
    without cache files (built in memory)."""
    if dataset.cache_files:
        return None
    directory = Path(cache_dir or default_cache_dir())
    directory.mkdir(parents=True, exist_ok=True)
    return str(directory / f"{fingerprint}.arrow")


def _map_sharded(dataset: Dataset, function, *, fingerprint: str, cache_dir: Path | None, state, **map_kwargs):
    """`_map_cached` spread over the processes of a launch: process r maps the r-th contiguous share of the rows into
    its own cache file, then, after a barrier, every process reads all shares (cache hits) and concatenates them in
    process order. Shares are whole batches (`batch_aligned_shares`), so every batch is the batch one process would
    have run (same rows, same padding) and the result is the one-process result row for row, value for value. It
    carries the one-process fingerprint, so the maps after it are keyed as in a one-process run.

    Each share is cached under its own fingerprint (the whole map's and its rows), next to the dataset's cache files
    or in `cache_dir`: processes on several machines need that folder on a shared disk to read each other's shares
    (a share a process does not find, it computes itself)."""
    from accelerate.utils import gather_object

    from ..inference.sharding import batch_aligned_shares

    # One decision for all: a one-process run's cache is used as it is; and processes that would cache different
    # things (other data or tower weights per process, e.g. initialised without a common seed) stop here.
    whole = _cache_file_name(dataset, fingerprint, cache_dir) or dataset._get_cache_file_path(fingerprint)
    seen = gather_object([(fingerprint, os.path.exists(whole))])
    if len({seen_fingerprint for seen_fingerprint, _ in seen}) > 1:
        raise RuntimeError(
            f"The {state.num_processes} processes disagree on what to cache ({map_kwargs.get('desc', 'map')}): "
            "their datasets or frozen tower weights differ. Load the same data and seed every process alike."
        )
    if all(found for _, found in seen):
        return _map_cached(dataset, function, fingerprint=fingerprint, cache_dir=cache_dir, **map_kwargs)

    batch_size = map_kwargs.get("batch_size", 1000) if map_kwargs.get("batched") else 1
    shares = batch_aligned_shares(len(dataset), batch_size, state.num_processes)

    def share(rows: range) -> Dataset:
        return _map_cached(
            dataset.select(rows),
            function,
            fingerprint=Hasher.hash([fingerprint, "rows", rows.start, rows.stop]),
            cache_dir=cache_dir,
            **map_kwargs,
        )

    if len(shares[state.process_index]):
        share(shares[state.process_index])
    state.wait_for_everyone()
    merged = datasets.concatenate_datasets([share(rows) for rows in shares if len(rows)])
    merged._fingerprint = fingerprint  # what the one-process map's result carries (datasets has no public setter)
    return merged


def tokenize_captions(
    dataset: Dataset,
    processor: MMFusionProcessor,
    max_length: int | None = None,
    *,
    cache_dir: Path | None = None,
    num_proc: int | None = None,
    state=None,
) -> Dataset:
    """Add `input_ids`, `attention_mask` (and `token_type_ids`) without padding, plus their `length`.

    Captions go through the processor's own text path, the call the predictor, the pipeline and the ONNX export
    make, so training truncates them where every model served from the saved processor will: at the processor's
    limit (`limit_text_length`). `max_length`, when given, lowers that limit first (never past the tokenizer's own:
    CLIP's 77, its text tower has no position beyond), so that a processor saved after training carries it."""
    limit = limit_text_length(processor, max_length)

    def tokenize(batch):
        encoded = processor(text=batch["text"], padding=False, return_tensors=None)
        encoded[LENGTH] = [len(ids) for ids in encoded["input_ids"]]
        return dict(encoded)

    fingerprint = Hasher.hash(
        [
            "tokenize-by-processor",  # not "tokenize": entries written by the bare tokenizer call are not reused
            _PIPELINE_VERSION,
            dataset._fingerprint,
            _tokenizer_fingerprint(processor.tokenizer),
            limit,
        ]
    )
    return _map_cached(
        dataset,
        tokenize,
        fingerprint=fingerprint,
        cache_dir=cache_dir,
        batched=True,
        num_proc=num_proc,
        state=state,
        desc="Tokenizing captions",
    )


def _map_images(
    dataset: Dataset,
    per_image,
    per_batch,
    *,
    column: str,
    shape: tuple[int, ...],
    dtype: str,
    fingerprint: str,
    batch_size: int,
    cache_dir: Path | None,
    desc: str,
    state=None,
) -> Dataset:
    """Replace `image` by `column`: `per_batch(stack of per_image(image) for the batch)`, cached under `fingerprint`.

    `Dataset.map` would decode each batch's images one after another in the main thread; here `datasets`' own
    decoding and `per_image` (resizing) run in threads (`mmfusion.parallel`), on every core. `per_batch` (the vision
    tower, say) runs in the calling thread.
    """
    image_feature = dataset.features["image"]
    if not isinstance(image_feature, datasets.Image):
        raise TypeError(f"the 'image' column must be a datasets.Image feature, got {image_feature!r}")
    undecoded = dataset.cast_column("image", datasets.Image(decode=False))  # paths/bytes: decoded in the threads
    features = Features({name: value for name, value in dataset.features.items() if name != "image"})
    if len(shape) == 3:
        features[column] = Array3D(shape=shape, dtype=dtype)
    else:  # one vector per image (embeddings)
        features[column] = datasets.List(datasets.Value(dtype), length=shape[0])

    def transform(batch, pool):
        arrays = pool.map(lambda value: per_image(image_feature.decode_example(value)), batch["image"])
        return {column: per_batch(np.stack(list(arrays)))}

    with image_thread_pool() as pool:
        return _map_cached(
            undecoded,
            partial(transform, pool=pool),
            fingerprint=fingerprint,
            cache_dir=cache_dir,
            batched=True,
            batch_size=batch_size,
            remove_columns=["image"],
            features=features,
            desc=desc,
            state=state,
        )


def training_autocast_dtype(training_args) -> torch.dtype | None:
    """The autocast dtype the Trainer computes in for these `TrainingArguments` (`--bf16`, `--fp16`), else None."""
    if getattr(training_args, "bf16", False):
        return torch.bfloat16
    if getattr(training_args, "fp16", False):
        return torch.float16
    return None


def encode_images(
    dataset: Dataset,
    model,
    image_processor,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    tower_fingerprint: str | None = None,
    cache_dir: Path | None = None,
    state=None,
) -> Dataset:
    """Replace `image` by the frozen vision tower's feature maps (`image_features`, float32 (C, H, W)), or for a
    fusion that reads embeddings, by its image embeddings (`image_embeds`, float32 (D,), `model.image_embeddings`).

    The tower runs on `device` (default: where it is). With `autocast_dtype` (`torch.bfloat16`/`torch.float16`) it
    runs under `torch.autocast`, as the Trainer runs the uncached forward with `--bf16`/`--fp16`, so the cached
    features are what that forward would compute (stored as float32); the dtype is part of the cache key.
    `tower_fingerprint` is `weights_fingerprint(vision tower)`, when the caller has it already.
    """
    towers = model.base_model
    home = next(towers.vision_model.parameters()).device
    device = torch.device(device) if device is not None else home
    embeddings = FUSIONS[model.config.fusion].reads_embeddings
    tower = _tower_with_projection(towers.vision_model, towers.visual_projection)
    fingerprint = Hasher.hash(
        [
            "image-embeddings" if embeddings else "image-features",
            _PIPELINE_VERSION,
            dataset._fingerprint,
            tower_fingerprint or weights_fingerprint(tower),
            _settings_fingerprint(image_processor.to_dict()),
            str(autocast_dtype),
        ]
    )

    def pixel_values_of(image) -> np.ndarray:
        return image_processor(to_rgb(image), return_tensors="np")["pixel_values"][0]

    def features_of(pixel_values: np.ndarray) -> np.ndarray:
        pixel_values = torch.from_numpy(pixel_values).to(device).contiguous(memory_format=torch.channels_last)
        with _tower_forward(device, autocast_dtype):
            if embeddings:
                features = model.image_embeddings(pixel_values=pixel_values)
            else:
                features = model.get_image_features(pixel_values).last_hidden_state
        return features.float().cpu().numpy()

    was_training = tower.training
    try:
        # Only the tower visits `device` (e.g. the GPU, before the Trainer places the model): where the model lives
        # stays the caller's decision (or the Trainer's, FSDP's, DeepSpeed's). Channels-last weights and inputs are
        # oneDNN's fast convolution layout on CPU (inputs alone: it reorders the weights on every call), fine on GPU.
        tower.to(device, memory_format=torch.channels_last).eval()
        return _map_images(
            dataset,
            pixel_values_of,
            features_of,
            column=IMAGE_EMBEDS if embeddings else IMAGE_FEATURES,
            shape=_sample_shape(features_of, pixel_values_of, 1 if embeddings else 3),
            dtype="float32",
            fingerprint=fingerprint,
            batch_size=batch_size,
            cache_dir=cache_dir,
            desc=f"Encoding images with the frozen vision tower (once{', embeddings' if embeddings else ''})",
            state=state,
        )
    finally:
        tower.to(home, memory_format=torch.contiguous_format).train(was_training)


@contextmanager
def _tower_forward(device: torch.device, autocast_dtype: torch.dtype | None):
    """How the frozen towers run while caching: without autograd, under the Trainer's autocast dtype.

    Only the forward runs under `torch.inference_mode()`, never the tower's moves to and from `device`: a weight or
    buffer copied inside it becomes an inference tensor, which `load_state_dict` cannot later write into outside it
    (the Trainer's best-model reload under FSDP on a GPU failed so on every BatchNorm statistic)."""
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        yield


def _tower_with_projection(tower: torch.nn.Module, projection: torch.nn.Module | None) -> torch.nn.Module:
    """The tower and its projection into a dual encoder's joint space, as one module (moved, hashed together)."""
    return tower if projection is None else torch.nn.ModuleList([tower, projection])


def _sample_shape(features_of, pixel_values_of, ndim: int) -> tuple[int, ...]:
    from PIL import Image

    blank = pixel_values_of(Image.new("RGB", (64, 64)))
    sample = features_of(blank[None])[0]
    if sample.ndim != ndim:
        raise ValueError(
            f"Feature caching stores (C, H, W) feature maps; this vision tower returns shape {sample.shape}: "
            f"cache it with a fusion that reads embeddings ({', '.join(fusion_names(reads_embeddings=True))}), or "
            "train on pixels "
            "(--cache_image_features false)."
        )
    return tuple(int(d) for d in sample.shape)


def encode_texts(
    dataset: Dataset,
    model,
    pad_token_id: int,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    tower_fingerprint: str | None = None,
    cache_dir: Path | None = None,
    state=None,
) -> Dataset:
    """Add the frozen text tower's embedding of every tokenized caption (`text_embeds`, float32 (D,),
    `model.text_embeddings`), for a fusion that reads embeddings. Tokens stay (for `length` and the ablation).

    Each batch is padded by the training collator's own padding, so a tower that reads a fixed position (SigLIP's
    last) sees what it would see uncached; `device` and `autocast_dtype` as in `encode_images`.
    """
    towers = model.base_model
    tower = _tower_with_projection(towers.text_model, towers.text_projection)
    home = next(tower.parameters()).device
    device = torch.device(device) if device is not None else home
    fingerprint = Hasher.hash(
        [
            "text-embeddings",
            _PIPELINE_VERSION,
            dataset._fingerprint,
            tower_fingerprint or weights_fingerprint(tower),
            model.config.text_pooling,  # same tower, other pooling: other embeddings
            pad_token_id,
            str(autocast_dtype),
        ]
    )
    pad = MMFusionCollator(pad_token_id=pad_token_id).pad_text
    text_columns = [name for name in TEXT_INPUTS if name in dataset.column_names]

    def embed(batch):
        rows = [dict(zip(text_columns, values)) for values in zip(*(batch[name] for name in text_columns))]
        inputs = {name: tensor.to(device) for name, tensor in pad(rows).items()}
        with _tower_forward(device, autocast_dtype):
            embeds = model.text_embeddings(**inputs)
        return {TEXT_EMBEDS: embeds.float().cpu().numpy()}

    was_training = tower.training
    try:
        tower.to(device).eval()
        return _map_cached(
            dataset,
            embed,
            fingerprint=fingerprint,
            cache_dir=cache_dir,
            batched=True,
            batch_size=batch_size,
            state=state,
            desc="Encoding captions with the frozen text tower (once)",
        )
    finally:
        tower.to(home).train(was_training)


def resized_uint8_pixels(image_processor, image) -> np.ndarray:
    """`image` resized by `image_processor` but not rescaled or normalised: (3, H, W) uint8, what the cache stores."""
    resized = image_processor(to_rgb(image), do_rescale=False, do_normalize=False, return_tensors="np")
    return to_uint8(resized["pixel_values"][0])


def resize_images(dataset: Dataset, image_processor, *, cache_dir: Path | None = None, state=None) -> Dataset:
    """Replace `image` by its resized uint8 pixels (`pixels`, (3, H, W)); normalisation is left to the collator."""

    size = image_processor.size
    return _map_images(
        dataset,
        partial(resized_uint8_pixels, image_processor),
        lambda pixels: pixels,
        column=PIXELS,
        shape=(3, size["height"], size["width"]),
        dtype="uint8",
        fingerprint=Hasher.hash(
            ["pixels", _PIPELINE_VERSION, dataset._fingerprint, _settings_fingerprint(image_processor.to_dict())]
        ),
        batch_size=64,
        cache_dir=cache_dir,
        desc="Decoding and resizing images (once)",
        state=state,
    )


def prepare_model_inputs(
    dataset: Dataset | DatasetDict,
    processor: MMFusionProcessor,
    model,
    *,
    max_length: int = 128,
    use_image_features: bool | None = None,
    use_text_embeddings: bool | None = None,
    feature_batch_size: int = 32,
    device: torch.device | str | None = None,
    autocast_dtype: torch.dtype | None = None,
    cache_dir: Path | None = None,
    state=None,
) -> Dataset | DatasetDict:
    """Tokenize captions and cache image features (frozen vision tower) or resized pixels, for one split or all.

    `use_image_features` defaults to `model.config.freeze_vision_encoder`: features of a tower that is trained would
    go stale after the first step. Features are computed on `device` (default: the tower's) and in the precision
    training runs in, `autocast_dtype` (`training_autocast_dtype(training_args)`); see `encode_images`.
    `use_text_embeddings` (default: a frozen text tower and a fusion that reads embeddings) adds the text tower's
    embeddings (`encode_texts`); the collator then passes `text_embeds` instead of the tokens.

    Under a launcher with several processes, pass `state=launcher_state()` (`mmfusion.inference.sharding`) from
    every process: each computes one share of every map on its own device (`device`, default `state.device`) and
    all read the merged result, which equals the one-process result row for row (see `_map_sharded`).
    """
    if FUSIONS[model.config.fusion].joint_encoder:
        # A joint model's processor runs per batch (`VisionLanguageCollator`): its image tokens and pixel patches
        # depend on each image's size, and the whole model reads them, so there is no frozen tower output to keep.
        return dataset
    reads_embeddings = FUSIONS[model.config.fusion].reads_embeddings
    if use_image_features is None:
        use_image_features = model.config.freeze_vision_encoder
    if use_image_features and not model.config.freeze_vision_encoder:
        raise ValueError("Precomputed image features need a frozen vision tower (freeze_vision_encoder=True).")
    if use_text_embeddings is None:
        use_text_embeddings = model.config.freeze_text_encoder and reads_embeddings
    if use_text_embeddings and not (model.config.freeze_text_encoder and reads_embeddings):
        raise ValueError(
            "Precomputed text embeddings need a frozen text tower (freeze_text_encoder=True) and a fusion that "
            f"reads embeddings ({', '.join(fusion_names(reads_embeddings=True))})."
        )
    # A unimodal baseline has no tower for the other modality: nothing to encode (or decode) for it.
    needs_image = FUSIONS[model.config.fusion].needs_image
    use_image_features = use_image_features and needs_image
    use_text_embeddings = use_text_embeddings and FUSIONS[model.config.fusion].needs_text
    if device is None and state is not None and state.num_processes > 1:
        device = state.device  # each process's tower on its own accelerator (its GPU under a GPU launch)
    splits = dataset if isinstance(dataset, DatasetDict) else {None: dataset}
    # hashed once for all splits: it reads every weight of the tower
    towers = model.base_model
    tower_fingerprint = None
    if use_image_features:
        tower_fingerprint = weights_fingerprint(_tower_with_projection(towers.vision_model, towers.visual_projection))
    text_fingerprint = None
    if use_text_embeddings:
        text_fingerprint = weights_fingerprint(_tower_with_projection(towers.text_model, towers.text_projection))

    prepared = {}
    for name, split in splits.items():
        split = tokenize_captions(split, processor, max_length, cache_dir=cache_dir, state=state)
        if use_text_embeddings:
            split = encode_texts(
                split,
                model,
                processor.tokenizer.pad_token_id,
                device=device,
                autocast_dtype=autocast_dtype,
                tower_fingerprint=text_fingerprint,
                cache_dir=cache_dir,
                state=state,
            )
        if use_image_features:
            split = encode_images(
                split,
                model,
                processor.image_processor,
                batch_size=feature_batch_size,
                device=device,
                autocast_dtype=autocast_dtype,
                tower_fingerprint=tower_fingerprint,
                cache_dir=cache_dir,
                state=state,
            )
        elif needs_image:
            split = resize_images(split, processor.image_processor, cache_dir=cache_dir, state=state)
        else:  # no vision tower: drop the images, or every row read would decode one for nothing
            split = split.remove_columns("image")
        # dtype=None keeps the stored dtypes (uint8 pixels stay uint8); the numpy formatter's default widens every
        # integer array to int64, 8x the bytes per batch.
        prepared[name] = split.with_format("numpy", dtype=None)
    return DatasetDict(prepared) if isinstance(dataset, DatasetDict) else prepared[None]


__all__ = [
    "IMAGE_EMBEDS",
    "IMAGE_FEATURES",
    "LENGTH",
    "PIXELS",
    "TEXT_EMBEDS",
    "encode_images",
    "encode_texts",
    "prepare_model_inputs",
    "resize_images",
    "tokenize_captions",
    "training_autocast_dtype",
    "weights_fingerprint",
]
