"""Crash-safe files: atomic writes that honour the umask, clean-up of the temporary files of
killed writers, and torch checkpoints read back with the file named when they are damaged."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc), since
    setting it to read it back races with other threads creating files."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


TMP_SUFFIX = ".tmp"


def _tmp_prefix(path: Path) -> str:
    # host and pid in the name: a later process can tell a dead writer's leftover from a live write
    return f".{path.name}.{socket.gethostname()}.{os.getpid()}."


@contextlib.contextmanager
def _atomic_target(path: Path) -> Iterator[str]:
    """Yield a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    Same directory = same filesystem, so the rename is atomic: a crash mid-write never leaves a
    truncated record or checkpoint behind, and readers see either the old or the new file. The
    file gets the mode a plain ``open()`` would give it (0666 minus the umask), not ``mkstemp``'s
    0600, so records and teachers in a shared results folder stay readable by colleagues.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def remove_stale_temp_files(folder: str | os.PathLike, max_age_s: float = 24 * 3600) -> list[Path]:
    """Delete the temporary files of atomic writes whose writer died (kill -9, power loss).

    A temp file names its writer (host, pid): on this host it is stale when that pid no longer
    runs; a file from another host (a shared filesystem) only when it is older than ``max_age_s``.
    Returns the files removed.
    """
    import time

    host = socket.gethostname()
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for p in root.rglob(f".*{TMP_SUFFIX}"):
        parts = p.name[1:].rsplit(".", 3)  # <target name>.<host>.<pid> . <random> . tmp
        try:
            stale = False
            if len(parts) == 4 and parts[1].isdigit() and parts[0].endswith("." + host):
                stale = not _pid_alive(int(parts[1]))
            if not stale:
                stale = time.time() - p.stat().st_mtime > max_age_s
            if stale:
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`_atomic_target`)."""
    with _atomic_target(Path(path)) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` with the same crash-safety as :func:`atomic_write_bytes`."""
    with _atomic_target(Path(path)) as tmp:
        torch.save(obj, tmp)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class CorruptFileError(RuntimeError):
    """A checkpoint or teacher file that exists but cannot be read back (truncated by a crash or a
    full disk, or not a checkpoint): the message names the file."""

    def __init__(self, path: Path, what: str, cause: BaseException):
        self.path = Path(path)
        super().__init__(f"{what} {path} is unreadable ({type(cause).__name__}: {str(cause).splitlines()[0][:200]})")


def load_torch_file(path: str | os.PathLike, what: str, map_location: Any = "cpu",
                    required: tuple[str, ...] = ()) -> Any:
    """``torch.load`` of a file this package wrote; a truncated or foreign file raises
    :class:`CorruptFileError` naming it (torch's own error names no path)."""
    import pickle
    import zipfile

    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except (PermissionError, FileNotFoundError, IsADirectoryError):
        raise  # not a damaged file: the OS error names the path
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, AttributeError,
            ModuleNotFoundError, IndexError, OSError) as exc:  # a truncated zip can surface as EINVAL
        raise CorruptFileError(Path(path), what, exc) from exc
    if required:
        missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise CorruptFileError(Path(path), what, KeyError(f"missing field(s) {', '.join(missing)}"))
    return obj
