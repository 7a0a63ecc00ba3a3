"""Versions of a prepared cache: which one is current, who reads it, and when an old one goes.

Runs read a cache through memory maps opened at their start, so arrays rewritten in place would
change under them (a run finished "ok" with other numbers under its config hash). A complete cache
is therefore never written to: a rebuild (``bench prepare --force``) fills ``.next/``, renames it
to a new version directory ``v-<stamp>/`` and then atomically replaces ``manifest.json``, whose
``file`` entries name the arrays relative to the cache (``data_dir`` names the version; a first
build keeps its arrays at the top of the cache, as always).

A reader pins one version (:func:`pin_cache`): it holds a shared lock on the version's
``.readers.lock`` and reads the manifest again once it holds it, so a swap in between is seen. An
old version is deleted (:func:`collect_old_versions`) only when no reader holds its lock, else by a
later ``bench prepare``; a memory map keeps its file's data even after that.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api.errors import BenchError

FORMAT = "cmkd-bench-cache"


VERSION = 1


MANIFEST = "manifest.json"


PROGRESS = ".progress.json"


READERS = ".readers.lock"
"""Per version: shared-locked by every process reading it (see :func:`pin_cache`)."""


NEXT = ".next"
"""Where a rebuild of a complete cache is filled before it becomes a version."""


def read_manifest(cache: str | os.PathLike, dataset: str | None = None) -> dict[str, Any]:
    cache = Path(cache)
    path = cache / MANIFEST
    if not path.exists():
        hint = " (preparation was interrupted: rerun `bench prepare` to resume)" if (cache / PROGRESS).exists() else ""
        raise BenchError(f"no prepared cache at {cache}: {MANIFEST} missing{hint}. "
                         f"Run `bench prepare {dataset or 'DATASET'} --root RAW_DIR --cache {cache}` first")
    try:
        m = json.loads(path.read_text())
    except ValueError as exc:
        raise BenchError(f"{path}: not valid JSON ({exc})") from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise BenchError(f"{path}: not a {FORMAT} v{VERSION} manifest (format={m.get('format')!r}, "
                         f"version={m.get('version')!r})")
    if dataset is not None and m.get("dataset") != dataset:
        raise BenchError(f"{path}: cache holds dataset {m.get('dataset')!r}, expected {dataset!r}")
    return m


@dataclass
class CacheView:
    """One version of a cache, pinned for reading: its manifest, and the shared lock on the
    version's reader lock that keeps a rebuild from deleting its files (released with the view)."""

    cache: Path
    manifest: dict[str, Any]
    hold: Any = field(default=None, repr=False)

    def path(self, array: dict[str, Any]) -> Path:
        """An array file of the manifest, which must lie inside the cache."""
        rel = Path(str(array.get("file", "")))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise BenchError(f"{self.cache / MANIFEST}: array file {str(rel)!r} does not lie inside the cache")
        return self.cache / rel


class _Hold:
    """A shared lock on one version's reader lock, shared by every view of it in this process (one
    open file per version, however many adapters a grid resolves); released when the last goes."""

    def __init__(self, fh: Any):
        self.fh = fh


_HOLDS: "weakref.WeakValueDictionary[str, _Hold]" = weakref.WeakValueDictionary()


def _hold(path: Path) -> _Hold | None:
    """The shared lock on ``path`` (created for a cache an older version of this package
    prepared); None when the version is gone or the cache is read-only without one."""
    key = os.path.abspath(path)
    held = _HOLDS.get(key)
    if held is not None:
        return held
    for mode in ("a+", "r"):
        try:
            fh = open(path, mode)
        except FileNotFoundError:
            return None
        except PermissionError:
            continue
        fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
        held = _HOLDS[key] = _Hold(fh)
        return held
    return None


def pin_cache(cache: str | os.PathLike, dataset: str | None = None, attempts: int = 50) -> CacheView:
    """The current version of ``cache``, pinned (module docstring): the manifest is read again once
    the version's reader lock is held, so a rebuild that swapped versions in between is seen."""
    cache = Path(cache)
    for _ in range(attempts):
        m = read_manifest(cache, dataset)
        data_dir = str(m.get("data_dir", ""))
        if data_dir and (Path(data_dir).name != data_dir or not data_dir.startswith("v-")):
            raise BenchError(f"{cache / MANIFEST}: data_dir {data_dir!r} is not a version directory of the cache")
        held = _hold(cache / data_dir / READERS)
        if read_manifest(cache, dataset) == m:
            return CacheView(cache, m, held)
        del held  # another version was swapped in meanwhile: pin that one
    raise BenchError(f"cache {cache}: its manifest changed {attempts} times while it was being opened "
                     f"(is `bench prepare --force` rebuilding it over and over?)")


def _unlocked(lock: Path) -> Any:
    """An exclusive hold on a version's reader lock when no reader holds it (else None); a version
    without a lock file has no reader of this package."""
    try:
        fh = open(lock, "r")
    except FileNotFoundError:
        return contextlib.nullcontext()
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh  # closing it releases the lock


def collect_old_versions(cache: str | os.PathLike) -> list[str]:
    """Delete the versions the manifest no longer names and no reader holds (the first build's
    arrays at the top of the cache, ``v-*`` directories); returns what was deleted."""
    cache = Path(cache)
    try:
        current = json.loads((cache / MANIFEST).read_text()).get("data_dir", "")
    except (OSError, ValueError, AttributeError):
        return []
    gone = []
    if current:
        top = [p for p in cache.iterdir() if p.suffix == ".npy" or p.name == PROGRESS]
        hold = _unlocked(cache / READERS) if top else None
        if hold is not None:
            with hold:
                for p in top:
                    p.unlink(missing_ok=True)
            gone.append("first build")
    for d in sorted(cache.glob("v-*")):
        if d.is_dir() and d.name != current:
            hold = _unlocked(d / READERS)
            if hold is not None:
                with hold:
                    shutil.rmtree(d, ignore_errors=True)
                gone.append(d.name)
    return gone
