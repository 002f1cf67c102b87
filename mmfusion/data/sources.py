"""`load_image_text_dataset`: the one source dispatch (train.py, `mmfusion-data` and the predictor all call it)."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import datasets

from .demo import load_demo_dataset
from .files import ImageTextFiles, load_image_text_files, loader_options
from .hateful_memes import HATEFUL_MEMES_SPLITS, HatefulMemes, is_hateful_memes_folder, load_hateful_memes
from .in_memory import from_dataset
from .meme_datasets import LAYOUTS, MemeBenchmark, detect_layout, load_meme_dataset
from .options import DATASET_FORMATS
from .readers import SUPPORTED_EXTENSIONS

KINDS = DATASET_FORMATS  # "auto", or one of the loaders below
# `name` or `org/name`, as the Hub spells dataset repositories.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _load_hub_dataset(name: str, *, cache_dir: str | os.PathLike | None = None, **options):
    """A dataset from the Hugging Face Hub (`datasets.load_dataset(name)`), checked like any other source."""
    try:
        dataset = datasets.load_dataset(name, cache_dir=None if cache_dir is None else os.fspath(cache_dir))
    except Exception as err:  # offline, no such repository, no access...: say both things the name could have been
        raise FileNotFoundError(
            f"{name}: no such file or folder here, and it could not be loaded as a Hugging Face Hub dataset "
            f"({type(err).__name__}: {err})"
        ) from err
    return from_dataset(dataset, cache_dir=cache_dir, source_name=f"Hub dataset {name}", **options)


_LOADERS = {
    "demo": load_demo_dataset,
    "hateful_memes": load_hateful_memes,
    "files": load_image_text_files,
    "dataset": from_dataset,
    "hub": _load_hub_dataset,
    **{name: partial(load_meme_dataset, dataset_format=name) for name in LAYOUTS},
}
assert set(_LOADERS) | {"auto"} == set(KINDS)
_SOURCE_WORDS = {
    "demo": "the demo dataset",
    "hateful_memes": "a Hateful Memes folder (its fields are fixed: id, img, text, label)",
    "files": "JSONL/CSV files",
    "dataset": "a datasets object",
    "hub": "a Hub dataset",
    **{name: f"a {layout.title} folder" for name, layout in LAYOUTS.items()},
}


def _parameters(loader) -> dict[str, Any]:
    """`{option: default}` a loader takes (its source argument aside)."""
    if isinstance(loader, partial) and loader.func is load_meme_dataset:  # the layout is the dispatch's choice
        return {name: d for name, d in loader_options(MemeBenchmark).items() if name != "dataset_format"}
    if loader is load_hateful_memes:
        return loader_options(HatefulMemes)
    if loader is load_image_text_files:
        return loader_options(ImageTextFiles)
    if loader is _load_hub_dataset:  # its options go on to `from_dataset`
        return {name: d for name, d in _parameters(from_dataset).items() if name != "source_name"}
    parameters = list(inspect.signature(loader).parameters.values())
    if loader is not load_demo_dataset:
        parameters = parameters[1:]  # the source
    return {p.name: p.default for p in parameters}


def _option_defaults() -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for loader in _LOADERS.values():
        for name, default in _parameters(loader).items():
            defaults.setdefault(name, default)
    return defaults


def is_hub_name(source: Any) -> bool:
    """Whether `source` names a Hub dataset: a `name` or `org/name` string that is not a local path or data file."""
    if not isinstance(source, str) or source == "demo" or os.path.exists(source):
        return False
    return bool(_HUB_NAME.match(source)) and not source.lower().endswith(SUPPORTED_EXTENSIONS)


def detect_kind(source: Any) -> str:
    """Which loader `load_image_text_dataset(source)` uses: `"demo"`, `"hateful_memes"`, a meme benchmark's name
    (`"mami"`, `"harmeme"`, ...: `meme_datasets.LAYOUTS`, recognised from the files present), `"files"`,
    `"dataset"` or `"hub"`."""
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return "dataset"
    if isinstance(source, str) and source == "demo":
        return "demo"
    if isinstance(source, Mapping):
        return "files"
    if is_hub_name(source):
        return "hub"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            layout = detect_layout(path)  # by content first: a HarMeme folder may have an img/ too
            if layout is not None:
                return layout
            if is_hateful_memes_folder(path):
                return "hateful_memes"
            known = "; ".join(f"{layout.title}: {layout.files}" for layout in LAYOUTS.values())
            raise ValueError(
                f"{path} is a folder in none of the layouts mmfusion recognises: Hateful Memes (img/ plus one of "
                f"{', '.join(s + '.jsonl' for s in HATEFUL_MEMES_SPLITS)}); {known}. Pass a .jsonl/.csv file "
                "instead, or force a layout with dataset_format=..."
            )
        if os.path.splitext(path)[1].lower() in SUPPORTED_EXTENSIONS:
            return "files"
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such file or folder: {path}")
        raise ValueError(f"{path}: unsupported file type; expected one of {SUPPORTED_EXTENSIONS}")
    raise TypeError(f"cannot load image+text data from a {type(source).__name__}")


def load_image_text_dataset(
    source: Any = "demo",
    *,
    kind: str = "auto",
    dataset_format: str = "auto",
    train_file: str | os.PathLike | None = None,
    validation_file: str | os.PathLike | None = None,
    test_file: str | os.PathLike | None = None,
    **options,
):
    """Load image+text classification data as a `DatasetDict` with columns `id`, `image`, `text`, `label`.

    `image` decodes to an RGB `PIL.Image` (EXIF rotation applied), `label` is a `ClassLabel` (-1 = unlabeled).

    Args:
        source:
            - `"demo"`: the synthetic demo dataset (`load_demo_dataset`; options `seed`, `root`);
            - a folder with `img/` and Hateful Memes split files (`load_hateful_memes`);
            - a `.jsonl` / `.csv` / `.tsv` file, or a dict `{split: file}` (`load_image_text_files`);
            - a `datasets.Dataset` / `DatasetDict` (`from_dataset`; also `split`, `base_dir`);
            - a Hugging Face Hub dataset name, `name` or `org/name` (`datasets.load_dataset`, then `from_dataset`).
        kind, dataset_format (`str`, defaults to `"auto"`):
            Force a loader: one of `"demo"`, `"hateful_memes"`, a meme benchmark (`"mami"`, `"harmeme"`,
            `"memotion"`, `"multioff"`, `"mmhs150k"`, `"pridemm"`), `"files"`, `"dataset"`, `"hub"`
            (`dataset_format` is the loader option's name, `--dataset_format`).
        train_file, validation_file, test_file (`str`, *optional*):
            One file per split (`.jsonl`/`.csv`/`.tsv`); when any is given they are the source, as `{split: file}`.
        **options:
            The same names at every layer, passed through unchanged to the loader:
            `image_column`, `text_column`, `label_column`, `id_column`, `class_names` (column names and class
            order); `on_bad_rows` (`"error"` or `"skip"`); `max_image_pixels` (decompression-bomb guard);
            `allow_outside_images` (accept image paths leaving the dataset folder); `encoding` (of the split
            files); `cache_dir`; `report_path` (also write the `LoadReport` there); `return_report` (return
            `(dataset_dict, report)`); `task` (the label set of a meme benchmark, default its default task,
            named in the load report). An option a source does not use is accepted only at its default value, so
            that callers can always pass all of them.

    Raises:
        `BadRowError`: a bad row (missing/corrupt/oversized/outside image, malformed or undecodable line, missing
            field, unknown label, repeated id) when `on_bad_rows="error"`, or a problem of a whole file (a column
            that is not there).

    Example:

    ```python
    >>> from mmfusion.data import load_image_text_dataset
    >>> dataset = load_image_text_dataset("demo")
    >>> dataset = load_image_text_dataset("data/hateful_memes", on_bad_rows="skip")
    >>> dataset = load_image_text_dataset({"train": "train.csv", "validation": "val.csv"}, text_column="caption")
    >>> dataset, report = load_image_text_dataset("org/memes", id_column="meme_id", return_report=True)
    ```
    """
    files = {
        split: path
        for split, path in (("train", train_file), ("validation", validation_file), ("test", test_file))
        if path is not None and os.fspath(path)
    }
    if files:
        source = files
    elif isinstance(source, Mapping) and not isinstance(source, datasets.DatasetDict):  # a DatasetDict is a dict
        source = {split: path for split, path in source.items() if path is not None}
    if dataset_format != "auto":
        if kind not in ("auto", dataset_format):
            raise ValueError(f"kind={kind!r} and dataset_format={dataset_format!r} disagree")
        kind = dataset_format
    if kind not in KINDS:
        raise ValueError(f"dataset_format must be one of {KINDS}, got {kind!r}")
    if kind == "auto":
        kind = detect_kind(source)
    loader = _LOADERS[kind]
    accepted = _parameters(loader)
    defaults = _option_defaults()
    passed = {}
    for name, value in options.items():
        if name in accepted:
            passed[name] = value
        elif name not in defaults:
            raise TypeError(f"load_image_text_dataset() got an unknown option {name!r}")
        elif value != defaults[name]:
            raise TypeError(f"option {name}={value!r} does not apply to {_SOURCE_WORDS[kind]}")
    if kind == "demo":
        return loader(**passed)
    return loader(source, **passed)
