"""Logit KD (Hinton, Vinyals, Dean 2015), as in mdistiller's ``kd_loss``.

Cross-modal use is unchanged from the original: only the label space is shared; the teacher
sees its own modality of the paired sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.models import ModelOutput


def logit_loss(z_s: torch.Tensor, z_t: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """tau^2 * batch-mean KL(softmax(z_t/tau) || softmax(z_s/tau)).

    The tau^2 factor keeps the gradient scale independent of tau (Hinton et al.): the gradient
    w.r.t. ``z_s`` is ``tau/B * (p_s^tau - p_t^tau)``. Dense logits (B, C, H, W) are treated as
    B*H*W samples. The teacher side is detached.
    """
    if z_s.dim() == 4:
        z_s = z_s.permute(0, 2, 3, 1).reshape(-1, z_s.shape[1])
        z_t = z_t.permute(0, 2, 3, 1).reshape(-1, z_t.shape[1])
    log_ps = F.log_softmax(z_s / tau, dim=1)
    log_pt = F.log_softmax(z_t.detach() / tau, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()
    return kl * tau**2


@dataclass
class LogitParams:
    tau: float = hp(4.0, "temperature (mdistiller CIFAR default 4)", gt=0)
    ce_weight: float = hp(0.1, "weight of the cross-entropy term (mdistiller CIFAR: 0.1)", ge=0)
    kd_weight: float = hp(0.9, "weight of the KD term (mdistiller CIFAR: 0.9)", ge=0)

    def validate(self) -> None:
        if self.tau <= 0:
            raise ValueError("tau must be > 0")


@register_method("logit")
class LogitKD(Method):
    category = "Logits"
    description = "Logit KD (Hinton et al. 2015): tau^2-scaled KL between softened logits"
    reference = "mdistiller KD.py (CIFAR defaults tau=4, CE 0.1, KD 0.9)"
    Params = LogitParams
    # mdistiller: tau 4 / CE 0.1 (CIFAR), tau 1 / CE 0.5 (ImageNet); AFD's KD: CE 1 with KD 0.9
    search_space = {"tau": Real(1.0, 8.0, log=True), "ce_weight": Real(0.1, 1.0, log=True)}

    def teacher_cache_fields(self) -> set[str]:
        return {"logits"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        return {
            "ce": self.p.ce_weight * self.task_loss(s.logits, y),
            "kd": self.p.kd_weight * logit_loss(s.logits, t.logits, tau=self.p.tau),
        }
