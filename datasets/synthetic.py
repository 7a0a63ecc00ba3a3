"""``synthetic``: the embedded default benchmark (no files, generated from a seed).

A test bed where the premise of cross-modal KD (and of FD-CMKD in particular) can be *checked*,
because every sample's latent causes are known and kept.

What is generated
-----------------
For each sample, a label ``y`` (balanced over ``num_classes`` classes) and three latent vectors:

* ``z``   (``shared_dim``):   ``a_sh * mu[y]    + N(0, I)``: the **shared** latent, the same for both
  modalities (the knowledge a teacher can pass on);
* ``s_a`` (``specific_dim``): ``a_sp * nu_a[y]  + N(0, I)``: seen by audio only;
* ``s_v`` (``specific_dim``): ``a_sp * nu_v[y]  + N(0, I)``: seen by visual only.

``mu``, ``nu_a`` and ``nu_v`` each place the class means on a regular simplex (every pair of
classes 1 apart), randomly oriented. ``a_sh = separation * sqrt(1 - gap)`` and
``a_sp = separation * sqrt(gap)``, so in the joint latent ``(z, s_m)`` of either modality every
pair of classes is ``separation`` noise-standard-deviations apart whatever the ``gap``; ``gap``
only moves that class information from the shared latent (``gap = 0``: everything a modality knows
about the class, the other can see too) to the modality-specific ones (``gap = 1``: the two
modalities share nothing about the class). The per-sample noise of ``s_a`` is what a student that
imitates an audio teacher cannot observe: with ``gap > 0`` the teacher's features carry it, and
imitating them means fitting noise.

Each modality observes its latents linearly, with structured nuisance and white noise::

    x_m = scale_m * ( snr_m * (P_m z + Q_m s_m) / sqrt(shared_dim + specific_dim)
                      + nuisance * N_m n  +  e ),     n ~ N(0, I_r), e ~ N(0, I)

``P_m``, ``Q_m`` are smooth patterns (audio: low-frequency multichannel sinusoids; visual: sums of
coloured Gaussian blobs), orthonormalised together and scaled to unit RMS; ``N_m`` are
``nuisance_dim`` further patterns (audio: faster oscillations; visual: blobs), not orthogonal to
the signal. ``scale_m`` differs by 10x (audio 5.0, visual 0.5: feature-scale mismatch) and
``snr_m`` makes ``audio`` the strong modality and ``visual`` the weak one.

Because everything is linear-Gaussian given ``y``, the Bayes-optimal accuracy is known exactly
(:func:`bayes_accuracies`): from the latents alone and from each modality's raw input. The latents
of every sample travel with the split as side arrays ``truth.z``, ``truth.s_audio``,
``truth.s_visual`` (:attr:`bench.data.Split.aux`, indexed with the samples, never handed to a
network: only ``<modality>.*`` side arrays reach ``prepare_batch``).

``audio`` is a multichannel sequence (8 x 16; encoder: 1-D ResNet); ``visual`` a small RGB image
(3 x 8 x 8; encoder: 2-D ResNet). Both encoders end in a ``4 * width``-d pooled feature (64-d by
default), so feature-space methods (FD-CMKD's DFT over the feature vector) apply without a
projector. The same ``data_seed`` always produces the same arrays; run seeds only change
initialisation and batch order, and with ``train.split_mode=per_seed`` which generated sample
is in train and which in test (both are i.i.d. draws of the one model that ``data_seed`` fixes:
the runner pools them and draws the split again per seed, class counts kept; the generating
model, hence the Bayes accuracies, never moves).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.api.config import hp
from bench.api.registry import register_dataset
from bench.data import DatasetAdapter, Modality, Split
from bench.models import Backbone
from bench.models.registry import build_default

MODALITIES = ("audio", "visual")
AUDIO_SHAPE = (8, 16)
VISUAL_SHAPE = (3, 8, 8)
SHAPES = {"audio": AUDIO_SHAPE, "visual": VISUAL_SHAPE}
SCALES = {"audio": 5.0, "visual": 0.5}
TRUTH_KEYS = ("z", "s_audio", "s_visual")


@dataclass
class SyntheticParams:
    n_train: int = hp(1200, "training samples (a validation split is carved from these)")
    n_test: int = hp(4000, "test samples")
    num_classes: int = hp(6, "number of classes")
    gap: float = hp(0.5, "modality gap in [0, 1]: share of each modality's class separation carried by its own "
                         "latent (unseen by the other modality); 0 = all class information shared")
    separation: float = hp(4.0, "distance between class means in the joint latent (z, s_m), in noise std")
    shared_dim: int = hp(8, "dimension of the shared latent z (>= num_classes - 1)")
    specific_dim: int = hp(8, "dimension of each modality's own latent s_m (>= num_classes - 1)")
    audio_snr: float = hp(1.0, "amplitude of the latent signal in audio relative to its noise")
    visual_snr: float = hp(0.3, "amplitude of the latent signal in visual relative to its noise")
    nuisance: float = hp(1.0, "amplitude of the class-independent structured nuisance")
    nuisance_dim: int = hp(4, "number of nuisance patterns per modality")
    data_seed: int = hp(0, "seed of the generated arrays")
    width: int = hp(16, "width of the first encoder stage (stages: w, 2w, 4w; feature = 4w)")

    def validate(self) -> None:
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        if self.n_train < 4 * self.num_classes or self.n_test < self.num_classes:
            raise ValueError("n_train must be >= 4*num_classes and n_test >= num_classes")
        if not 0.0 <= self.gap <= 1.0:
            raise ValueError(f"gap must be in [0, 1], got {self.gap}")
        if min(self.shared_dim, self.specific_dim) < self.num_classes - 1:
            raise ValueError(f"shared_dim and specific_dim must be >= num_classes - 1 = {self.num_classes - 1} "
                             f"(the class means form a simplex), got {self.shared_dim} and {self.specific_dim}")
        if self.separation < 0 or self.nuisance < 0 or self.audio_snr < 0 or self.visual_snr < 0:
            raise ValueError("separation, nuisance, audio_snr and visual_snr must be >= 0")
        if self.nuisance_dim < 0 or self.width < 1:
            raise ValueError("nuisance_dim must be >= 0 and width >= 1")


# --------------------------------------------------------------------------------------------
# the generative model


@dataclass
class GenModel:
    """Every fixed quantity of the generator: class means and the observation patterns."""

    a_shared: float
    a_specific: float
    mu: np.ndarray  # (K, shared_dim)
    nu: dict[str, np.ndarray]  # modality -> (K, specific_dim)
    signal: dict[str, np.ndarray]  # modality -> (shared_dim + specific_dim, d) rows: P then Q, flattened
    nuisance: dict[str, np.ndarray]  # modality -> (nuisance_dim, d)
    snr: dict[str, float]
    nuisance_amp: float

    def class_means(self, m: str) -> np.ndarray:
        """(K, d) noiseless mean of ``x_m / scale_m`` per class."""
        lat = np.concatenate([self.a_shared * self.mu, self.a_specific * self.nu[m]], 1)
        return self.snr[m] * lat @ self.signal[m] / np.sqrt(lat.shape[1])

    def covariance(self, m: str) -> np.ndarray:
        """(d, d) class-conditional covariance of ``x_m / scale_m`` (the same for every class)."""
        s, nz = self.signal[m], self.nuisance[m]
        c = self.snr[m] ** 2 * s.T @ s / s.shape[0] + self.nuisance_amp ** 2 * nz.T @ nz
        return c + np.eye(c.shape[0])


def _simplex(rng: np.random.Generator, k: int, dim: int) -> np.ndarray:
    """k points, every pair exactly 1 apart, centred, randomly rotated into R^dim: (k, dim)."""
    e = np.eye(k) - 1.0 / k
    _, _, vt = np.linalg.svd(e)
    coords = e @ vt[: k - 1].T / np.sqrt(2.0)  # pairwise distance sqrt(2) -> 1
    rot, _ = np.linalg.qr(rng.normal(size=(dim, k - 1)))
    return coords @ rot.T


def _waves(rng: np.random.Generator, k: int, f_lo: float, f_hi: float) -> np.ndarray:
    """k multichannel sinusoid patterns (random frequency/phase/gain per channel): (k, 8, 16)."""
    c, length = AUDIO_SHAPE
    t = np.linspace(0, 1, length)
    f = rng.uniform(f_lo, f_hi, size=(k, c, 1))
    ph = rng.uniform(0, 2 * np.pi, size=(k, c, 1))
    return rng.normal(size=(k, c, 1)) * np.sin(2 * np.pi * f * t + ph)


def _blobs(rng: np.random.Generator, k: int) -> np.ndarray:
    """k patterns made of three coloured Gaussian bumps each: (k, 3, 8, 8)."""
    c, h, w = VISUAL_SHAPE
    yy, xx = np.mgrid[0:h, 0:w]
    pats = np.zeros((k, c, h, w))
    for i in range(k):
        for _ in range(3):
            cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.0, 3.0)
            pats[i] += rng.normal(size=(c, 1, 1)) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return pats


def _unit_rms_rows(a: np.ndarray) -> np.ndarray:
    a = a.reshape(a.shape[0], -1)
    return a / (np.sqrt((a ** 2).mean(1, keepdims=True)) + 1e-12)


def _orthonormal_rows(a: np.ndarray) -> np.ndarray:
    """Rows orthogonalised (Gram-Schmidt order) and rescaled to unit RMS."""
    q, _ = np.linalg.qr(a.reshape(a.shape[0], -1).T)
    return _unit_rms_rows(q.T)


def _draw_model(p: SyntheticParams, rng: np.random.Generator) -> GenModel:
    k_sh, k_sp, r = p.shared_dim, p.specific_dim, p.nuisance_dim
    mu = _simplex(rng, p.num_classes, k_sh)
    nu = {m: _simplex(rng, p.num_classes, k_sp) for m in MODALITIES}
    signal = {"audio": _orthonormal_rows(_waves(rng, k_sh + k_sp, 0.25, 2.0)),
              "visual": _orthonormal_rows(_blobs(rng, k_sh + k_sp))}
    nuisance = {"audio": _unit_rms_rows(_waves(rng, r, 3.0, 7.0)), "visual": _unit_rms_rows(_blobs(rng, r))}
    return GenModel(p.separation * np.sqrt(1.0 - p.gap), p.separation * np.sqrt(p.gap), mu, nu, signal, nuisance,
                 {"audio": p.audio_snr, "visual": p.visual_snr}, p.nuisance)


def generate(p: SyntheticParams) -> dict[str, dict[str, np.ndarray]]:
    """``{"train"|"test": {"audio", "visual", "label", "z", "s_audio", "s_visual"}}`` from ``p.data_seed``."""
    rng = np.random.default_rng(p.data_seed)
    gm = _draw_model(p, rng)
    out = {}
    for split, n in (("train", p.n_train), ("test", p.n_test)):
        y = np.arange(n) % p.num_classes
        rng.shuffle(y)
        z = gm.a_shared * gm.mu[y] + rng.normal(size=(n, p.shared_dim))
        arrays: dict[str, np.ndarray] = {"label": y.astype(np.int64), "z": z.astype(np.float32)}
        for m in MODALITIES:
            s = gm.a_specific * gm.nu[m][y] + rng.normal(size=(n, p.specific_dim))
            lat = np.concatenate([z, s], 1)
            x = gm.snr[m] * lat @ gm.signal[m] / np.sqrt(lat.shape[1])
            x += gm.nuisance_amp * rng.normal(size=(n, p.nuisance_dim)) @ gm.nuisance[m]
            x += rng.normal(size=x.shape)
            arrays[m] = (SCALES[m] * x).reshape(n, *SHAPES[m]).astype(np.float32)
            arrays[f"s_{m}"] = s.astype(np.float32)
        out[split] = arrays
    return out


def generator_model(p: SyntheticParams) -> GenModel:
    """The fixed part of the generator for ``p`` (the same draws as :func:`generate` makes first)."""
    return _draw_model(p, np.random.default_rng(p.data_seed))


# --------------------------------------------------------------------------------------------
# ground truth


def _nearest_mean(x: np.ndarray, means: np.ndarray, prec: np.ndarray | None = None) -> np.ndarray:
    """Bayes decision for equal priors and a shared covariance: minimum Mahalanobis distance."""
    if prec is None:
        prec = np.eye(x.shape[1])
    w = means @ prec  # (K, d)
    score = x @ w.T - 0.5 * np.einsum("kd,kd->k", w, means)
    return score.argmax(1)


def bayes_accuracies(p: SyntheticParams, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Bayes-optimal accuracy (%) on ``arrays`` (one split of :func:`generate`) from each source.

    Keys: ``z`` (shared latent alone), ``s_audio``, ``s_visual`` (each specific latent alone),
    ``z+s_audio``, ``z+s_visual`` (all a modality's latent class information), ``audio``,
    ``visual`` (the raw inputs: the ceiling of any network on that modality). Exact decision rules
    with the true parameters, evaluated on the given samples.
    """
    gm = generator_model(p)
    y = arrays["label"]
    lat_means = {"z": gm.a_shared * gm.mu, **{f"s_{m}": gm.a_specific * gm.nu[m] for m in MODALITIES}}
    out = {}
    for key, means in lat_means.items():
        out[key] = 100.0 * float((_nearest_mean(arrays[key].astype(np.float64), means) == y).mean())
    for m in MODALITIES:
        both = np.concatenate([arrays["z"], arrays[f"s_{m}"]], 1).astype(np.float64)
        means = np.concatenate([lat_means["z"], lat_means[f"s_{m}"]], 1)
        out[f"z+s_{m}"] = 100.0 * float((_nearest_mean(both, means) == y).mean())
    for m in MODALITIES:
        x = arrays[m].reshape(len(y), -1).astype(np.float64) / SCALES[m]
        prec = np.linalg.inv(gm.covariance(m))
        out[m] = 100.0 * float((_nearest_mean(x, gm.class_means(m), prec) == y).mean())
    return out


