"""FD-CMKD: "Distilling Cross-Modal Knowledge via Feature Disentanglement" (Liu et al., AAAI 2026).

The paper's Eqs. 1-11, on the pooled penultimate feature vector X in R^D of each network:

* Eq. 1-3  DFT over the D entries (per sample), fixed binary low/high masks, real IDFT. We use
  the one-sided real spectrum (bins 0..D/2): low = bins 1..floor(r*D/2), high = the rest up to
  and including Nyquist; with ``r = 0.5`` and D = 512 that is bins 1..128 / 129..256. The DC bin
  is in neither band when Scale is on (the paper's "DC filter"), so low + high = X - mean(X);
  with Scale off it joins the low band, so low + high = X exactly. (Taking the two halves of a
  full complex FFT is *not* a frequency split: both halves would hold every |k|.)
* Eq. 7    Std(X) = (X - mean) / ||X - mean||_2 per sample (norm clamped at 1e-8).
* Eq. 8    L_low  = MSE(Std(X_low^t), Std(X_low^s)), mean over N*D.
* Eq. 5-9  L_high = MSE(sigma(Std(X_high^t)), sigma(Std(X_high^s))), sigma(x) = sign(x) log(1+|x|)
           (Std first, then sigma).
* Eq. 10   L_align = CE(Phi_h(X_high^t)) + CE(Phi_h(X_high^s)) + CE(Phi_l(X_low^t)) + CE(Phi_l(X_low^s)),
           Phi_l and Phi_h each *shared* by the two modalities, fed the un-normalised bands.
* L_task   CE of the student's own head on X, plus CE of two student-only heads on its low and
           high bands (re-FD-CMKD's reading of "raw, low and high features").
* Eq. 11   L = L_task + L_align + l1 * L_low + l2 * L_high.

Defaults (documented choices where the paper is silent): the pre-ReLU pooled vector (re-FD-CMKD),
Phi = Linear, teacher frozen (eval mode, no gradient; the teacher CE terms only train Phi),
l1 = l2 = 1 (re-FD-CMKD; the paper's Fig. 5 values are not public). Note that after Std every
distillation term is at most 4/D, so l1 = l2 = 1 distils weakly: sweep them (``bench table
sensitivity``). When teacher and student feature sizes differ (BERT 768 vs MobileNetV2 1280) a
learnable Linear projector maps the student vector to the teacher's D (not in the paper).

Ablation switches (Table 4): ``freq``, ``align``, ``scale``, ``log``. All off = plain feature
distillation (MSE between raw vectors, weight l1). With ``freq`` off, ``align`` means one Phi
shared by both raw vectors and ``scale`` means Std on the raw vectors; ``log`` needs ``freq``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.models import ModelOutput


def frequency_masks(d: int, ratio: float = 0.5, dc_in_low: bool = False,
                    device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Binary masks over the ``d // 2 + 1`` one-sided DFT bins of a length-``d`` real vector.

    low = bins 1..floor(ratio * (d // 2)) (plus bin 0 when ``dc_in_low``), high = the remaining
    bins up to d // 2. ``ratio`` in (0, 1); 0.5 is the paper's fixed half split.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    nb = d // 2 + 1
    cut = int(math.floor(ratio * (d // 2)))
    low = torch.zeros(nb, device=device, dtype=dtype)
    high = torch.zeros(nb, device=device, dtype=dtype)
    low[1:cut + 1] = 1
    high[cut + 1:] = 1
    if dc_in_low:
        low[0] = 1
    return low, high


def decompose(x: torch.Tensor, ratio: float = 0.5, remove_dc: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 1-3: (X_low, X_high), real vectors of the same shape as ``x`` (B, D)."""
    masks = frequency_masks(x.shape[-1], ratio, dc_in_low=not remove_dc, device=x.device, dtype=x.real.dtype)
    low, high = apply_spectral_masks(x, list(masks))
    return low, high


def dft_band_masks(d: int, bands: int, ratio: float = 0.5, dc_in_low: bool = False, *, device=None,
                   dtype=torch.float32) -> list[torch.Tensor]:
    """K contiguous binary masks over the one-sided spectrum's non-DC bins (low -> high).

    ``bands == 2`` is FD-CMKD's split at ``ratio``; more bands split the non-DC bins into K equal
    groups (open question of the paper: multi-band decoupling).
    """
    if bands == 2:
        return list(frequency_masks(d, ratio, dc_in_low, device=device, dtype=dtype))
    nb = d // 2 + 1
    if bands < 2 or bands > nb - 1:
        raise ValueError(f"bands must be in 2..{nb - 1} for D={d}")
    edges = [1 + round(i * (nb - 1) / bands) for i in range(bands + 1)]
    masks = []
    for i in range(bands):
        m = torch.zeros(nb, device=device, dtype=dtype)
        m[edges[i]:edges[i + 1]] = 1
        masks.append(m)
    if dc_in_low:
        masks[0][0] = 1
    return masks


