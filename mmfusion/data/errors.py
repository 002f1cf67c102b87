"""`BadRowError` and `LoadReport`: no row is ever lost silently, and every problem names its file, line and id.

By default (`on_bad_rows="error"`) the first bad row stops the load with a `BadRowError` naming the file, line and
id. With the explicit opt-in `on_bad_rows="skip"`, bad rows are left out, and every one of them is listed in a
`LoadReport`: logged as a warning (count and ids) and written as JSON. File-based loads store the report next to
their cached Arrow files (`<builder cache dir>/load_report.json`), so a load served from the cache reports the same
skipped rows again.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..files import atomic_write_text

logger = logging.getLogger("mmfusion.data")

ON_BAD_ROWS_CHOICES = ("error", "skip")
REPORT_FILENAME = "load_report.json"
# How many ids a warning spells out; the report file always lists all of them.
_MAX_IDS_IN_WARNING = 20


def mmfusion_cache_dir() -> str:
    """Where mmfusion keeps its own files (demo data, reports of in-memory loads): `$MMFUSION_CACHE`, else
    `~/.cache/mmfusion`."""
    return os.path.abspath(os.path.expanduser(os.environ.get("MMFUSION_CACHE", "~/.cache/mmfusion")))


class BadRowError(ValueError):
    """A row of the input that cannot become a valid example (or a whole file that cannot be read as rows).

    Attributes:
        reason (`str`): what is wrong.
        file (`str`, *optional*): the file the row comes from (or a description of the in-memory source).
        line (`int`, *optional*): 1-based line number in `file`.
        row (`int`, *optional*): 0-based row index, for in-memory datasets (which have no lines).
        id (`str`, *optional*): the row's id, when it could be read (guessed for unparsable lines).
        split (`str`, *optional*): the split being built.
        skippable (`bool`): whether `on_bad_rows="skip"` would skip it (`False` for problems of a whole file, such
            as a missing column, which skipping rows cannot fix).
    """

    def __init__(
        self,
        reason: str,
        *,
        file: str | None = None,
        line: int | None = None,
        row: int | None = None,
        id: str | None = None,
        split: str | None = None,
        skippable: bool = True,
    ):
        self.reason = reason
        self.file = file
        self.line = line
        self.row = row
        self.id = id
        self.split = split
        self.skippable = skippable
        super().__init__(self._message())

    def _message(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if not self.skippable:
            return f"{', '.join(where)}: {self.reason}"
        where.append(f"id {self.id!r}" if self.id is not None else "id unknown")
        hint = " (pass on_bad_rows='skip' to skip bad rows and get a report of them)"
        return f"{', '.join(where)}: {self.reason}{hint}"

    def __reduce__(self):  # keyword-only arguments: make the error survive pickling (multiprocessing)
        return (_rebuild_bad_row_error, (self.to_dict(), self.skippable))

    def to_dict(self) -> dict[str, Any]:
        data = {"split": self.split, "file": self.file, "line": self.line, "id": self.id, "reason": self.reason}
        if self.row is not None:
            data["row"] = self.row
        return data


def _rebuild_bad_row_error(data: dict[str, Any], skippable: bool = True) -> BadRowError:
    return BadRowError(**data, skippable=skippable)


def check_on_bad_rows(on_bad_rows: str) -> str:
    """Validate the `on_bad_rows` option."""
    if on_bad_rows not in ON_BAD_ROWS_CHOICES:
        raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS_CHOICES}, got {on_bad_rows!r}")
    return on_bad_rows


def find_bad_row_error(error: BaseException | None) -> BadRowError | None:
    """Return the `BadRowError` behind `error` (datasets wraps generator errors in `DatasetGenerationError`)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, BadRowError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@dataclass
class SplitReport:
    """What happened to the rows of one split."""

    split: str
    num_rows: int = 0
    num_skipped: int = 0
    num_empty_text: int = 0
    num_unlabeled: int = 0
    num_images_converted: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    # Rows of a dataset with several label sets that the chosen task has no label for ({reason: count}), e.g.
    # HarMeme's "not harmful" memes in its target task: left out of the split, and counted here.
    outside_task: dict[str, int] = field(default_factory=dict)

    @property
    def num_outside_task(self) -> int:
        return sum(self.outside_task.values())

    def add_outside_task(self, reason: str) -> None:
        self.outside_task[reason] = self.outside_task.get(reason, 0) + 1

    def add_skipped(self, error: BadRowError) -> None:
        self.num_skipped += 1
        self.skipped.append(error.to_dict())

    def add_example(self, example: dict[str, Any], image_converted: bool) -> None:
        self.num_rows += 1
        self.num_empty_text += int(not example["text"].strip())
        self.num_unlabeled += int(example["label"] is None or example["label"] == -1)  # None: multi-label
        self.num_images_converted += int(image_converted)


