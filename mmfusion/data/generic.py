"""Generic image+text data: a JSONL or CSV file, or one file per split, with configurable column names.

```
caption,photo,sentiment
"what a day",imgs/1.jpg,positive
"meh",imgs/2.jpg,neutral
```

```python
load_image_text_files(
    {"train": "train.csv", "validation": "val.csv"},
    image_column="photo", text_column="caption", label_column="sentiment",
    class_names=["negative", "neutral", "positive"],
)
```

Rules:

- a single path gives one split, `train`; a dict `{split: path}` gives one split per file;
- `.jsonl` files hold one JSON object per line; `.csv` / `.tsv` files have a header row;
- image paths are relative to the folder of the file that mentions them (absolute paths are kept);
- the id is the `id_column` (default `"id"`) when the file has it, else the 0-based row number, as a string;
- labels are class names or integer indices. Class order: `class_names` when given, else the sorted unique label
  strings, or `"0", "1", ..., str(max)` when all labels are integers. A split whose file has no labels at all is
  unlabeled (label -1);
- bad rows (missing image, unreadable image, malformed line, missing field, unknown label) follow `on_bad_rows`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import datasets

from .builder import ImageTextBuilder, ImageTextConfig, build_dataset_dict
from .cache_signature import files_signature
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .readers import ParsedLine, read_csv, read_jsonl
from .rows import MISSING, RawRow, infer_class_names, is_missing_label

_DELIMITERS = {".csv": ",", ".tsv": "\t"}
SUPPORTED_EXTENSIONS = (".jsonl", ".csv", ".tsv")
DEFAULT_ID_COLUMN = "id"


def normalize_data_files(data_files: str | os.PathLike | Mapping[str, str | os.PathLike]) -> dict[str, str]:
    """`{split: absolute path}` from one path (split `train`) or a mapping; checks existence and extension."""
    if isinstance(data_files, (str, os.PathLike)):
        data_files = {"train": data_files}
    if not isinstance(data_files, Mapping) or not data_files:
        raise TypeError(f"data_files must be a path or a non-empty dict {{split: path}}, got {data_files!r}")
    normalized = {}
    for split, path in data_files.items():
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file for split {split!r} not found: {path}")
        if os.path.splitext(path)[1].lower() not in SUPPORTED_EXTENSIONS:
            raise ValueError(f"{path}: unsupported file type; expected one of {SUPPORTED_EXTENSIONS}")
        normalized[str(split)] = path
    return normalized


def read_table(path: str) -> tuple[list[str] | None, list[ParsedLine]]:
    """Parse a data file: `(columns, parsed_lines)`; `columns` is the CSV header, or `None` for JSONL."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".jsonl":
        return None, read_jsonl(path)
    return read_csv(path, delimiter=_DELIMITERS[extension])


def _columns_seen(header: list[str] | None, parsed_lines: list[ParsedLine]) -> set[str]:
    if header is not None:
        return set(header)
    return {key for parsed in parsed_lines if parsed.row is not None for key in parsed.row}


def resolve_relative_path(base_dir: str, value: str) -> str:
    """An image path from a data file, relative to that file's folder unless absolute."""
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value.strip())))


@dataclass
class ImageTextFilesConfig(ImageTextConfig):
    """Config of `ImageTextFiles`: the split files, the column names and the class order (see module docstring)."""

    split_files: dict[str, str] | None = None
    image_column: str = "image"
    text_column: str = "text"
    label_column: str = "label"
    id_column: str | None = DEFAULT_ID_COLUMN
    class_names: list[str] | None = None


