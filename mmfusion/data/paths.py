"""Where mmfusion keeps its own files (demo datasets, load reports of in-memory datasets)."""

from __future__ import annotations

import os


def mmfusion_cache_dir() -> str:
    """`$MMFUSION_CACHE` if set, else `~/.cache/mmfusion`."""
    return os.path.abspath(os.path.expanduser(os.environ.get("MMFUSION_CACHE", "~/.cache/mmfusion")))