def soft_split_masks(d: int, cutoff: torch.Tensor, tau: float, dc_in_low: bool = False) -> list[torch.Tensor]:
    """Learnable split: low(k) = sigmoid((cutoff - k) / tau) on the non-DC bins, high = 1 - low.

    ``cutoff`` (in bins) is a trainable scalar; the two masks sum to 1 on every non-DC bin, so the
    bands still reconstruct the (DC-free) input exactly, and gradients reach the cut-off.
    """
    nb = d // 2 + 1
    k = torch.arange(nb, device=cutoff.device, dtype=cutoff.dtype)
    low = torch.sigmoid((cutoff - k) / tau)
    nondc = (k > 0).to(cutoff.dtype)
    low = low * nondc + (1 - nondc) * (1.0 if dc_in_low else 0.0)
    high = (1 - torch.sigmoid((cutoff - k) / tau)) * nondc
    return [low, high]


def apply_spectral_masks(x: torch.Tensor, masks: list[torch.Tensor]) -> list[torch.Tensor]:
    d = x.shape[-1]
    spec = torch.fft.rfft(x, dim=-1)
    return [torch.fft.irfft(spec * m, n=d, dim=-1) for m in masks]


def haar_bands(x: torch.Tensor, levels: int, remove_dc: bool = True) -> list[torch.Tensor]:
    """Orthonormal 1-D Haar wavelet bands of (B, D) vectors: [approximation, coarse ... fine details].

    Each band is reconstructed on its own (other coefficients zero), so the bands are real (B, D)
    vectors that sum to ``x`` exactly (minus its mean with ``remove_dc``: the mean lives in the
    coarsest approximation). D must be divisible by 2**levels.
    """
    d = x.shape[-1]
    if levels < 1 or d % (2 ** levels):
        raise ValueError(f"Haar with {levels} level(s) needs D divisible by {2 ** levels}, got D={d}")
    if remove_dc:
        x = x - x.mean(dim=-1, keepdim=True)
    r2 = math.sqrt(2.0)
    a = x
    details = []
    for _ in range(levels):
        ev, od = a[..., 0::2], a[..., 1::2]
        details.append((ev - od) / r2)
        a = (ev + od) / r2

    def inverse(approx: torch.Tensor, dets: list[torch.Tensor]) -> torch.Tensor:
        cur = approx
        for det in reversed(dets):
            out = torch.empty(*cur.shape[:-1], cur.shape[-1] * 2, dtype=cur.dtype, device=cur.device)
            out[..., 0::2] = (cur + det) / r2
            out[..., 1::2] = (cur - det) / r2
            cur = out
        return cur

    zeros = [torch.zeros_like(t) for t in details]
    bands = [inverse(a, zeros)]
    for lvl in reversed(range(levels)):  # coarse -> fine
        dets = list(zeros)
        dets[lvl] = details[lvl]
        bands.append(inverse(torch.zeros_like(a), dets))
    return bands


def standardize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 7: per-sample mean subtraction and L2 normalisation over the last axis."""
    c = x - x.mean(dim=-1, keepdim=True)
    return c / c.norm(dim=-1, keepdim=True).clamp_min(eps)


def log_compress(x: torch.Tensor) -> torch.Tensor:
    """Eq. 6: sigma(x) = sign(x) * log(1 + |x|); odd, sigma(0) = 0, sigma'(x) = 1 / (1 + |x|)."""
    return torch.sign(x) * torch.log1p(x.abs())


def log_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """logMSE: mean over all entries of (sigma(a) - sigma(b))^2."""
    return F.mse_loss(log_compress(a), log_compress(b))


def band_losses(s_low: torch.Tensor, s_high: torch.Tensor, t_low: torch.Tensor, t_high: torch.Tensor, *,
                scale: bool = True, log: bool = True, lambda1: float = 1.0, lambda2: float = 1.0) -> dict[str, torch.Tensor]:
    """Eqs. 4/5 (scale off) or 8/9 (scale on), weighted: {"low": l1*L_low, "high": l2*L_high}."""
    t_low, t_high = t_low.detach(), t_high.detach()
    if scale:
        s_low, s_high, t_low, t_high = map(standardize, (s_low, s_high, t_low, t_high))
    l_low = F.mse_loss(s_low, t_low)
    l_high = log_mse(s_high, t_high) if log else F.mse_loss(s_high, t_high)
    return {"low": lambda1 * l_low, "high": lambda2 * l_high}


