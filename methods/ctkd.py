"""CTKD: "Curriculum Temperature for Knowledge Distillation" (Li et al., AAAI 2023), global temperature.

Source: zhengli97/CTKD @7d525224, ``models/temp_global.py`` (``Global_T`` and the gradient-reversal
function), ``helper/loops.py`` (``train_distill``), ``train_student.py`` (``CosineDecay``, the
options) and ``scripts/run_cifar_distill.sh`` (the CIFAR recipe). The instance-wise temperature
module is not in that snapshot and is not implemented.

A learnable scalar ``t`` (initialised to 1, as ``Global_T``) gives the KD temperature
``T = t_start + t_range * sigmoid(GRL_lambda(t))``, i.e. T in (1, 21) and T = 1 + 20 sigmoid(1) ~ 15.6
at the start: the reference's ``kd_T`` 4 is not used once the temperature is learned. The loss is
``ce_weight * CE + kd_weight * T^2 * batch-mean KL(softmax(z_t / T) || softmax(z_s / T))`` with the
learnable T also in the T^2 factor. The gradient-reversal layer is the identity forward and
multiplies the gradient reaching ``t`` by ``lambda`` backward (the sign lives in the schedule), so the
temperature ascends the KD loss while the student descends it. ``lambda`` follows the reference's
cosine schedule from ``lambda_max`` 0 to ``lambda_min`` -1 over ``lambda_epochs`` epochs,
``lambda(e) = min + (max - min) * (1 + cos(pi * min(e, L) / L)) / 2`` with 1-based epochs, fixed
within an epoch, then -1.

Schedule length (the protocol rule for epoch-counted schedules): the reference's L = 10 epochs
belongs to its 240-epoch CIFAR schedule. By default (``lambda_mode=relative``) L keeps that ratio,
``ceil(lambda_epochs / lambda_of x train.epochs)`` (1 of 10 epochs: lambda is -1 from the first
epoch), as DKD v2's warm-up does; ``lambda_mode=absolute`` is the reference exactly (L = 10
epochs whatever the schedule). The record's ``extra.method`` holds the mode, L, the lambda of each
epoch and the temperature at the end.

``t`` is a parameter of the method (``self.modules``), so it is optimised with the student by the
same optimiser, lr and weight decay, as the reference's SGD over ``trainable_list`` does. Logit
standardisation (``logit_std``, Sun et al. 2024, off by default) z-scores both sides' logits
before the temperature, see :mod:`bench.methods.logit`.

Cross-modal use: only the label space is shared, as for Logit KD; the temperature is global, so
it is the same for every sample whatever its modality pairing. Dense logits are treated pixel-wise
with the void label ignored (one temperature for every pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method, relative_epochs
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods.dkd import flatten_dense
from bench.methods.logit import STD_FORMS, maybe_standardise, std_form, validate_std_form
from bench.models import ModelOutput


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; the incoming gradient times ``lam`` backward (Ganin & Lempitsky's layer with
    the sign carried by ``lam``, as the reference's ``GradientReversalFunction``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad * ctx.lam, None


def reverse_grad(x: torch.Tensor, lam: float) -> torch.Tensor:
    """``x`` forward, ``lam * grad`` backward."""
    return _ReverseGrad.apply(x, lam)


def ctkd_temperature(t: torch.Tensor, lam: float, t_start: float = 1.0, t_range: float = 20.0) -> torch.Tensor:
    """``t_start + t_range * sigmoid(GRL_lam(t))``: the learnable temperature."""
    return t_start + t_range * torch.sigmoid(reverse_grad(t, lam))


def ctkd_lambda(epoch: int, loops: int, lam_max: float = 0.0, lam_min: float = -1.0) -> float:
    """The reference's ``CosineDecay.get_value``: the gradient-reversal weight of 1-based ``epoch``."""
    i = min(max(epoch, 0), loops)
    return lam_min + (lam_max - lam_min) * (math.cos(i * math.pi / loops) + 1.0) * 0.5


