"""Signatures of input files, so that `datasets`' cache notices edited inputs.

A builder's cache directory (and therefore every `Dataset._fingerprint` built from it, and every feature cache keyed
on that fingerprint) is derived from its config. Putting a signature of the inputs (path, size and `mtime_ns` of the
split files and of every referenced image) into the config makes an edited image or caption file produce a fresh
build with a new fingerprint, while an untouched folder is served from the cache. Stat-ing files is cheap; hashing
their contents would cost a full read of every image on each load.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable


def files_signature(paths: Iterable[str | os.PathLike]) -> str:
    """Hash of the sorted `(path, size, mtime_ns)` of `paths`; a missing file counts as `(path, "missing")`."""
    digest = hashlib.sha256()
    for path in sorted({os.path.abspath(os.fspath(p)) for p in paths}):
        try:
            stat = os.stat(path)
            entry = f"{path}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
        except OSError:
            entry = f"{path}\tmissing\n"
        digest.update(entry.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]
