"""`load_image_text_dataset`: the one entry point that turns any supported input into a `DatasetDict`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import datasets

from .demo import load_demo_dataset
from .generic import SUPPORTED_EXTENSIONS, load_image_text_files
from .hateful_memes import HATEFUL_MEMES_SPLITS, is_hateful_memes_folder, load_hateful_memes
from .in_memory import from_dataset

KINDS = ("auto", "demo", "hateful_memes", "files", "dataset")


def detect_kind(source: Any) -> str:
    """Which loader `load_image_text_dataset(source)` uses: `"demo"`, `"hateful_memes"`, `"files"` or `"dataset"`."""
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return "dataset"
    if isinstance(source, str) and source == "demo":
        return "demo"
    if isinstance(source, Mapping):
        return "files"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            if is_hateful_memes_folder(path):
                return "hateful_memes"
            raise ValueError(
                f"{path} is a folder but not in the Hateful Memes layout (img/ plus one of "
                f"{', '.join(s + '.jsonl' for s in HATEFUL_MEMES_SPLITS)}). Pass a .jsonl/.csv file instead."
            )
        if os.path.splitext(path)[1].lower() in SUPPORTED_EXTENSIONS:
            return "files"
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file or folder: {path}")
        raise ValueError(f"{path}: unsupported file type; expected one of {SUPPORTED_EXTENSIONS}")
    raise TypeError(f"cannot load image+text data from a {type(source).__name__}")


def load_image_text_dataset(source: Any, *, kind: str = "auto", **options) -> datasets.DatasetDict:
    """Load image+text classification data as a `DatasetDict` with columns `id`, `image`, `text`, `label`.

    `image` decodes to an RGB `PIL.Image` (EXIF rotation applied), `label` is a `ClassLabel` (-1 = unlabeled).

    Args:
        source:
            - `"demo"`: the synthetic demo dataset (`load_demo_dataset`; options `seed`, `root`, `cache_dir`);
            - a folder with `img/` and Hateful Memes split files (`load_hateful_memes`);
            - a `.jsonl` / `.csv` / `.tsv` file, or a dict `{split: file}` (`load_image_text_files`; options
              `image_column`, `text_column`, `label_column`, `id_column`, `class_names`);
            - a `datasets.Dataset` / `DatasetDict` (`from_dataset`; same column options, plus `split`, `base_dir`).
        kind (`str`, defaults to `"auto"`):
            Force a loader: one of `"demo"`, `"hateful_memes"`, `"files"`, `"dataset"`.
        **options:
            Passed to the loader. Common to all: `on_bad_rows` (`"error"` or `"skip"`), `report_path`,
            `max_image_pixels`, `return_report`; `cache_dir` for the file-based loaders.

    Raises:
        `BadRowError`: a bad row (missing/corrupt/oversized image, malformed line, missing field, unknown label)
            when `on_bad_rows="error"`.

    Example:

    ```python
    >>> from mmfusion.data import load_image_text_dataset
    >>> dataset = load_image_text_dataset("demo")
    >>> dataset = load_image_text_dataset("data/hateful_memes", on_bad_rows="skip")
    >>> dataset = load_image_text_dataset({"train": "train.csv", "validation": "val.csv"}, text_column="caption")
    ```
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        kind = detect_kind(source)
    if kind == "demo":
        options.pop("on_bad_rows", None)  # the demo data has no bad rows
        return load_demo_dataset(**options)
    if kind == "hateful_memes":
        return load_hateful_memes(source, **options)
    if kind == "files":
        return load_image_text_files(source, **options)
    return from_dataset(source, **options)
