"""DKD: "Decoupled Knowledge Distillation" (Zhao et al., CVPR 2022), as mdistiller's ``dkd_loss``.

KD splits into TCKD (binary target-vs-rest KL) and NCKD (KL between the distributions over the
non-target classes), reweighted: ``alpha * TCKD + beta * NCKD``, both times tau^2, ramped in by
``min(epoch / W, 1)`` with 1-based epochs (mdistiller; mmrazor and cls_KD have no warm-up).

Warm-up length W (version 2). mdistiller's W = 20 epochs belongs to its 240-epoch CIFAR schedule;
on a 10- or 15-epoch schedule it would keep the KD weight below 1 for the whole run (it ended at
0.5 on ``synthetic`` and 0.75 on AV-Digits). By default (``warmup_mode=relative``) W keeps the
reference's ratio: ``ceil(warmup / warmup_of x train.epochs)`` = ceil(20/240 x epochs), i.e. 1
epoch of 10 (no ramp), 2 of 15, 3 of 30. ``warmup_mode=absolute`` is mdistiller exactly
(W = ``warmup`` epochs whatever the schedule). The record's ``extra.method`` holds the mode, W and
the per-epoch factor that ran.

Numerics: the reference subtracts 1000 from the target logit to drop it; we drop the column
explicitly (exact, no |z|/tau << 1000 condition) and compute TCKD in log-sum-exp form, which
equals the reference wherever the reference is finite and stays finite for very confident
students. With 2 classes NCKD is exactly 0 (a softmax over one logit; mdistiller #60).
Defaults: mdistiller's ``CFG.DKD`` (CE 1, alpha 1, beta 8, tau 4, warm-up 20 of 240). Dense logits are
treated pixel-wise with the void label ignored.

Logit standardisation (Sun et al., CVPR 2024; sunshangquan/logit-standardization-KD at 6083e2de,
``mdistiller/distillers/DKD.py``), off by default (``logit_std=false`` leaves the loss, the results
and the config hash as before): both sides' logits are z-scored over the classes before the
temperature, by default with the repository's ``torch.std`` (unbiased) + 1e-7, or with the paper's
population std (``logit_std_form=population``); see :func:`bench.methods.logit.standardise_logits`.
The repository's DKD weights with it, alpha 9 and beta 72 (CE 1 and tau 4 as here), are **not**
applied by the switch: set them (``--set dkd.logit_std=true --set dkd.alpha=9 --set dkd.beta=72``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method, relative_epochs
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods.logit import STD_FORMS, maybe_standardise, std_form, validate_std_form
from bench.methods.nkd import drop_target
from bench.models import ModelOutput


def _binary_log_probs(z: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """(log p_y, log(1 - p_y)) at temperature tau, via log-sum-exp: (B, 2)."""
    zt = z / tau
    lse = torch.logsumexp(zt, dim=1)
    log_py = zt.gather(1, y[:, None]).squeeze(1) - lse
    log_rest = torch.logsumexp(drop_target(zt, y), dim=1) - lse
    return torch.stack([log_py, log_rest], dim=1)


def dkd_terms(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, *, tau: float = 4.0,
              std: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each tau^2 * batch-mean KL(teacher || student); the teacher is detached.
    ``std`` (``unbiased`` | ``population``) z-scores both sides' logits first (logit standardisation)."""
    z_s, z_t = maybe_standardise(z_s, z_t.detach(), std)
    lb_s, lb_t = _binary_log_probs(z_s, y, tau), _binary_log_probs(z_t, y, tau)
    tckd = (lb_t.exp() * (lb_t - lb_s)).sum(1).mean() * tau**2
    ln_s = F.log_softmax(drop_target(z_s, y) / tau, dim=1)
    ln_t = F.log_softmax(drop_target(z_t, y) / tau, dim=1)
    nckd = (ln_t.exp() * (ln_t - ln_s)).sum(1).mean() * tau**2
    return tckd, nckd


def dkd_warmup(epoch: int, warmup: int) -> float:
    """mdistiller's ramp: min(epoch / warmup, 1) with 1-based epochs."""
    return min(epoch / max(warmup, 1), 1.0)


def dkd_loss(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, *, alpha: float = 1.0, beta: float = 8.0,
             tau: float = 4.0, epoch: int | None = None, warmup: int = 20, std: str | None = None) -> torch.Tensor:
    """warm-up(epoch) * (alpha * TCKD + beta * NCKD); ``epoch=None`` means no warm-up factor."""
    tckd, nckd = dkd_terms(z_s, z_t, y, tau=tau, std=std)
    w = 1.0 if epoch is None else dkd_warmup(epoch, warmup)
    return w * (alpha * tckd + beta * nckd)


