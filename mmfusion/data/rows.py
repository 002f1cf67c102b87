"""The one row checker: from a raw input row to a checked example `{"id", "image", "text", "label"}`.

Every source (Hateful Memes folders, JSONL/CSV files, in-memory and Hub datasets) reads its rows into a `RawRow` and
hands them, in order, to one `RowChecker` per split, so the rules are the same for every source and entry point:

- `id` is a string (ints such as `42953` become `"42953"`; strings such as `"01235"` keep their leading zeros), and
  unique within its split (a repeated id is a bad row naming both lines; skip mode keeps the first);
- `text` may be empty (image-only posts; counted in the load report) but must be present; `null` counts as empty;
- `label` is a class name or an integer index into the class names; `-1` (or no label at all in a split that has
  none) means unlabeled, as in `datasets.ClassLabel`;
- the image must stay inside the dataset folder (unless `allow_outside_images=True`), exist, decode and stay under
  `max_image_pixels` (see `images.prepare_image`);
- a bad row raises `BadRowError` (`on_bad_rows="error"`) or is skipped and recorded in the split's report.

Across splits, `train_eval_overlap` finds evaluation rows that are also in train (same id, image and text).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from .errors import BadRowError, LoadReport, SplitReport, check_on_bad_rows
from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageCheckError, PreparedImage, prepare_image

COLUMNS = ("id", "image", "text", "label")


class _Missing:
    """Marks a field absent from a row (as opposed to present with a `null`/empty value)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()
UNLABELED = -1
_INT_PATTERN = re.compile(r"^[+-]?\d+$")


@dataclass
class RawRow:
    """One input row before checking.

    Attributes:
        file (`str`): source file (or description of the in-memory dataset), for error messages.
        line (`int`, *optional*): 1-based line number in `file`, for error messages.
        row (`int`, *optional*): 0-based row index (in-memory datasets), for error messages.
        id: the row's id as read (`MISSING` when absent).
        image: resolved image path, encoded bytes or a `{"path", "bytes"}` dict (`MISSING`/`None` when absent).
        text: the caption as read (`MISSING` when absent).
        label: the label as read (`MISSING` when absent).
        problem (`str`, *optional*): a problem found while parsing (malformed JSON line, wrong CSV field count...).
        image_field (`str`, *optional*): how the image was written in the input, quoted in "file not found" errors.
        image_root (`str`, *optional*): the dataset folder a path `image` must stay inside; `None` for images the
            dataset itself manages (bytes, `datasets.Image` columns).
    """

    file: str
    line: int | None = None
    row: int | None = None
    id: Any = MISSING
    image: Any = MISSING
    text: Any = MISSING
    label: Any = MISSING
    problem: str | None = None
    image_field: str | None = None
    image_root: str | None = None


def image_text_features(class_names: Sequence[str], *, multi_label: bool = False) -> datasets.Features:
    """`datasets.Features` for an image+text classification dataset with the given ordered class names.

    With `multi_label=True` the label is a list of class indices (`datasets.List(ClassLabel)`, `None` = unlabeled),
    as for MAMI's sub-task B.

    The image feature has no `mode`: images are already stored as RGB (see `mmfusion.data.images`), and
    `datasets.Image(mode="RGB")` would re-convert with PIL's lossy defaults.
    """
    label = datasets.ClassLabel(names=list(class_names))
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "label": datasets.Sequence(label) if multi_label else label,
        }
    )


def as_int_label(value: Any) -> int | None:
    """`value` as an integer label if it is one (`3`, `3.0`, `"3"`), else `None`."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_PATTERN.match(value.strip()):
        return int(value.strip())
    return None


def is_missing_label(value: Any) -> bool:
    return value is MISSING or value is None or (isinstance(value, str) and not value.strip())


def infer_class_names(labels: Iterable[Any]) -> list[str]:
    """Default class names for a set of raw labels.

    Integer labels (`0, 1, 2` or `"0", "1", "2"`) give `["0", "1", ..., str(max)]` (so index `i` is class `i`);
    anything else gives the sorted unique label strings. Missing labels and `-1` are ignored.

    Raises:
        `ValueError`: if there is no label at all (pass `class_names` explicitly then).
    """
    values = [value for value in labels if not is_missing_label(value) and as_int_label(value) != UNLABELED]
    if not values:
        raise ValueError("No labels found in the data: pass `class_names=[...]` to set the classes.")
    ints = [as_int_label(value) for value in values]
    if all(i is not None for i in ints):
        if min(ints) < 0:
            raise ValueError(f"Negative labels other than -1 (unlabeled) found: {sorted(set(ints))[:5]}")
        return [str(i) for i in range(max(ints) + 1)]
    return sorted({str(value).strip() for value in values})


class LabelEncoder:
    """Maps raw labels to class indices for a fixed, ordered list of class names.

    A label is accepted if it is one of the class names, or an integer index into them (`-1` = unlabeled).
    """

    def __init__(self, class_names: Sequence[str]):
        self.class_names = [str(name) for name in class_names]
        if not self.class_names:
            raise ValueError("class_names must not be empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be unique, got {self.class_names}")
        self._index = {name: i for i, name in enumerate(self.class_names)}

    def encode(self, value: Any) -> int:
        """Return the class index of `value`. Raises `ValueError` for a label outside the class set."""
        if isinstance(value, str) and value.strip() in self._index:
            return self._index[value.strip()]
        index = as_int_label(value)
        if index is not None and (index == UNLABELED or 0 <= index < len(self.class_names)):
            return index
        raise ValueError(f"label {value!r} is not in the class set {self.class_names} (nor an index into it)")


def _not_unicode(value: str) -> bool:
    """Whether `value` holds lone surrogates (undecodable bytes, or `\\ud800` escapes in JSON): Arrow refuses them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def is_inside(path: str, root: str) -> bool:
    """Whether `path`, with symlinks and `..` resolved, lies inside the folder `root`."""
    real_path, real_root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real_path, real_root]) == real_root


