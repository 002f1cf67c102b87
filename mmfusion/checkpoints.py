"""Checking a local checkpoint folder before loading it, so a broken one fails with an error naming the bad file.

Without this, a truncated `model.safetensors` surfaces as safetensors' "incomplete metadata" (no path), and a
missing `config.json` as transformers' "should have a model_type key". `check_checkpoint` runs before every load of
a checkpoint (train.py, the predictor, the demo app); Hub ids are left to `from_pretrained`.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

CONFIG_FILENAME = "config.json"
WEIGHTS_FILENAME = "model.safetensors"
WEIGHTS_INDEX_FILENAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete or damaged; the message names the file and what is wrong with it."""


def check_checkpoint(path: str | os.PathLike, *, needs_weights: bool = True) -> None:
    """Raise `CheckpointError` unless `path` (when it is a local folder) holds a readable mmfusion checkpoint.

    Checks `config.json` (present, valid JSON, `model_type` "mmfusion") and, with `needs_weights`, the safetensors
    weights (present, header readable, file as long as the header says: a truncated copy or download is caught).
    Anything that is not a local folder (a Hub id) is left alone.
    """
    folder = Path(path)
    if not folder.is_dir():
        if folder.exists():
            raise CheckpointError(f"{folder} is a file; a checkpoint is a folder (with {CONFIG_FILENAME}).")
        return
    config_path = folder / CONFIG_FILENAME
    if not config_path.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint: {CONFIG_FILENAME} is missing.")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path} is not valid JSON ({error}); the file may be truncated.") from error
    if not isinstance(config, dict) or config.get("model_type") != "mmfusion":
        found = config.get("model_type") if isinstance(config, dict) else None
        raise CheckpointError(
            f"{config_path} describes {'a ' + repr(found) if found else 'no'} model, not an mmfusion checkpoint "
            "(model_type 'mmfusion')."
        )
    if needs_weights:
        for weights in _weight_files(folder):
            check_safetensors(weights)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / WEIGHTS_INDEX_FILENAME
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{index} is not a valid safetensors index ({error}).") from error
        return [folder / shard for shard in shards]
    return [folder / WEIGHTS_FILENAME]


def check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors' bytes: check all three."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint has no weights.")
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path} is truncated: {size} bytes, not even a safetensors header.")
        (header_length,) = struct.unpack("<Q", prefix)
        if 8 + header_length > size:
            raise CheckpointError(
                f"{path} is truncated: its header alone should take {8 + header_length} bytes, the file has {size}."
            )
        try:
            header = json.loads(handle.read(header_length))
        except (ValueError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} is not a safetensors file (unreadable header: {error}).") from error
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + header_length + max(ends, default=0)
    if size < expected:
        raise CheckpointError(f"{path} is truncated: {size} bytes of the {expected} its header describes.")


__all__ = ["CheckpointError", "check_checkpoint", "check_safetensors"]
