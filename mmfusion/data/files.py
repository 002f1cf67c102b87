"""File-based sources: the `datasets` builder they share, and JSONL/CSV/TSV files with configurable column names.

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
- `.jsonl` files hold one JSON object per line; `.csv` / `.tsv` files have a header row (see `readers`); files are
  read as `encoding` (UTF-8 by default); undecodable bytes make their row bad;
- image paths are relative to the folder of the file that mentions them, and must stay inside it (absolute paths,
  `../` and symlinks pointing out are refused unless `allow_outside_images=True`);
- the id is the `id_column` (default `"id"`) when the file has it, else the 0-based row number, as a string; ids are
  unique within a split;
- labels are class names or integer indices. Class order: `class_names` when given, else the sorted unique label
  strings, or `"0", "1", ..., str(max)` when all labels are integers. A split whose file has no labels at all is
  unlabeled (label -1); a `label_column` other than `"label"` must exist in at least one file (a typo is an error);
- bad rows (missing image, unreadable image, malformed line, missing field, unknown label, repeated id) follow
  `on_bad_rows`.

The builders are ordinary `datasets.GeneratorBasedBuilder`s, cached by `datasets` as usual:

```python
builder = ImageTextFiles(split_files="posts.jsonl", cache_dir="...")
builder.download_and_prepare()  # checks every row and image once; a second call is served from the cache
dataset_dict = builder.as_dataset()
```

What the shared base (`ImageTextBuilder`) adds: each split file is parsed once per build (for the class names, the
cache signature and the rows); every row goes through one `RowChecker` per split; the load report is kept as data
and written once, next to the cached Arrow files (`load_report.json`), for loads served from the cache; and the
config carries a signature of the input files (path, size and `mtime_ns` of the split files and of every referenced
image), so that an edited input gets a fresh cache entry and fingerprint while an untouched one is served from the
cache. Stat-ing files is cheap; hashing their contents would cost a full read of every image on each load.
"""

from __future__ import annotations

import codecs
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import MISSING as MISSING_DEFAULT
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import datasets

try:
    from datasets.builder import Key
except ImportError:  # datasets < 5 takes plain int keys

    def Key(original_shard_id: int, item_or_batch_id: int) -> int:  # noqa: N802
        return item_or_batch_id


from ..parallel import image_thread_pool, ordered_map
from .errors import REPORT_FILENAME, BadRowError, LoadReport, check_on_bad_rows, find_bad_row_error
from .options import LoaderArguments
from .readers import SUPPORTED_EXTENSIONS, ParsedLine, read_table
from .rows import MISSING, RawRow, RowChecker, finish_load, image_text_features, infer_class_names, is_missing_label

# The defaults of every option are `LoaderArguments`' (the class attributes of a dataclass are its defaults); these two
# are also compared with, to tell a column named explicitly from the default one.
DEFAULT_ID_COLUMN = LoaderArguments.id_column
DEFAULT_LABEL_COLUMN = LoaderArguments.label_column


