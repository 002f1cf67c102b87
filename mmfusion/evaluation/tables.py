"""How result tables are written: markdown for people, strict JSON for programs.

One home for the evaluation report, the model card, the sweep and the benchmarks. Imports only numpy, so the sweep
runner can use it without loading scikit-learn or matplotlib.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence

import numpy as np

MAX_CELL_CHARS = 120  # longer text (a misclassified caption) is cut, so that a table stays readable


def markdown_cell(value) -> str:
    """A value as one table cell: floats to 4 decimals, undefined values (None, NaN) as `n/a`, text on one line,
    cut to `MAX_CELL_CHARS` and with `|` escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4f}"
    text = re.sub(r"\s+", " ", str(value)).strip()
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 1] + "…"
    return text.replace("|", "\\|")


def markdown_table(
    header: Sequence, rows: Sequence[Sequence], cell: Callable[[object], str] = markdown_cell
) -> list[str]:
    """The lines of a markdown table, then an empty line. `cell` turns the header's and each row's values into text."""
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def json_safe(value):
    """Python scalars, lists and dicts only (numpy values and arrays converted, dict keys as strings); NaN and
    infinities become None, since strict JSON has no such numbers (an undefined AUROC is `null`)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def strict_json(value, default: Callable | None = None) -> str:
    """`value` as the text of a JSON file (indented, newline-terminated) that any JSON reader accepts: see
    `json_safe`. `default` as in `json.dumps`, for other objects (e.g. `str` for paths)."""
    return json.dumps(json_safe(value), indent=2, default=default, allow_nan=False) + "\n"


__all__ = ["MAX_CELL_CHARS", "json_safe", "markdown_cell", "markdown_table", "strict_json"]