class ImageTextFiles(ImageTextBuilder):
    """`datasets` builder for JSONL/CSV image+text files (see the module docstring).

    Args:
        split_files (`str`, `os.PathLike` or `dict[str, str]`):
            One data file (split `train`) or `{split: file}`.
        image_column, text_column, label_column, id_column, class_names:
            See `ImageTextFilesConfig`. When `class_names` is not given it is inferred from the labels of all files.
        cache_dir, on_bad_rows, max_image_pixels:
            See `ImageTextConfig`.
    """

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = ImageTextFilesConfig

    def __init__(self, *args, split_files=None, **kwargs):
        if split_files is None:
            raise ValueError("ImageTextFiles needs `split_files`: a data file or a dict {split: data file}.")
        split_files = normalize_data_files(split_files)
        tables = {split: read_table(path) for split, path in split_files.items()}
        columns = {
            name: kwargs.get(f"{name}_column", getattr(ImageTextFilesConfig, f"{name}_column"))
            for name in ("image", "text", "label", "id")
        }
        self._check_columns(split_files, tables, columns)
        if kwargs.get("class_names") is None:
            kwargs["class_names"] = infer_class_names(
                parsed.row.get(columns["label"], MISSING)
                for _, parsed_lines in tables.values()
                for parsed in parsed_lines
                if parsed.row is not None
            )
        else:
            kwargs["class_names"] = [str(name) for name in kwargs["class_names"]]
        if kwargs.get("input_signature") is None:
            kwargs["input_signature"] = self._signature(split_files, tables, columns["image"])
        kwargs.setdefault("dataset_name", "image_text_files")
        super().__init__(*args, split_files=split_files, **kwargs)

    @staticmethod
    def _check_columns(split_files, tables, columns) -> None:
        """Misnamed columns are a configuration error of the whole file, reported once (not as N bad rows)."""
        for split, (header, parsed_lines) in tables.items():
            if not any(parsed.row is not None for parsed in parsed_lines):
                continue  # empty (or entirely malformed) file: nothing to check, rows are reported one by one
            seen = _columns_seen(header, parsed_lines)
            required = [columns["image"], columns["text"]]
            if columns["id"] not in (None, DEFAULT_ID_COLUMN):
                required.append(columns["id"])  # an explicitly named id column must exist
            for name in required:
                if name not in seen:
                    raise ValueError(
                        f"{split_files[split]}: no column {name!r} (columns: {sorted(seen)}). "
                        "Set image_column / text_column / id_column to the names used in the file."
                    )

    @staticmethod
    def _signature(split_files, tables, image_column) -> str:
        paths = list(split_files.values())
        for split, (_, parsed_lines) in tables.items():
            base_dir = os.path.dirname(split_files[split])
            for parsed in parsed_lines:
                value = parsed.row.get(image_column) if parsed.row is not None else None
                if isinstance(value, str) and value.strip():
                    paths.append(resolve_relative_path(base_dir, value))
        return files_signature(paths)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    @property
    def field_names(self) -> dict[str, str]:
        config = self.config
        return {
            "id": config.id_column,
            "image": config.image_column,
            "text": config.text_column,
            "label": config.label_column,
        }

    def describe_source(self) -> str:
        files = self.config.split_files
        return f"files {', '.join(f'{split}={path}' for split, path in files.items())}"

    def _split_generators(self, dl_manager):
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"split": split, "path": path})
            for split, path in self.config.split_files.items()
        ]

    def _read_split(self, path: str) -> tuple[bool, Iterator[RawRow]]:
        _, parsed_lines = read_table(path)
        label_column = self.config.label_column
        labeled = any(
            parsed.row is not None and not is_missing_label(parsed.row.get(label_column, MISSING))
            for parsed in parsed_lines
        )
        id_column = self.config.id_column
        use_id_column = id_column is not None and id_column in _columns_seen(None, parsed_lines)
        return labeled, self._raw_rows(path, parsed_lines, use_id_column)

    def _raw_rows(self, path: str, parsed_lines: list[ParsedLine], use_id_column: bool) -> Iterator[RawRow]:
        config = self.config
        base_dir = os.path.dirname(path)
        for row_number, parsed in enumerate(parsed_lines):
            default_id = str(row_number)
            if parsed.problem is not None:
                row_id = parsed.guessed_id if use_id_column else default_id
                yield RawRow(file=path, line=parsed.line, id=row_id, problem=parsed.problem)
                continue
            row = parsed.row
            value = row.get(config.image_column, MISSING)
            problem = None
            if isinstance(value, str) and value.strip():
                image = resolve_relative_path(base_dir, value)
            elif value is MISSING or value is None or (isinstance(value, str) and not value.strip()):
                image = MISSING
            else:
                image, problem = MISSING, f"{config.image_column!r} must be a file path, got {value!r}"
            yield RawRow(
                file=path,
                line=parsed.line,
                id=row.get(config.id_column, MISSING) if use_id_column else default_id,
                image=image,
                text=row.get(config.text_column, MISSING),
                label=row.get(config.label_column, MISSING),
                problem=problem,
                image_field=value if isinstance(value, str) else None,
            )


def load_image_text_files(
    data_files: str | os.PathLike | Mapping[str, str | os.PathLike],
    *,
    image_column: str = "image",
    text_column: str = "text",
    label_column: str = "label",
    id_column: str | None = DEFAULT_ID_COLUMN,
    class_names: list[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    on_bad_rows: str = "error",
    report_path: str | os.PathLike | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    return_report: bool = False,
):
    """Load JSONL/CSV image+text files as a `DatasetDict` (`id`, `image`, `text`, `label`), cached by `datasets`.

    Args:
        data_files (`str`, `os.PathLike` or `dict[str, str]`):
            One `.jsonl`/`.csv`/`.tsv` file (split `train`) or `{split: file}`, e.g.
            `{"train": "a.csv", "validation": "b.csv"}`.
        image_column (`str`, defaults to `"image"`):
            Column with image paths, relative to the data file's folder.
        text_column (`str`, defaults to `"text"`):
            Column with the captions (may be empty).
        label_column (`str`, defaults to `"label"`):
            Column with labels (class names or integer indices). A file without labels gives an unlabeled split.
        id_column (`str`, *optional*, defaults to `"id"`):
            Column with example ids. When the file has no such column (or `id_column=None`), the 0-based row number
            is the id.
        class_names (`list[str]`, *optional*):
            Ordered class names. Default: sorted unique string labels, or `"0".."N-1"` for integer labels.
        cache_dir, on_bad_rows, report_path, max_image_pixels, return_report:
            See `load_hateful_memes`.

    Returns:
        `datasets.DatasetDict` (or `(DatasetDict, LoadReport)` with `return_report=True`).
    """
    builder = ImageTextFiles(
        split_files=data_files,
        image_column=image_column,
        text_column=text_column,
        label_column=label_column,
        id_column=id_column,
        class_names=class_names,
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
        on_bad_rows=on_bad_rows,
        max_image_pixels=max_image_pixels,
    )
    dataset_dict, report = build_dataset_dict(builder, report_path=report_path)
    return (dataset_dict, report) if return_report else dataset_dict
