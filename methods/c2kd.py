"""C2KD: "C2KD: Bridging the Modality Gap for Cross-Modal Knowledge Distillation" (Huo et al.,
CVPR 2024), following the official code (huofushuo/C2KD ``utils/helper.py``, ``utils/module.py``).

Terms (temperature 1 everywhere, all weights 1, batch-mean KL):

* teacher side: CE(z_t) + KL(sg p(z_t) || p(u_t)) + KL(sg p(u_t) || p(z_t)) + NT(u_s -> u_t)
* student side: CE(z_s) + KL(sg p(z_s) || p(u_s)) + KL(sg p(u_s) || p(z_s)) + NT(u_t -> u_s)

where z are the networks' logits and u the logits of the **proxies** ``Tea``/``Stu``: one per
network on its second-to-last stage map (the reference's "f4" is the layer3 output):
GAP -> 1x1 conv (no bias) -> BN -> LeakyReLU(0.1) -> Linear(-> C). The only cross-modal coupling
is proxy <-> proxy through NT, the **on-the-fly selection** (OFSD) non-target KL:

    NT(src -> tgt) = 1/N * sum_i m_i * KL(sg p(src_i * mask_i) || p(tgt_i * mask_i))

with the ground-truth logit *zeroed by multiplication* (it stays in the softmax; this is not
DKD's NCKD) and ``m_i = [tau_b(u_t[i], u_s[i]) > krc]``: Kendall's tau-b between the detached
proxy logits over all C classes (ties handled as in scipy), default krc = 0. The mean divides by
N, not by the number of selected samples.

The **teacher keeps training** (bidirectional distillation): it is in the optimiser and in train
mode, starting from the cached unimodal teacher (under ``train.teacher_control=random``: from the
never-trained teacher network of the run's seed); the student starts from scratch. The record
keeps the teacher's final test score as a diagnostic. Differences from the reference: model
selection on a validation split (the reference selects on test for CREMA-D, on train for
VGGSound), and tau-b is computed vectorised on the device instead of a per-sample scipy loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods._connectors import need_stage
from bench.models import ModelOutput, to_4d


def kendall_tau_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Kendall tau-b of (N, C) tensors, O(N C^2); NaN where a row is constant."""
    da = torch.sign(a[:, :, None] - a[:, None, :])
    db = torch.sign(b[:, :, None] - b[:, None, :])
    iu = torch.triu_indices(a.shape[1], a.shape[1], offset=1, device=a.device)
    da, db = da[:, iu[0], iu[1]], db[:, iu[0], iu[1]]
    s = (da * db).sum(1)
    na = (da != 0).sum(1).to(a.dtype)
    nb = (db != 0).sum(1).to(a.dtype)
    return s.to(a.dtype) / torch.sqrt(na * nb)


def _kl_rows(p_log_target: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) from log-probabilities."""
    return (p_log_target.exp() * (p_log_target - log_q)).sum(1)


def kl_batchmean(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Batch-mean KL(sg softmax(target) || softmax(logits)) at temperature 1."""
    return _kl_rows(F.log_softmax(target_logits.detach(), 1), F.log_softmax(logits, 1)).mean()


def nontarget_kl(src: torch.Tensor, tgt: torch.Tensor, y: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """NT(src -> tgt): gt logit zeroed by multiplication in both, KL(sg p(src) || p(tgt)) per sample,
    masked by ``selected`` and divided by N."""
    keep = torch.ones_like(src)
    keep.scatter_(1, y[:, None], 0.0)
    kl = _kl_rows(F.log_softmax((src * keep).detach(), 1), F.log_softmax(tgt * keep, 1))
    return (kl * selected.to(kl.dtype)).sum() / src.shape[0]


def c2kd_loss(z_s: torch.Tensor, z_t: torch.Tensor, u_s: torch.Tensor, u_t: torch.Tensor, y: torch.Tensor, *,
              krc: float = 0.0) -> dict[str, torch.Tensor]:
    """All C2KD terms (unweighted; the reference weights are all 1). ``z_t`` and ``u_t`` carry
    gradient: the teacher and its proxy are trained."""
    with torch.no_grad():
        tau = kendall_tau_b(u_t.detach(), u_s.detach())
        selected = torch.nan_to_num(tau, nan=-2.0) > krc
    return {
        "t_ce": F.cross_entropy(z_t, y),
        "t_proxy_from_net": kl_batchmean(z_t, u_t),
        "t_net_from_proxy": kl_batchmean(u_t, z_t),
        "t_nt": nontarget_kl(u_s, u_t, y, selected),
        "ce": F.cross_entropy(z_s, y),
        "s_proxy_from_net": kl_batchmean(z_s, u_s),
        "s_net_from_proxy": kl_batchmean(u_s, z_s),
        "s_nt": nontarget_kl(u_t, u_s, y, selected),
    }


class Proxy(nn.Module):
    """C2KD's Tea/Stu module: GAP -> 1x1 conv (no bias) -> BN -> LeakyReLU(0.1) -> Linear."""

    def __init__(self, c: int, num_classes: int, slope: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.LeakyReLU(slope)
        self.fc = nn.Linear(c, num_classes)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        x = to_4d(f).mean(dim=(2, 3), keepdim=True)
        return self.fc(self.act(self.bn(self.conv(x))).flatten(1))


@dataclass
class C2KDParams:
    krc: float = hp(0.0, "Kendall tau-b threshold of on-the-fly selection (keep tau > krc)", ge=-1, le=1)
    proxy_stage: int = hp(-2, "stage map the proxies read (reference: layer3 = second-to-last)")


@register_method("c2kd")
class C2KD(Method):
    category = "Cross-Modal"
    description = "C2KD (Huo et al. 2024): bidirectional proxy distillation with OFSD non-target KL"
    reference = "huofushuo/C2KD */utils/helper.py, module.py"
    Params = C2KDParams
    # C2KD: Kendall threshold 0 in every dataset folder; negative keeps more samples, positive fewer
    search_space = {"krc": Real(-0.5, 0.5)}
    teacher_trainable = True
    dense_ok = False
    dense_reason = "its proxies and Kendall selection are defined on image-level logits (no dense reference code)"

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        need_stage(s_probe, self.p.proxy_stage, "student", "c2kd.proxy_stage")
        need_stage(t_probe, self.p.proxy_stage, "teacher", "c2kd.proxy_stage")
        c = self.ctx.num_classes
        self.modules["stu"] = Proxy(to_4d(s_probe.feature_maps[self.p.proxy_stage]).shape[1], c)
        self.modules["tea"] = Proxy(to_4d(t_probe.feature_maps[self.p.proxy_stage]).shape[1], c)

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        u_s = self.modules["stu"](s.feature_maps[self.p.proxy_stage])
        u_t = self.modules["tea"](t.feature_maps[self.p.proxy_stage])
        return c2kd_loss(s.logits, t.logits, u_s, u_t, y, krc=self.p.krc)