def flatten_dense(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, ignore_index: int | None):
    """(B,C,H,W) logits + (B,H',W') labels -> per-pixel (P,C), (P,C), (P,) without void pixels."""
    if z_s.dim() != 4:
        return z_s, z_t, y
    if z_s.shape[-2:] != y.shape[-2:]:
        z_s = F.interpolate(z_s, size=y.shape[-2:], mode="bilinear", align_corners=False)
        z_t = F.interpolate(z_t, size=y.shape[-2:], mode="bilinear", align_corners=False)
    c = z_s.shape[1]
    z_s = z_s.permute(0, 2, 3, 1).reshape(-1, c)
    z_t = z_t.permute(0, 2, 3, 1).reshape(-1, c)
    y = y.reshape(-1)
    if ignore_index is not None:
        keep = y != ignore_index
        z_s, z_t, y = z_s[keep], z_t[keep], y[keep]
    return z_s, z_t, y


@dataclass
class DKDParams:
    alpha: float = hp(1.0, "weight of TCKD", ge=0)
    beta: float = hp(8.0, "weight of NCKD (mdistiller default 8; re-tune per pair)", ge=0)
    tau: float = hp(4.0, "temperature", gt=0)
    warmup: int = hp(20, "reference warm-up: epochs over which the KD weight ramps from 1/W to 1 (mdistiller 20)", ge=1)
    warmup_of: int = hp(240, "length of the schedule the reference warm-up belongs to (mdistiller CIFAR: 240)", ge=1)
    warmup_mode: str = hp("relative", "relative: W = ceil(warmup / warmup_of x train.epochs) (the reference's ratio) | "
                                      "absolute: W = warmup epochs (mdistiller exactly)")
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)
    logit_std: bool = hp(False, "logit standardisation (Sun et al. 2024): z-score both sides' logits before tau; "
                                "the repository then uses alpha 9, beta 72 (set them: not applied by this switch)",
                         later=True)
    logit_std_form: str = hp("unbiased", "with logit_std: " + " | ".join(STD_FORMS) + " (torch.std + 1e-7, the "
                                         "repository's code | the paper's population std + 1e-7)", later=True)

    def validate(self) -> None:
        if self.warmup_mode not in ("relative", "absolute"):
            raise ValueError(f"warmup_mode must be 'relative' or 'absolute', got {self.warmup_mode!r}")
        validate_std_form(self.logit_std_form)

    def warmup_epochs(self, epochs: int) -> int:
        """W for a run of ``epochs`` epochs."""
        return self.warmup if self.warmup_mode == "absolute" else relative_epochs(self.warmup, self.warmup_of, epochs)


@register_method("dkd")
class DKD(Method):
    category = "Logits"
    description = "DKD (Zhao et al. 2022): alpha*TCKD + beta*NCKD with a warm-up ramp"
    version = 2  # the warm-up scales with the schedule by default (was a fixed 20 epochs)
    reference = "megvii-research/mdistiller mdistiller/distillers/DKD.py"
    Params = DKDParams
    # mdistiller configs: beta 0.5 (ImageNet R34-R18) to 8 (CIFAR default), tau 1 (ImageNet) / 4 (CIFAR)
    search_space = {"beta": Real(0.5, 10.0), "tau": Real(1.0, 8.0, log=True)}

    def teacher_cache_fields(self) -> set[str]:
        return {"logits"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        zs, zt, yy = flatten_dense(s.logits, t.logits, y, self.ctx.ignore_index)
        tckd, nckd = dkd_terms(zs, zt, yy, tau=self.p.tau, std=std_form(self.p.logit_std, self.p.logit_std_form))
        w = dkd_warmup(epoch, self.p.warmup_epochs(self.ctx.epochs))
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "tckd": w * self.p.alpha * tckd, "nckd": w * self.p.beta * nckd}

    def report(self) -> dict[str, object]:
        """Which warm-up ran (the record's ``extra.method``)."""
        w = self.p.warmup_epochs(self.ctx.epochs)
        out: dict[str, object] = {"warmup_mode": self.p.warmup_mode, "warmup_epochs": w,
                                  "warmup_factor": [dkd_warmup(e, w) for e in range(1, self.ctx.epochs + 1)]}
        if self.p.logit_std:  # only when on: a default record's extra stays as it was
            out["logit_std"] = self.p.logit_std_form
        return out
