"""Logit KD (Hinton, Vinyals, Dean 2015), as in mdistiller's ``kd_loss``.

Cross-modal use is unchanged from the original: only the label space is shared; the teacher
sees its own modality of the paired sample.

Logit standardisation (Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024;
sunshangquan/logit-standardization-KD, read at 6083e2de, ``mdistiller/distillers/KD.py``;
the zoo spec names f6e5aa51), off by default (``logit_std=false``, which leaves the loss, the
results and the config hash exactly as before): each logit vector, student's and teacher's, is
z-scored over its classes before the temperature. The repository divides by ``torch.std`` (the
unbiased K-1 estimate) plus 1e-7, which is the default here (``logit_std_form=unbiased``, the code's
convention, which produced the published numbers); the paper writes the population std
(``logit_std_form=population``, also + 1e-7). With it the repository uses base temperature 2,
KD weight 9 and CE 0.1: these are **not** applied by the switch, set them yourself
(``--set logit.logit_std=true --set logit.tau=2 --set logit.kd_weight=9``; CE 0.1 is already the
default). Dense logits are standardised per pixel over the classes.
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


STD_FORMS = ("unbiased", "population")
"""``logit_std_form``: ``unbiased`` (``torch.std``, K-1, the repository's code) | ``population`` (K, the paper)."""

STD_EPS = 1e-7
"""Added to the std before dividing (the repository's constant)."""


def standardise_logits(z: torch.Tensor, form: str = "unbiased") -> torch.Tensor:
    """Z-score each row of ``z`` (N, C) over its C classes: ``(z - mean) / (std + 1e-7)``.

    ``form="unbiased"`` divides by the K-1 estimate (``torch.std``, as the logit-standardisation
    repository does); ``form="population"`` by the K estimate the paper writes."""
    if form not in STD_FORMS:
        raise ValueError(f"logit standardisation form must be one of {', '.join(STD_FORMS)}, got {form!r}")
    mean = z.mean(dim=1, keepdim=True)
    std = z.std(dim=1, keepdim=True, correction=1 if form == "unbiased" else 0)
    return (z - mean) / (std + STD_EPS)


def maybe_standardise(z_s: torch.Tensor, z_t: torch.Tensor, std: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides standardised with ``std`` (a :data:`STD_FORMS` entry), or returned untouched for ``None``."""
    if std is None:
        return z_s, z_t
    return standardise_logits(z_s, std), standardise_logits(z_t, std)


def std_form(on: bool, form: str) -> str | None:
    """The ``std`` argument of the loss functions from a method's ``logit_std`` / ``logit_std_form``."""
    return form if on else None


def logit_loss(z_s: torch.Tensor, z_t: torch.Tensor, tau: float = 4.0, std: str | None = None) -> torch.Tensor:
    """tau^2 * batch-mean KL(softmax(z_t/tau) || softmax(z_s/tau)).

    The tau^2 factor keeps the gradient scale independent of tau (Hinton et al.): the gradient
    w.r.t. ``z_s`` is ``tau/B * (p_s^tau - p_t^tau)``. Dense logits (B, C, H, W) are treated as
    B*H*W samples. The teacher side is detached. ``std`` (``unbiased`` | ``population``) z-scores
    both sides' logits first (logit standardisation); ``None`` (the default) leaves them as they are.
    """
    if z_s.dim() == 4:
        z_s = z_s.permute(0, 2, 3, 1).reshape(-1, z_s.shape[1])
        z_t = z_t.permute(0, 2, 3, 1).reshape(-1, z_t.shape[1])
    z_s, z_t = maybe_standardise(z_s, z_t, std)
    log_ps = F.log_softmax(z_s / tau, dim=1)
    log_pt = F.log_softmax(z_t.detach() / tau, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()
    return kl * tau**2


@dataclass
class LogitParams:
    tau: float = hp(4.0, "temperature (mdistiller CIFAR default 4)", gt=0)
    ce_weight: float = hp(0.1, "weight of the cross-entropy term (mdistiller CIFAR: 0.1)", ge=0)
    kd_weight: float = hp(0.9, "weight of the KD term (mdistiller CIFAR: 0.9)", ge=0)
    logit_std: bool = hp(False, "logit standardisation (Sun et al. 2024): z-score both sides' logits before tau; "
                                "the repository then uses tau 2, KD 9, CE 0.1 (set them: not applied by this switch)",
                         later=True)
    logit_std_form: str = hp("unbiased", "with logit_std: unbiased (torch.std + 1e-7, the repository's code) | "
                                         "population (the paper's std, + 1e-7)", later=True)

    def validate(self) -> None:
        if self.tau <= 0:
            raise ValueError("tau must be > 0")
        validate_std_form(self.logit_std_form)


def validate_std_form(form: str) -> None:
    if form not in STD_FORMS:
        raise ValueError(f"logit_std_form must be one of {', '.join(STD_FORMS)}, got {form!r}")


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
            "kd": self.p.kd_weight * logit_loss(s.logits, t.logits, tau=self.p.tau,
                                                std=std_form(self.p.logit_std, self.p.logit_std_form)),
        }

    def report(self) -> dict[str, object]:
        """The standardisation that ran, when it is on (the record's ``extra.method``; nothing otherwise)."""
        return {"logit_std": self.p.logit_std_form} if self.p.logit_std else {}
