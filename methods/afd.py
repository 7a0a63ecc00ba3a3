"""AFD: "Show, Attend and Distill: Knowledge Distillation via Attention-based Feature Matching"
(Ji et al., AAAI 2021), as clovaai/attention-feature-distillation ``distill/AFD.py``.

For every teacher layer i an attention over the student layers j decides which student map
should match it:

* teacher query  q_i = BN1d(Linear(GAP f^t_i)) (no ReLU);
* student key    k_j = ReLU(BN1d(Linear(GAP f^s_j))), then one shared BN1d(Linear(d -> d*T)) gives
  a key per (j, i);
* logit_{b,i,j} = (<K_{b,j,i}, Q_{b,i}> + <P^t_i, P^s_j>) / sqrt(d), alpha = softmax over j;
* values: channel mean of squares, flattened and L2-normalised; the student's is adaptive-pooled
  to each teacher resolution;
* L_AFD = sum_i mean_b sum_j alpha_{b,i,j} ||v^s_{j->i} - v^t_i||^2 / (H_i W_i).

Total: CE + 0.9 * KD(tau 4) + 200 * L_AFD (main.py). The attention modules (with BN1d in train
mode, so batches need >= 2 samples) are trained by the student's optimiser.

Cross-modal wiring: channel counts enter only through GAP + Linear and spatial sizes through
adaptive pooling, so AFD runs as-is across modalities; maps are made 4-D first (a sequence is an
L x 1 map). Differences from the original: the candidate layers are the *stage* outputs of each
network (the original lists every residual block), and a spatial attention map of a spectrogram
has no geometric correspondence with one of an image, so the match is learned, not given.
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
from bench.methods.logit import logit_loss
from bench.models import ModelOutput, to_4d


def spatial_value(f: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Channel mean of squares, optionally pooled to ``size``, flattened and L2-normalised: (B, H*W)."""
    a = to_4d(f).pow(2).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.adaptive_avg_pool2d(a, size)
    return F.normalize(a.flatten(1), dim=1)


def afd_loss(alpha: torch.Tensor, v_s: list[torch.Tensor], v_t: list[torch.Tensor]) -> torch.Tensor:
    """sum_i mean_b sum_j alpha[b,i,j] * ||v_s[i][b,j] - v_t[i][b]||^2 / HW_i.

    ``alpha``: (B, T, S) attention; ``v_s[i]``: (B, S, HW_i) student values pooled to teacher layer
    i's grid; ``v_t[i]``: (B, HW_i).
    """
    total = alpha.new_zeros(())
    for i, (vs, vt) in enumerate(zip(v_s, v_t)):
        d = (vs - vt.detach()[:, None, :]).pow(2).sum(-1) / vt.shape[-1]  # (B, S)
        total = total + (alpha[:, i, :] * d).sum(1).mean()
    return total


class AFDAttention(nn.Module):
    def __init__(self, s_channels: list[int], t_channels: list[int], qk_dim: int = 128):
        super().__init__()
        self.d = qk_dim
        self.T, self.S = len(t_channels), len(s_channels)
        self.query = nn.ModuleList(nn.Sequential(nn.Linear(c, qk_dim), nn.BatchNorm1d(qk_dim)) for c in t_channels)
        self.key = nn.ModuleList(
            nn.Sequential(nn.Linear(c, qk_dim), nn.BatchNorm1d(qk_dim), nn.ReLU()) for c in s_channels
        )
        self.bilinear = nn.Sequential(nn.Linear(qk_dim, qk_dim * self.T), nn.BatchNorm1d(qk_dim * self.T))
        self.p_t = nn.Parameter(torch.empty(self.T, qk_dim))
        self.p_s = nn.Parameter(torch.empty(self.S, qk_dim))
        nn.init.xavier_normal_(self.p_t)
        nn.init.xavier_normal_(self.p_s)

    def forward(self, s_maps: list[torch.Tensor], t_maps: list[torch.Tensor]) -> torch.Tensor:
        b = s_maps[0].shape[0]
        gap = lambda f: to_4d(f).mean(dim=(2, 3))  # noqa: E731
        q = torch.stack([m(gap(f.detach())) for m, f in zip(self.query, t_maps)], 1)  # (B, T, d)
        k = torch.stack([m(gap(f)) for m, f in zip(self.key, s_maps)], 1)  # (B, S, d)
        k = self.bilinear(k.reshape(b * self.S, self.d)).view(b, self.S, self.T, self.d)
        logit = torch.einsum("bstd,btd->bts", k, q) + (self.p_t @ self.p_s.t())[None]
        return torch.softmax(logit / math.sqrt(self.d), dim=-1)  # (B, T, S)


@dataclass
class AFDParams:
    beta: float = hp(200.0, "weight of L_AFD", ge=0)
    alpha: float = hp(0.9, "weight of the KD term (0 = AFD only)", ge=0)
    tau: float = hp(4.0, "KD temperature", gt=0)
    qk_dim: int = hp(128, "query/key dimension", ge=1)


@register_method("afd")
class AFD(Method):
    category = "Feature"
    description = "AFD (Ji et al. 2021): attention-selected matching of all teacher/student stages"
    reference = "clovaai/attention-feature-distillation distill/AFD.py, main.py"
    Params = AFDParams
    # AFD main.py: beta 200, KD alpha 0.9 (0 = AFD alone)
    search_space = {"beta": Real(10.0, 1000.0, log=True), "alpha": Real(0.0, 1.0)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        need_maps(s_probe, "student", "afd")
        need_maps(t_probe, "teacher", "afd")
        sc = [to_4d(f).shape[1] for f in s_probe.feature_maps]
        tc = [to_4d(f).shape[1] for f in t_probe.feature_maps]
        self.t_sizes = [tuple(to_4d(f).shape[-2:]) for f in t_probe.feature_maps]
        self.modules["attention"] = AFDAttention(sc, tc, self.p.qk_dim)

    def teacher_cache_fields(self) -> set[str]:
        return {f"feature_maps[{i}]" for i in range(len(self.t_sizes))} | ({"logits"} if self.p.alpha > 0 else set())

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        alpha = self.modules["attention"](s.feature_maps, t.feature_maps)
        v_t = [spatial_value(f) for f in t.feature_maps]
        v_s = [torch.stack([spatial_value(f, size) for f in s.feature_maps], 1) for size in self.t_sizes]
        terms = {"ce": self.task_loss(s.logits, y), "afd": self.p.beta * afd_loss(alpha, v_s, v_t)}
        if self.p.alpha > 0:
            terms["kd"] = self.p.alpha * logit_loss(s.logits, t.logits, tau=self.p.tau)
        return terms