def files_signature(paths: Iterable[str | os.PathLike]) -> str:
    """Hash of the sorted `(path, size, mtime_ns)` of `paths`; a missing file counts as `(path, "missing")`."""
    digest = hashlib.sha256()
    for path in sorted({os.path.abspath(os.fspath(p)) for p in paths}):
        try:
            stat = os.stat(path)
            entry = f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
        except (OSError, ValueError):  # ValueError: a NUL in the path (the row checker reports that row)
            entry = f"{path}\tmissing\n"
        digest.update(entry.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


# Fields of `datasets.BuilderConfig` itself, handled by `datasets`.
_BASE_CONFIG_FIELDS = {"name", "version", "data_dir", "data_files", "description"}


@dataclass
class ImageTextConfig(datasets.BuilderConfig):
    """Config shared by the image+text builders (every field is part of the cache key).

    Args:
        on_bad_rows (`str`, defaults to `"error"`):
            `"error"` raises `BadRowError` at the first bad row; `"skip"` leaves bad rows out and lists them in the
            load report.
        max_image_pixels (`int`, defaults to `DEFAULT_MAX_IMAGE_PIXELS`):
            Images with more pixels are bad rows (decompression-bomb guard).
        allow_outside_images (`bool`, defaults to `False`):
            Accept image paths that leave the dataset folder.
        encoding (`str`, defaults to `"utf-8"`):
            Text encoding of the split files.
        input_signature (`str`, *optional*):
            Signature of the input files (computed by the builder when not given).
    """

    on_bad_rows: str = LoaderArguments.on_bad_rows
    max_image_pixels: int = LoaderArguments.max_image_pixels
    allow_outside_images: bool = LoaderArguments.allow_outside_images
    encoding: str = LoaderArguments.encoding
    input_signature: str | None = None

    def __post_init__(self):
        super().__post_init__()
        check_on_bad_rows(self.on_bad_rows)
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(f"unknown encoding {self.encoding!r}") from None


class ImageTextBuilder(datasets.GeneratorBasedBuilder):
    """Base builder: subclasses implement `class_names`, `describe_source`, `_split_generators` and `_read_split`.

    Subclasses parse split files with `self.parse(path)`, which parses each file once per builder.
    """

    BUILDER_CONFIG_CLASS = ImageTextConfig

    def __init__(self, *args, **kwargs):
        # `datasets` derives the cache directory (hence the fingerprint) from the config kwargs *as passed*, so
        # `on_bad_rows="error"` given explicitly and left to its default would be two different caches. Passing every
        # option explicitly makes the cache key depend only on the effective config.
        for config_field in fields(self.BUILDER_CONFIG_CLASS):
            if config_field.name in _BASE_CONFIG_FIELDS or not config_field.init:
                continue
            if config_field.default is not MISSING_DEFAULT:
                kwargs.setdefault(config_field.name, config_field.default)
        self._parsed: dict[str, tuple[list[str] | None, list[ParsedLine]]] = getattr(self, "_parsed", {})
        self._reports: dict[str, Any] = {}
        self._built_report: LoadReport | None = None
        super().__init__(*args, **kwargs)

    def parse(self, path: str, *, encoding: str, id_column: str | None = DEFAULT_ID_COLUMN):
        """`(columns, parsed_lines)` of a split file (see `readers.read_table`), parsed once per builder."""
        if path not in self._parsed:
            self._parsed[path] = read_table(path, encoding=encoding, id_column=id_column)
        return self._parsed[path]

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def field_names(self) -> dict[str, str]:
        """How the input names the `id`, `image`, `text` and `label` fields (used in error messages)."""
        return {}

    def describe_source(self) -> str:
        """Short description of the input, for reports."""
        raise NotImplementedError

    @property
    def multi_label(self) -> bool:
        """Whether labels are lists of classes (`datasets.List(ClassLabel)`)."""
        return False

    def task_info(self) -> dict[str, Any] | None:
        """The label set chosen, for the load report (`LoadReport.task`); `None` for data with one label set."""
        return None

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=f"Image+text classification data loaded by mmfusion from {self.describe_source()}",
            features=image_text_features(self.class_names, multi_label=self.multi_label),
        )

    def _read_split(self, **gen_kwargs) -> tuple[bool, Iterator[RawRow]]:
        """Return `(labeled, rows)` for one split: whether the split has labels, and its raw rows."""
        raise NotImplementedError

    def _raw_rows(
        self,
        path: str,
        parsed_lines: list[ParsedLine],
        resolve_image: Callable[[str], str],
        *,
        image_root: str,
        use_id_column: bool = True,
    ) -> Iterator[RawRow]:
        """`RawRow`s of a parsed split file, fields named as in `field_names`; image paths through `resolve_image`.

        Without an id column (`use_id_column=False`) the 0-based row number is the id.
        """
        names = {"id": "id", "image": "image", "text": "text", "label": "label", **self.field_names}
        for row_number, parsed in enumerate(parsed_lines):
            default_id = str(row_number)
            if parsed.problem is not None:
                row_id = parsed.guessed_id if use_id_column else default_id
                yield RawRow(file=path, line=parsed.line, id=row_id, problem=parsed.problem)
                continue
            row = parsed.row
            value = row.get(names["image"], MISSING)
            problem = None
            if isinstance(value, str) and value.strip():
                image = resolve_image(value)
            elif value is MISSING or value is None or (isinstance(value, str) and not value.strip()):
                image = MISSING
            else:
                image, problem = MISSING, f"{names['image']!r} must be a file path, got {value!r}"
            yield RawRow(
                file=path,
                line=parsed.line,
                id=row.get(names["id"], MISSING) if use_id_column else default_id,
                image=image,
                text=row.get(names["text"], MISSING),
                label=row.get(names["label"], MISSING),
                problem=problem,
                image_field=value if isinstance(value, str) else None,
                image_root=image_root,
            )

    def _generate_examples(self, split: str, **gen_kwargs) -> Iterator[tuple[Any, dict[str, Any]]]:
        labeled, rows = self._read_split(**gen_kwargs)
        checker = RowChecker(
            self.class_names,
            labeled=labeled,
            split=split,
            on_bad_rows=self.config.on_bad_rows,
            max_image_pixels=self.config.max_image_pixels,
            allow_outside_images=self.config.allow_outside_images,
            field_names=self.field_names,
            multi_label=self.multi_label,
        )
        self._reports[split] = checker.report
        # Checking a row decodes its image, most of the build's time: threads check several rows at once. Outcomes
        # come back in row order, so the first bad row is still the one reported and ids are checked in order.
        with image_thread_pool() as pool:
            for index, (row, outcome) in enumerate(ordered_map(pool, checker.outcome, rows)):
                example = checker.accept(row, outcome)
                if example is not None:
                    yield Key(0, index), example

    def _download_and_prepare(self, dl_manager, verification_mode, **prepare_splits_kwargs):
        super()._download_and_prepare(dl_manager, verification_mode, **prepare_splits_kwargs)
        # Saved once, in the build directory that becomes the cache directory: a later load served from the cache
        # reads it back; this build keeps it as data.
        report = LoadReport(source=self.describe_source(), on_bad_rows=self.config.on_bad_rows, task=self.task_info())
        report.splits = {split: self._reports[split] for split in self.info.splits}
        report.save(os.path.join(self._output_dir, REPORT_FILENAME))
        self._built_report = report

    @property
    def report_path(self) -> str:
        """Where the load report of this build lives (next to the cached Arrow files)."""
        return os.path.abspath(os.path.join(self.cache_dir, REPORT_FILENAME))

    def read_load_report(self) -> LoadReport:
        """The load report of the prepared dataset: this build's, or the cached one after a load from the cache."""
        if self._built_report is not None:
            self._built_report.path = self.report_path
            return self._built_report
        return LoadReport.load(self.report_path)


