"""Base class of adapters backed by a prepared cache (all real datasets).

An adapter says how to read its raw layout (:meth:`PreparedDataset.plan`: parse the split files,
check every referenced file, decide what is skipped and why) and how to decode one item
(:meth:`PreparedDataset.decode`). ``bench prepare`` runs both once into the cache; training only
opens the cache. Parameters are split into *preparation* parameters (``prep_keys``: they change
the cached arrays, so the cache records them and refuses to serve a different setting) and
train-time parameters (crop size, number of frames, network width).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from .cache import PrepPlan, build_cache, default_cache_dir, open_cache, read_manifest, sha256_file
from .config import params_dict
from .data import DatasetAdapter, Split
from .errors import BenchError
from .utils import atomic_write_json

PATH_KEYS = ("root", "cache")


class PreparedDataset(DatasetAdapter):
    prep_keys: ClassVar[tuple[str, ...]] = ()
    """Parameter names that change the prepared arrays."""
    label_key: ClassVar[str] = "label"
    classes: ClassVar[list[str]] = []
    """Fixed class list (index = position); never derived from file order."""

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

    def prepare(self, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        from . import __version__

        root = self.root_path()
        plan = self.plan(root)
        for split, sp in plan.splits.items():
            if not sp.items:
                reasons = ", ".join(f"{r}: {len(v)}" for r, v in sp.skipped.items()) or "split file lists no rows"
                raise BenchError(f"{self.name}: split {split!r} has no usable rows ({reasons})")
        self._root = root
        manifest = build_cache(self.cache_path, plan, self.decode, progress, package_version=__version__)
        notes = self.prepare_notes()
        if notes:
            manifest["info"].update(notes)
            atomic_write_json(self.cache_path / "manifest.json", manifest)
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
    def manifest(self) -> dict[str, Any]:
        return read_manifest(self.cache_path, self.name)

    def load(self) -> dict[str, Split]:
        m, arrays = open_cache(self.cache_path, self.name, self.prep_params())
        out = {}
        mods = [x.name for x in self.modalities]
        for split, arrs in arrays.items():
            inputs = {k: torch.from_numpy(v) for k, v in arrs.items() if k in mods}
            aux = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrs.items() if "." in k}
            lab = arrs[self.label_key]
            # class ids become int64; dense label maps stay compact (converted per batch)
            labels = torch.from_numpy(np.asarray(lab).astype(np.int64) if lab.ndim == 1 else lab)
            out[split] = Split(inputs, labels, {"cache": str(self.cache_path)}, aux)
        return out

    def fingerprint(self) -> dict[str, Any]:
        d = params_dict(self.params)
        for k in PATH_KEYS:
            d.pop(k, None)
        return {"dataset": self.name, "params": d, "cache": self.manifest()["content_hash"]}
