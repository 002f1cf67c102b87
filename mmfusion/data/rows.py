"""From a raw input row to a checked example `{"id", "image", "text", "label"}`.

All three input shapes (Hateful Memes folders, generic JSONL/CSV files, in-memory datasets) read their rows into a
`RawRow` and hand it to `RowChecker`, so the rules about ids, captions, labels and images are the same everywhere:

- `id` is a string (ints such as `42953` become `"42953"`; strings such as `"01235"` keep their leading zeros);
- `text` may be empty (image-only posts; counted in the load report) but must be present; `null` counts as empty;
- `label` is a class name or an integer index into the class names; `-1` (or no label at all in a split that has
  none) means unlabeled, as in `datasets.ClassLabel`;
- the image must exist, decode and stay under the pixel limit (see `images.prepare_image`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .images import DEFAULT_MAX_IMAGE_PIXELS, ImageCheckError, PreparedImage, prepare_image
from .validation import BadRowError


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


class RowChecker:
    """Turns `RawRow`s into examples or raises `BadRowError` naming the file, line and id.

    Args:
        class_names (`Sequence[str]`):
            Ordered class names.
        labeled (`bool`):
            Whether the split has labels. In an unlabeled split every label becomes -1; in a labeled split a row
            without a label is a bad row.
        max_image_pixels (`int`, *optional*):
            Pixel limit for images (see `images.open_image`).
        split (`str`, *optional*):
            Split name, recorded in errors.
        field_names (`dict[str, str]`, *optional*):
            How the input calls the `id`, `image`, `text` and `label` fields (e.g. `{"image": "img"}` for Hateful
            Memes), so that "missing field" errors use the user's names.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        *,
        labeled: bool = True,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        split: str | None = None,
        field_names: dict[str, str] | None = None,
    ):
        self.labels = LabelEncoder(class_names)
        self.field_names = {"id": "id", "image": "image", "text": "text", "label": "label", **(field_names or {})}
        self.labeled = labeled
        self.max_image_pixels = max_image_pixels
        self.split = split

    def check(self, row: RawRow) -> tuple[dict[str, Any], PreparedImage]:
        """Return `(example, prepared_image)` for a good row; raise `BadRowError` for a bad one."""
        row_id = None if row.id is MISSING or row.id is None else str(row.id)

        def bad(reason: str) -> BadRowError:
            return BadRowError(reason, file=row.file, line=row.line, row=row.row, id=row_id, split=self.split)

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

        if not self.labeled:
            label = UNLABELED
        elif is_missing_label(row.label):
            raise bad(f"missing required field {self.field_names['label']!r}")
        else:
            try:
                label = self.labels.encode(row.label)
            except ValueError as err:
                raise bad(str(err)) from None

        try:
            prepared = prepare_image(row.image, max_pixels=self.max_image_pixels)
        except ImageCheckError as err:
            reason = str(err)
            if row.image_field is not None and row.image_field not in reason:
                reason += f" (image field {row.image_field!r})"
            raise bad(reason) from None
        return {"id": row_id, "image": prepared.value, "text": text, "label": label}, prepared
