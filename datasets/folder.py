"""Bring your own paired dataset: a folder, no code.

Format (``bench run --datasets path/to/folder``)::

    folder/meta.json   {"name": "mydata", "num_classes": 5, "modalities": ["audio", "visual"],
                        "class_names": [...optional...], "codes": {"audio": "a"} (optional)}
    folder/train.npz   one array per modality (first axis = samples, any trailing shape) + int "label"
    folder/test.npz    same keys; optional folder/val.npz (else a validation split is carved)

The encoder is chosen from each modality's per-sample shape: ``(D,)`` vectors -> MLP, ``(C, L)``
sequences -> 1-D ResNet, ``(C, H, W)`` images -> 2-D ResNet (an ``(H, W)`` array is a 1-channel
image when ``H, W >= 8``, else a sequence). Float arrays are standardised per channel with
train statistics; uint8 arrays are read as images in [0, 255]. ``--set NAME.width=...`` sets the
encoder width. Everything is validated with errors naming the file and key: missing keys,
sample-count mismatches, non-integer or out-of-range labels, NaN/inf values.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.api.config import hp, params_dict
from bench.api.errors import BenchError
from bench.api.names import check_component
from bench.api.registry import DATASETS, register_dataset
from bench.data import DatasetAdapter, Modality, Split
from bench.models import Backbone
from bench.models.registry import build_default
from bench.records.provenance import stable_hash


@dataclass
class FolderParams:
    root: str = hp("", "dataset folder (meta.json, train.npz, test.npz)")
    width: int = hp(32, "encoder width (MLP hidden size / first ResNet stage)")


def _kind(shape: tuple[int, ...]) -> str:
    if len(shape) == 1:
        return "vector"
    if len(shape) == 2:
        return "image" if min(shape) >= 8 and shape[0] > 4 else "sequence"
    if len(shape) == 3:
        return "image"
    raise ValueError(shape)


@register_dataset("folder")
class FolderDataset(DatasetAdapter):
    description = "Bring your own: meta.json + train.npz/test.npz in a folder (pass the folder path as the dataset)"
    Params = FolderParams

    def __init__(self, params: Any, cache_dir: str | None = None):
        super().__init__(params, cache_dir)
        self.meta: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if params.root:
            self._read_meta()

    @property
    def folder(self) -> Path:
        return Path(self.params.root).expanduser()

    def _read_meta(self) -> None:
        path = self.folder / "meta.json"
        if not path.exists():
            raise BenchError(f"{self.folder}: meta.json not found (a dataset folder needs meta.json, train.npz, test.npz)")
        try:
            meta = json.loads(path.read_text())
        except ValueError as exc:
            raise BenchError(f"{path}: not valid JSON ({exc})") from None
        for key, typ in (("name", str), ("num_classes", int), ("modalities", list)):
            if key not in meta:
                raise BenchError(f"{path}: key {key!r} missing")
            if not isinstance(meta[key], typ) or isinstance(meta[key], bool):
                raise BenchError(f"{path}: {key!r} must be a {typ.__name__}, got {meta[key]!r}")
        if meta["num_classes"] < 2:
            raise BenchError(f"{path}: num_classes must be >= 2")
        # the name and the modality names/codes become folder and file names of records and teachers
        check_component(meta["name"], f"{path}: 'name'")
        if meta["name"] in DATASETS:
            raise BenchError(f"{path}: 'name' {meta['name']!r} is a built-in dataset's name; choose another")
        mods = meta["modalities"]
        if len(mods) < 2 or len(set(mods)) != len(mods):
            raise BenchError(f"{path}: 'modalities' must list at least two distinct names, got {mods!r}")
        for i, m in enumerate(mods):
            check_component(m, f"{path}: 'modalities'[{i}]")
        if "label" in mods:
            raise BenchError(f"{path}: 'label' is reserved for the labels array")
        codes = meta.get("codes", {})
        if not isinstance(codes, dict):
            raise BenchError(f"{path}: 'codes' must be an object mapping modality -> short code, "
                             f"e.g. {{\"{mods[0]}\": \"{mods[0][:1]}\"}}; got {type(codes).__name__} {codes!r}")
        for m, c in codes.items():
            if m not in mods:
                raise BenchError(f"{path}: 'codes' names {m!r}, which is not one of the modalities {mods}")
            check_component(c, f"{path}: 'codes'.{m}")
        if len(set(codes.values())) != len(codes):
            raise BenchError(f"{path}: 'codes' must be distinct, got {codes!r}")
        cn = meta.get("class_names")
        if cn is not None and (not isinstance(cn, list) or len(cn) != meta["num_classes"]
                               or not all(isinstance(c, str) for c in cn)):
            raise BenchError(f"{path}: 'class_names' must be a list of num_classes={meta['num_classes']} strings")
        self.meta = meta
        self.name = meta["name"]  # type: ignore[misc]
        # per-sample shapes from the train file header (np.load of an npz reads lazily)
        with self._open("train") as z:
            for m in mods:
                self._shapes[m] = tuple(self._get(z, "train", m).shape[1:])
                if 0 in self._shapes[m]:  # no features to learn from; the network would fail to build
                    raise BenchError(f"{self.folder / 'train.npz'}: {m!r} has per-sample shape {self._shapes[m]}: "
                                     f"every dimension must be at least 1")
                try:
                    _kind(self._shapes[m])
                except ValueError:
                    raise BenchError(f"{self.folder / 'train.npz'}: {m!r} has per-sample shape {self._shapes[m]}; "
                                     f"supported: (D,), (C, L), (H, W), (C, H, W)") from None

    def _open(self, split: str):
        path = self.folder / f"{split}.npz"
        if not path.exists():
            raise BenchError(f"{path}: not found")
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise BenchError(f"{path}: not a readable .npz ({exc})") from None

    def _get(self, z, split: str, key: str) -> np.ndarray:
        if key not in z.files:
            raise BenchError(f"{self.folder / (split + '.npz')}: key {key!r} missing (has {', '.join(z.files)})")
        try:
            return z[key]
        except ValueError as exc:
            raise BenchError(f"{self.folder / (split + '.npz')}: key {key!r} unreadable ({exc})") from None

    def _need_meta(self) -> None:
        if not self.meta:
            raise BenchError("folder dataset: give the folder path as the dataset (`--datasets path/to/folder`) "
                             "or --set folder.root=PATH")

    @property
    def modalities(self) -> list[Modality]:
        if not self.meta:
            return [Modality("a", "a", "any"), Modality("b", "b", "any")]
        codes = self.meta.get("codes", {})
        used: set[str] = set(codes.values())
        out = []
        for m in self.meta["modalities"]:
            c = codes.get(m) or next((m[:k] for k in range(1, len(m) + 1) if m[:k] not in used), m)
            used.add(c)
            out.append(Modality(m, c, _kind(self._shapes[m]), self._shapes[m]))
        return out

    @property
    def num_classes(self) -> int:
        return int(self.meta.get("num_classes", 2))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [str(i) for i in range(self.num_classes)])

    def load(self) -> dict[str, Split]:
        return self._load(("train", "val", "test"))

    def load_without_test(self) -> dict[str, Split]:
        """Tuning: test.npz is never loaded (it may be absent or damaged; :meth:`fingerprint` hashes
        its bytes, as the dataset's identity, which a damaged file does not disturb)."""
        return self._load(("train", "val"))

    def _load(self, names: tuple[str, ...]) -> dict[str, Split]:
        self._need_meta()
        out = {}
        for split in names:
            if split == "val" and not (self.folder / "val.npz").exists():
                continue
            where = self.folder / f"{split}.npz"
            with self._open(split) as z:
                lab = self._get(z, split, "label")
                if lab.ndim != 1 or lab.dtype.kind not in "iu":
                    raise BenchError(f"{where}: 'label' must be a 1-D integer array, got {lab.dtype} {lab.shape}")
                if lab.size == 0:
                    raise BenchError(f"{where}: the {split} split has no samples ('label' is empty)")
                if split == "train" and len(np.unique(lab)) < 2:
                    raise BenchError(f"{where}: every training sample has label {int(lab[0])}; a classification "
                                     f"benchmark needs at least two classes in train")
                if lab.size and (lab.min() < 0 or lab.max() >= self.num_classes):
                    raise BenchError(f"{where}: 'label' values must lie in 0..{self.num_classes - 1}, "
                                     f"found {int(lab.min())}..{int(lab.max())}")
                inputs = {}
                for m in self.meta["modalities"]:
                    a = self._get(z, split, m)
                    if a.shape[0] != lab.shape[0]:
                        raise BenchError(f"{where}: {m!r} has {a.shape[0]} samples but 'label' has {lab.shape[0]}")
                    if tuple(a.shape[1:]) != self._shapes[m]:
                        raise BenchError(f"{where}: {m!r} has per-sample shape {a.shape[1:]}, train.npz has {self._shapes[m]}")
                    if a.dtype.kind == "f" and not np.isfinite(a).all():
                        bad = int((~np.isfinite(a)).reshape(a.shape[0], -1).any(1).argmax())
                        raise BenchError(f"{where}: {m!r} contains NaN/inf (first at sample {bad})")
                    if a.dtype.kind not in "fiub":
                        raise BenchError(f"{where}: {m!r} has dtype {a.dtype}; numeric arrays expected")
                    inputs[m] = torch.from_numpy(np.ascontiguousarray(a))
                out[split] = Split(inputs, torch.from_numpy(lab.astype(np.int64)))
        self._compute_stats(out["train"])
        return out

    def _compute_stats(self, train: Split) -> None:
        """Per-channel train statistics (uint8: [0, 255] -> [0, 1]); recomputed by any instance."""
        for m in self.meta["modalities"]:
            x = train.inputs[m]
            if x.dtype == torch.uint8:
                self._stats[m] = (torch.tensor(0.0), torch.tensor(255.0))
            else:
                xf = x.double()
                dims = [0] + (list(range(2, xf.dim())) if xf.dim() > 2 else [])
                shape = [1, -1] + [1] * (xf.dim() - 2) if xf.dim() > 2 else [1, -1]
                mu, sd = xf.mean(dims).view(shape), xf.std(dims).view(shape)
                self._stats[m] = (mu.float(), sd.clamp_min(1e-8).float())

    def prepare_batch(self, modality: str, x: torch.Tensor, train: bool, generator: torch.Generator | None,
                      aux: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if modality not in self._stats:  # splits came from the runner's per-process cache
            self._load(("train",))  # train statistics only: test.npz is not read (tuning never reads it)
        mu, sd = self._stats[modality]
        x = (x.float() - mu.to(x.device)) / sd.to(x.device)
        if len(self._shapes[modality]) == 2 and _kind(self._shapes[modality]) == "image":
            x = x.unsqueeze(1)
        return x

    def augments(self, modality: str) -> bool:
        return False  # standardised only

    def default_backbone(self, modality: str) -> tuple[str, dict[str, Any]]:
        """By the stored shape: an MLP for vectors, a small 1-D ResNet for sequences, a 2-D one for images."""
        self._need_meta()
        shape, w = self._shapes[modality], self.params.width
        kind = _kind(shape)
        if kind == "vector":
            return "mlp", {"in_features": shape[0], "widths": (4 * w, 4 * w)}
        dim, cin = (1, shape[0]) if kind == "sequence" else (2, shape[0] if len(shape) == 3 else 1)
        return "resnet", {"dim": dim, "in_channels": cin, "widths": (w, 2 * w, 4 * w), "blocks": (1, 1, 1), "stem": "small"}

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        return build_default(self, modality, num_classes)

    def fingerprint(self) -> dict[str, Any]:
        self._need_meta()
        from bench.data.cache import sha256_file

        files = {p.name: sha256_file(p) for p in sorted(self.folder.glob("*")) if p.name in ("meta.json", "train.npz", "val.npz", "test.npz")}
        d = params_dict(self.params)
        d.pop("root", None)
        return {"dataset": self.name, "folder": True, "params": d, "files": stable_hash(files)}
