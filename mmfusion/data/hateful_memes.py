"""The Hateful Memes layout (Kiela et al., 2020), as released.

```
data_dir/
    img/01235.png, img/42953.png, ...
    train.jsonl
    dev_seen.jsonl, dev_unseen.jsonl, test_seen.jsonl, test_unseen.jsonl   # phase 2
    dev.jsonl, test.jsonl                                                  # phase 1
```

Each line is `{"id": 42953, "img": "img/42953.png", "label": 0, "text": "its their character not their color that
matters"}`. Every split file that exists becomes a split named after the file stem. Quirks of the real files that are
handled here:

- `img` is written `img/01235.png`, `/img/01235.png` or just `01235.png`: all resolve to `data_dir/img/01235.png`;
- ids are kept as strings: `"01235"` keeps its leading zero, an int `42953` becomes `"42953"`;
- test files come without labels: a split in which no line has a label gets label -1 everywhere (a labeled split
  with a line missing its label is a bad row);
- images must stay inside `data_dir` (an `img/` that is a symlink to another disk needs `allow_outside_images=True`).

Labels: 0 = `not_hateful`, 1 = `hateful`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial

import datasets

from .files import ImageTextBuilder, ImageTextConfig, build_dataset_dict, files_signature
from .rows import MISSING, RawRow, is_missing_label

HATEFUL_MEMES_CLASS_NAMES = ["not_hateful", "hateful"]
# Phase-2 names first, then the phase-1 names; this is also the order of the splits in the DatasetDict.
HATEFUL_MEMES_SPLITS = ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen", "dev", "test")


def find_split_files(data_dir: str | os.PathLike) -> dict[str, str]:
    """The known split files present in `data_dir`, as `{split name: path}`."""
    data_dir = os.fspath(data_dir)
    found = {}
    for split in HATEFUL_MEMES_SPLITS:
        path = os.path.join(data_dir, f"{split}.jsonl")
        if os.path.isfile(path):
            found[split] = path
    return found


def is_hateful_memes_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder with an `img/` subfolder and at least one known split file."""
    return os.path.isdir(os.path.join(path, "img")) and bool(find_split_files(path))


def resolve_image_path(data_dir: str, img: str) -> str:
    """Resolve the `img` field of a line (`img/x.png`, `/img/x.png` or `x.png`) to a path inside `data_dir`.

    Returns the first candidate that exists, or the most likely one (for the "not found" error).
    """
    if os.path.isabs(img) and os.path.isfile(img):
        return img  # a genuinely absolute path, e.g. in a hand-made file
    relative = img.replace("\\", "/").lstrip("/")  # "/img/x.png" is relative to the folder in the official files
    if "/" in relative:
        candidates = [os.path.join(data_dir, relative), os.path.join(data_dir, "img", os.path.basename(relative))]
    else:
        candidates = [os.path.join(data_dir, "img", relative), os.path.join(data_dir, relative)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return candidates[0]


class HatefulMemes(ImageTextBuilder):
    """`datasets` builder for a folder in the Hateful Memes layout (see the module docstring).

    Args:
        data_dir (`str` or `os.PathLike`):
            The folder holding `img/` and the `*.jsonl` split files.
        cache_dir (`str`, *optional*):
            `datasets` cache directory (default: the `datasets` default cache).
        on_bad_rows, max_image_pixels, allow_outside_images, encoding:
            See `ImageTextConfig`.
    """

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = ImageTextConfig

    def __init__(self, *args, data_dir: str | os.PathLike | None = None, **kwargs):
        if data_dir is None:
            raise ValueError("HatefulMemes needs `data_dir`, the folder with img/ and the *.jsonl split files.")
        data_dir = os.path.abspath(os.fspath(data_dir))
        if not find_split_files(data_dir):
            raise FileNotFoundError(
                f"No Hateful Memes split file ({', '.join(s + '.jsonl' for s in HATEFUL_MEMES_SPLITS)}) in {data_dir}"
            )
        self._parsed = {}
        if kwargs.get("input_signature") is None:
            kwargs["input_signature"] = self._signature(data_dir, kwargs.get("encoding", ImageTextConfig.encoding))
        super().__init__(*args, data_dir=data_dir, **kwargs)

    def _signature(self, data_dir: str, encoding: str) -> str:
        """Signature (path, size, mtime_ns) of the split files and of every image they reference."""
        paths = []
        for path in find_split_files(data_dir).values():
            paths.append(path)
            for parsed in self.parse(path, encoding=encoding)[1]:
                img = parsed.row.get("img") if parsed.row is not None else None
                if isinstance(img, str) and img:
                    paths.append(resolve_image_path(data_dir, img))
        return files_signature(paths)

    @property
    def class_names(self) -> list[str]:
        return list(HATEFUL_MEMES_CLASS_NAMES)

    @property
    def field_names(self) -> dict[str, str]:
        return {"image": "img"}

    def describe_source(self) -> str:
        return f"Hateful Memes folder {self.config.data_dir}"

    def _split_generators(self, dl_manager):
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"split": split, "path": path})
            for split, path in find_split_files(self.config.data_dir).items()
        ]

    def _read_split(self, path: str) -> tuple[bool, Iterator[RawRow]]:
        _, parsed_lines = self.parse(path, encoding=self.config.encoding)
        labeled = any(p.row is not None and not is_missing_label(p.row.get("label", MISSING)) for p in parsed_lines)
        data_dir = self.config.data_dir
        return labeled, self._raw_rows(path, parsed_lines, partial(resolve_image_path, data_dir), image_root=data_dir)


def load_hateful_memes(data_dir: str | os.PathLike, **options):
    """Load a Hateful Memes folder as a `DatasetDict` (`id`, `image`, `text`, `label`), cached by `datasets`.

    Args:
        data_dir (`str` or `os.PathLike`):
            Folder with `img/` and the split files (`train.jsonl`, `dev_seen.jsonl`, ...).
        **options:
            `cache_dir`, `on_bad_rows`, `report_path`, `max_image_pixels`, `allow_outside_images`, `encoding`,
            `return_report`: see `ImageTextConfig` and `load_image_text_dataset`.

    Returns:
        `datasets.DatasetDict` (or `(DatasetDict, LoadReport)`), one split per split file present.
    """
    return build_dataset_dict(HatefulMemes, data_dir=data_dir, **options)
