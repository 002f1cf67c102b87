"""Datasets that are already `datasets` objects: from the Hub (`load_dataset("org/name")`) or built in memory.

```python
ds = Dataset.from_dict({"img": [pil_1, pil_2], "caption": ["a", "b"], "sentiment": ["pos", "neg"]})
from_dataset(ds, image_column="img", text_column="caption", label_column="sentiment")
```

The columns are renamed to `id`, `image`, `text`, `label` (other columns are dropped) and every row is checked by
the same `rows.RowChecker` as rows from files: the image column may be a `datasets.Image` feature (stored as path or
bytes), PIL images, or a string column of paths (relative to `base_dir`); the label may be a `ClassLabel`, integers
or strings, or a `List(ClassLabel)` (multi-label, as `mmfusion-data convert` writes MAMI B: kept multi-label). The conversion is a `Dataset.map` with a fingerprint derived from the input's fingerprint, the options
and a signature of referenced local image files, so `datasets` caches it for on-disk datasets and later feature
caches keyed on the fingerprint stay correct. Since a cached `map` does not run again, what happened to each row
travels with it: skipped rows as a struct column (file, row, id, reason), dropped before the result is returned.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import pyarrow as pa
from datasets.fingerprint import Hasher

from .errors import BadRowError, LoadReport, SplitReport, check_on_bad_rows, mmfusion_cache_dir
from .files import DEFAULT_ID_COLUMN, DEFAULT_LABEL_COLUMN, files_signature
from .options import LoaderArguments
from .rows import MISSING, RawRow, RowChecker, finish_load, image_text_features, infer_class_names, is_missing_label

_BAD_COLUMN = "__mmfusion_bad_row"
_CONVERTED_COLUMN = "__mmfusion_image_converted"
# Bumped when the conversion changes, so that cached results of the old conversion are not reused.
_CONVERSION_VERSION = "2"
_BAD_ROW_FEATURE = {
    name: datasets.Value(dtype)
    for name, dtype in (
        ("split", "string"),
        ("file", "string"),
        ("row", "int64"),
        ("id", "string"),
        ("reason", "string"),
    )
}


def _as_dataset_dict(dataset: datasets.Dataset | datasets.DatasetDict, split: str) -> datasets.DatasetDict:
    if isinstance(dataset, datasets.DatasetDict):
        return dataset
    if isinstance(dataset, datasets.Dataset):
        return datasets.DatasetDict({split: dataset})
    raise TypeError(
        f"from_dataset expects a datasets.Dataset or DatasetDict, got {type(dataset).__name__} "
        "(for an IterableDataset, load it without streaming=True)"
    )


def _list_class_label(feature) -> datasets.ClassLabel | None:
    """The `ClassLabel` of a multi-label column (`List(ClassLabel)`, as `mmfusion-data convert` writes MAMI B)."""
    inner = getattr(feature, "feature", None) if isinstance(feature, (datasets.List, datasets.Sequence)) else None
    return inner if isinstance(inner, datasets.ClassLabel) else None


def _is_multi_label(dataset_dict: datasets.DatasetDict, label_column: str) -> bool:
    return any(_list_class_label(ds.features.get(label_column)) is not None for ds in dataset_dict.values())


def _class_names_of(dataset_dict: datasets.DatasetDict, label_column: str) -> list[str] | None:
    """Names of a `ClassLabel` label column (the same in every split), or `None` when the labels are raw values."""
    names = None
    for name, dataset in dataset_dict.items():
        feature = dataset.features.get(label_column)
        feature = _list_class_label(feature) or feature
        if isinstance(feature, datasets.ClassLabel):
            if names is not None and names != feature.names:
                raise ValueError(f"split {name!r} has ClassLabel names {feature.names}, other splits {names}")
            names = list(feature.names)
    return names


def _raw_labels(dataset: datasets.Dataset, label_column: str) -> list[Any]:
    if label_column not in dataset.column_names:
        return []
    feature = dataset.features[label_column]
    values = dataset.data.column(label_column).to_pylist()
    if isinstance(feature, datasets.ClassLabel):  # compare by name, so that a user-given class order can remap
        return [feature.names[v] if v is not None and 0 <= v < feature.num_classes else v for v in values]
    inner = _list_class_label(feature)
    if inner is not None:  # multi-label: every class of every row
        return [inner.names[v] for row in values if row is not None for v in row]
    return values


def _local_image_paths(dataset: datasets.Dataset, image_column: str, base_dir: str) -> list[str]:
    """Local files the image column points to (only those not embedded as bytes), for the cache signature."""
    column = dataset.data.column(image_column)  # Arrow column: no image bytes are copied into Python
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return [os.path.join(base_dir, p) for p in column.to_pylist() if p]
    if pa.types.is_struct(column.type) and column.type.get_field_index("path") >= 0:
        paths = []
        for chunk in column.chunks:
            path_values = chunk.field("path").to_pylist()
            if chunk.type.get_field_index("bytes") >= 0:
                has_bytes = chunk.field("bytes").is_valid().to_pylist()
            else:
                has_bytes = [False] * len(path_values)
            paths.extend(p for p, embedded in zip(path_values, has_bytes) if p and not embedded)
        return [p for p in paths if os.path.isabs(p) or os.path.exists(os.path.join(base_dir, p))]
    return []


def from_dataset(
    dataset: datasets.Dataset | datasets.DatasetDict,
    *,
    split: str = "train",
    image_column: str = LoaderArguments.image_column,
    text_column: str = LoaderArguments.text_column,
    label_column: str = LoaderArguments.label_column,
    id_column: str | None = LoaderArguments.id_column,
    class_names: list[str] | None = LoaderArguments.class_names,
    base_dir: str | os.PathLike | None = None,
    on_bad_rows: str = LoaderArguments.on_bad_rows,
    report_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = LoaderArguments.cache_dir,
    max_image_pixels: int = LoaderArguments.max_image_pixels,
    allow_outside_images: bool = LoaderArguments.allow_outside_images,
    return_report: bool = False,
    source_name: str = "in-memory dataset",
):
    """Check and normalise an existing `Dataset`/`DatasetDict` into `id`, `image`, `text`, `label` columns.

    Args:
        dataset (`datasets.Dataset` or `datasets.DatasetDict`):
            The data; a `Dataset` becomes the split `split`.
        split (`str`, defaults to `"train"`):
            Split name for a single `Dataset`.
        image_column, text_column, label_column (`str`):
            Names of the image, caption and label columns. A split without the label column is unlabeled (-1); a
            label column named here (other than `"label"`) that no split has is an error.
        id_column (`str`, *optional*, defaults to `"id"`):
            Column with ids; when the dataset has none (or `id_column=None`), the row index is the id.
        class_names (`list[str]`, *optional*):
            Ordered class names. Default: the `ClassLabel` names, else sorted unique string labels, else
            `"0".."N-1"` for integer labels. With a `ClassLabel` column, labels are remapped by name.
        base_dir (`str`, *optional*):
            Folder that image paths of a string column are relative to, and must stay inside unless
            `allow_outside_images=True` (default: the current directory).
        on_bad_rows, report_path, max_image_pixels, allow_outside_images, return_report:
            See `load_image_text_dataset`. In skip mode the report is written to `report_path`, or when not given to
            `<cache_dir>/load_reports/`, `cache_dir` defaulting to `$MMFUSION_CACHE` or `~/.cache/mmfusion`.
        cache_dir (`str`, *optional*):
            Only used for the default report location: the converted data itself is cached by `Dataset.map` next
            to the input's own cache files (in memory for in-memory datasets).
        source_name (`str`, defaults to `"in-memory dataset"`):
            How errors and the report name the source (e.g. a Hub dataset name).

    Returns:
        `datasets.DatasetDict` (or `(DatasetDict, LoadReport)` with `return_report=True`).
    """
    check_on_bad_rows(on_bad_rows)
    dataset_dict = _as_dataset_dict(dataset, split)
    base_dir = os.path.abspath(os.fspath(base_dir) if base_dir is not None else os.getcwd())
    for name, ds in dataset_dict.items():
        for column in (image_column, text_column):
            if column not in ds.column_names:
                raise ValueError(
                    f"split {name!r} has no column {column!r} (columns: {ds.column_names}). "
                    "Set image_column / text_column to the names used in the dataset."
                )
        if id_column not in (None, DEFAULT_ID_COLUMN) and id_column not in ds.column_names:
            raise ValueError(f"split {name!r} has no id column {id_column!r} (columns: {ds.column_names})")
    if label_column != DEFAULT_LABEL_COLUMN and all(
        label_column not in ds.column_names for ds in dataset_dict.values()
    ):
        name, ds = next(iter(dataset_dict.items()))
        raise BadRowError(
            f"no column {label_column!r} (columns of split {name!r}: {ds.column_names}). Set label_column to the "
            "name used in the dataset.",
            file=source_name,
            skippable=False,
        )

    if class_names is None:
        class_names = _class_names_of(dataset_dict, label_column)
    if class_names is None:
        class_names = infer_class_names(v for ds in dataset_dict.values() for v in _raw_labels(ds, label_column))
    class_names = [str(name) for name in class_names]

    options = {
        "image_column": image_column,
        "text_column": text_column,
        "label_column": label_column,
        "id_column": id_column,
        "class_names": class_names,
        "multi_label": _is_multi_label(dataset_dict, label_column),
        "base_dir": base_dir,
        "max_image_pixels": max_image_pixels,
        "allow_outside_images": allow_outside_images,
        "source_name": source_name,
        "version": _CONVERSION_VERSION,
    }
    report = LoadReport(source=source_name, on_bad_rows=on_bad_rows)
    converted = {}
    for name, ds in dataset_dict.items():
        converted[name], report.splits[name] = _convert_split(ds, name, options, on_bad_rows)

    if report_path is None and report.num_skipped:
        fingerprints = "-".join(ds._fingerprint for ds in converted.values())
        report_dir = os.fspath(cache_dir) if cache_dir is not None else mmfusion_cache_dir()
        report_path = os.path.join(report_dir, "load_reports", f"from_dataset-{Hasher.hash(fingerprints)}.json")
    return finish_load(datasets.DatasetDict(converted), report, report_path=report_path, return_report=return_report)


def _convert_split(
    ds: datasets.Dataset, split: str, options: dict[str, Any], on_bad_rows: str
) -> tuple[datasets.Dataset, SplitReport]:
    image_column, label_column = options["image_column"], options["label_column"]
    id_column = options["id_column"] if options["id_column"] in ds.column_names else None
    has_labels = label_column in ds.column_names
    label_feature = ds.features.get(label_column)
    multi_label = options["multi_label"]
    label_feature = _list_class_label(label_feature) or label_feature
    label_names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    labeled = has_labels and any(not is_missing_label(v) and v != -1 for v in ds.data.column(label_column).to_pylist())
    unlabeled = None if multi_label else -1
    if isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))  # the checker wants the raw bytes/path

    description = f"<{options['source_name']}, split {split!r}>"
    checker = RowChecker(
        options["class_names"],
        labeled=labeled,
        split=split,
        on_bad_rows=on_bad_rows,
        max_image_pixels=options["max_image_pixels"],
        allow_outside_images=options["allow_outside_images"],
        field_names={"image": image_column, "text": options["text_column"], "label": label_column},
        multi_label=multi_label,
    )
    base_dir = options["base_dir"]

    def convert(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        out = {"id": [], "image": [], "text": [], "label": [], _BAD_COLUMN: [], _CONVERTED_COLUMN: []}
        for position, index in enumerate(indices):
            image = batch[image_column][position]
            if isinstance(image, str):
                image = os.path.join(base_dir, image) if image else MISSING
            label = batch[label_column][position] if has_labels else MISSING
            if label_names is not None and isinstance(label, int) and 0 <= label < len(label_names):
                label = label_names[label]  # ClassLabel index -> name, re-encoded against the target class order
            elif label_names is not None and multi_label and isinstance(label, list):
                label = [label_names[v] if isinstance(v, int) and 0 <= v < len(label_names) else v for v in label]
            row = RawRow(
                file=description,
                row=index,
                id=batch[id_column][position] if id_column else str(index),
                image=image,
                text=batch[options["text_column"]][position],
                label=label,
                image_root=base_dir if isinstance(image, str) else None,  # only paths of a string column
            )
            row, outcome = checker.outcome(row)
            example = checker.accept(row, outcome)  # raises in error mode
            if example is None:
                skipped = checker.report.skipped[-1]
                out[_BAD_COLUMN].append({key: skipped.get(key) for key in _BAD_ROW_FEATURE})
                out[_CONVERTED_COLUMN].append(False)
                example = {"id": skipped["id"], "image": None, "text": "", "label": unlabeled}
            else:
                out[_BAD_COLUMN].append(None)
                out[_CONVERTED_COLUMN].append(outcome[1].converted)
            for key, value in example.items():
                out[key].append(value)
        return out

    features = image_text_features(options["class_names"], multi_label=multi_label)
    features[_BAD_COLUMN] = _BAD_ROW_FEATURE
    features[_CONVERTED_COLUMN] = datasets.Value("bool")
    signature = files_signature(_local_image_paths(ds, image_column, base_dir))
    fingerprint = Hasher.hash([ds._fingerprint, options, signature, split, on_bad_rows])
    mapped = ds.map(
        convert,
        batched=True,
        batch_size=64,
        with_indices=True,
        remove_columns=ds.column_names,
        features=features,
        new_fingerprint=fingerprint,
        desc=f"Checking {split} rows",
    )

    report = SplitReport(split=split)
    for bad in mapped.data.column(_BAD_COLUMN).to_pylist():
        if bad is not None:
            report.add_skipped(BadRowError(**{key: value for key, value in bad.items() if value is not None}))
    if report.num_skipped:
        mapped = mapped.filter(lambda bad: bad is None, input_columns=_BAD_COLUMN, desc=f"Dropping bad {split} rows")
    report.num_rows = len(mapped)
    report.num_images_converted = sum(mapped.with_format("arrow")[_CONVERTED_COLUMN].to_pylist())
    report.num_empty_text = sum(not text.strip() for text in mapped.with_format("arrow")["text"].to_pylist())
    report.num_unlabeled = sum(label == unlabeled for label in mapped.with_format("arrow")["label"].to_pylist())
    return mapped.remove_columns([_BAD_COLUMN, _CONVERTED_COLUMN]), report
