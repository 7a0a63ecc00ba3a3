"""Crash-safe files: atomic writes that honour the umask, clean-up of the temporary files of
killed writers, and torch checkpoints read back with the file named when they are damaged."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from bench.api.errors import BenchError


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


def atomic_copy_file(src: str | os.PathLike, dst: str | os.PathLike, verify: Callable[[str], None]) -> None:
    """Copy ``src`` to ``dst`` atomically; ``verify(copy)`` runs on the finished copy before it
    takes ``dst``'s place and aborts the copy by raising (``dst`` is then left as it was)."""
    import shutil

    with _atomic_target(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)
        verify(tmp)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` with the same crash-safety as :func:`atomic_write_bytes`."""
    with _atomic_target(Path(path)) as tmp:
        torch.save(obj, tmp)


def plain_json(obj: Any) -> Any:
    """``obj`` as exactly what its JSON file holds (dicts, lists, strings, numbers, None): numpy
    scalars and paths converted as :func:`atomic_write_json` converts them."""
    return json.loads(json.dumps(obj, default=_json_default))


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


class UnsafeFileError(BenchError):
    """A torch or pickle file refused because reading it would build Python objects other than
    tensors and plain types, i.e. could run code: nothing this package writes holds such objects,
    so the file was planted or comes from elsewhere. Not a damaged file: it is never silently
    replaced, the user decides (the message names the file and what to do)."""

    def __init__(self, path: Path, what: str, detail: str, remedy: str = ""):
        self.path = Path(path)
        super().__init__(f"{what} {path} was refused: it holds {detail}, which could run code when read; files this "
                         f"package writes hold only tensors and plain types" + (f". {remedy}" if remedy else ""))


def _refused_detail(message: str) -> str:
    import re

    m = re.search(r"GLOBAL ([\w.]+)", message)
    return f"a reference to {m.group(1)}" if m else "pickle instructions other than those of tensors and plain types"


def load_torch_file(path: str | os.PathLike, what: str, map_location: Any = "cpu",
                    required: tuple[str, ...] = (), remedy: str = "") -> Any:
    """``torch.load(weights_only=True)`` of a file this package wrote: results folders are shared
    and collected, so a file in one is data, never code. A truncated or foreign file raises
    :class:`CorruptFileError`, one holding other objects :class:`UnsafeFileError` (with ``remedy``),
    both naming it (torch's own errors name no path)."""
    import zipfile

    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (PermissionError, FileNotFoundError, IsADirectoryError):
        raise  # not a damaged file: the OS error names the path
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler refused an instruction or a global
        raise UnsafeFileError(Path(path), what, _refused_detail(str(exc)), remedy) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError, KeyError,
            ModuleNotFoundError, IndexError, OSError) as exc:  # a truncated zip can surface as EINVAL
        raise CorruptFileError(Path(path), what, exc) from exc
    if required:
        missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise CorruptFileError(Path(path), what, KeyError(f"missing field(s) {', '.join(missing)}"))
    return obj


class _PlainUnpickler(pickle.Unpickler):
    """Plain data only (dicts, lists, tuples, strings, numbers, None): every global, i.e. every
    class or function a pickle could call, is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


def load_plain_pickle(path: str | os.PathLike, what: str, remedy: str = "") -> Any:
    """A pickle (e.g. a SLURM task's result) read without running code: plain data only, anything
    else raises :class:`UnsafeFileError`, a damaged file :class:`CorruptFileError`, naming it."""
    try:
        with open(path, "rb") as fh:
            return _PlainUnpickler(fh).load()
    except (PermissionError, FileNotFoundError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("GLOBAL "):
            raise UnsafeFileError(Path(path), what, _refused_detail(str(exc)), remedy) from None
        raise CorruptFileError(Path(path), what, exc) from exc
    except (EOFError, ValueError, KeyError, IndexError, TypeError, OSError) as exc:
        raise CorruptFileError(Path(path), what, exc) from exc
