"""``synthetic``: the embedded default benchmark (no files, generated from a seed).

What it models
--------------
Two paired modalities with the same labels, built to show the phenomena CMKD papers study:

* a **shared, class-conditional latent** ``z = mu_y + noise`` (per sample, the same for both
  modalities): the cross-modal knowledge a teacher can pass on;
* a **modality-specific class signal** ``s_m = nu_{m,y} + noise`` that only one modality sees
  (the part that does not transfer);
* **modality-specific nuisance** (a random-frequency oscillation per sample) and white noise;
* **different feature scales**: the audio-like signal is ~10x larger in amplitude than the
  visual-like one;
* **different strengths**: the visual-like modality has a lower signal-to-noise ratio and
  is clearly the weaker one (its unimodal accuracy is far below audio's).

``audio`` is a multichannel sequence (8 x 32; encoder: 1-D ResNet); ``visual`` is a small RGB
image (3 x 12 x 12; encoder: 2-D ResNet). Both encoders end in a 64-d pooled feature, so
feature-space methods (FD-CMKD's DFT over the feature vector) apply without a projector.
The same ``data_seed`` always produces the same arrays; run seeds only change initialisation
and batch order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bench.config import hp
from bench.data import DatasetAdapter, Modality, Split
from bench.models import Backbone, ResNetBackbone
from bench.registry import register_dataset


@dataclass
class SyntheticParams:
    n_train: int = hp(2400, "training samples (a validation split is carved from these)")
    n_test: int = hp(800, "test samples")
    num_classes: int = hp(6, "number of classes")
    shared_dim: int = hp(8, "dimension of the shared class latent")
    specific_dim: int = hp(4, "dimension of each modality's own class signal")
    audio_snr: float = hp(1.0, "amplitude of the class signal in audio relative to its noise")
    visual_snr: float = hp(0.3, "amplitude of the class signal in visual relative to its noise")
    latent_noise: float = hp(1.0, "per-sample spread of the shared latent around its class mean")
    data_seed: int = hp(0, "seed of the generated arrays")
    width: int = hp(16, "width of the first encoder stage (stages: w, 2w, 4w)")

    def validate(self) -> None:
        if self.num_classes < 2:
            raise ValueError("num_classes must be >= 2")
        if self.n_train < 4 * self.num_classes or self.n_test < self.num_classes:
            raise ValueError("n_train must be >= 4*num_classes and n_test >= num_classes")


AUDIO_SHAPE = (8, 32)
VISUAL_SHAPE = (3, 12, 12)
AUDIO_SCALE = 5.0
VISUAL_SCALE = 0.5


def _smooth_sequences(rng: np.random.Generator, k: int) -> np.ndarray:
    """k random low-frequency multichannel patterns, unit RMS: (k, 8, 32)."""
    c, L = AUDIO_SHAPE
    t = np.linspace(0, 1, L)
    pats = np.zeros((k, c, L))
    for i in range(k):
        for ch in range(c):
            f = rng.uniform(0.5, 4.0)
            ph = rng.uniform(0, 2 * np.pi)
            pats[i, ch] = rng.normal() * np.sin(2 * np.pi * f * t + ph)
        pats[i] /= np.sqrt((pats[i] ** 2).mean()) + 1e-12
    return pats


def _smooth_images(rng: np.random.Generator, k: int) -> np.ndarray:
    """k random blob patterns (sums of coloured Gaussian bumps), unit RMS: (k, 3, 16, 16)."""
    c, h, w = VISUAL_SHAPE
    yy, xx = np.mgrid[0:h, 0:w]
    pats = np.zeros((k, c, h, w))
    for i in range(k):
        for _ in range(3):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            s = rng.uniform(1.5, 4.0)
            bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
            pats[i] += rng.normal(size=(c, 1, 1)) * bump
        pats[i] /= np.sqrt((pats[i] ** 2).mean()) + 1e-12
    return pats


def generate(p: SyntheticParams) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(p.data_seed)
    K, k, k2 = p.num_classes, p.shared_dim, p.specific_dim
    mu = rng.normal(size=(K, k)) * 1.2  # shared class means
    nu_a = rng.normal(size=(K, k2)) * 1.2  # audio-only class signal
    nu_v = rng.normal(size=(K, k2)) * 1.2  # visual-only class signal
    Pa, Qa = _smooth_sequences(rng, k), _smooth_sequences(rng, k2)
    Pv, Qv = _smooth_images(rng, k), _smooth_images(rng, k2)
    out = {}
    for split, n in (("train", p.n_train), ("test", p.n_test)):
        y = np.arange(n) % K
        rng.shuffle(y)
        z = mu[y] + p.latent_noise * rng.normal(size=(n, k))
        sa = nu_a[y] + p.latent_noise * rng.normal(size=(n, k2))
        sv = nu_v[y] + p.latent_noise * rng.normal(size=(n, k2))
        # audio: class signal + per-sample oscillation nuisance + white noise
        sig_a = np.einsum("nk,kcl->ncl", z, Pa) / np.sqrt(k) + np.einsum("nk,kcl->ncl", sa, Qa) / np.sqrt(k2)
        t = np.linspace(0, 1, AUDIO_SHAPE[1])
        f = rng.uniform(4, 10, size=(n, AUDIO_SHAPE[0], 1))
        nuis_a = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, size=(n, AUDIO_SHAPE[0], 1)))
        xa = AUDIO_SCALE * (p.audio_snr * sig_a + nuis_a + rng.normal(size=(n, *AUDIO_SHAPE)))
        # visual: weaker class signal, a random-position blob nuisance, more noise
        sig_v = np.einsum("nk,kchw->nchw", z, Pv) / np.sqrt(k) + np.einsum("nk,kchw->nchw", sv, Qv) / np.sqrt(k2)
        nuis_v = _smooth_images(rng, 1)[0][None] * rng.normal(size=(n, 1, 1, 1))
        xv = VISUAL_SCALE * (p.visual_snr * sig_v + nuis_v + rng.normal(size=(n, *VISUAL_SHAPE)))
        out[split] = {"audio": xa.astype(np.float32), "visual": xv.astype(np.float32), "label": y.astype(np.int64)}
    return out


@register_dataset("synthetic")
class Synthetic(DatasetAdapter):
    description = "Embedded default: audio-like sequences + weaker visual-like images from a shared class latent (no files)"
    task = "classification"
    metric = "top1"
    Params = SyntheticParams
    train_defaults = {
        "epochs": 12, "teacher_epochs": 12, "batch_size": 64, "lr": 0.05,
        "weight_decay": 5e-4, "schedule": "cosine", "min_lr": 0.0,
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
            s: Split({m: torch.from_numpy(a[m]) for m in ("audio", "visual")}, torch.from_numpy(a["label"]))
            for s, a in arrays.items()
        }

    def augments(self, modality: str) -> bool:
        return False  # arrays are used as generated

    def build_model(self, modality: str, num_classes: int) -> Backbone:
        w = self.params.width
        if modality == "audio":
            return ResNetBackbone(1, AUDIO_SHAPE[0], num_classes, (w, 2 * w, 4 * w), (1, 1, 1), "small")
        return ResNetBackbone(2, VISUAL_SHAPE[0], num_classes, (w, 2 * w, 4 * w), (1, 1, 1), "small")
