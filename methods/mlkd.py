"""MLKD: "Multi-Level Logit Distillation" (Jin, Wang, Lin, CVPR 2023).

Source: Jin-Ying/Multi-Level-Logit-Distillation, ``mdistiller/distillers/KD_ours.py`` (read at
6327e733, the zoo spec names 5ee473fc); the logit-standardisation variant is
sunshangquan/logit-standardization-KD ``mdistiller/distillers/MLKD.py`` (6083e2de). Three levels of
alignment over the temperatures ``tau`` (4) and 3, 5, 2, 6, each weighted by ``kd_weight`` (0.9):

* instance: tau^2 * batch-mean KL(p_t^T || p_s^T) (Logit KD);
* batch: ``sum((G_t - G_s)^2) / B`` with the B x B Gram matrix ``G = P P^T`` of the softened
  predictions P (B, C);
* class: ``sum((M_t - M_s)^2) / C`` with the C x C matrix ``M = P^T P``;

plus ``ce_weight`` (0.1) times the CE of each view. Masks: a sample is kept where the teacher's
top probability (temperature 1, weak view) is at most its batch median (``np.percentile(., 50)``),
a class where the teacher's summed probability is at most the class median.

What the code does, kept by default (conventions that produced the published numbers):

* the instance and batch terms of the weak view, and the class term, are reduced to a scalar
  **before** the mask multiplies them, so a mask only rescales the term by the fraction it keeps
  (about 0.5) and every sample, the low-confidence ones too, contributes (``mask=reference``).
  ``mask=per_sample`` weights each sample's instance-level KL by its mask before the batch mean
  (the commented-out ``reduce=False`` of the code); the batch and class terms stay as the code has them.
* the loss has ``kd`` = (masked weak-view instance terms) + (unmasked strong-view instance terms at
  tau, 3, 5, plus unmasked *weak*-view ones at 2 and 6), ``cc`` = masked weak-view class terms,
  ``bc`` = masked weak-view batch terms; the code computes strong-view class and batch terms but
  leaves them out of the loss, and so does this.
* with logit standardisation (``logit_std``, off by default) only the instance terms see
  z-scored logits; the batch and class terms and the masks use the raw logits, as in the
  standardisation repository's MLKD.

Views (a cross-modal difference). The reference feeds every network a weak and a strong
augmentation of each image. A method here receives one view of each modality per step (the
dataset's own training augmentation, where it has one, none where it has not), so this runs
**one view**: the strong view is the weak view (same student and teacher logits). The CE is then
counted twice (0.2 x CE in effect) and the strong-view instance terms repeat the weak-view ones
without the mask. The record's ``extra.method`` says so (``views: 1``).

Dense tasks are refused: the batch-level term's Gram matrix would be (B*H*W)^2 with pixels as
samples, and the reference defines no dense form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods.logit import STD_FORMS, maybe_standardise, std_form, validate_std_form
from bench.models import ModelOutput


def _kd_per_sample(z_s: torch.Tensor, z_t: torch.Tensor, tau: float) -> torch.Tensor:
    log_ps = F.log_softmax(z_s / tau, dim=1)
    log_pt = F.log_softmax(z_t / tau, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(1) * tau**2


def class_level(z_s: torch.Tensor, z_t: torch.Tensor, tau: float) -> torch.Tensor:
    """``sum((P_t^T P_t - P_s^T P_s)^2) / C`` with P the softened predictions (B, C)."""
    ps, pt = F.softmax(z_s / tau, dim=1), F.softmax(z_t / tau, dim=1)
    return ((pt.t() @ pt - ps.t() @ ps) ** 2).sum() / z_s.shape[1]


def batch_level(z_s: torch.Tensor, z_t: torch.Tensor, tau: float) -> torch.Tensor:
    """``sum((P_t P_t^T - P_s P_s^T)^2) / B``."""
    ps, pt = F.softmax(z_s / tau, dim=1), F.softmax(z_t / tau, dim=1)
    return ((pt @ pt.t() - ps @ ps.t()) ** 2).sum() / z_s.shape[0]


def confidence_masks(z_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sample mask (B,), class mask (C,)): at most the median (linear interpolation, as
    ``np.percentile(., 50)``) of the teacher's top probability / summed probability per class."""
    p = F.softmax(z_t.detach(), dim=1)
    conf = p.max(dim=1).values
    cls = p.sum(dim=0)
    return (conf <= torch.quantile(conf, 0.5)).to(p.dtype), (cls <= torch.quantile(cls, 0.5)).to(p.dtype)