# --------------------------------------------------------------------------------------------
# the adapter


@register_dataset("synthetic")
class Synthetic(DatasetAdapter):
    description = ("Embedded default: audio-like sequences + weaker visual-like images from a shared latent and "
                   "one private latent per modality; gap = share of class information that is private (no files)")
    task = "classification"
    metric = "top1"
    Params = SyntheticParams
    redrawn_splits = ("train", "test")  # i.i.d. draws of one model: train.split_mode=per_seed reassigns them
    train_defaults = {
        "epochs": 10, "teacher_epochs": 10, "batch_size": 64, "lr": 0.05,
        "weight_decay": 5e-4, "schedule": "cosine", "min_lr": 0.0, "eval_batch_size": 1000,
    }

    @property
    def modalities(self) -> list[Modality]:
        return [Modality("audio", "a", "sequence", AUDIO_SHAPE), Modality("visual", "v", "image", VISUAL_SHAPE)]

    @property
    def num_classes(self) -> int:
        return self.params.num_classes

    def load(self) -> dict[str, Split]:
        arrays = generate(self.params)
        return {
            s: Split({m: torch.from_numpy(a[m]) for m in MODALITIES}, torch.from_numpy(a["label"]),
                     aux={f"truth.{k}": torch.from_numpy(a[k]) for k in TRUTH_KEYS})
            for s, a in arrays.items()
        }

    def augments(self, modality: str) -> bool:
        return False  # arrays are used as generated

    def default_backbone(self, modality: str) -> tuple[str, dict[str, Any]]:
        """Small ResNets: 1-D over the audio sequence's channels, 2-D over the visual image."""
        w = self.params.width
        dim, cin = (1, AUDIO_SHAPE[0]) if modality == "audio" else (2, VISUAL_SHAPE[0])
        return "resnet", {"dim": dim, "in_channels": cin, "widths": (w, 2 * w, 4 * w), "blocks": (1, 1, 1), "stem": "small"}

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        return build_default(self, modality, num_classes)
