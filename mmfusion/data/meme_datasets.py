"""The meme benchmarks people train on, read from their folders as downloaded: MAMI, HarMeme, Memotion 7k, MultiOFF,
MMHS150K and PrideMM (Hateful Memes has its own module, `hateful_memes.py`).

Each dataset is one `Layout`: how its folder is recognised, how its rows are read (with the quirks of the real
release), and one table of `Task`s, each a label set with the table from the raw values to class names. A row a task
has no label for (HarMeme's "not harmful" memes in its `target` task) is left out of that task and counted in the
load report (`SplitReport.outside_task`), never dropped silently; a raw value that is not in the table is a bad row.

| dataset | folder as downloaded | tasks (default first) |
|---|---|---|
| MAMI (SemEval-2022 task 5) | `TRAINING/training.csv` (+ images), `test/Test.csv` + `test_labels.txt` | `A` misogynous, `B` four subtypes (multi-label) |
| HarMeme: Harm-C, Harm-P | `{train,val,test}.jsonl` (Harm-P `*_v1.jsonl`), `images/` | `harmful`, `harm`, `target` |
| Memotion 7k | `labels.csv`, `images/` | `sentiment`, `overall_sentiment`, `humour`, `sarcasm`, `offensive`, `motivational` |
| MultiOFF | `Split Dataset/{Training,Validation,Testing}_meme_dataset.csv`, `Labelled Images/` | `offensive` |
| MMHS150K | `MMHS150K_GT.json`, `splits/*_ids.txt`, `img_resized/`, `img_txt/` | `hate` (majority vote), `votes` (multi-label) |
| PrideMM | one CSV (`name,text,split,hate,target,stance,humour`), `Images/` | `hate`, `target`, `stance`, `humour` |

```python
>>> from mmfusion.data import load_image_text_dataset
>>> dataset = load_image_text_dataset("data/HarMeme", task="harm")       # the layout is recognised
>>> dataset = load_image_text_dataset("data/mami", dataset_format="mami")  # or forced
```

Every row goes through the same `RowChecker` as any other source: bad rows raise `BadRowError` naming file, line and
id. Builds are cached by `datasets`, keyed on the files' sizes and modification times, the layout and the task.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import datasets

from .errors import BadRowError
from .files import ImageTextBuilder, ImageTextConfig, build_dataset_dict, files_signature
from .options import MEME_FORMATS
from .readers import ParsedLine, read_csv, read_jsonl
from .rows import MISSING, RawRow

_NUMBER = re.compile(r"^[+-]?\d+(\.0*)?$")


def _key(value: Any) -> str:
    """A raw label value as the key of a task's table: stripped text; `1`, `1.0` and `"1.0"` all become `"1"`."""
    if value is MISSING or value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return str(int(float(text))) if _NUMBER.match(text) else text