@dataclass
class LoadReport:
    """Summary of a load: rows kept, skipped (with file, line, id and reason), empty captions, unlabeled rows, and
    evaluation rows that also appear in train.

    Attributes:
        source (`str`): what was loaded (folder, files, Hub name or in-memory dataset).
        on_bad_rows (`str`): the policy used.
        splits (`dict[str, SplitReport]`): one report per split.
        overlap (`dict[str, list[str]]`): `{evaluation split: ids of its rows also in train}` (same id, same image,
            same text); such rows inflate every metric measured on that split. Empty when there is none.
        path (`str`, *optional*): where the report is saved as JSON.
        task (`dict`, *optional*): for a dataset with several label sets (MAMI, HarMeme, ...): the dataset, the task
            chosen and whether it is the default, the tasks there are, the class names and the table from the raw
            values to the classes (see `meme_datasets.Task.describe`).
    """

    source: str
    on_bad_rows: str
    splits: dict[str, SplitReport] = field(default_factory=dict)
    overlap: dict[str, list[str]] = field(default_factory=dict)
    path: str | None = None
    task: dict[str, Any] | None = None

    @property
    def num_skipped(self) -> int:
        return sum(split.num_skipped for split in self.splits.values())

    @property
    def skipped(self) -> list[dict[str, Any]]:
        return [row for split in self.splits.values() for row in split.skipped]

    @property
    def skipped_ids(self) -> list[str | None]:
        return [row["id"] for row in self.skipped]

    @property
    def num_overlap(self) -> int:
        """How many evaluation rows (all splits but train) are also in train."""
        return sum(len(ids) for ids in self.overlap.values())

    def overlap_warnings(self) -> list[str]:
        """One line per evaluation split with rows also in train: `"N evaluation rows also in train (split ...)"`."""
        lines = []
        for split, ids in self.overlap.items():
            shown = ", ".join(repr(i) for i in ids[:_MAX_IDS_IN_WARNING])
            more = f" and {len(ids) - _MAX_IDS_IN_WARNING} more" if len(ids) > _MAX_IDS_IN_WARNING else ""
            lines.append(
                f"{len(ids)} evaluation rows also in train (split {split!r}: same id, image and text; "
                f"ids {shown}{more}): they inflate every metric measured on {split!r}"
            )
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "on_bad_rows": self.on_bad_rows,
            "num_skipped": self.num_skipped,
            "splits": {name: asdict(split) for name, split in self.splits.items()},
            "overlap": self.overlap,
            "task": self.task,
        }

    def save(self, path: str | os.PathLike) -> str:
        """Write the report as JSON to `path` (creating folders) and remember the path."""
        path = os.path.abspath(os.fspath(path))
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))  # a reader never sees half a report
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LoadReport:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(
            source=data["source"],
            on_bad_rows=data["on_bad_rows"],
            splits={name: SplitReport(**split) for name, split in data["splits"].items()},
            overlap=data.get("overlap", {}),
            path=os.path.abspath(os.fspath(path)),
            task=data.get("task"),
        )

    def summary(self) -> str:
        parts = []
        for name, split in self.splits.items():
            text = f"{name}: {split.num_rows} rows"
            if split.num_skipped:
                text += f", {split.num_skipped} skipped"
            if split.num_empty_text:
                text += f", {split.num_empty_text} empty captions"
            if split.num_unlabeled:
                text += f", {split.num_unlabeled} unlabeled"
            for reason, count in split.outside_task.items():
                text += f", {count} outside the task ({reason})"
            parts.append(text)
        return "; ".join(parts)

    def task_line(self) -> str | None:
        """`"task 'harmful' (the default; tasks: harm, harmful, target): not harmful -> not_harmful, ..."`."""
        if not self.task:
            return None
        task = self.task
        default = "the default" if task["is_default"] else f"default {task['default']!r}"
        mapping = ", ".join(f"{raw} -> {name}" for raw, name in task["mapping"].items())
        return (
            f"{task['dataset']} task {task['task']!r} ({default}; tasks: {', '.join(task['tasks'])}): "
            f"{task['description']}; {mapping}"
        )

    def log(self) -> None:
        """Warn about skipped rows (count, ids, report path) and train/evaluation overlap; else log the summary."""
        if self.task:
            logger.warning("%s: %s", self.source, self.task_line())
        for line in self.overlap_warnings():
            logger.warning("%s: %s", self.source, line)
        if self.num_skipped:
            ids = self.skipped_ids
            shown = ", ".join(repr(i) for i in ids[:_MAX_IDS_IN_WARNING])
            more = f" and {len(ids) - _MAX_IDS_IN_WARNING} more" if len(ids) > _MAX_IDS_IN_WARNING else ""
            logger.warning(
                "Skipped %d bad row(s) while loading %s (on_bad_rows='skip'): ids %s%s. Full report: %s",
                self.num_skipped,
                self.source,
                shown,
                more,
                self.path,
            )
        else:
            logger.info("Loaded %s: %s", self.source, self.summary())