def fdcmkd_loss(x_s: torch.Tensor, x_t: torch.Tensor, *, ratio: float = 0.5, scale: bool = True, log: bool = True,
                lambda1: float = 1.0, lambda2: float = 1.0) -> dict[str, torch.Tensor]:
    """FD-CMKD's distillation terms (Eqs. 1-9) between student and teacher vectors (B, D).

    Returns ``{"low": lambda1 * L_low, "high": lambda2 * L_high}``; the teacher is detached.
    """
    s_low, s_high = decompose(x_s, ratio, remove_dc=scale)
    t_low, t_high = decompose(x_t.detach(), ratio, remove_dc=scale)
    return band_losses(s_low, s_high, t_low, t_high, scale=scale, log=log, lambda1=lambda1, lambda2=lambda2)


@dataclass
class FDCMKDParams:
    freq: bool = hp(True, "Freq: frequency decomposition (off = plain feature distillation)")
    align: bool = hp(True, "Align: shared classifiers Phi_l/Phi_h on both modalities' bands (Eq. 10)")
    scale: bool = hp(True, "Scale: DC removal + per-sample L2 standardisation (Eqs. 7-9)")
    log: bool = hp(True, "Log: logMSE on the high band (Eqs. 5-6)")
    l1: float = hp(1.0, "lambda_1, weight of L_low (Fig. 5 sweeps it)", ge=0)
    l2: float = hp(1.0, "lambda_2, weight of L_high (Fig. 5 sweeps it)", ge=0)
    ratio: float = hp(0.5, "frequency split threshold r (Table 7): low = bins 1..floor(r*D/2)", gt=0, lt=1)
    tap: str = hp("pre", "feature tap: pre (pre-ReLU pooled, re-FD-CMKD) | post (classifier input)")
    phi: str = hp("linear", "classifier form for Phi and the band task heads: linear | relu_linear (re-FD-CMKD)")
    decomp: str = hp("dft", "band decomposition: dft (the paper) | haar (1-D Haar wavelet)")
    bands: int = hp(2, "number of bands (2 = low/high; >2: equal DFT bin groups or Haar levels + 1)", ge=2)
    split: str = hp("fixed", "fixed (ratio) | learnable (soft DFT mask whose cut-off trains with the student; 2 bands)")
    split_tau: float = hp(2.0, "softness of the learnable mask, in frequency bins", gt=0)
    band_weights: tuple[float, ...] = hp((), "per-band loss weights low -> high (default: l1, then l2 for every other band)", ge=0)

    def validate(self) -> None:
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.log and not self.freq:
            raise ValueError("log=true applies logMSE to the high band and needs freq=true")
        if self.tap not in ("pre", "post"):
            raise ValueError("tap must be 'pre' or 'post'")
        if self.phi not in ("linear", "relu_linear"):
            raise ValueError("phi must be 'linear' or 'relu_linear'")
        if self.l1 < 0 or self.l2 < 0:
            raise ValueError("l1 and l2 must be >= 0")
        if self.decomp not in ("dft", "haar"):
            raise ValueError("decomp must be 'dft' or 'haar'")
        if self.split not in ("fixed", "learnable"):
            raise ValueError("split must be 'fixed' or 'learnable'")
        if self.bands < 2:
            raise ValueError("bands must be >= 2")
        if self.split == "learnable" and (self.decomp != "dft" or self.bands != 2):
            raise ValueError("split=learnable is a soft two-band DFT split (decomp=dft, bands=2)")
        if self.band_weights and len(self.band_weights) != self.bands:
            raise ValueError(f"band_weights needs {self.bands} values, got {len(self.band_weights)}")
        if self.split_tau <= 0:
            raise ValueError("split_tau must be > 0")


def _head(kind: str, d: int, c: int) -> nn.Module:
    return nn.Linear(d, c) if kind == "linear" else nn.Sequential(nn.ReLU(), nn.Linear(d, c))