def ctkd_loss(z_s: torch.Tensor, z_t: torch.Tensor, temperature: torch.Tensor, std: str | None = None) -> torch.Tensor:
    """T^2 * batch-mean KL(softmax(z_t/T) || softmax(z_s/T)) with a tensor temperature T (a scalar
    or shape (1,), gradients flow into it); the teacher is detached. ``std`` z-scores both sides'
    logits first (logit standardisation). (N, C) logits."""
    z_s, z_t = maybe_standardise(z_s, z_t.detach(), std)
    T = temperature.reshape(())
    log_ps = F.log_softmax(z_s / T, dim=1)
    log_pt = F.log_softmax(z_t / T, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * T * T


class GlobalTemperature(nn.Module):
    """The one learnable scalar ``t`` (initial value 1, the reference's ``torch.ones(1)``)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.t = nn.Parameter(torch.full((1,), float(init)))


@dataclass
class CTKDParams:
    ce_weight: float = hp(0.1, "weight of the cross-entropy (the reference: 0.1)", ge=0)
    kd_weight: float = hp(0.9, "weight of the KD term (the reference: 0.9)", ge=0)
    t_start: float = hp(1.0, "lowest temperature (the reference's t_start 1)", gt=0)
    t_range: float = hp(20.0, "temperature span: T = t_start + t_range * sigmoid(t) (the reference's t_end 20)", gt=0)
    t_init: float = hp(1.0, "initial value of the learnable t (the reference: 1, i.e. T ~ 15.6)")
    lambda_max: float = hp(0.0, "gradient-reversal weight at the start of the cosine schedule (the reference: 0)")
    lambda_min: float = hp(-1.0, "gradient-reversal weight at its end (the reference: -1; negative reverses)")
    lambda_epochs: int = hp(10, "reference length of the cosine schedule in epochs (the reference: 10)", ge=1)
    lambda_of: int = hp(240, "length of the schedule the reference's lambda_epochs belongs to (CIFAR: 240)", ge=1)
    lambda_mode: str = hp("relative", "relative: L = ceil(lambda_epochs / lambda_of x train.epochs) (the reference's "
                                      "ratio) | absolute: L = lambda_epochs (the reference exactly)")
    logit_std: bool = hp(False, "logit standardisation (Sun et al. 2024): z-score both sides' logits before T")
    logit_std_form: str = hp("unbiased", "with logit_std: " + " | ".join(STD_FORMS) + " (torch.std + 1e-7, the "
                                         "standardisation repository's code | the paper's population std + 1e-7)")

    def validate(self) -> None:
        if self.lambda_mode not in ("relative", "absolute"):
            raise ValueError(f"lambda_mode must be 'relative' or 'absolute', got {self.lambda_mode!r}")
        validate_std_form(self.logit_std_form)

    def lambda_loops(self, epochs: int) -> int:
        """L for a run of ``epochs`` epochs."""
        if self.lambda_mode == "absolute":
            return self.lambda_epochs
        return relative_epochs(self.lambda_epochs, self.lambda_of, epochs)


@register_method("ctkd")
class CTKD(Method):
    category = "Logits"
    description = "CTKD (Li et al. 2023): KD with a learnable global temperature trained adversarially (GRL)"
    reference = "zhengli97/CTKD models/temp_global.py, helper/loops.py, train_student.py (global T)"
    Params = CTKDParams
    # the paper varies the temperature range and the schedule's end; the KD weight matters most here
    search_space = {"t_range": Real(5.0, 30.0), "kd_weight": Real(0.3, 3.0, log=True)}

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.modules["temp"] = GlobalTemperature(params.t_init)

    def teacher_cache_fields(self) -> set[str]:
        return {"logits"}

    def lam(self, epoch: int) -> float:
        return ctkd_lambda(epoch, self.p.lambda_loops(self.ctx.epochs), self.p.lambda_max, self.p.lambda_min)

    def temperature(self, epoch: int) -> torch.Tensor:
        return ctkd_temperature(self.modules["temp"].t, self.lam(epoch), self.p.t_start, self.p.t_range)

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        zs, zt, _ = flatten_dense(s.logits, t.logits, y, self.ctx.ignore_index)
        T = self.temperature(epoch).to(zs.dtype)
        kd = ctkd_loss(zs, zt, T, std=std_form(self.p.logit_std, self.p.logit_std_form))
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y), "kd": self.p.kd_weight * kd}

    def report(self) -> dict[str, object]:
        """The schedule that ran and the learned temperature (the record's ``extra.method``)."""
        loops = self.p.lambda_loops(self.ctx.epochs)
        with torch.no_grad():
            t_end = float(self.p.t_start + self.p.t_range * torch.sigmoid(self.modules["temp"].t).item())
        return {"lambda_mode": self.p.lambda_mode, "lambda_epochs": loops,
                "lambda": [self.lam(e) for e in range(1, self.ctx.epochs + 1)], "final_temperature": t_end}
