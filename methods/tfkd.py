"""Tf-KD (virtual teacher): "Revisiting Knowledge Distillation via Label Smoothing Regularization"
(Yuan et al., CVPR 2020), its teacher-free "manually designed regularisation" Tf-KD_reg, as the
reference code computes it (yuanli2333/Teacher-free-Knowledge-Distillation,
``my_loss_function.loss_kd_regularization``).

A **control**, not a KD method: the "teacher" is a fixed distribution built from the label,
``p_d = a`` on the true class and ``(1 - a) / (K - 1)`` elsewhere, softened as
``q = softmax(p_d / T)`` (the temperature divides the *probabilities*, as the code does; with
T = 20 q is close to uniform with a small bump on the true class). Loss::

    (1 - alpha) * CE(z, y)  +  alpha * multiplier * KL(q || softmax(z))

with the student at temperature 1 and the KL reduced as ``nn.KLDivLoss()`` does by default, a mean
over batch x classes (``kl_reduction=mean``; ``batchmean`` divides by the batch only, i.e. K times
larger). Defaults: the repository's ResNet-18 configuration (``base_resnet18/params.json``: T 20,
alpha 0.1, multiplier 100) and a = 0.99 (fixed in the code); its MobileNetV2 configuration uses T 40,
alpha 0.95, multiplier 1. The self-training variant (Tf-KD_self: a pre-trained copy of the student
as teacher) is not this method. Dense logits are treated pixel-wise with the void label ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import CONTROL, Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods.dkd import flatten_dense
from bench.models import ModelOutput


def virtual_teacher(y: torch.Tensor, num_classes: int, correct_prob: float = 0.99, tau: float = 20.0) -> torch.Tensor:
    """``softmax(p_d / tau)`` with ``p_d`` = ``correct_prob`` on class ``y``, the rest spread evenly: (B, K)."""
    p = torch.full((len(y), num_classes), (1.0 - correct_prob) / (num_classes - 1), device=y.device)
    p[torch.arange(len(y), device=y.device), y] = correct_prob
    return F.softmax(p / tau, dim=1)


def tfkd_reg_loss(z: torch.Tensor, y: torch.Tensor, *, correct_prob: float = 0.99, tau: float = 20.0,
                  reduction: str = "mean") -> torch.Tensor:
    """KL(virtual teacher || softmax(z)), reduced over batch x classes (``mean``, the reference's
    ``nn.KLDivLoss()``) or over the batch (``batchmean``)."""
    q = virtual_teacher(y, z.shape[1], correct_prob, tau).to(z.dtype)
    kl = q * (q.log() - F.log_softmax(z, dim=1))
    return kl.mean() if reduction == "mean" else kl.sum(1).mean()


@dataclass
class TfKDParams:
    tau: float = hp(20.0, "temperature applied to the virtual teacher's probabilities (base_resnet18: 20)", gt=0)
    alpha: float = hp(0.1, "weight of the regulariser; the CE gets 1 - alpha (base_resnet18: 0.1)", ge=0, le=1)
    multiplier: float = hp(100.0, "extra factor on the regulariser (base_resnet18: 100)", ge=0)
    correct_prob: float = hp(0.99, "virtual teacher's probability of the true class (fixed 0.99 in the code)", gt=0, lt=1)
    kl_reduction: str = hp("mean", "mean: over batch x classes (the code's nn.KLDivLoss()) | batchmean: over the batch")

    def validate(self) -> None:
        if self.kl_reduction not in ("mean", "batchmean"):
            raise ValueError(f"kl_reduction must be 'mean' or 'batchmean', got {self.kl_reduction!r}")


@register_method("tfkd")
class TfKD(Method):
    category = CONTROL
    description = "Tf-KD virtual teacher (Yuan et al. 2020): KL to a label-built soft target (control: no teacher)"
    reference = "yuanli2333/Teacher-free-Knowledge-Distillation my_loss_function.loss_kd_regularization"
    Params = TfKDParams
    uses_teacher = False
    search_space = {"alpha": Real(0.05, 0.95), "tau": Real(1.0, 40.0, log=True)}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        z, _, yy = flatten_dense(s.logits, s.logits, y, self.ctx.ignore_index)
        reg = tfkd_reg_loss(z, yy, correct_prob=self.p.correct_prob, tau=self.p.tau, reduction=self.p.kl_reduction)
        return {"ce": (1.0 - self.p.alpha) * self.task_loss(s.logits, y), "reg": self.p.alpha * self.p.multiplier * reg}
