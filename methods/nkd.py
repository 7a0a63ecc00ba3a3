"""NKD: "From Knowledge Distillation to Self-Knowledge Distillation" (Yang et al., ICCV 2023).

As yzd-v/cls_KD ``NKDLoss``: a target cross-entropy weighted by the teacher's target probability
plus a cross-entropy between the *normalised* non-target distributions (target column dropped,
softmax over the remaining C-1 classes at temperature lambda), scaled by gamma * lambda^2. Both
terms are cross-entropies, not KLs, so the loss is not zero when student == teacher. Defaults:
lambda = 1, gamma = 1.5 (the ImageNet configs; CIFAR uses 3 / 3.5). With 2 classes the
non-target term is identically 0. Cross-modal use is structurally unchanged.
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


def drop_target(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C-1): every row without its target column (order of the rest kept)."""
    keep = torch.ones_like(z, dtype=torch.bool)
    keep.scatter_(1, y[:, None], False)
    return z[keep].view(z.shape[0], z.shape[1] - 1)


def nkd_loss(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, *, temp: float = 1.0, gamma: float = 1.5) -> torch.Tensor:
    """L_t + L_nt with L_t = -mean p_t[y] log p_s[y] and L_nt = -gamma lambda^2 mean sum q_t log q_s.

    ``y`` may be hard labels (B,) or soft scores (B, C) (its argmax is used, as cls_KD does).
    """
    if y.dim() == 2:
        y = y.argmax(1)
    z_t = z_t.detach()
    log_ps = F.log_softmax(z_s, dim=1)
    p_t = F.softmax(z_t, dim=1)
    l_t = -(p_t.gather(1, y[:, None]) * log_ps.gather(1, y[:, None])).mean()
    q_t = F.softmax(drop_target(z_t, y) / temp, dim=1)
    log_qs = F.log_softmax(drop_target(z_s, y) / temp, dim=1)
    l_nt = -gamma * temp**2 * (q_t * log_qs).sum(1).mean()
    return l_t + l_nt


@dataclass
class NKDParams:
    temp: float = hp(1.0, "lambda, temperature of the non-target term (ImageNet 1; CIFAR 3)", gt=0)
    gamma: float = hp(1.5, "weight of the non-target term (ImageNet 1.5; CIFAR 3.5)", ge=0)


@register_method("nkd")
class NKD(Method):
    category = "Logits"
    description = "NKD (Yang et al. 2023): target CE weighted by teacher + normalised non-target CE"
    reference = "yzd-v/cls_KD mmcls/models/dis_losses/nkd.py"
    Params = NKDParams
    # NKD: lambda 1 / gamma 1.5 (ImageNet), lambda 3 / gamma 3.5 (CIFAR-100)
    search_space = {"temp": Real(1.0, 4.0), "gamma": Real(0.5, 4.0)}
    dense_ok = False
    dense_reason = "the reference is defined for image-level labels; no dense variant exists"

    def teacher_cache_fields(self) -> set[str]:
        return {"logits"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        return {"ce": self.task_loss(s.logits, y), "kd": nkd_loss(s.logits, t.logits, y, temp=self.p.temp, gamma=self.p.gamma)}
