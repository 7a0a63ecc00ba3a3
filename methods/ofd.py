"""OFD: "A Comprehensive Overhaul of Feature Distillation" (Heo et al., ICCV 2019).

As clovaai/overhaul-distillation and mdistiller's OFD:

* distils the **pre-ReLU** stage outputs (``ModelOutput.preact_maps``);
* teacher target ``t' = max(t, margin_c)`` with the per-channel margin ``E[x | x < 0]`` of
  ``x ~ N(beta_c, gamma_c^2)`` taken from the teacher's BatchNorm before each ReLU
  (``m - s phi(m/s) / Phi(-m/s)`` with s = |gamma|, m = beta; ``-3 s`` where Phi(-m/s) <= 0.001);
* partial L2: ``(s_hat - t')^2`` counted where ``s_hat > t'`` or ``t' > 0``; summed and divided by
  the batch size; stages weighted 1/2^(K-1-i) (deepest 1);
* the student passes through a 1x1 conv (no bias, He-normal init) + BN connector per stage;
* **the teacher runs in train mode** (BN batch statistics; the authors' Table 8), still without
  gradient.

Cross-modal wiring (differs from the original, which assumes one input and equal sizes): maps are
made 4-D, the teacher map is adaptive-average-pooled to the student's spatial size (mdistiller
pools the same way), stage lists are aligned from the deepest stage. For a teacher without BN
before its ReLUs the margin is estimated per channel as the mean of the negative pre-activations
of a dry-run batch (the spec's option (a)). Weight 1e-3 (CIFAR; ImageNet uses 1e-4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods._connectors import need_maps
from bench.models import ModelOutput, to_4d


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def ofd_margin(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Per-channel margin E[x | x < 0] for x ~ N(beta, gamma^2) (Heo et al., Eq. 3)."""
    out = []
    for g, b in zip(gamma.tolist(), beta.tolist()):
        s, m = abs(g), b
        if s < 1e-12:
            out.append(min(m, 0.0))
        elif _Phi(-m / s) > 0.001:
            out.append(m - s * _phi(m / s) / _Phi(-m / s))
        else:
            out.append(-3 * s)
    return torch.tensor(out, dtype=gamma.dtype, device=gamma.device)


def ofd_stage_loss(s_hat: torch.Tensor, t: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """sum((s_hat - t')^2 * [(s_hat > t') | (t' > 0)]) / N with t' = max(t, margin) per channel."""
    t = t.detach()
    m = margin.view(1, -1, *([1] * (t.dim() - 2))).to(t.dtype)
    tp = torch.maximum(t, m)
    mask = ((s_hat > tp) | (tp > 0)).to(s_hat.dtype)
    return ((s_hat - tp) ** 2 * mask).sum() / s_hat.shape[0]


def ofd_loss(s_hats: list[torch.Tensor], ts: list[torch.Tensor], margins: list[torch.Tensor]) -> torch.Tensor:
    """Stage-weighted sum: stage i of K weighted 1 / 2^(K-1-i)."""
    k = len(s_hats)
    return sum(ofd_stage_loss(s, t, m) / 2 ** (k - 1 - i) for i, (s, t, m) in enumerate(zip(s_hats, ts, margins)))


class OFDConnector(nn.Module):
    def __init__(self, c_s: int, c_t: int):
        super().__init__()
        self.conv = nn.Conv2d(c_s, c_t, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_t)
        nn.init.normal_(self.conv.weight, 0.0, math.sqrt(2.0 / c_t))  # N(0, sqrt(2/(k^2 C_t))), k = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(to_4d(x)))


@dataclass
class OFDParams:
    feat_weight: float = hp(1e-3, "weight of the distillation loss (CIFAR 1e-3, ImageNet 1e-4)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)


@register_method("ofd")
class OFD(Method):
    category = "Feature"
    description = "OFD (Heo et al. 2019): partial L2 on pre-ReLU maps with BN-derived margins"
    reference = "clovaai/overhaul-distillation distiller.py; mdistiller OFD.py"
    Params = OFDParams
    # mdistiller OFD: 1e-3 (CIFAR), 1e-4 (ImageNet); mmrazor 0.25-1 per stage / 1000
    search_space = {"feat_weight": Real(1e-5, 1e-2, log=True)}
    teacher_train_mode = True

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None and teacher is not None
        need_maps(s_probe, "student", "ofd", preact=True)
        need_maps(t_probe, "teacher", "ofd", preact=True)
        ns, nt = len(s_probe.preact_maps), len(t_probe.preact_maps)
        k = min(ns, nt)
        self.pairs = [(ns - k + i, nt - k + i) for i in range(k)]
        bns = teacher.bn_before_relu()
        margins = []
        for _, j in self.pairs:
            bn = bns[j] if j < len(bns) else None
            if bn is not None and getattr(bn, "weight", None) is not None:
                margins.append(ofd_margin(bn.weight.detach(), bn.bias.detach()))
            else:  # empirical E[x | x < 0] per channel from the dry-run batch
                pre = to_4d(t_probe.preact_maps[j]).detach()
                neg = pre.clamp(max=0)
                cnt = (pre < 0).sum(dim=(0, 2, 3)).clamp(min=1)
                margins.append(neg.sum(dim=(0, 2, 3)) / cnt)
        self.margins = margins
        self.modules["connectors"] = nn.ModuleList(
            OFDConnector(to_4d(s_probe.preact_maps[i]).shape[1], to_4d(t_probe.preact_maps[j]).shape[1])
            for i, j in self.pairs
        )

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        s_hats, ts, ms = [], [], []
        for conn, (i, j), margin in zip(self.modules["connectors"], self.pairs, self.margins):
            sh = conn(s.preact_maps[i])
            tt = to_4d(t.preact_maps[j])
            if tt.shape[-2:] != sh.shape[-2:]:
                tt = F.adaptive_avg_pool2d(tt, sh.shape[-2:])
            s_hats.append(sh)
            ts.append(tt)
            ms.append(margin.to(sh.device))
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y), "ofd": self.p.feat_weight * ofd_loss(s_hats, ts, ms)}

    def state_dict(self):
        return {"modules": self.modules.state_dict(), "margins": [m.cpu() for m in self.margins]}

    def load_state_dict(self, state) -> None:
        self.modules.load_state_dict(state["modules"])
        self.margins = [m for m in state["margins"]]