@dataclass(frozen=True)
class Task:
    """One label set of a dataset, written as a table from raw values to class names.

    Args:
        description: what the task is, for the load report and the README.
        field: the raw field holding the label; a list there (MMHS150K's votes) is mapped value by value.
        table: raw value (see `_key`) -> class name; `None` leaves the row out of the task (reported). A value not
            in the table is a bad row.
        classes: class order (default: the table's class names, in order of first appearance).
        columns: for a multi-label task read from one 0/1 column per class (MAMI B): the columns, in class order;
            `table` then maps the column values to `True`/`False`.
        multi_label: the label is the set of classes (a list field's values, or the columns that are set).
        majority: a list field's values vote; the class with the most votes wins, a tie is outside the task.
        when: `(field, {raw value: bool})`: only rows whose `field` maps to `True` are in the task (HarMeme's target
            is only for harmful memes).
    """

    description: str
    field: str = ""
    table: Mapping[str, Any] = None
    classes: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    multi_label: bool = False
    majority: bool = False
    when: tuple[str, Mapping[str, bool]] | None = None

    @property
    def class_names(self) -> list[str]:
        if self.classes:
            return list(self.classes)
        return list(dict.fromkeys(name for name in self.table.values() if isinstance(name, str)))

    @property
    def is_multi_label(self) -> bool:
        return self.multi_label or bool(self.columns)

    def mapping(self) -> dict[str, str]:
        """The table as `{raw: class}` for the report (`"(outside the task)"` for `None`)."""
        if self.columns:
            return {f"{column}=1": name for column, name in zip(self.columns, self.class_names)}
        shown = {}
        for raw, name in self.table.items():
            shown[f"{self.field}={raw!r}" if raw == "" else raw] = name if name is not None else "(outside the task)"
        if self.when is not None:
            field, allowed = self.when
            shown[f"{field} not in {sorted(k for k, v in allowed.items() if v)}"] = "(outside the task)"
        return shown

    def _map(self, table: Mapping[str, Any], name: str, value: Any) -> Any:
        key = _key(value)
        if key in table:
            return table[key]
        if not key:
            raise ValueError(f"missing {name}")
        known = ", ".join(repr(k) for k in table if k)
        raise ValueError(f"unknown {name} {value!r} (known: {known})")

    def label(self, fields: Mapping[str, Any]) -> tuple[Any, str | None]:
        """`(label, None)`, or `(None, why the row is outside this task)`.

        Raises:
            `ValueError`: a raw value that is not in the table (the row is bad).
        """
        if self.when is not None:
            name, allowed = self.when
            if not self._map(allowed, name, fields.get(name, MISSING)):
                value = _key(fields.get(name))
                return None, f"{name} {value!r}" if value else f"no {name}"
        if self.columns:
            return [c for c, n in zip(self.columns, self.class_names) if self._map(self.table, c, fields.get(c))], None
        value = fields.get(self.field, MISSING)
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{self.field} is empty")
            mapped = [self._map(self.table, self.field, v) for v in value]
            if self.multi_label:
                return sorted(set(mapped), key=self.class_names.index), None
            ranked = Counter(mapped).most_common()
            if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
                return None, f"tied vote {value}"
            return ranked[0][0], None
        name = self._map(self.table, self.field, value)
        if name is None:
            return None, f"{self.field} {_key(value)!r}" if _key(value) else f"no {self.field}"
        return name, None


def _table(*names: str, **renamed: str) -> dict[str, str]:
    """`{name: name}` for names kept as they are, plus `{raw: class}` pairs."""
    return {**{name: name for name in names}, **renamed}


# ---- the tables: one per dataset --------------------------------------------------------------------------------

MAMI_SUBTYPES = ("shaming", "stereotype", "objectification", "violence")
MAMI_COLUMNS = ("file_name", "misogynous", *MAMI_SUBTYPES)
MAMI_TASKS = {
    "A": Task("misogynous or not (binary)", "misogynous", {"0": "not_misogynous", "1": "misogynous"}),
    "B": Task(
        "the four types of misogyny (multi-label)",
        table={"0": False, "1": True},
        classes=MAMI_SUBTYPES,
        columns=MAMI_SUBTYPES,
    ),
}

HARM = {"not harmful": "not_harmful", "somewhat harmful": "somewhat_harmful", "very harmful": "very_harmful"}
HARMEME_TASKS = {
    # As the MOMENTA and HarMeme papers do: somewhat and very harmful are "harmful". An empty harm label (a quirk
    # of the release) is outside every task.
    "harmful": Task(
        "harmful (somewhat or very) vs not harmful (binary, as the papers do)",
        "harm",
        {"not harmful": "not_harmful", "somewhat harmful": "harmful", "very harmful": "harmful", "": None},
    ),
    "harm": Task("not, somewhat or very harmful (3 classes)", "harm", {**HARM, "": None}),
    "target": Task(
        "who a harmful meme targets (4 classes; harmful memes only)",
        "target",
        {**_table("individual", "organization", "community", "society"), "": None},
        when=("harm", {"not harmful": False, "somewhat harmful": True, "very harmful": True, "": False}),
    ),
}