@register_method("fdcmkd")
class FDCMKD(Method):
    category = "Cross-Modal"
    description = "FD-CMKD: DFT low/high split, MSE (low) + logMSE (high), Std, shared classifiers"
    reference = "Liu et al., AAAI 2026, Eqs. 1-11; re-FD-CMKD for unstated details"
    Params = FDCMKDParams
    # FD-CMKD Fig. 5 sweeps lambda_1 x lambda_2 (grid unknown; defaults 1), Table 7 the split ratio
    search_space = {"l1": Real(0.1, 10.0, log=True), "l2": Real(0.1, 10.0, log=True), "ratio": Real(0.25, 0.75)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        ds = self._vec(s_probe).shape[-1]
        dt = self._vec(t_probe).shape[-1]
        c = self.ctx.num_classes
        self._d = dt
        if ds != dt:
            self.modules["proj"] = nn.Linear(ds, dt)
        if self.p.freq:
            for name in self.band_names:
                self.modules[f"psi_{name}"] = _head(self.p.phi, dt, c)
                if self.p.align:
                    self.modules[f"phi_{name}"] = _head(self.p.phi, dt, c)
            if self.p.split == "learnable":
                self.modules["cutoff"] = LearnableCutoff(dt, self.p.ratio)
        elif self.p.align:
            self.modules["phi"] = _head(self.p.phi, dt, c)

    @property
    def band_names(self) -> list[str]:
        return ["low", "high"] if self.p.bands == 2 else [f"band{i}" for i in range(self.p.bands)]

    def band_weights(self) -> list[float]:
        p = self.p
        return list(p.band_weights) if p.band_weights else [p.l1] + [p.l2] * (p.bands - 1)

    def bands(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Split (B, D) vectors into the configured bands (low -> high)."""
        p = self.p
        if p.decomp == "haar":
            return haar_bands(x, p.bands - 1, remove_dc=p.scale)
        d = x.shape[-1]
        if p.split == "learnable":
            masks = soft_split_masks(d, self.modules["cutoff"].bins().to(x.dtype), p.split_tau, dc_in_low=not p.scale)
        else:
            masks = dft_band_masks(d, p.bands, p.ratio, dc_in_low=not p.scale, device=x.device, dtype=x.real.dtype)
        return apply_spectral_masks(x, masks)

    def _vec(self, out: ModelOutput) -> torch.Tensor:
        return out.pre_feature if self.p.tap == "pre" else out.feature

    def teacher_cache_fields(self) -> set[str]:
        return {"pre_feature" if self.p.tap == "pre" else "feature"}

    def report(self) -> dict:
        if "cutoff" in self.modules:
            cut = float(self.modules["cutoff"].bins())
            return {"learned_cutoff_bins": cut, "learned_ratio": cut / (self._d // 2)}
        return {}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        p, m = self.p, self.modules
        xs = self._vec(s)
        if "proj" in m:
            xs = m["proj"](xs)
        xt = self._vec(t).detach()
        yv = _vector_labels(y, self.ctx.ignore_index)
        terms = {"ce": self.task_loss(s.logits, y)}
        if p.freq:
            sb, tb = self.bands(xs), [b.detach() for b in self.bands(xt)]
            names = self.band_names
            for name, b in zip(names, sb):
                terms[f"ce_{name}"] = F.cross_entropy(m[f"psi_{name}"](b), yv)
            if p.align:
                terms["align"] = sum(F.cross_entropy(m[f"phi_{n}"](tb_), yv) + F.cross_entropy(m[f"phi_{n}"](sb_), yv)
                                     for n, sb_, tb_ in zip(names, sb, tb))
            w = self.band_weights()
            if p.bands == 2:
                terms.update(band_losses(sb[0], sb[1], tb[0], tb[1], scale=p.scale, log=p.log, lambda1=w[0], lambda2=w[1]))
            else:
                for i, (name, a, b) in enumerate(zip(names, sb, tb)):
                    if p.scale:
                        a, b = standardize(a), standardize(b)
                    terms[name] = w[i] * (log_mse(a, b) if (p.log and i > 0) else F.mse_loss(a, b))
        else:
            if p.align:
                terms["align"] = F.cross_entropy(m["phi"](xt), yv) + F.cross_entropy(m["phi"](xs), yv)
            a, b = (standardize(xs), standardize(xt)) if p.scale else (xs, xt)
            terms["feat"] = p.l1 * F.mse_loss(a, b)
        return terms


class LearnableCutoff(nn.Module):
    """The trainable low/high boundary, in frequency bins, kept inside (0, D/2) by a sigmoid."""

    def __init__(self, d: int, ratio: float):
        super().__init__()
        self.nb = d // 2
        init = (math.floor(ratio * d / 2) + 0.5) / self.nb  # between the fixed split's last low and first high bin
        self.theta = nn.Parameter(torch.tensor(math.log(init / (1 - init))))

    def bins(self) -> torch.Tensor:
        return self.nb * torch.sigmoid(self.theta)


def _vector_labels(y: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Labels for the heads on pooled vectors.

    Classification: ``y`` itself. Dense tasks (one label map per sample; the feature is the
    pooled encoder vector): the most frequent non-void class of each map, so the auxiliary heads
    learn an image-level "dominant class" task.
    """
    if y.dim() == 1:
        return y
    flat = y.flatten(1)
    out = torch.zeros(flat.shape[0], dtype=torch.long, device=y.device)
    for i, row in enumerate(flat):
        if ignore_index is not None:
            row = row[row != ignore_index]
        if row.numel():
            out[i] = torch.mode(row).values
    return out
