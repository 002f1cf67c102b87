"""Threads for image decoding and resizing.

PIL releases the GIL while it decodes and resamples, so plain threads keep every core busy without the start-up and
pickling costs of worker processes (measured: two threads decode photo-sized PNGs 2x as fast as one on two cores).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_IMAGE_THREADS = 16


def usable_cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, e.g. under `taskset` or a cgroup)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def image_thread_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=min(MAX_IMAGE_THREADS, usable_cpu_count()), thread_name_prefix="mmfusion-images"
    )


def ordered_map(
    pool: ThreadPoolExecutor, function: Callable[[T], R], items: Iterable[T], *, chunk_size: int = 64
) -> Iterator[R]:
    """`pool.map`, but reading `items` lazily, a chunk at a time: results come back in order, memory stays bounded."""
    iterator = iter(items)
    while chunk := list(islice(iterator, chunk_size)):
        yield from pool.map(function, chunk)