MEMOTION_LEVELS = {
    "humour": ("not_funny", "funny", "very_funny", "hilarious"),
    "sarcasm": ("not_sarcastic", "general", "twisted_meaning", "very_twisted"),
    "offensive": ("not_offensive", "slight", "very_offensive", "hateful_offensive"),
    "motivational": ("not_motivational", "motivational"),
    "overall_sentiment": ("very_negative", "negative", "neutral", "positive", "very_positive"),
}
MEMOTION_TASKS = {
    "sentiment": Task(
        "overall sentiment in 3 classes (SemEval-2020 task 8, sub-task A)",
        "overall_sentiment",
        {
            "very_negative": "negative",
            "negative": "negative",
            "neutral": "neutral",
            "positive": "positive",
            "very_positive": "positive",
        },
    ),
    **{
        column: Task(f"{column.replace('_', ' ')}: {', '.join(levels)}", column, _table(*levels))
        for column, levels in MEMOTION_LEVELS.items()
    },
}

MULTIOFF_TASKS = {
    "offensive": Task(
        "offensive or not (binary)", "label", {"Non-offensiv": "not_offensive", "offensive": "offensive"}
    )
}

MMHS_CLASSES = ("not_hate", "racist", "sexist", "homophobe", "religion", "other_hate")
MMHS_TASKS = {
    "hate": Task(
        "hate (any of the 5 hate classes) vs not, by majority of the annotators' votes",
        "labels",
        {"0": "not_hate", **{str(i): "hate" for i in range(1, 6)}},
        majority=True,
    ),
    "votes": Task(
        "every class at least one annotator voted for (multi-label)",
        "labels",
        {str(i): name for i, name in enumerate(MMHS_CLASSES)},
        multi_label=True,
    ),
}

PRIDEMM_TASKS = {
    "hate": Task("hateful or not (binary)", "hate", {"0": "no_hate", "1": "hate"}),
    "target": Task(
        "target of a hateful meme (4 classes; hateful memes only)",
        "target",
        {"0": "undirected", "1": "individual", "2": "community", "3": "organization", "": None},
        when=("hate", {"0": False, "1": True, "": False}),
    ),
    "stance": Task("stance towards LGBTQ+ (3 classes)", "stance", {"0": "neutral", "1": "support", "2": "oppose"}),
    "humour": Task("humorous or not (binary)", "humour", {"0": "no_humour", "1": "humour"}),
}


# ---- finding files ----------------------------------------------------------------------------------------------


def _find(root: str, relative: str) -> str | None:
    """`root/relative` matched case-insensitively component by component (`TRAINING/training.csv`), or None."""
    path = root
    for part in relative.split("/"):
        candidate = os.path.join(path, part)
        if not os.path.exists(candidate):
            try:
                matches = [name for name in os.listdir(path) if name.lower() == part.lower()]
            except OSError:
                return None
            if not matches:
                return None
            candidate = os.path.join(path, sorted(matches)[0])
        path = candidate
    return path


