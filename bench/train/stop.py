"""Coordination between processes: file locks (one trainer per run and per teacher) and a
SIGTERM that stops training at the next epoch boundary instead of mid-write."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Callable


@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[str], None] | None = None):
    """An exclusive advisory lock (works across processes and SLURM tasks on a shared FS).

    The holder writes its host and pid into the lock file, so a process that has to wait can say
    for whom (``on_wait``) before it blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                on_wait(f"waiting for {holder}, which holds {path.name}")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class StopRequested(KeyboardInterrupt):
    """SIGTERM (``scancel``, a scheduler pre-empting the job, ``kill``) asked this process to stop:
    the run stops at the end of its current epoch, after that epoch's checkpoint, and writes no
    record, exactly as after Ctrl-C; running the same command again resumes it."""


_STOP = threading.Event()


def stop_on_sigterm() -> None:
    """Make SIGTERM stop training at the next epoch boundary instead of killing it mid-write or
    (SLURM, where submitit only logs SIGTERM) letting a cancelled task train on until SIGKILL and
    even finish the run after ``scancel``. The previous handler still runs. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):  # type: ignore[no-untyped-def]
        _STOP.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


def _check_stop(what: str, epoch: int) -> None:
    if _STOP.is_set():
        raise StopRequested(f"SIGTERM: {what} stopped after epoch {epoch} (its checkpoint is kept)")