def loader_options(builder_class: type[ImageTextBuilder]) -> dict[str, Any]:
    """`{option: default}` of the loader of a builder: its config's fields (where each option is declared, once)
    plus `cache_dir`, `report_path` and `return_report`."""
    options = {
        f.name: f.default
        for f in fields(builder_class.BUILDER_CONFIG_CLASS)
        if f.init and f.name not in _BASE_CONFIG_FIELDS | {"input_signature", "split_files"}
    }
    return {**options, "cache_dir": None, "report_path": None, "return_report": False}


def build_dataset_dict(
    builder_class: type[ImageTextBuilder],
    *,
    cache_dir: str | os.PathLike | None = None,
    report_path: str | os.PathLike | None = None,
    return_report: bool = False,
    **config,
):
    """Build (or reuse from the cache) a builder's dataset; return it (and its load report, see `finish_load`).

    Args:
        builder_class: `HatefulMemes` or `ImageTextFiles`.
        cache_dir (`str`, *optional*): `datasets` cache directory (default: `datasets`' default cache).
        report_path, return_report: see `load_image_text_dataset`.
        **config: the builder's config (its source, and the options declared in `ImageTextConfig` and subclasses).

    Raises:
        `BadRowError`: the first bad row, when `on_bad_rows="error"` (unwrapped from `datasets`'
            `DatasetGenerationError`, so that callers can catch it directly).
        `TypeError`: an option the builder's config does not have.
    """
    unknown = set(config) - set(loader_options(builder_class)) - {"split_files", "data_dir"}
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)} for {builder_class.__name__}")
    builder = builder_class(cache_dir=None if cache_dir is None else os.fspath(cache_dir), **config)
    try:
        builder.download_and_prepare()
    except datasets.exceptions.DatasetGenerationError as err:
        bad_row = find_bad_row_error(err)
        if bad_row is not None:
            raise bad_row from None
        raise
    dataset_dict = datasets.DatasetDict()
    for split, split_info in builder.info.splits.items():
        if split_info.num_examples:
            dataset_dict[split] = builder.as_dataset(split=split)
        else:
            # `datasets` cannot read a split without rows back from its cache; an empty split file (or one whose
            # rows were all skipped) still gives its split, empty.
            features = builder.info.features
            dataset_dict[split] = datasets.Dataset.from_dict(
                {name: [] for name in features}, features=features, split=split
            )
    report = builder.read_load_report()
    return finish_load(dataset_dict, report, report_path=report_path, return_report=return_report)


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
    image_column: str = LoaderArguments.image_column
    text_column: str = LoaderArguments.text_column
    label_column: str = LoaderArguments.label_column
    id_column: str | None = LoaderArguments.id_column
    class_names: list[str] | None = LoaderArguments.class_names