@lru_cache(maxsize=16)
def _by_stem(folder: str) -> dict[str, str]:
    """`{lowercase file stem: file name}` of a folder (for images whose extension differs from the listed one)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return {}
    return {os.path.splitext(name)[0].lower(): name for name in names}


def _image(folder: str, name: Any) -> Any:
    """The image `name` in `folder`: as written, else the same stem with another extension or case; MISSING for
    no name. A name that is not found stays as written (the checker reports it missing)."""
    if not isinstance(name, str) or not name.strip():
        return MISSING
    path = os.path.join(folder, name.strip())
    if os.path.isfile(path):
        return path
    found = _by_stem(folder).get(os.path.splitext(os.path.basename(name.strip()))[0].lower())
    if found is None:  # MultiOFF's "x.jpg.png" listed as "x.jpg", or the other way round
        found = _by_stem(folder).get(os.path.basename(name.strip()).lower())
    return os.path.join(folder, found) if found else path


def _csv_header(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            line = f.readline()
    except OSError:
        return []
    delimiter = "\t" if line.count("\t") > line.count(",") else ","
    return [name.strip().strip('"') for name in line.rstrip("\r\n").split(delimiter)]


def _first_row(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    return row if isinstance(row, dict) else None
    except (OSError, ValueError):
        return None
    return None


# ---- the layouts ------------------------------------------------------------------------------------------------

SplitRows = tuple[bool, list[RawRow]]  # (labeled, rows whose `label` holds the raw label fields)


def _rows(path: str, parsed_lines: list[ParsedLine], make, root: str) -> list[RawRow]:
    """RawRows of a parsed file: `make(row)` gives the row's `id`, `image`, `text` and `label` (the raw fields)."""
    rows = []
    for parsed in parsed_lines:
        if parsed.problem is not None:
            rows.append(RawRow(file=path, line=parsed.line, id=parsed.guessed_id, problem=parsed.problem))
            continue
        fields = make(parsed.row)
        image_field = fields.pop("image_field", None)
        rows.append(RawRow(file=path, line=parsed.line, image_root=root, image_field=image_field, **fields))
    return rows


class Layout:
    """One dataset's folder layout: `detect` it, `read` its splits; `tasks` and `default_task` say what it labels."""

    name: str
    title: str
    tasks: dict[str, Task]
    default_task: str
    files: str  # the folder as downloaded, for messages and the README

    def detect(self, root: str) -> bool:
        raise NotImplementedError

    def read(self, root: str, encoding: str) -> tuple[dict[str, SplitRows], list[str]]:
        """`({split: (labeled, rows)}, files read)`."""
        raise NotImplementedError


class Mami(Layout):
    name, title, tasks, default_task = "mami", "MAMI", MAMI_TASKS, "A"
    files = "TRAINING/training.csv, test/Test.csv + test_labels.txt (tab-separated, images beside them)"

    def detect(self, root):
        return bool(_find(root, "TRAINING/training.csv") or _find(root, "test/Test.csv"))

    @staticmethod
    def _table(path, encoding, header=None):
        # The captions hold unescaped quotes: read with quoting off, tab-separated (the BOM is tolerated).
        return read_csv(
            path, delimiter="\t", quoting=csv.QUOTE_NONE, encoding=encoding, id_column="file_name", header=header
        )

    def read(self, root, encoding):
        splits, files = {}, []
        train = _find(root, "TRAINING/training.csv")
        if train:
            folder = os.path.dirname(train)
            _, parsed = self._table(train, encoding)

            def make(row):
                name = row.get("file_name", MISSING)
                return dict(
                    id=name,
                    image=_image(folder, name),
                    image_field=name,
                    text=row.get("Text Transcription", MISSING),
                    label={k: row.get(k, MISSING) for k in MAMI_COLUMNS[1:]},
                )

            splits["train"] = (True, _rows(train, parsed, make, root))
            files.append(train)
        test = _find(root, "test/Test.csv")
        if test:
            folder = os.path.dirname(test)
            labels_path = _find(folder, "test_labels.txt") or _find(root, "test_labels.txt")
            labels: dict[str, ParsedLine] = {}
            if labels_path:
                files.append(labels_path)
                for parsed in self._table(labels_path, encoding, header=list(MAMI_COLUMNS))[1]:
                    key = parsed.row["file_name"] if parsed.row is not None else parsed.guessed_id
                    labels.setdefault(str(key).strip(), parsed)
            _, parsed_lines = self._table(test, encoding)

            def make(row):
                name = row.get("file_name", MISSING)
                fields = dict(
                    id=name, image=_image(folder, name), image_field=name, text=row.get("Text Transcription", MISSING)
                )
                if labels_path:
                    found = labels.get(str(name).strip())
                    if found is None:
                        fields["problem"] = f"no line for {name!r} in {labels_path}"
                    elif found.problem is not None:
                        fields["problem"] = f"{labels_path} line {found.line}: {found.problem}"
                    else:
                        fields["label"] = {k: found.row[k] for k in MAMI_COLUMNS[1:]}
                return fields

            splits["test"] = (labels_path is not None, _rows(test, parsed_lines, make, root))
            files.append(test)
        return splits, files


