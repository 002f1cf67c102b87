"""Writing small image and JSONL files for data tests."""

import json
import os

from PIL import Image


def write_image(path, size=(24, 16), color=(200, 30, 30), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_jsonl(path, rows):
    """Rows are dicts, or raw strings written as they are (for malformed lines)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
