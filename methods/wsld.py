"""WSLD: "Rethinking Soft Labels for Knowledge Distillation: A Bias-Variance Tradeoff Perspective"
(Zhou et al., ICLR 2021), weighted soft labels.

Source: bellymonster/Weighted-Soft-Label-Distillation, ``knowledge_distiller.py`` (``WSLDistiller``;
read at 4ecf930e, the zoo spec names 67820dd7). Each sample's soft term is weighted by how far the
student is behind the teacher on the label: with the hard-label cross-entropies at temperature 1 of
the (detached) student and teacher, ``r = CE_s / (CE_t + 1e-7)``, the weight is
``w = 1 - exp(-max(r, 0))``; the loss is ``CE + alpha * tau^2 * mean_b(w_b * soft_b)``.

Conventions (the code's by default, the paper's form as a named option):

* the soft term is the code's cross-entropy ``-sum p_t^tau log p_s^tau`` (``soft=ce``); ``soft=kl``
  subtracts the teacher's entropy (a KL). Both have the same gradient w.r.t. the student; only the
  logged value differs.
* the code does not detach the teacher's logits in the soft term; its teacher is not optimised, so
  that only costs memory there. Here the teacher is frozen and detached (no difference in value).

Evident bug, intended behaviour by default: the code leaves the teacher in train mode (its BatchNorm
layers normalise with batch statistics and keep updating their running statistics, so the "fixed"
teacher drifts). Here the teacher is frozen in eval mode; ``teacher_mode=reference`` runs it in
train mode as the code does (the teacher then cannot be cached). The code's one-hot has 1000
classes (ImageNet only); here it has the dataset's.

Defaults: the repository's (ImageNet only): tau 2, alpha 2.5, CE weight 1. Cross-modal use: only the
label space is shared, as for Logit KD. Dense logits are treated pixel-wise with the void label
ignored (:func:`bench.methods.dkd.flatten_dense`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods.dkd import flatten_dense
from bench.models import ModelOutput

RATIO_EPS = 1e-7
"""Added to the teacher's cross-entropy in the weight's ratio (the repository's constant)."""


def wsld_weights(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample weights ``1 - exp(-max(CE_s / (CE_t + 1e-7), 0))`` from the detached logits (N,)."""
    ce_s = F.cross_entropy(z_s.detach(), y, reduction="none")
    ce_t = F.cross_entropy(z_t.detach(), y, reduction="none")
    return 1.0 - torch.exp(-torch.clamp(ce_s / (ce_t + RATIO_EPS), min=0.0))


def wsld_loss(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, *, tau: float = 2.0,
              soft: str = "ce") -> torch.Tensor:
    """tau^2 * mean_b(w_b * soft_b), the weighted soft term (without alpha and without the CE).

    ``soft_b`` is ``-sum_c p_t^tau log p_s^tau`` (``soft="ce"``, the code) or the KL
    ``sum_c p_t^tau (log p_t^tau - log p_s^tau)`` (``soft="kl"``). The teacher and the weights are
    detached. (N, C) logits; see :class:`WSLD` for dense ones."""
    if soft not in ("ce", "kl"):
        raise ValueError(f"soft must be 'ce' or 'kl', got {soft!r}")
    z_t = z_t.detach()
    w = wsld_weights(z_s, z_t, y)
    log_ps = F.log_softmax(z_s / tau, dim=1)
    log_pt = F.log_softmax(z_t / tau, dim=1)
    pt = log_pt.exp()
    per = -(pt * log_ps).sum(1) if soft == "ce" else (pt * (log_pt - log_ps)).sum(1)
    return tau**2 * (w * per).mean()


@dataclass
class WSLDParams:
    tau: float = hp(2.0, "temperature (the repository: 2)", gt=0)
    alpha: float = hp(2.5, "weight of the weighted soft term (the repository: 2.5)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy (the repository: 1)", ge=0)
    soft: str = hp("ce", "soft term: ce (the code's cross-entropy with the teacher's soft labels) | kl (minus the "
                         "teacher's entropy; same gradient)")
    teacher_mode: str = hp("eval", "eval (frozen teacher, the intended behaviour) | reference (teacher in train mode, "
                                   "batch-statistics BatchNorm, as the code runs it)")

    def validate(self) -> None:
        if self.soft not in ("ce", "kl"):
            raise ValueError(f"soft must be 'ce' or 'kl', got {self.soft!r}")
        if self.teacher_mode not in ("eval", "reference"):
            raise ValueError(f"teacher_mode must be 'eval' or 'reference', got {self.teacher_mode!r}")


@register_method("wsld")
class WSLD(Method):
    category = "Logits"
    description = "WSLD (Zhou et al. 2021): soft term weighted per sample by 1 - exp(-CE_s/CE_t)"
    reference = "bellymonster/Weighted-Soft-Label-Distillation knowledge_distiller.py (tau 2, alpha 2.5)"
    Params = WSLDParams
    # the repository has one setting (ImageNet); the paper's analysis varies the temperature
    search_space = {"tau": Real(1.0, 8.0, log=True), "alpha": Real(0.5, 5.0, log=True)}

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.teacher_train_mode = params.teacher_mode == "reference"  # the instance answers for the runner

    def teacher_cache_fields(self) -> set[str]:
        return {"logits"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        zs, zt, yy = flatten_dense(s.logits, t.logits, y, self.ctx.ignore_index)
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "wsl": self.p.alpha * wsld_loss(zs, zt, yy, tau=self.p.tau, soft=self.p.soft)}

    def report(self) -> dict[str, object]:
        """Which conventions ran (the record's ``extra.method``)."""
        return {"soft": self.p.soft, "teacher_mode": self.p.teacher_mode,
                "teacher_mode_is": ("intended (eval)" if self.p.teacher_mode == "eval"
                                    else "reference code (train mode)")}