class HarMeme(Layout):
    name, title, tasks, default_task = "harmeme", "HarMeme", HARMEME_TASKS, "harmful"
    files = "{train,val,test}.jsonl (Harm-P: *_v1.jsonl), images/"
    SPLITS = ("train", "val", "test")

    def _split_files(self, root):
        for folder in (root, os.path.join(root, "annotations")):
            for suffix in ("", "_v1"):
                found = {s: os.path.join(folder, f"{s}{suffix}.jsonl") for s in self.SPLITS}
                found = {s: p for s, p in found.items() if os.path.isfile(p)}
                if found:
                    return found
        return {}

    def detect(self, root):
        files = self._split_files(root)
        row = _first_row(next(iter(files.values()))) if files else None
        return row is not None and "labels" in row and "image" in row

    def read(self, root, encoding):
        split_files = self._split_files(root)
        folder = next((f for f in (os.path.join(root, "images"), os.path.join(root, "img")) if os.path.isdir(f)), root)
        splits = {}
        for split, path in split_files.items():
            parsed = read_jsonl(path, encoding=encoding)

            def make(row):
                labels = row.get("labels", MISSING)
                fields = dict(
                    id=row.get("id", MISSING),
                    image=_image(folder, row.get("image")),
                    image_field=row.get("image"),
                    text=row.get("text", MISSING),
                )
                if isinstance(labels, list):
                    fields["label"] = {
                        "harm": labels[0] if labels else "",
                        "target": labels[1] if len(labels) > 1 else "",
                    }
                elif labels is not MISSING:
                    fields["problem"] = f"'labels' must be a list [harm] or [harm, target], got {labels!r}"
                return fields

            labeled = any(p.row is not None and "labels" in p.row for p in parsed)
            splits[split] = (labeled, _rows(path, parsed, make, root))
        return splits, list(split_files.values())


class Memotion(Layout):
    name, title, tasks, default_task = "memotion", "Memotion 7k", MEMOTION_TASKS, "sentiment"
    files = "labels.csv, images/"

    def detect(self, root):
        path = _find(root, "labels.csv")
        return bool(path) and {"image_name", "overall_sentiment"} <= set(_csv_header(path))

    def read(self, root, encoding):
        path = _find(root, "labels.csv")
        folder = _find(root, "images") or root
        _, parsed = read_csv(path, encoding=encoding, id_column="image_name")

        def make(row):
            name = row.get("image_name", MISSING)
            corrected, ocr = row.get("text_corrected", ""), row.get("text_ocr", MISSING)
            return dict(
                id=name,
                image=_image(folder, name),
                image_field=name,
                text=corrected if corrected.strip() else ocr,  # the corrected text, else the OCR text
                label={column: row.get(column, MISSING) for column in MEMOTION_LEVELS},
            )

        return {"train": (True, _rows(path, parsed, make, root))}, [path]


class MultiOff(Layout):
    name, title, tasks, default_task = "multioff", "MultiOFF", MULTIOFF_TASKS, "offensive"
    files = "Split Dataset/{Training,Validation,Testing}_meme_dataset.csv, Labelled Images/"
    SPLITS = {"train": "Training", "validation": "Validation", "test": "Testing"}

    def detect(self, root):
        return any(_find(root, f"Split Dataset/{name}_meme_dataset.csv") for name in self.SPLITS.values())

    def read(self, root, encoding):
        folder = _find(root, "Labelled Images") or root
        splits, files = {}, []
        for split, name in self.SPLITS.items():
            path = _find(root, f"Split Dataset/{name}_meme_dataset.csv")
            if not path:
                continue
            _, parsed = read_csv(path, encoding=encoding, id_column="image_name")

            def make(row):
                name = row.get("image_name", MISSING)
                return dict(
                    id=name,
                    image=_image(folder, name),
                    image_field=name,
                    text=row.get("sentence", MISSING),
                    label={"label": row.get("label", MISSING)},
                )

            splits[split] = (True, _rows(path, parsed, make, root))
            files.append(path)
        return splits, files