class RowChecker:
    """Checks the rows of one split, in order: each becomes an example, or a `BadRowError` naming file, line and id.

    `check` is the per-row part (thread-safe: builders run it on several rows at once, since it decodes the image);
    `accept` is the in-order part: the bad-row policy, unique ids and the split's `SplitReport` (`self.report`).

    Args:
        class_names (`Sequence[str]`):
            Ordered class names.
        labeled (`bool`):
            Whether the split has labels. In an unlabeled split every label becomes -1; in a labeled split a row
            without a label is a bad row.
        split (`str`, *optional*):
            Split name, recorded in errors and in the report.
        on_bad_rows (`str`, defaults to `"error"`):
            `"error"`: `accept` raises the first bad row. `"skip"`: it records it in the report and drops it.
        max_image_pixels (`int`, *optional*):
            Pixel limit for images (see `images.open_image`).
        allow_outside_images (`bool`, defaults to `False`):
            Accept image paths that leave their dataset folder (`../`, absolute paths, symlinks pointing out).
        field_names (`dict[str, str]`, *optional*):
            How the input calls the `id`, `image`, `text` and `label` fields (e.g. `{"image": "img"}` for Hateful
            Memes), so that "missing field" errors use the user's names.
        multi_label (`bool`, defaults to `False`):
            Labels are lists of class names or indices (possibly empty); unlabeled rows get `None`.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        labeled: bool = True,
        split: str | None = None,
        on_bad_rows: str = "error",
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        allow_outside_images: bool = False,
        field_names: dict[str, str] | None = None,
        multi_label: bool = False,
    ):
        self.labels = LabelEncoder(class_names)
        self.multi_label = multi_label
        self.field_names = {"id": "id", "image": "image", "text": "text", "label": "label", **(field_names or {})}
        self.labeled = labeled
        self.split = split
        self.on_bad_rows = check_on_bad_rows(on_bad_rows)
        self.max_image_pixels = max_image_pixels
        self.allow_outside_images = allow_outside_images
        self.report = SplitReport(split=split or "train")
        self._first_seen: dict[str, RawRow] = {}

    def _bad(self, row: RawRow, reason: str, row_id: str | None) -> BadRowError:
        return BadRowError(reason, file=row.file, line=row.line, row=row.row, id=row_id, split=self.split)

    def check(self, row: RawRow) -> tuple[dict[str, Any], PreparedImage]:
        """Return `(example, prepared_image)` for a good row; raise `BadRowError` for a bad one."""
        row_id = None if row.id is MISSING or row.id is None else str(row.id)
        if row_id is not None and _not_unicode(row_id):
            row_id = row_id.encode("utf-8", "replace").decode("utf-8")
            raise self._bad(row, "id is not valid Unicode text", row_id)

        def bad(reason: str) -> BadRowError:
            return self._bad(row, reason, row_id)

        if row.problem is not None:
            raise bad(row.problem)
        if row_id is None:
            raise bad(f"missing required field {self.field_names['id']!r}")
        if isinstance(row.id, (list, dict, float, bool)):
            raise bad(f"id must be a string or an integer, got {row.id!r}")
        if row.image is MISSING or row.image is None or row.image == "":
            raise bad(f"missing required field {self.field_names['image']!r}")
        if row.text is MISSING:
            raise bad(f"missing required field {self.field_names['text']!r}")
        text = row.text
        if text is None:
            text = ""  # a null caption is an image-only post, like an empty one
        elif isinstance(text, (int, float)) and not isinstance(text, bool):
            text = str(text)
        elif not isinstance(text, str):
            raise bad(f"text must be a string, got {type(text).__name__}")
        if _not_unicode(text):
            raise bad("text is not valid Unicode text (a lone surrogate)")

        if not self.labeled:
            label = None if self.multi_label else UNLABELED
        elif self.multi_label:
            if not isinstance(row.label, (list, tuple)):
                raise bad(f"a multi-label row needs a list of labels, got {row.label!r}")
            try:
                label = sorted({self.labels.encode(value) for value in row.label} - {UNLABELED})
            except ValueError as err:
                raise bad(str(err)) from None
        elif is_missing_label(row.label):
            raise bad(f"missing required field {self.field_names['label']!r}")
        else:
            try:
                label = self.labels.encode(row.label)
            except ValueError as err:
                raise bad(str(err)) from None

        written = f" (image field {row.image_field!r})" if row.image_field is not None else ""
        if isinstance(row.image, str) and "\x00" in row.image:
            raise bad(f"image path contains a NUL character{written}")
        if isinstance(row.image, str) and row.image_root is not None and not self.allow_outside_images:
            if not is_inside(row.image, row.image_root):
                raise bad(
                    f"image path resolves to {os.path.realpath(row.image)}, outside the dataset folder "
                    f"{os.path.realpath(row.image_root)}{written}; refused, pass allow_outside_images=True if you "
                    "keep images elsewhere"
                )
        try:
            prepared = prepare_image(row.image, max_image_pixels=self.max_image_pixels)
        except ImageCheckError as err:
            reason = str(err)
            if row.image_field is not None and row.image_field not in reason:
                reason += written
            raise bad(reason) from None
        return {"id": row_id, "image": prepared.value, "text": text, "label": label}, prepared

    def outcome(self, row: RawRow) -> tuple[RawRow, tuple[dict[str, Any], PreparedImage] | BadRowError]:
        """`check` with the error returned as a value, so that outcomes can cross a thread pool in row order."""
        try:
            return row, self.check(row)
        except BadRowError as err:
            return row, err

    def accept(self, row: RawRow, outcome: tuple[dict[str, Any], PreparedImage] | BadRowError) -> dict | None:
        """The in-order step: the example to keep, or `None` for a skipped bad row (recorded in `self.report`).

        Raises:
            `BadRowError`: a bad row (including a repeated id) when `on_bad_rows="error"`.
        """
        if not isinstance(outcome, BadRowError):
            example, prepared = outcome
            first = self._first_seen.get(example["id"])
            if first is None:
                self._first_seen[example["id"]] = row
                self.report.add_example(example, prepared.converted)
                return example
            outcome = self._bad(row, f"duplicate id {example['id']!r}, first on {_where(first)}", example["id"])
        if self.on_bad_rows == "error":
            raise outcome
        self.report.add_skipped(outcome)
        return None


def _where(row: RawRow) -> str:
    return f"line {row.line}" if row.line is not None else f"row {row.row}"


def _row_keys(dataset: datasets.Dataset) -> list[tuple[str, str, str]]:
    """`(id, text, image)` of every row, the image as its path or a hash of its bytes: no image is decoded, and
    image bytes are read a batch at a time (a Hub dataset may embed gigabytes of them)."""
    keys = []
    for batch in dataset.with_format("arrow").iter(batch_size=256):
        images = batch.column("image").to_pylist()
        for row_id, text, image in zip(batch.column("id").to_pylist(), batch.column("text").to_pylist(), images):
            image_key = image.get("path") if image.get("bytes") is None else hashlib.sha1(image["bytes"]).hexdigest()
            keys.append((row_id, text, image_key))
    return keys


def train_eval_overlap(dataset_dict: datasets.DatasetDict, train_split: str = "train") -> dict[str, list[str]]:
    """`{evaluation split: ids}` of rows that are also in `train_split` with the same id, image and text.

    Every split other than `train_split` counts as an evaluation split. Such rows inflate every metric measured on
    their split. Images are compared by path (stored files) or by content (stored bytes); none is decoded.
    """
    if train_split not in dataset_dict or len(dataset_dict) < 2:
        return {}
    train_keys = set(_row_keys(dataset_dict[train_split]))
    overlap = {}
    for split, dataset in dataset_dict.items():
        if split == train_split or not len(dataset):
            continue
        ids = [key[0] for key in _row_keys(dataset) if key in train_keys]
        if ids:
            overlap[split] = ids
    return overlap


def finish_load(
    dataset_dict: datasets.DatasetDict,
    report: LoadReport,
    *,
    report_path: str | os.PathLike | None = None,
    return_report: bool = False,
):
    """The last step of every loader: record the train/evaluation overlap, save the report where asked, log it."""
    report.overlap = train_eval_overlap(dataset_dict)
    if report_path is not None:
        report.save(report_path)
    report.log()
    return (dataset_dict, report) if return_report else dataset_dict
