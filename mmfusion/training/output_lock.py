"""One run per output folder: train.py claims `--output_dir` before it loads anything, and lets go when it ends.

Two runs writing into one folder would mix their checkpoints, metrics and reports. The claim is a lock file holding
the owner's PID, host and process start time; a lock whose owner is gone (killed, machine rebooted) is stale and
taken over, so a run killed with SIGKILL can still be resumed by running the same command again. Claiming also
proves in the first second that the folder is writable, rather than after an epoch of training.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

LOCK_FILENAME = ".mmfusion-run.lock"


class OutputDirError(RuntimeError):
    """The output folder cannot be used: not writable, not a folder, or in use by another run."""


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), which tells a live owner from a new process that reused its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of /proc/PID/stat, counted after the command name


def _is_alive(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return True  # another machine's process: cannot check, so assume it runs (shared file systems)
    pid = int(owner.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user
    started = owner.get("started")
    return started is None or _process_start_time(pid) in (None, started)


class OutputDirLock:
    """`with OutputDirLock(output_dir): ...` holds the folder for this process (see the module docstring).

    Raises `OutputDirError` on entry, naming the folder, when it cannot be created or written, or when another live
    run holds it (naming that run's PID and how to proceed).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_FILENAME
        self.held = False

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as error:
            raise OutputDirError(f"Output folder {self.output_dir} cannot be created: {error.strerror}.") from error
        except OSError as error:
            raise OutputDirError(
                f"Output folder {self.output_dir} cannot be created: {error.strerror}. Choose a writable --output_dir."
            ) from error
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _process_start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        # The owner is written to a temporary file which is then hard-linked to the lock's name: the link either
        # fails (a lock exists) or makes a complete lock appear at once, so no reader ever sees a half-written one.
        try:
            handle, temporary = tempfile.mkstemp(dir=self.output_dir, prefix=f"{LOCK_FILENAME}.")
        except OSError as error:
            raise OutputDirError(
                f"Output folder {self.output_dir} is not writable: {error.strerror}. Choose a writable --output_dir."
            ) from error
        try:
            with os.fdopen(handle, "w") as file:
                json.dump(owner, file)
            for _ in range(2):  # the second try follows the removal of a stale lock
                try:
                    os.link(temporary, self.path)
                except FileExistsError:
                    holder = self._read_owner()
                    if holder is not None and _is_alive(holder):
                        raise OutputDirError(
                            f"Output folder {self.output_dir} is in use by another run (PID {holder.get('pid')} on "
                            f"{holder.get('host')}, since {holder.get('since')}). Wait for it to finish or choose "
                            f"another --output_dir; if that run is gone, delete {self.path}."
                        ) from None
                    self.path.unlink(missing_ok=True)  # stale: its owner is gone
                    continue
                self.held = True
                return
        finally:
            Path(temporary).unlink(missing_ok=True)
        raise OutputDirError(f"Output folder {self.output_dir}: could not take the lock {self.path}.")

    def _read_owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # removed meanwhile, or not ours to read: treat as stale

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


__all__ = ["LOCK_FILENAME", "OutputDirError", "OutputDirLock"]