def mlkd_terms(zs_w: torch.Tensor, zt_w: torch.Tensor, zs_s: torch.Tensor | None = None,
               zt_s: torch.Tensor | None = None, *, tau: float = 4.0, taus: tuple[float, ...] = (3.0, 5.0, 2.0, 6.0),
               mask: str = "reference", std: str | None = None) -> dict[str, torch.Tensor]:
    """The three distillation terms ``{"kd", "cc", "bc"}`` before ``kd_weight`` (see the module doc).

    ``zs_s``/``zt_s``: the strong view's logits (``None``: the weak view's, one view). ``taus``:
    the fixed temperatures after ``tau``; the strong-view instance terms use the first three of
    ``(tau, *taus)`` on the strong view and the rest on the weak view, as the code does. The teacher
    is detached. (B, C) logits."""
    if mask not in ("reference", "per_sample"):
        raise ValueError(f"mask must be 'reference' or 'per_sample', got {mask!r}")
    zt_w = zt_w.detach()
    zs_s = zs_w if zs_s is None else zs_s
    zt_s = zt_w if zt_s is None else zt_s.detach()
    m, cm = confidence_masks(zt_w)
    all_t = (tau, *taus)
    kw_s, kw_t = maybe_standardise(zs_w, zt_w, std)
    ks_s, ks_t = maybe_standardise(zs_s, zt_s, std)
    kd = zs_w.new_zeros(())
    for T in all_t:
        per = _kd_per_sample(kw_s, kw_t, T)
        kd = kd + ((per * m).mean() if mask == "per_sample" else per.mean() * m.mean())
    for i, T in enumerate(all_t):
        a, b = (ks_s, ks_t) if i < 3 else (kw_s, kw_t)
        kd = kd + _kd_per_sample(a, b, T).mean()
    cc = sum(class_level(zs_w, zt_w, T) * cm.mean() for T in all_t)
    bc = sum(batch_level(zs_w, zt_w, T) * m.mean() for T in all_t)
    return {"kd": kd, "cc": cc, "bc": bc}


@dataclass
class MLKDParams:
    tau: float = hp(4.0, "base temperature (the reference: 4; the fixed 3, 5, 2, 6 follow it)", gt=0)
    taus: tuple[float, ...] = hp((3.0, 5.0, 2.0, 6.0), "the further fixed temperatures (the reference: 3,5,2,6)", gt=0)
    ce_weight: float = hp(0.1, "weight of the CE of each view (the reference: 0.1)", ge=0)
    kd_weight: float = hp(0.9, "weight of every distillation term (the reference: 0.9)", ge=0)
    mask: str = hp("reference", "reference (the code: each term reduced first, the mask only rescales it) | "
                                "per_sample (the instance-level KL masked per sample)")
    logit_std: bool = hp(False, "logit standardisation (Sun et al. 2024) of the instance-level terms")
    logit_std_form: str = hp("unbiased", "with logit_std: " + " | ".join(STD_FORMS))

    def validate(self) -> None:
        if self.mask not in ("reference", "per_sample"):
            raise ValueError(f"mask must be 'reference' or 'per_sample', got {self.mask!r}")
        if len(self.taus) != 4:
            raise ValueError(f"taus needs the reference's 4 further temperatures, got {len(self.taus)}")
        validate_std_form(self.logit_std_form)


@register_method("mlkd")
class MLKD(Method):
    category = "Logits"
    description = "MLKD (Jin et al. 2023): instance-, batch- and class-level logit alignment at 5 temperatures"
    reference = "Jin-Ying/Multi-Level-Logit-Distillation mdistiller/distillers/KD_ours.py (one view here)"
    Params = MLKDParams
    search_space = {"kd_weight": Real(0.3, 3.0, log=True), "tau": Real(2.0, 8.0, log=True)}
    dense_ok = False
    dense_reason = ("its batch-level term is a Gram matrix over samples ((B*H*W)^2 with pixels as samples) and the "
                    "reference defines no dense form")

    def teacher_cache_fields(self) -> set[str]:
        return {"logits"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        terms = mlkd_terms(s.logits, t.logits, tau=self.p.tau, taus=tuple(self.p.taus), mask=self.p.mask,
                           std=std_form(self.p.logit_std, self.p.logit_std_form))
        ce = self.task_loss(s.logits, y)
        return {"ce": self.p.ce_weight * (ce + ce), **{k: self.p.kd_weight * v for k, v in terms.items()}}

    def report(self) -> dict[str, object]:
        """How the two-view recipe ran here (the record's ``extra.method``)."""
        return {"views": 1, "strong_view": "the weak view: one view of each modality per step (the dataset's own "
                                           "augmentation, if any), so the CE counts twice and the strong-view "
                                           "instance terms repeat the weak-view ones unmasked",
                "mask": self.p.mask}
