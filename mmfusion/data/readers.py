"""One reader per file format (JSON lines, CSV/TSV): line-numbered rows, malformed rows reported instead of stopping.

Each reader returns `ParsedLine`s: the 1-based line number where the row starts, and either the row (a dict) or a
description of what is wrong with it (with a best-effort guess of its id, so that the error can name it). Blank
lines are not rows and are skipped. Bytes that are not valid in the file's encoding make their row bad (they are
decoded with `surrogateescape`, so one bad byte spoils one row, not the whole file).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import BadRowError

SUPPORTED_EXTENSIONS = (".jsonl", ".csv", ".tsv")
DEFAULT_ENCODING = "utf-8"
_DELIMITERS = {".csv": ",", ".tsv": "\t"}
# Undecodable bytes become these lone surrogates under errors="surrogateescape".
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")


@dataclass
class ParsedLine:
    line: int
    row: dict[str, Any] | None = None
    problem: str | None = None
    guessed_id: str | None = None


def _open(path: str | os.PathLike, encoding: str, **kwargs):
    # utf-8-sig: tolerate a byte-order mark written by some editors.
    encoding = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    return open(path, encoding=encoding, errors="surrogateescape", **kwargs)


def _readable(value: Any) -> str:
    """A string with escaped bytes shown as U+FFFD, for messages and guessed ids."""
    return _ESCAPED_BYTE.sub("\ufffd", str(value))


def _encoding_problem(text: str, encoding: str) -> str | None:
    match = _ESCAPED_BYTE.search(text)
    if match is None:
        return None
    byte = ord(match.group()) - 0xDC00
    return (
        f"not valid {encoding} text: byte 0x{byte:02X} at column {match.start() + 1}. If the whole file uses "
        "another encoding, pass encoding=... (e.g. encoding='cp1252')"
    )


def _id_pattern(id_column: str) -> re.Pattern:
    return re.compile(rf'"{re.escape(id_column)}"\s*:\s*"?([^",}}\s]+)')


def read_jsonl(
    path: str | os.PathLike, *, encoding: str = DEFAULT_ENCODING, id_column: str | None = "id"
) -> list[ParsedLine]:
    """Parse a JSON-lines file; a line that is not a JSON object becomes a `ParsedLine` with a `problem`."""
    id_pattern = _id_pattern(id_column or "id")
    parsed = []
    with _open(path, encoding) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            match = id_pattern.search(line)
            guessed_id = _readable(match.group(1)) if match else None
            problem = _encoding_problem(line, encoding)
            if problem is not None:
                parsed.append(ParsedLine(line_number, problem=problem, guessed_id=guessed_id))
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problem = f"malformed JSON line: {err.msg} (column {err.colno})"
            except (ValueError, RecursionError) as err:  # e.g. an integer beyond Python's digit limit
                problem = f"malformed JSON line: {err}"
            else:
                if isinstance(row, dict):
                    parsed.append(ParsedLine(line_number, row=row))
                    continue
                problem = f"expected a JSON object per line, got {type(row).__name__}"
            parsed.append(ParsedLine(line_number, problem=problem, guessed_id=guessed_id))
    return parsed


def read_csv(
    path: str | os.PathLike,
    *,
    delimiter: str = ",",
    encoding: str = DEFAULT_ENCODING,
    id_column: str | None = "id",
    quoting: int = csv.QUOTE_MINIMAL,
    header: list[str] | None = None,
) -> tuple[list[str], list[ParsedLine]]:
    """Parse a CSV file with a header row. Rows with too many or too few fields are reported, not padded.

    `quoting=csv.QUOTE_NONE` reads files whose captions hold unescaped quotes (MAMI's TSVs); `header` gives the
    column names of a file without a header row (then the first line is a row).

    Returns:
        `(header, parsed_lines)`; line numbers count physical lines, so they match what an editor shows even when a
        quoted caption spans several lines.

    Raises:
        `BadRowError` (not skippable): the header itself cannot be read.
    """
    path = os.fspath(path)
    parsed = []
    with _open(path, encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True, quoting=quoting)
        given_header = header is not None
        header = list(header) if given_header else []
        while not given_header and not any(name.strip() for name in header):  # the header is the first non-blank line
            try:
                header = next(reader)
            except StopIteration:
                return [], []
            except csv.Error as err:
                raise BadRowError(
                    f"cannot parse the CSV header: {err}", file=path, line=reader.line_num, skippable=False
                ) from err
        problem = _encoding_problem(delimiter.join(header), encoding)
        if problem is not None:
            raise BadRowError(f"header {problem}", file=path, line=reader.line_num, skippable=False)
        header = [name.strip() for name in header]
        id_index = header.index(id_column) if id_column in header else None
        previous_end = reader.line_num  # 0 with a given header: the first line is a row
        while True:
            start = previous_end + 1
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                parsed.append(ParsedLine(start, problem=f"malformed CSV row: {err}"))
                previous_end = reader.line_num
                continue
            previous_end = reader.line_num
            if not fields or all(not field.strip() for field in fields) and len(fields) <= 1:
                continue  # blank line
            guessed_id = _readable(fields[id_index]) if id_index is not None and id_index < len(fields) else None
            problem = _encoding_problem(delimiter.join(fields), encoding)
            if problem is None and len(fields) != len(header):
                problem = f"malformed CSV row: expected {len(header)} fields ({', '.join(header)}), got {len(fields)}"
            if problem is not None:
                parsed.append(ParsedLine(start, problem=problem, guessed_id=guessed_id))
                continue
            parsed.append(ParsedLine(start, row=dict(zip(header, fields))))
    return header, parsed


def read_table(
    path: str, *, encoding: str = DEFAULT_ENCODING, id_column: str | None = "id"
) -> tuple[list[str] | None, list[ParsedLine]]:
    """Parse a data file by its extension: `(columns, parsed_lines)`; `columns` is the CSV header, `None` for JSONL."""
    extension = os.path.splitext(path)[1].lower()
    if extension == ".jsonl":
        return None, read_jsonl(path, encoding=encoding, id_column=id_column)
    return read_csv(path, delimiter=_DELIMITERS[extension], encoding=encoding, id_column=id_column)