class Mmhs150k(Layout):
    name, title, tasks, default_task = "mmhs150k", "MMHS150K", MMHS_TASKS, "hate"
    files = "MMHS150K_GT.json, splits/{train,val,test}_ids.txt, img_resized/, img_txt/"

    def detect(self, root):
        return os.path.isfile(os.path.join(root, "MMHS150K_GT.json"))

    def read(self, root, encoding):
        gt_path = os.path.join(root, "MMHS150K_GT.json")
        try:
            with open(gt_path, encoding=encoding) as f:
                gt = json.load(f)
        except (ValueError, UnicodeDecodeError) as err:
            raise BadRowError(f"cannot read the JSON: {err}", file=gt_path, skippable=False) from err
        if not isinstance(gt, dict):
            raise BadRowError("expected one object keyed by tweet id", file=gt_path, skippable=False)
        splits, files = {}, [gt_path]
        for split in ("train", "val", "test"):
            path = os.path.join(root, "splits", f"{split}_ids.txt")
            if not os.path.isfile(path):
                continue
            files.append(path)
            rows = []
            with open(path, encoding=encoding) as f:
                for line_number, line in enumerate(f, start=1):
                    tweet_id = line.strip()
                    if tweet_id:
                        rows.append(self._row(root, gt, gt_path, path, line_number, tweet_id, encoding, files))
            splits[split] = (True, rows)
        return splits, files

    @staticmethod
    def _row(root, gt, gt_path, path, line_number, tweet_id, encoding, files) -> RawRow:
        row = RawRow(file=path, line=line_number, id=tweet_id, image_root=root)
        entry = gt.get(tweet_id)
        if not isinstance(entry, dict):
            row.problem = (
                f"no entry for tweet {tweet_id!r} in {gt_path}"
                if entry is None
                else f"{gt_path}: entry is not an object"
            )
            return row
        text = entry.get("tweet_text", MISSING)
        text_path = os.path.join(root, "img_txt", f"{tweet_id}.json")
        if os.path.isfile(text_path):  # the text in the image, for about 40 % of the tweets: appended to the caption
            files.append(text_path)
            try:
                with open(text_path, encoding=encoding) as f:
                    image_text = json.load(f).get("img_text", "")
            except (ValueError, AttributeError, UnicodeDecodeError) as err:
                row.problem = f"{text_path}: malformed image text JSON ({err})"
                return row
            if isinstance(text, str) and isinstance(image_text, str) and image_text.strip():
                text = f"{text}\n{image_text.strip()}"
        row.text = text
        row.image = os.path.join(root, "img_resized", f"{tweet_id}.jpg")
        row.image_field = f"img_resized/{tweet_id}.jpg"
        row.label = {"labels": entry.get("labels", MISSING)}
        return row


