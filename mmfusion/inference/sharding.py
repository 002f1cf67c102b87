"""Batch prediction spread over the processes of a launcher (`accelerate launch`, `torchrun`), gathered in input order.

Each process predicts one contiguous share of the rows, made of whole batches: every batch is then exactly the batch
a single process would have run (same rows, same padding), so the merged output is the single-process output, byte
for byte. Shares are gathered in process order, which is input order, and only the main process writes.
"""

from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from functools import cache

import numpy as np


def launched_processes() -> int:
    """How many processes the launcher started (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def started_alone_by_accelerate() -> bool:
    """True in the one process that `accelerate launch` started when it was asked for several but ran its single-process
    launcher: on a machine without GPUs, `--num_processes N` (or `--num_machines N`) alone does that. That launcher
    then still sets MASTER_ADDR/MASTER_PORT (only when more than one process was asked for) but starts no torchrun,
    so WORLD_SIZE is never set and this process would do all the work by itself."""
    return (
        "ACCELERATE_MIXED_PRECISION" in os.environ  # set by every `accelerate launch`
        and "MASTER_PORT" in os.environ
        and "WORLD_SIZE" not in os.environ
    )


STARTED_ALONE = (
    "accelerate launch was asked for several processes but started this one alone: without GPUs its default "
    "launcher runs a single process. Start several with --config_file configs/accelerate/cpu_ddp.yaml (or "
    "--multi_gpu, which on a machine without GPUs starts them on the CPU); this process does all the work. (Seen "
    "from MASTER_PORT set without WORLD_SIZE: if one process was meant, MASTER_PORT came from the environment.)"
)


def launcher_state():
    """accelerate's `PartialState` (joins the launcher's process group: NCCL on GPUs, gloo on CPUs) when launched as
    several processes; None when run as one, so a plain run never touches `torch.distributed`. Warns when
    `accelerate launch` was asked for several processes but started one (`started_alone_by_accelerate`)."""
    launched = launched_processes()
    if launched <= 1:
        warn_if_started_alone()
        return None
    import torch
    from accelerate import PartialState

    # Without CUDA, accelerate joins torchrun's processes over gloo only when told to use the CPU (`accelerate launch`
    # tells it; torchrun does not): each would otherwise run alone (train.py's `launcher_defaults` does the same).
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes != launched:
        raise RuntimeError(
            f"Launched as {launched} processes, but this one joined a group of {state.num_processes}: each would "
            "do all the work alone. Check the launcher's configuration."
        )
    return state


def warn_if_started_alone() -> None:
    """Warn (once per process) when `accelerate launch` was asked for several processes but started this one alone."""
    if started_alone_by_accelerate():
        warn_once(STARTED_ALONE)


@cache
def warn_once(message: str) -> None:
    logging.getLogger(__name__).warning(message)


def batch_aligned_shares(num_rows: int, batch_size: int, num_processes: int) -> list[range]:
    """Contiguous row ranges, one per process, each a whole number of batches (the last batch of all may be short),
    spread as evenly as whole batches allow."""
    if batch_size < 1 or num_processes < 1:
        raise ValueError(f"batch_size and num_processes must be >= 1, got {batch_size} and {num_processes}")
    num_batches = -(-num_rows // batch_size)
    shares, first_batch = [], 0
    for process in range(num_processes):
        batches = num_batches // num_processes + (process < num_batches % num_processes)
        start = min(first_batch * batch_size, num_rows)
        stop = min((first_batch + batches) * batch_size, num_rows)
        shares.append(range(start, stop))
        first_batch += batches
    return shares


def gather_in_order(local: np.ndarray, state) -> np.ndarray:
    """Every process's rows, concatenated in process order (= input order); the same array on every process."""
    from accelerate.utils import gather_object

    parts = gather_object([local])
    return np.concatenate(parts) if parts else local


def gather_rows_in_order(local: list, state) -> list:
    """`gather_in_order` for a list of picklable rows (e.g. each row's nearest labelled examples)."""
    from accelerate.utils import gather_object

    parts = gather_object([local])
    return [row for part in parts for row in part]


def is_main_process(state) -> bool:
    return state is None or state.is_main_process


@contextmanager
def main_process_first(state):
    """The main process first (e.g. loading data into the `datasets` cache), then the others read what it wrote.

    When the main process fails (a missing input, a bad row), the others raise the same error instead of running:
    with accelerate's own `main_process_first` they would wait at its barrier for a process that has stopped, and
    end in a process-group traceback that buries the error."""
    if state is None:
        yield
        return
    if not state.is_main_process:
        error = _main_process_error(state, None)
        if error is not None:
            raise error
        yield
        return
    try:
        yield
    except Exception as error:
        _main_process_error(state, error)
        raise
    _main_process_error(state, None)


def _main_process_error(state, error: Exception | None) -> Exception | None:
    """The main process's `error` (None when it succeeded), received by every process: a collective, so it is also
    the barrier the other processes wait at."""
    from accelerate.utils import broadcast_object_list

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # an exception that does not survive pickling travels as its message
        error = RuntimeError(f"{type(error).__name__}: {error}")
    box = broadcast_object_list([error if state.is_main_process else None], from_process=0)
    return box[0]


__all__ = [
    "batch_aligned_shares",
    "gather_in_order",
    "gather_rows_in_order",
    "is_main_process",
    "launched_processes",
    "launcher_state",
    "main_process_first",
    "started_alone_by_accelerate",
    "warn_if_started_alone",
]
