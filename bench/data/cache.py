"""The prepared-dataset cache: decode raw files once, train from memory-mapped arrays.

Raw datasets are thousands of wav/jpg/png files; decoding them per step starves a GPU. ``bench
prepare`` decodes every sample once into fixed-shape ``.npy`` arrays (uint8 frames, fp16
spectrograms, int32 token ids) that training opens with ``mmap_mode``, so a run never touches the
raw files and the page cache shares the arrays between runs on one node.

Layout of a cache directory::

    manifest.json              dataset, preparation parameters, sources and their sha256,
                               per split: row count, class histogram (samples per class, or
                               pixels per class and void pixels for dense labels), skip report,
                               arrays (file, per-sample shape, dtype, sha256)
    <split>.<key>.npy          one array per split and key, first axis = sample
    .progress.json             only while preparing: rows already written per split
    v-<stamp>/<split>.<key>.npy   the arrays of a rebuilt cache (``data_dir`` in the manifest)
    .readers.lock, .prepare.lock  held by readers of a version / by ``bench prepare``

Crash safety: arrays are filled in place through ``open_memmap`` and the number of finished rows
is committed to ``.progress.json`` (atomically) only after the rows are flushed, so an interrupted
``bench prepare`` resumes where it stopped. ``manifest.json`` is written last; a cache without it
is incomplete and is never read.

Rebuilding (``bench prepare --force``; without it a complete cache is never rebuilt) builds a new
version beside the current one and swaps it in atomically, so runs reading the cache keep theirs
(:mod:`bench.data.versions`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from bench.api.errors import BenchError
from bench.data.versions import (
    FORMAT,
    MANIFEST,
    NEXT,
    PROGRESS,
    READERS,
    VERSION,
    CacheView,
    collect_old_versions,
    pin_cache,
)
from bench.data.versions import read_manifest  # noqa: F401  (part of this module's interface since it began)
from bench.records.files import atomic_write_json
from bench.records.provenance import stable_hash
from bench.train.stop import file_lock


def default_cache_dir(dataset: str) -> Path:
    """``$CMKD_BENCH_CACHE/<dataset>``, else ``~/.cache/cmkd-bench/<dataset>``."""
    base = os.environ.get("CMKD_BENCH_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "cmkd-bench") / dataset


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@dataclass
class ArraySpec:
    shape: tuple[int, ...]
    """Per-sample shape."""
    dtype: str


@dataclass
class SplitPlan:
    """What one split will contain: the items to decode (in order) and what was skipped and why."""

    items: list[Any]
    labels: np.ndarray
    """Per-item class id (its histogram is the split's class histogram); unused when the label
    array is dense (one map per item): the histogram then counts the pixels as they are written."""
    arrays: dict[str, ArraySpec]
    skipped: dict[str, list[str]] = field(default_factory=dict)
    """reason -> item keys that were listed but not used."""
    listed: int = 0

    def skip(self, reason: str, key: str) -> None:
        self.skipped.setdefault(reason, []).append(key)


@dataclass
class PrepPlan:
    dataset: str
    prep_params: dict[str, Any]
    splits: dict[str, SplitPlan]
    sources: dict[str, str] = field(default_factory=dict)
    """Split/metadata files read -> sha256 (recorded so a changed split file is visible)."""
    classes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    """Preprocessing facts for the manifest (audio recipe, frame policy, tokenizer, ...)."""
    label_key: str = "label"
    void: int | None = None
    """Label value of unlabelled pixels in dense label maps (counted apart from the classes)."""

    def identity(self) -> str:
        return stable_hash({
            "dataset": self.dataset, "prep": self.prep_params, "sources": self.sources,
            "splits": {s: [len(p.items), {k: [list(a.shape), a.dtype] for k, a in p.arrays.items()}]
                       for s, p in self.splits.items()},
        })


def _array_path(cache: Path, split: str, key: str) -> Path:
    return cache / f"{split}.{key}.npy"


def _resumable(cache: Path, split: str, sp: SplitPlan) -> bool:
    """Every array of the split exists with the planned shape and dtype (else start it over)."""
    for key, spec in sp.arrays.items():
        path = _array_path(cache, split, key)
        if not path.exists():
            return False
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            return False
        if arr.shape != (len(sp.items), *spec.shape) or str(arr.dtype) != spec.dtype:
            return False
    return True


def refuse_rebuild(cache: str | os.PathLike, dataset: str) -> None:
    """A complete cache is rebuilt only when asked (``--force``): runs may be reading it."""
    path = Path(cache) / MANIFEST
    if not path.exists():
        return
    try:
        m = json.loads(path.read_text())
        what = (f" (content {m['content_hash']}, prepared {m.get('created', '?')} with "
                f"{json.dumps(m.get('prep_params', {}))})")
    except (OSError, ValueError, KeyError, TypeError):
        what = ""
    raise BenchError(f"{cache} already holds a complete prepared cache{what}; not rebuilt. Check it with "
                     f"`bench prepare {dataset} --cache {cache} --check`, prepare another setting into another "
                     f"directory with --cache OTHER_DIR, or rebuild it with --force (runs reading it meanwhile "
                     f"keep the version they opened)")


def build_cache(
    cache: str | os.PathLike,
    plan: PrepPlan,
    decode: Callable[[str, Any], dict[str, np.ndarray]],
    progress: Callable[[str, int, int], None] | None = None,
    chunk: int = 64,
    package_version: str = "",
    force: bool = False,
    notes: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Fill the cache described by ``plan``; ``decode(split, item)`` returns one sample's arrays.

    Resumes from ``.progress.json`` when it belongs to the same plan identity; otherwise starts
    over. A complete cache is refused unless ``force``; then the new version is built beside it
    and swapped in (:mod:`bench.data.versions`). ``notes()`` (facts learnt while decoding) go into the
    manifest's ``info``. Returns the manifest.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with file_lock(cache / ".prepare.lock"):
        if not force:
            refuse_rebuild(cache, plan.dataset)
        rebuild = (cache / MANIFEST).exists()
        where = cache / NEXT if rebuild else cache
        if not rebuild and (cache / NEXT).is_dir():  # a rebuild interrupted before its cache was removed
            shutil.rmtree(cache / NEXT)
        where.mkdir(exist_ok=True)
        manifest = _fill(where, plan, decode, progress, chunk, package_version)
        if notes is not None:
            manifest["info"].update(notes())
        if rebuild:
            version = f"v-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:6]}"
            os.replace(where, cache / version)
            manifest["data_dir"] = version
            for s in manifest["splits"].values():
                for a in s["arrays"].values():
                    a["file"] = f"{version}/{a['file']}"
        (cache / manifest.get("data_dir", "") / READERS).touch()  # readers of a read-only cache open it as it is
        atomic_write_json(cache / MANIFEST, manifest)  # the swap: readers pinned to the old version keep it
        collect_old_versions(cache)
    return manifest


def _fill(cache: Path, plan: PrepPlan, decode: Callable[[str, Any], dict[str, np.ndarray]],
          progress: Callable[[str, int, int], None] | None, chunk: int, package_version: str) -> dict[str, Any]:
    """Decode every item into ``cache`` (a first build's directory, or ``.next``); the manifest
    (returned, not written) names the arrays relative to it."""
    ident = plan.identity()
    prog_path = cache / PROGRESS
    done: dict[str, int] = {}
    if prog_path.exists():
        try:
            prev = json.loads(prog_path.read_text())
            if prev.get("identity") == ident:
                done = {k: int(v) for k, v in prev.get("rows", {}).items()}
        except (OSError, ValueError):
            done = {}
    t0 = time.time()
    hists: dict[str, dict[str, Any]] = {}
    for split, sp in plan.splits.items():
        n = len(sp.items)
        start = done.get(split, 0) if _resumable(cache, split, sp) else 0
        mms = {key: np.lib.format.open_memmap(_array_path(cache, split, key), mode="r+" if start else "w+",
                                              dtype=np.dtype(spec.dtype), shape=(n, *spec.shape))
               for key, spec in sp.arrays.items()}
        lspec = sp.arrays.get(plan.label_key)
        pixels = _PixelCounts(plan, split) if lspec is not None and lspec.shape else None
        if pixels is not None:
            for i in range(0, start, chunk):  # rows written before an interruption
                stop = min(i + chunk, start)
                pixels.add(np.asarray(mms[plan.label_key][i:stop]), f"rows {i}..{stop - 1}")
        if progress:
            progress(split, start, n)
        i = start
        while i < n:
            stop = min(i + chunk, n)
            for j in range(i, stop):
                arrays = decode(split, sp.items[j])
                for key, spec in sp.arrays.items():
                    if key not in arrays:
                        raise BenchError(f"{plan.dataset}: decoder returned no {key!r} for item {sp.items[j]!r}")
                    a = np.asarray(arrays[key])
                    if a.shape != spec.shape:
                        raise BenchError(f"{plan.dataset}: item {sp.items[j]!r} gave {key} of shape {a.shape}, "
                                         f"expected {spec.shape}")
                    mms[key][j] = a
                    if pixels is not None and key == plan.label_key:
                        pixels.add(a, f"item {sp.items[j]!r}")
            for mm in mms.values():
                mm.flush()
            i = stop
            done[split] = i
            atomic_write_json(prog_path, {"identity": ident, "rows": done})
            if progress:
                progress(split, i, n)
        del mms
        if pixels is not None:
            hists[split] = pixels.report()
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": plan.dataset,
        "identity": ident,
        "prep_params": plan.prep_params,
        "prep_hash": stable_hash(plan.prep_params),
        "sources": plan.sources,
        "classes": plan.classes,
        "info": plan.info,
        "package_version": package_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "prepare_seconds": round(time.time() - t0, 2),
        "splits": {},
    }
    for split, sp in plan.splits.items():
        if split in hists:
            hist = hists[split]
        else:
            lab = np.asarray(sp.labels).astype(np.int64)
            hist = {"class_hist": np.bincount(lab[lab >= 0], minlength=len(plan.classes)).tolist(),
                    "hist_unit": "samples"}
        manifest["splits"][split] = {
            "n": len(sp.items),
            "listed": sp.listed or len(sp.items),
            **hist,
            "skipped": {r: {"count": len(v), "examples": v[:10]} for r, v in sp.skipped.items()},
            "arrays": {
                key: {"file": _array_path(cache, split, key).name, "shape": list(spec.shape), "dtype": spec.dtype,
                      "sha256": sha256_file(_array_path(cache, split, key))}
                for key, spec in sp.arrays.items()
            },
        }
    manifest["content_hash"] = stable_hash({s: {k: a["sha256"] for k, a in v["arrays"].items()}
                                           for s, v in manifest["splits"].items()})
    prog_path.unlink(missing_ok=True)
    return manifest


class _PixelCounts:
    """Per-class pixel counts of a split's dense label maps, void counted apart (a per-item
    label is meaningless for segmentation, so the class histogram counts pixels)."""

    def __init__(self, plan: PrepPlan, split: str):
        self.k, self.void, self.where = len(plan.classes), plan.void, f"{plan.dataset}/{split}"
        self.counts = np.zeros(self.k, np.int64)
        self.void_pixels = 0

    def add(self, labels: np.ndarray, what: str) -> None:
        flat = np.asarray(labels).ravel().astype(np.int64, copy=False)
        if flat.size and flat.min() < 0:
            raise BenchError(f"{self.where} {what}: negative label value {int(flat.min())}")
        bc = np.bincount(flat)
        if self.void is not None and self.void < len(bc):
            self.void_pixels += int(bc[self.void])
            bc[self.void] = 0
        if bc[self.k:].any():
            bad = int(self.k + np.flatnonzero(bc[self.k:])[0])
            raise BenchError(f"{self.where} {what}: label value {bad} is neither a class (0..{self.k - 1}) "
                             f"nor void ({self.void})")
        self.counts[:len(bc)] += bc[:self.k]

    def report(self) -> dict[str, Any]:
        return {"class_hist": self.counts.tolist(), "hist_unit": "pixels", "void_pixels": self.void_pixels}


def open_cache(cache: str | os.PathLike, dataset: str, prep_params: dict[str, Any] | None = None,
               view: CacheView | None = None, skip: Iterable[str] = ()
               ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Open a finished cache: (manifest, {split: {key: memory-mapped array}}), of the version
    ``view`` pinned (default: the current one); the splits in ``skip`` are not opened at all.

    Arrays are opened copy-on-write (``mmap_mode="c"``): nothing is read until indexed and the
    files are never modified. A memory map keeps its file's data even after a rebuild deleted it.
    """
    cache = Path(cache)
    view = view if view is not None else pin_cache(cache, dataset)
    m = view.manifest
    if prep_params is not None and m["prep_params"] != json.loads(json.dumps(prep_params)):
        diff = {k: (m["prep_params"].get(k), v) for k, v in prep_params.items() if m["prep_params"].get(k) != v}
        raise BenchError(f"cache {cache} was prepared with different preprocessing parameters "
                         f"(cached, requested): {diff}. Rerun `bench prepare {dataset}` with these "
                         f"parameters or point --set {dataset}.cache=... at another directory")
    out: dict[str, dict[str, np.ndarray]] = {}
    for split, s in m["splits"].items():
        if split in skip:
            continue
        out[split] = {}
        for key, a in s["arrays"].items():
            path = view.path(a)
            if not path.exists():
                raise BenchError(f"cache {cache}: array file {a['file']} listed in the manifest is missing")
            try:
                arr = np.load(path, mmap_mode="c")
            except (ValueError, OSError) as exc:
                raise BenchError(f"cache {cache}: {a['file']} is not a readable array ({exc}); see `bench prepare "
                                 f"{dataset} --cache {cache} --check`, or rebuild it with --force") from None
            if list(arr.shape[1:]) != a["shape"] or str(arr.dtype) != a["dtype"] or arr.shape[0] != s["n"]:
                raise BenchError(f"cache {cache}: {a['file']} has shape {arr.shape} {arr.dtype}, manifest says "
                                 f"({s['n']}, {a['shape']}) {a['dtype']}")
            out[split][key] = arr
    return m, out


def check_cache(cache: str | os.PathLike, dataset: str | None = None) -> list[str]:
    """Verify every array against the manifest (existence, shape, dtype, sha256). [] = healthy."""
    cache = Path(cache)
    problems: list[str] = []
    try:
        view = pin_cache(cache, dataset)
    except BenchError as exc:
        return [str(exc)]
    for split, s in view.manifest["splits"].items():
        for key, a in s["arrays"].items():
            try:
                path = view.path(a)
            except BenchError as exc:
                problems.append(str(exc))
                continue
            if not path.exists():
                problems.append(f"{a['file']}: missing")
                continue
            try:
                arr = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as exc:
                problems.append(f"{a['file']}: unreadable ({exc})")
                continue
            if list(arr.shape) != [s["n"], *a["shape"]] or str(arr.dtype) != a["dtype"]:
                problems.append(f"{a['file']}: shape {arr.shape} {arr.dtype}, manifest ({s['n']}, *{a['shape']}) {a['dtype']}")
            del arr
            digest = sha256_file(path)
            if digest != a["sha256"]:
                problems.append(f"{a['file']}: sha256 {digest[:12]}... does not match the manifest ({a['sha256'][:12]}...)")
    return problems


def read_text_lines(path: Path) -> list[str]:
    """Lines of a split file with an optional UTF-8 BOM and LF or CRLF ends (other bytes: error)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BenchError(f"{path}: file not found") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: not UTF-8 text ({exc})") from None
    return text.replace("\r\n", "\n").split("\n")


def iter_nonempty(path: Path) -> Iterable[tuple[int, str]]:
    for i, line in enumerate(read_text_lines(path), 1):
        if line.strip():
            yield i, line