class PrideMM(Layout):
    name, title, tasks, default_task = "pridemm", "PrideMM", PRIDEMM_TASKS, "hate"
    files = "one CSV (name, text, split, hate, target, stance, humour), Images/"
    COLUMNS = {"name", "text", "split", "hate"}

    def _csv(self, root):
        try:
            names = sorted(n for n in os.listdir(root) if n.lower().endswith(".csv"))
        except OSError:
            return None
        return next(
            (os.path.join(root, n) for n in names if self.COLUMNS <= set(_csv_header(os.path.join(root, n)))), None
        )

    def detect(self, root):
        return self._csv(root) is not None

    def read(self, root, encoding):
        path = self._csv(root)
        folder = _find(root, "Images") or root
        _, parsed = read_csv(path, encoding=encoding, id_column="name")

        def make(row):
            name, text = row.get("name", MISSING), row.get("text", MISSING)
            return dict(
                id=name,
                image=_image(folder, name),
                image_field=name,
                text="" if isinstance(text, str) and text.strip() == "None" else text,  # "None": no caption
                label={k: row.get(k, MISSING) for k in ("hate", "target", "stance", "humour")},
            )

        rows = _rows(path, parsed, make, root)
        by_split: dict[str, list[RawRow]] = {}
        for parsed_line, row in zip(parsed, rows):
            split = (parsed_line.row or {}).get("split", "").strip() or "train"
            if parsed_line.row is not None and not parsed_line.row.get("split", "").strip():
                row.problem = "missing split"
            by_split.setdefault(split, []).append(row)
        order = {"train": 0, "val": 1, "validation": 1, "test": 2}
        splits = {
            split: (any(_key(r.label.get("hate")) for r in split_rows if isinstance(r.label, dict)), split_rows)
            for split, split_rows in sorted(by_split.items(), key=lambda item: order.get(item[0], 3))
        }
        return splits, [path]


LAYOUTS: dict[str, Layout] = {
    layout.name: layout for layout in (Mami(), HarMeme(), Memotion(), MultiOff(), Mmhs150k(), PrideMM())
}
assert tuple(LAYOUTS) == MEME_FORMATS, "options.MEME_FORMATS lists the layouts, for the --dataset_format choices"


def detect_layout(path: str | os.PathLike) -> str | None:
    """The meme benchmark whose files are in the folder `path`, or None."""
    path = os.fspath(path)
    return next((name for name, layout in LAYOUTS.items() if layout.detect(path)), None)


def task_table() -> str:
    """Markdown: every dataset with its folder layout, tasks and the command that trains on it (the README's table,
    checked by a test)."""
    lines = [
        "| dataset (`--dataset_format`) | folder as downloaded | `--task` (default first) | train on it |",
        "|---|---|---|---|",
    ]
    for layout in LAYOUTS.values():
        names = [layout.default_task, *(t for t in layout.tasks if t != layout.default_task)]
        tasks = "; ".join(f"`{t}`: {layout.tasks[t].description}" for t in names)
        multi_label = [t for t in names if layout.tasks[t].is_multi_label]
        command = "; ".join(
            [
                f"`python train.py --dataset data/{layout.name} --task {layout.default_task}`",
                *(f"`python train.py --dataset data/{layout.name} --task {t}` (multi-label)" for t in multi_label),
                f"`python -m mmfusion.training.sweep configs/meme_{layout.name}.yaml`",
            ]
        )
        lines.append(f"| {layout.title} (`{layout.name}`) | {layout.files} | {tasks} | {command} |")
    return "\n".join(lines)


# ---- the builder ------------------------------------------------------------------------------------------------


@dataclass
class MemeBenchmarkConfig(ImageTextConfig):
    """`ImageTextConfig` plus the layout (`dataset_format`) and the label set (`task`, default: the dataset's)."""

    dataset_format: str | None = None
    task: str | None = None