class ImageTextFiles(ImageTextBuilder):
    """`datasets` builder for JSONL/CSV image+text files (see the module docstring).

    Args:
        split_files (`str`, `os.PathLike` or `dict[str, str]`):
            One data file (split `train`) or `{split: file}`.
        image_column, text_column, label_column, id_column, class_names:
            See `ImageTextFilesConfig`. When `class_names` is not given it is inferred from the labels of all files.
        cache_dir, on_bad_rows, max_image_pixels, allow_outside_images, encoding:
            See `ImageTextConfig`.
    """

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = ImageTextFilesConfig

    def __init__(self, *args, split_files=None, **kwargs):
        if split_files is None:
            raise ValueError("ImageTextFiles needs `split_files`: a data file or a dict {split: data file}.")
        split_files = normalize_data_files(split_files)
        columns = {
            name: kwargs.get(f"{name}_column", getattr(ImageTextFilesConfig, f"{name}_column"))
            for name in ("image", "text", "label", "id")
        }
        encoding = kwargs.get("encoding", ImageTextFilesConfig.encoding)
        self._parsed = {}
        tables = {
            split: self.parse(path, encoding=encoding, id_column=columns["id"]) for split, path in split_files.items()
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
        seen_by_split = {
            split: _columns_seen(header, parsed_lines)
            for split, (header, parsed_lines) in tables.items()
            # an empty (or entirely malformed) file has no columns to check: its rows are reported one by one
            if any(parsed.row is not None for parsed in parsed_lines)
        }
        for split, seen in seen_by_split.items():
            required = [columns["image"], columns["text"]]
            if columns["id"] not in (None, DEFAULT_ID_COLUMN):
                required.append(columns["id"])  # an explicitly named id column must exist
            for name in required:
                if name not in seen:
                    raise _column_not_found(split_files[split], name, seen, "image_column / text_column / id_column")
        # A split without labels is unlabeled (a test file), but a label column named explicitly that no file has is
        # a typo: every row would silently become unlabeled.
        label = columns["label"]
        if label != DEFAULT_LABEL_COLUMN and seen_by_split and all(label not in s for s in seen_by_split.values()):
            split, seen = next(iter(seen_by_split.items()))
            raise _column_not_found(split_files[split], label, seen, "label_column")

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
        config = self.config
        _, parsed_lines = self.parse(path, encoding=config.encoding, id_column=config.id_column)
        labeled = any(
            parsed.row is not None and not is_missing_label(parsed.row.get(config.label_column, MISSING))
            for parsed in parsed_lines
        )
        use_id_column = config.id_column is not None and config.id_column in _columns_seen(None, parsed_lines)
        base_dir = os.path.dirname(path)
        rows = self._raw_rows(
            path,
            parsed_lines,
            partial(resolve_relative_path, base_dir),
            image_root=base_dir,
            use_id_column=use_id_column,
        )
        return labeled, rows


def _column_not_found(path: str, name: str, seen: Iterable[str], options: str) -> BadRowError:
    return BadRowError(
        f"no column {name!r} (columns: {sorted(seen)}). Set {options} to the names used in the file.",
        file=path,
        skippable=False,
    )


def load_image_text_files(data_files: str | os.PathLike | Mapping[str, str | os.PathLike], **options):
    """Load JSONL/CSV image+text files as a `DatasetDict` (`id`, `image`, `text`, `label`), cached by `datasets`.

    Args:
        data_files (`str`, `os.PathLike` or `dict[str, str]`):
            One `.jsonl`/`.csv`/`.tsv` file (split `train`) or `{split: file}`, e.g.
            `{"train": "a.csv", "validation": "b.csv"}`.
        **options:
            `image_column` (default `"image"`, paths relative to the data file's folder), `text_column` (`"text"`),
            `label_column` (`"label"`; a file without labels gives an unlabeled split, a column named here that no
            file has is an error), `id_column` (`"id"`; without it the 0-based row number is the id),
            `class_names` (default: sorted unique string labels, or `"0".."N-1"` for integer labels); and the
            options every source takes (`on_bad_rows`, `max_image_pixels`, ...): see `ImageTextFilesConfig`,
            `ImageTextConfig` and `load_image_text_dataset`.

    Returns:
        `datasets.DatasetDict` (or `(DatasetDict, LoadReport)` with `return_report=True`).
    """
    return build_dataset_dict(ImageTextFiles, split_files=data_files, **options)
