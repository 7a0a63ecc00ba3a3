"""Base class of adapters backed by a prepared cache (all real datasets).

An adapter says how to read its raw layout (:meth:`PreparedDataset.plan`: parse the split files,
check every referenced file, decide what is skipped and why) and how to decode one item
(:meth:`PreparedDataset.decode`). ``bench prepare`` runs both once into the cache; training only
opens the cache. Parameters are split into *preparation* parameters (``prep_keys``: they change
the cached arrays, so the cache records them and refuses to serve a different setting) and
train-time parameters (crop size, number of frames, network width).

A run needs only the cache: preparation parameters the user did not set are read from the
cache's manifest (``--set vggsound.cache=DIR`` is enough for a cache prepared with
``frame_cache=64``), so the run's configuration, and with it its hash, is the same whether a
setting was repeated or read. A setting given explicitly that differs from the cache's is an
error naming both values. To tell the two apart, each adapter's ``Params`` remembers which fields
its constructor was given (:func:`track_explicit`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from bench.api.config import coerce, params_dict
from bench.api.errors import BenchError
from bench.data import DatasetAdapter, Split
from bench.data.cache import PrepPlan, build_cache, default_cache_dir, open_cache, refuse_rebuild, sha256_file
from bench.data.versions import MANIFEST, CacheView, pin_cache

PATH_KEYS = ("root", "cache")


class Rows:
    """Rows ``index`` of a memory-mapped tensor, read only when indexed.

    The runner carves a validation split out of train (``Split.subset``); on a tensor that is a
    fancy index, which reads the whole memory map and copies it into anonymous RAM: both parts of
    a VGGSound-50 train split (10.7 GiB at ``frame_cache=64``) were resident before the first step,
    whatever the placement. A view holds the index only; batches are gathered from the map as
    before, and placing it on a device copies it a chunk at a time.
    """

    def __init__(self, base: Any, index: torch.Tensor):
        index = torch.as_tensor(index, dtype=torch.long).cpu()
        if isinstance(base, Rows):
            base, index = base.base, base.index[index]
        self.base, self.index = base, index

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    def dim(self) -> int:
        return self.base.dim()

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return self.base.element_size()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: Any) -> torch.Tensor:
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu()
        return self.base[self.index[idx]]

    def numpy(self) -> np.ndarray:
        return self[:].numpy()


class CachedSplit(Split):
    """A split of memory-mapped arrays whose subsets are :class:`Rows` views, not copies (class
    labels and side arrays are small and already in RAM: those are indexed)."""

    def subset(self, idx: torch.Tensor) -> "CachedSplit":
        idx = torch.as_tensor(idx, dtype=torch.long)
        labels = self.labels[idx] if self.labels.dim() == 1 else Rows(self.labels, idx)
        return CachedSplit({k: Rows(v, idx) for k, v in self.inputs.items()}, labels, dict(self.meta),
                           {k: v[idx] for k, v in self.aux.items()})


def track_explicit(params_cls: type) -> None:
    """Make the dataclass ``params_cls`` record, on each instance, the fields its constructor was
    given (``_explicit``): :func:`bench.api.config.build_params` passes exactly the ``--set`` keys."""
    if not dataclasses.is_dataclass(params_cls) or "_explicit_tracked" in params_cls.__dict__:
        return
    init = params_cls.__init__
    names = [f.name for f in dataclasses.fields(params_cls)]

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        object.__setattr__(self, "_explicit", frozenset(names[:len(args)]) | frozenset(kwargs))

    params_cls.__init__ = __init__  # type: ignore[misc]
    params_cls._explicit_tracked = True  # type: ignore[attr-defined]


def explicit_keys(params: Any) -> set[str]:
    """Fields set explicitly; without a record, those that differ from their default."""
    got = getattr(params, "_explicit", None)
    if got is not None:
        return set(got)
    out = set()
    for f in dataclasses.fields(params):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if getattr(params, f.name) != default:
            out.add(f.name)
    return out


class PreparedDataset(DatasetAdapter):
    prep_keys: ClassVar[tuple[str, ...]] = ()
    """Parameter names that change the prepared arrays."""
    label_key: ClassVar[str] = "label"
    classes: ClassVar[list[str]] = []
    """Fixed class list (index = position); never derived from file order."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Params" in cls.__dict__:
            track_explicit(cls.Params)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    # -- locations ---------------------------------------------------------------------------
    @property
    def cache_path(self) -> Path:
        c = getattr(self.params, "cache", "")
        return Path(c).expanduser() if c else default_cache_dir(self.name)

    def root_path(self) -> Path:
        r = getattr(self.params, "root", "")
        if not r:
            raise BenchError(f"{self.name}: no raw dataset directory given: use `bench prepare {self.name} --root RAW_DIR`")
        p = Path(r).expanduser()
        if not p.is_dir():
            raise BenchError(f"{self.name}: raw dataset directory {p} does not exist")
        return p

    def prep_params(self) -> dict[str, Any]:
        d = params_dict(self.params)
        return {k: d[k] for k in self.prep_keys}

    # -- preparation -------------------------------------------------------------------------
    def plan(self, root: Path) -> PrepPlan:
        raise NotImplementedError

    def decode(self, split: str, item: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def prepare(self, progress: Callable[[str, int, int], None] | None = None, force: bool = False) -> dict[str, Any]:
        """Decode the raw dataset into the cache. A complete cache is rebuilt only with ``force``
        (runs reading it keep the version they opened: :mod:`bench.data.versions`)."""
        from bench import __version__

        if not force:
            refuse_rebuild(self.cache_path, self.name)  # before planning, which reads every raw file
        root = self.root_path()
        plan = self.plan(root)
        for split, sp in plan.splits.items():
            if not sp.items:
                reasons = ", ".join(f"{r}: {len(v)}" for r, v in sp.skipped.items()) or "split file lists no rows"
                raise BenchError(f"{self.name}: split {split!r} has no usable rows ({reasons})")
        self._root = root
        self._view = None  # no reader of the version being replaced (it goes once no one reads it); reads the new one
        self._settled = False
        manifest = build_cache(self.cache_path, plan, self.decode, progress, package_version=__version__,
                               force=force, notes=self.prepare_notes)
        return manifest

    def prepare_notes(self) -> dict[str, Any]:
        """Facts learnt while decoding (e.g. clips with empty audio), added to the manifest."""
        return {}

    @staticmethod
    def source(root: Path, path: Path) -> tuple[str, str]:
        try:
            rel = str(path.relative_to(root))
        except ValueError:
            rel = str(path)
        return rel, sha256_file(path)

    # -- loading -----------------------------------------------------------------------------
    def view(self) -> CacheView:
        """The version of the cache this adapter reads, pinned at its first use: settings, the
        fingerprint (config hash) and the arrays all come from it, even if ``bench prepare
        --force`` swaps in another version meanwhile."""
        view = getattr(self, "_view", None)
        if view is None or view.cache != self.cache_path:
            view = self._view = pin_cache(self.cache_path, self.name)
        return view

    def manifest(self) -> dict[str, Any]:
        return self.view().manifest

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the pinned view (an open lock): a copy pins the cache again when used."""
        return {k: v for k, v in self.__dict__.items() if k != "_view"}

    def use_cache_settings(self) -> None:
        """Take the preparation parameters the user did not set from the cache's manifest (once);
        an explicit setting that differs from the cache's is an error naming both values.
        Without a manifest nothing changes (loading then reports the missing cache)."""
        if getattr(self, "_settled", False) or not (self.cache_path / MANIFEST).exists():
            return
        m = self.manifest()
        cached = m.get("prep_params", {})
        explicit = explicit_keys(self.params)
        hints = typing.get_type_hints(type(self.params))
        conflicts = []
        for k in self.prep_keys:
            if k not in cached or params_dict(self.params)[k] == cached[k]:
                continue
            if k in explicit:
                conflicts.append(f"{self.name}.{k}={getattr(self.params, k)} was set, but the cache was prepared "
                                 f"with {k}={cached[k]}")
            else:
                setattr(self.params, k, coerce(cached[k], hints[k], f"{self.cache_path / MANIFEST} prep_params.{k}"))
        if conflicts:
            raise BenchError(f"cache {self.cache_path}: " + "; ".join(conflicts) + ". Drop the setting to use this "
                             f"cache as prepared, or prepare another cache with it (`bench prepare {self.name} "
                             f"--root RAW_DIR --cache OTHER_DIR --set ...`) and point --set {self.name}.cache at it")
        self.adopt_manifest(m, explicit)
        self._settled = True

    def adopt_manifest(self, manifest: dict[str, Any], explicit: set[str]) -> None:
        """Other settings an adapter takes from the manifest when not given (e.g. a tokenizer dir)."""

    def load(self) -> dict[str, Split]:
        return self._load()

    def load_without_test(self) -> dict[str, Split]:
        """Tuning: the test arrays are not even opened (a damaged or absent test file is fine)."""
        return self._load(skip=("test",))

    def _load(self, skip: tuple[str, ...] = ()) -> dict[str, Split]:
        self.use_cache_settings()
        m, arrays = open_cache(self.cache_path, self.name, self.prep_params(), view=self.view(), skip=skip)
        out = {}
        mods = [x.name for x in self.modalities]
        for split, arrs in arrays.items():
            inputs = {k: torch.from_numpy(v) for k, v in arrs.items() if k in mods}
            aux = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrs.items() if "." in k}
            lab = arrs[self.label_key]
            # class ids become int64; dense label maps stay compact (converted per batch)
            labels = torch.from_numpy(np.asarray(lab).astype(np.int64) if lab.ndim == 1 else lab)
            out[split] = CachedSplit(inputs, labels, {"cache": str(self.cache_path), "dataset": self.name}, aux)
        return out

    def fingerprint(self) -> dict[str, Any]:
        self.use_cache_settings()  # the same identity whether a preparation setting was repeated or read
        d = params_dict(self.params)
        for k in PATH_KEYS:
            d.pop(k, None)
        return {"dataset": self.name, "params": d, "cache": self.manifest()["content_hash"]}