class MemeBenchmark(ImageTextBuilder):
    """`datasets` builder for a meme benchmark's folder as downloaded (see the module docstring).

    Args:
        data_dir: the dataset's folder.
        dataset_format: one of `LAYOUTS` (default: recognised from the files).
        task: one of the layout's tasks (default: its `default_task`).
        cache_dir, on_bad_rows, max_image_pixels, allow_outside_images, encoding: see `ImageTextConfig`.
    """

    VERSION = datasets.Version("1.0.0")
    BUILDER_CONFIG_CLASS = MemeBenchmarkConfig

    def __init__(self, *args, data_dir=None, dataset_format=None, task=None, **kwargs):
        if data_dir is None:
            raise ValueError("MemeBenchmark needs `data_dir`, the dataset's folder.")
        data_dir = os.path.abspath(os.fspath(data_dir))
        if not os.path.isdir(data_dir):
            raise FileNotFoundError(f"no such folder: {data_dir}")
        dataset_format = dataset_format or detect_layout(data_dir)
        if dataset_format not in LAYOUTS:
            raise ValueError(f"{data_dir}: not one of the meme benchmark layouts ({', '.join(LAYOUTS)})")
        self._layout = layout = LAYOUTS[dataset_format]
        task = task or layout.default_task
        if task not in layout.tasks:
            raise ValueError(f"{layout.title} has no task {task!r}; its tasks: {', '.join(layout.tasks)}")
        self._task_name = task
        self._task = layout.tasks[task]
        _by_stem.cache_clear()  # folder listings are read afresh by every build
        self._splits, files = layout.read(data_dir, kwargs.get("encoding", ImageTextConfig.encoding))
        if not self._splits:
            raise FileNotFoundError(f"{data_dir}: no {layout.title} split file found (expected {layout.files})")
        if kwargs.get("input_signature") is None:
            images = [r.image for _, rows in self._splits.values() for r in rows if isinstance(r.image, str)]
            kwargs["input_signature"] = files_signature([*files, *images])
        kwargs.setdefault("dataset_name", f"mmfusion_{layout.name}")
        super().__init__(*args, data_dir=data_dir, dataset_format=dataset_format, task=task, **kwargs)

    @property
    def class_names(self) -> list[str]:
        return self._task.class_names

    @property
    def multi_label(self) -> bool:
        return self._task.is_multi_label

    def describe_source(self) -> str:
        return f"{self._layout.title} folder {self.config.data_dir}"

    def task_info(self) -> dict[str, Any]:
        layout = self._layout
        return {
            "dataset": layout.title,
            "task": self._task_name,
            "default": layout.default_task,
            "is_default": self._task_name == layout.default_task,
            "tasks": list(layout.tasks),
            "description": self._task.description,
            "multi_label": self._task.is_multi_label,
            "classes": self._task.class_names,
            "mapping": self._task.mapping(),
        }

    def _split_generators(self, dl_manager):
        return [
            datasets.SplitGenerator(name=split, gen_kwargs={"split": split, "name": split}) for split in self._splits
        ]

    def _read_split(self, name: str) -> tuple[bool, Iterator[RawRow]]:
        labeled, rows = self._splits[name]
        return labeled, self._labeled_rows(name, labeled, rows)

    def _labeled_rows(self, split: str, labeled: bool, rows: list[RawRow]) -> Iterator[RawRow]:
        for row in rows:
            if row.problem is not None or not labeled:
                yield replace(row, label=MISSING)
                continue
            if not isinstance(row.label, dict):  # a labeled split's row without labels
                yield replace(row, label=MISSING, problem="missing label")
                continue
            try:
                label, outside = self._task.label(row.label)
            except ValueError as err:
                yield replace(row, label=MISSING, problem=str(err))
                continue
            if outside is not None:
                self._reports[split].add_outside_task(outside)  # counted, not silently lost
                continue
            yield replace(row, label=label)


def load_meme_dataset(data_dir: str | os.PathLike, *, dataset_format: str | None = None, **options):
    """Load a meme benchmark's folder as a `DatasetDict` (`id`, `image`, `text`, `label`), cached by `datasets`.

    Args:
        data_dir: the folder as downloaded (see the module docstring).
        dataset_format: one of `LAYOUTS` (default: recognised from the files present).
        **options: `task` (default: the dataset's default task, named in the load report), and `cache_dir`,
            `on_bad_rows`, `report_path`, `max_image_pixels`, `allow_outside_images`, `encoding`, `return_report`
            (see `load_image_text_dataset`).
    """
    return build_dataset_dict(MemeBenchmark, data_dir=data_dir, dataset_format=dataset_format, **options)
