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

from bench.config import hp
from bench.method import Method
from bench.models import ModelOutput
from bench.registry import register_method


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
    d = x.shape[-1]
    low, high = frequency_masks(d, ratio, dc_in_low=not remove_dc, device=x.device, dtype=x.real.dtype)
    spec = torch.fft.rfft(x, dim=-1)
    return torch.fft.irfft(spec * low, n=d, dim=-1), torch.fft.irfft(spec * high, n=d, dim=-1)


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
    l1: float = hp(1.0, "lambda_1, weight of L_low (Fig. 5 sweeps it)")
    l2: float = hp(1.0, "lambda_2, weight of L_high (Fig. 5 sweeps it)")
    ratio: float = hp(0.5, "frequency split threshold r (Table 7): low = bins 1..floor(r*D/2)")
    tap: str = hp("pre", "feature tap: pre (pre-ReLU pooled, re-FD-CMKD) | post (classifier input)")
    phi: str = hp("linear", "classifier form for Phi and the band task heads: linear | relu_linear (re-FD-CMKD)")

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


def _head(kind: str, d: int, c: int) -> nn.Module:
    return nn.Linear(d, c) if kind == "linear" else nn.Sequential(nn.ReLU(), nn.Linear(d, c))


@register_method("fdcmkd")
class FDCMKD(Method):
    category = "Cross-Modal"
    description = "FD-CMKD: DFT low/high split, MSE (low) + logMSE (high), Std, shared classifiers"
    reference = "Liu et al., AAAI 2026, Eqs. 1-11; re-FD-CMKD for unstated details"
    Params = FDCMKDParams

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        ds = self._vec(s_probe).shape[-1]
        dt = self._vec(t_probe).shape[-1]
        c = self.ctx.num_classes
        if ds != dt:
            self.modules["proj"] = nn.Linear(ds, dt)
        if self.p.freq:
            self.modules["psi_low"] = _head(self.p.phi, dt, c)
            self.modules["psi_high"] = _head(self.p.phi, dt, c)
            if self.p.align:
                self.modules["phi_low"] = _head(self.p.phi, dt, c)
                self.modules["phi_high"] = _head(self.p.phi, dt, c)
        elif self.p.align:
            self.modules["phi"] = _head(self.p.phi, dt, c)

    def _vec(self, out: ModelOutput) -> torch.Tensor:
        return out.pre_feature if self.p.tap == "pre" else out.feature

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
            s_low, s_high = decompose(xs, p.ratio, remove_dc=p.scale)
            t_low, t_high = decompose(xt, p.ratio, remove_dc=p.scale)
            terms["ce_low"] = F.cross_entropy(m["psi_low"](s_low), yv)
            terms["ce_high"] = F.cross_entropy(m["psi_high"](s_high), yv)
            if p.align:
                terms["align"] = (
                    F.cross_entropy(m["phi_high"](t_high), yv) + F.cross_entropy(m["phi_high"](s_high), yv)
                    + F.cross_entropy(m["phi_low"](t_low), yv) + F.cross_entropy(m["phi_low"](s_low), yv)
                )
            terms.update(band_losses(s_low, s_high, t_low, t_high, scale=p.scale, log=p.log, lambda1=p.l1, lambda2=p.l2))
        else:
            if p.align:
                terms["align"] = F.cross_entropy(m["phi"](xt), yv) + F.cross_entropy(m["phi"](xs), yv)
            a, b = (standardize(xs), standardize(xt)) if p.scale else (xs, xt)
            terms["feat"] = p.l1 * F.mse_loss(a, b)
        return terms


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
