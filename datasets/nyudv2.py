"""NYU-Depth V2, labelled set: 40-class semantic segmentation, depth <-> RGB (``datasets.md`` 6).

Accepted raw layouts (``layout=auto`` picks the first one present under ``--root``):

* ``mat``: the official ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3 = HDF5; read with h5py, axes
  reversed: images (N, 3, W, H)) + ``splits.mat`` (``trainNdxs`` / ``testNdxs``, 1-based, 795 / 654)
  + ``classMapping40.mat`` (``mapClass``: 894 labels -> 40 classes), ankurhanda/nyuv2-meta-data;
* ``esanet``: ``train|test/{rgb,depth,depth_raw,labels_40}/<NNNN>.png`` (1-based ids, uint16 mm
  depth, labels 0 void / 1..40) + ``train.txt`` / ``test.txt``;
* ``sagate``: ``RGB/<k>.jpg``, ``Depth/<k>.npy`` (float32 metres), ``Label/<k>.png`` (0 void / 1..40),
  ``train.txt`` / ``test.txt`` lines ``RGB/<k>.jpg<TAB>Label/<k>.png`` (k = 0-based id).

Targets: class id - 1 (0..39), void = 255 (ignored by the loss and the metric). Depth (REC):
in-painted depth in millimetres (``depth_mode=raw``: the raw Kinect depth, 0 = missing),
normalised with ESANet's mean/std and replicated to 3 channels so the ImageNet stem applies.
Geometry (REC, SA-Gate): training draws one random scale 0.5-1.75, a ``crop`` x ``crop`` crop
(padding: 0 for images, 255 for labels) and a flip per sample, applied identically to RGB, depth
and labels; evaluation is full-size, single-scale. Model: DeepLabV3+ on ResNet-18 (ImageNet
weights from ``pretrained``, a local torchvision state dict). mIoU from one confusion matrix over
the test set. Methods whose reference is defined only on image-level outputs (DML, NKD, C2KD)
refuse this dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.registry import register_dataset
from bench.data import Modality, Split
from bench.data.cache import ArraySpec, PrepPlan, SplitPlan, iter_nonempty
from bench.data.prepared import PreparedDataset
from bench.data.vision import normalize, read_gray, read_image
from bench.models import Backbone
from bench.models.registry import build_default

CLASSES = ["wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
           "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
           "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
           "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
           "otherfurniture", "otherprop"]
DEPTH_STATS = {"refined": (2841.95, 1417.26), "raw": (2769.02, 1350.42)}  # mm, ESANet
VOID = 255


@dataclass
class NYUParams:
    root: str = hp("", "raw NYU-Depth V2 directory (only needed by `bench prepare`)")
    cache: str = hp("", "prepared cache directory (default $CMKD_BENCH_CACHE/nyudv2)")
    layout: Literal["auto", "mat", "esanet", "sagate"] = hp("auto", "raw layout")
    depth_mode: Literal["refined", "raw"] = hp("refined", "in-painted (REC) or raw Kinect depth")
    height: int = hp(480, "cached height (width = 4/3 height; 480 = full resolution)")
    crop: int = hp(480, "training crop size (square)")
    width: int = hp(64, "ResNet first-stage width (64 = ResNet-18)")
    aspp_channels: int = hp(256, "ASPP / decoder channels")
    pretrained: str = hp("", "local torchvision ResNet-18 ImageNet state dict (empty: random init)")


@register_dataset("nyudv2")
class NYUDepthV2(PreparedDataset):
    description = "NYU-Depth V2 labelled 1449: depth <-> RGB 40-class segmentation (DeepLabV3+ ResNet-18, mIoU)"
    Params = NYUParams
    task = "segmentation"
    metric = "mIoU"
    ignore_index = VOID
    prep_keys = ("layout", "depth_mode", "height")
    train_defaults = {"epochs": 50, "teacher_epochs": 50, "batch_size": 16, "eval_batch_size": 8, "lr": 0.01,
                      "schedule": "poly", "weight_decay": 1e-4}

    @property
    def num_classes(self) -> int:
        return 40

    @property
    def class_names(self) -> list[str]:
        return list(CLASSES)

    @property
    def hw(self) -> tuple[int, int]:
        h = self.params.height
        return h, h * 4 // 3

    @property
    def modalities(self) -> list[Modality]:
        h, w = self.hw
        return [Modality("depth", "d", "image", (3, h, w)), Modality("rgb", "r", "image", (3, h, w))]

    # -- preparation -------------------------------------------------------------------------
    def _layout(self, root: Path) -> str:
        if self.params.layout != "auto":
            return self.params.layout
        if (root / "nyu_depth_v2_labeled.mat").exists():
            return "mat"
        if (root / "train" / "rgb").is_dir():
            return "esanet"
        if (root / "RGB").is_dir():
            return "sagate"
        raise BenchError(f"nyudv2: {root} holds none of the supported layouts (nyu_depth_v2_labeled.mat, "
                         f"ESANet train/rgb/, SA-Gate RGB/)")

    def array_specs(self) -> dict[str, ArraySpec]:
        h, w = self.hw
        return {"rgb": ArraySpec((h, w, 3), "uint8"), "depth": ArraySpec((h, w), "uint16"),
                "label": ArraySpec((h, w), "uint8")}

    def plan(self, root: Path) -> PrepPlan:
        layout = self._layout(root)
        self._lay, self._root = layout, root
        specs = self.array_specs()
        sources: dict[str, str] = {}
        ids: dict[str, list[Any]] = {}
        if layout == "mat":
            import h5py
            from scipy.io import loadmat

            mat = root / "nyu_depth_v2_labeled.mat"
            if not h5py.is_hdf5(mat):
                raise BenchError(f"{mat}: MATLAB v7.3/HDF5 expected (this file is not HDF5: an older .mat format?)")
            with h5py.File(mat, "r") as f:
                for key in ("images", "depths", "labels") + (("rawDepths",) if self.params.depth_mode == "raw" else ()):
                    if key not in f:
                        raise BenchError(f"{mat}: HDF5 key {key!r} missing")
                n = f["images"].shape[0]
            for fn in ("splits.mat", "classMapping40.mat"):
                if not (root / fn).exists():
                    raise BenchError(f"nyudv2: {root / fn} not found (ankurhanda/nyuv2-meta-data)")
            sp = loadmat(root / "splits.mat")
            cm = loadmat(root / "classMapping40.mat")
            if "mapClass" not in cm:
                raise BenchError(f"{root / 'classMapping40.mat'}: variable 'mapClass' missing")
            self._map = np.concatenate([[0], np.asarray(cm["mapClass"]).reshape(-1).astype(np.int64)])
            for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
                if key not in sp:
                    raise BenchError(f"{root / 'splits.mat'}: variable {key!r} missing")
                k = np.asarray(sp[key]).reshape(-1).astype(np.int64)
                if k.min() < 1 or k.max() > n:
                    raise BenchError(f"{root / 'splits.mat'}: {key} holds image id {int(k.max())} but the .mat has {n} images (ids are 1-based)")
                ids[split] = [int(i) - 1 for i in k]
            for fn in ("splits.mat", "classMapping40.mat"):
                rel, d = self.source(root, root / fn)
                sources[rel] = d
            sources["nyu_depth_v2_labeled.mat"] = f"{mat.stat().st_size} bytes"
        else:
            for split in ("train", "test"):
                path = root / f"{split}.txt"
                if not path.exists():
                    raise BenchError(f"nyudv2: split file {path} not found")
                rel, d = self.source(root, path)
                sources[rel] = d
                items = []
                for lineno, line in iter_nonempty(path):
                    if layout == "esanet":
                        items.append((split, line.strip()))
                    else:
                        parts = line.strip().split("\t")
                        if len(parts) != 2:
                            raise BenchError(f"{path}:{lineno}: expected 'RGB/<k>.jpg<TAB>Label/<k>.png', got {line!r}")
                        items.append((parts[0], parts[1]))
                ids[split] = items
        splits = {}
        for split, items in ids.items():
            seen: set[Any] = set()
            # labels are maps: the class histogram (pixels per class) is counted as they are written
            sp_ = SplitPlan([], np.zeros(0, np.int64), specs)
            sp_.listed = len(items)
            for it in items:
                if it in seen:
                    sp_.skip("duplicate row", self._item_name(it))
                else:
                    seen.add(it)
                    sp_.items.append(it)
            splits[split] = sp_
        names = {split: set(map(self._item_name, sp_.items)) for split, sp_ in splits.items()}
        shared = sorted(names["train"] & names["test"])
        return PrepPlan(self.name, self.prep_params(), splits, sources, list(CLASSES),
                        {"layout": layout, "depth": f"{self.params.depth_mode} depth, uint16 mm",
                         "labels": "class id - 1 (0..39), void 255", "size": "{}x{}".format(*self.hw),
                         "images_in_train_and_test": {"count": len(shared), "examples": shared[:10]}},
                        void=VOID)

    def _item_name(self, item: Any) -> str:
        """The image an item names: NYU id (1-based, .mat), ``NNNN`` (ESANet) or the RGB file (SA-Gate)."""
        if self._lay == "mat":
            return f"NYU id {item + 1}"
        return item[1] if self._lay == "esanet" else item[0]

    def _fit(self, a: np.ndarray, nearest: bool, where: str) -> np.ndarray:
        from PIL import Image

        h, w = self.hw
        if a.shape[:2] == (h, w):
            return a
        mode = Image.NEAREST if nearest else Image.BILINEAR
        if a.dtype == np.uint16 or a.dtype == np.float32:
            return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize((w, h), mode)).astype(a.dtype)
        return np.asarray(Image.fromarray(a).resize((w, h), mode))

    def _labels40(self, raw: np.ndarray, where: str, mapped: bool) -> np.ndarray:
        raw = raw.astype(np.int64)
        if not mapped:
            if raw.max() > 894:
                raise BenchError(f"{where}: label {int(raw.max())} outside 0..894")
            raw = self._map[raw]
        if raw.max() > 40 or raw.min() < 0:
            raise BenchError(f"{where}: label value {int(raw.max())} outside 0..40 (0 = void)")
        return np.where(raw == 0, VOID, raw - 1).astype(np.uint8)

    def decode(self, split: str, item: Any) -> dict[str, np.ndarray]:
        root, lay = self._root, self._lay
        if lay == "mat":
            import h5py

            if not hasattr(self, "_h5"):
                self._h5 = h5py.File(root / "nyu_depth_v2_labeled.mat", "r")
            f, i = self._h5, item
            rgb = np.ascontiguousarray(f["images"][i].transpose(2, 1, 0))
            dkey = "depths" if self.params.depth_mode == "refined" else "rawDepths"
            depth = np.asarray(f[dkey][i]).T * 1000.0
            lab = self._labels40(np.asarray(f["labels"][i]).T, f"nyu_depth_v2_labeled.mat labels[{i}]", False)
            where = f"nyu_depth_v2_labeled.mat[{i}]"
        elif lay == "esanet":
            sp, k = item
            d = root / sp
            rgb = read_image(d / "rgb" / f"{k}.png")
            dd = "depth" if self.params.depth_mode == "refined" else "depth_raw"
            depth = read_gray(d / dd / f"{k}.png").astype(np.float64)
            lp = d / "labels_40" / f"{k}.png"
            lab = self._labels40(read_gray(lp), str(lp), True)
            where = str(d / "rgb" / f"{k}.png")
        else:
            rgb_rel, lab_rel = item
            if self.params.depth_mode == "raw":
                raise BenchError("nyudv2: the SA-Gate layout has no raw depth; use depth_mode=refined")
            rgb = read_image(root / rgb_rel)
            stem = Path(rgb_rel).stem
            dp = root / "Depth" / f"{stem}.npy"
            if not dp.exists():
                raise BenchError(f"{dp}: depth file not found")
            depth = np.load(dp).astype(np.float64) * 1000.0
            lab = self._labels40(read_gray(root / lab_rel), str(root / lab_rel), True)
            where = str(root / rgb_rel)
        if rgb.shape[:2] != lab.shape or depth.shape != lab.shape:
            raise BenchError(f"{where}: RGB {rgb.shape[:2]}, depth {depth.shape} and label {lab.shape} sizes differ")
        depth = np.clip(np.round(depth), 0, 65535).astype(np.uint16)
        return {"rgb": self._fit(rgb, False, where), "depth": self._fit(depth, False, where),
                "label": self._fit(lab, True, where)}

    # -- training ----------------------------------------------------------------------------
    def _to_input(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        if modality == "rgb":
            return normalize(x.permute(0, 3, 1, 2).float() / 255.0)
        mean, std = DEPTH_STATS[self.params.depth_mode]
        d = (x.float() - mean) / std
        return d[:, None].expand(-1, 3, -1, -1).contiguous()

    def batch(self, split: Split, idx: torch.Tensor, modalities: list[str], device: torch.device, train: bool,
              generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        xs = {m: self._to_input(m, torch.as_tensor(split.inputs[m][idx]).to(device, non_blocking=True)) for m in modalities}
        y = torch.as_tensor(split.labels[idx]).to(device).long()
        if not train:
            return xs, y
        c = self.params.crop
        outs: dict[str, list[torch.Tensor]] = {m: [] for m in modalities}
        ys = []
        h, w = y.shape[-2:]
        for b in range(y.shape[0]):
            s = float(torch.empty(1).uniform_(0.5, 1.75, generator=generator))
            nh, nw = max(1, int(h * s + 0.5)), max(1, int(w * s + 0.5))
            ph, pw = max(c - nh, 0), max(c - nw, 0)
            i = int(torch.randint(0, max(nh + ph - c, 0) + 1, (1,), generator=generator))
            j = int(torch.randint(0, max(nw + pw - c, 0) + 1, (1,), generator=generator))
            flip = bool(torch.rand(1, generator=generator) < 0.5)

            def geo(t: torch.Tensor, nearest: bool, fill: float) -> torch.Tensor:
                t = F.interpolate(t[None].float(), size=(nh, nw), mode="nearest" if nearest else "bilinear",
                                  align_corners=None if nearest else False)[0]
                if ph or pw:
                    t = F.pad(t, (0, pw, 0, ph), value=fill)
                t = t[..., i:i + c, j:j + c]
                return t.flip(-1) if flip else t

            for m in modalities:
                outs[m].append(geo(xs[m][b], False, 0.0))
            ys.append(geo(y[b][None], True, float(VOID))[0].long())
        return {m: torch.stack(v) for m, v in outs.items()}, torch.stack(ys)

    def default_backbone(self, modality: str) -> tuple[str, dict[str, Any]]:
        """DeepLabV3+ on a ResNet-18-style encoder for both modalities (depth as a 3-channel HHA-like image)."""
        p = self.params
        return "deeplabv3plus", {"in_channels": 3, "width": p.width, "aspp_channels": p.aspp_channels,
                                 "pretrained": p.pretrained}

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        return build_default(self, modality, num_classes)
