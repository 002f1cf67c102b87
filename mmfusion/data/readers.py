"""Line-numbered readers for JSONL and CSV files that report malformed rows instead of stopping at them.

Each reader returns `ParsedLine`s: the 1-based line number where the row starts, and either the row (a dict) or a
description of what is wrong with it. Blank lines are not rows and are skipped.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from typing import Any

# Best-effort id of a malformed JSON line, so that the error can still name it.
_JSON_ID_PATTERN = re.compile(r'"id"\s*:\s*"?([^",}\s]+)')


@dataclass
class ParsedLine:
    line: int
    row: dict[str, Any] | None = None
    problem: str | None = None
    guessed_id: str | None = None


def read_jsonl(path: str | os.PathLike) -> list[ParsedLine]:
    """Parse a JSON-lines file; a line that is not a JSON object becomes a `ParsedLine` with a `problem`."""
    parsed = []
    with open(path, encoding="utf-8-sig") as f:  # -sig: tolerate a byte-order mark written by some editors
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                match = _JSON_ID_PATTERN.search(line)
                parsed.append(
                    ParsedLine(
                        line_number,
                        problem=f"malformed JSON line: {err.msg} (column {err.colno})",
                        guessed_id=match.group(1) if match else None,
                    )
                )
                continue
            if not isinstance(row, dict):
                parsed.append(
                    ParsedLine(line_number, problem=f"expected a JSON object per line, got {type(row).__name__}")
                )
                continue
            parsed.append(ParsedLine(line_number, row=row))
    return parsed


def read_csv(path: str | os.PathLike, *, delimiter: str = ",") -> tuple[list[str], list[ParsedLine]]:
    """Parse a CSV file with a header row. Rows with too many or too few fields are reported, not padded.

    Returns:
        `(header, parsed_lines)`; line numbers count physical lines, so they match what an editor shows even when a
        quoted caption spans several lines.
    """
    parsed = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return [], []
        except csv.Error as err:
            raise ValueError(f"{os.fspath(path)}: cannot parse the CSV header: {err}") from err
        header = [name.strip() for name in header]
        previous_end = reader.line_num
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
            if len(fields) != len(header):
                guessed_id = (
                    fields[header.index("id")] if "id" in header and header.index("id") < len(fields) else None
                )
                parsed.append(
                    ParsedLine(
                        start,
                        problem=f"malformed CSV row: expected {len(header)} fields ({', '.join(header)}), "
                        f"got {len(fields)}",
                        guessed_id=guessed_id,
                    )
                )
                continue
            parsed.append(ParsedLine(start, row=dict(zip(header, fields))))
    return header, parsed
