"""Unpaired cross-modal KD: feature alignment + label alignment of distributions, not samples.

"Cross-Modal Knowledge Distillation without Paired Data: Theoretical Foundation and Algorithm"
(2026; code khiembk/UnpairedCMKD). Teacher and student mini-batches are not sample-aligned (in the
unpaired protocol they only share the label space), so the losses compare distributions:

* **feature alignment (FA)**: the entropic optimal-transport cost between the student's and the
  teacher's batch of pooled features, cost ``1 - cos`` (clamped at 0), uniform marginals,
  Sinkhorn with ``eps`` = 0.1 for ``iters`` = 100 iterations (log domain, differentiable), as the
  reference's ``sinkhorn2`` call. ``fa_scope=class`` restricts transport to same-class pairs
  (one OT problem per class present in the batch, weighted by its share): the class-conditional
  version of the same quantity.
* **label alignment (LA)**, two forms (``la_form``):

  - ``head_ce`` (default, ours): the student's features must be classified correctly by the frozen
    **teacher head**, ``CE(h_T(z_s), y)``: the prediction distribution that the teacher's classifier
    induces on student features is aligned with the labels;
  - ``reference``: the reference code's term, ``nll_loss(log_softmax(s) - kappa * log_softmax(h_T(z_s)), y)``
    with ``kappa = softmax(h_T(z_s))`` detached, i.e. per sample ``CE_S - kappa_y * CE_T``
    (``source/*_unpair/utils/helper.py``, ``sumall``). Its ``bilevel`` variant has the same sign
    (``CE_S - kappa * CE_T``) with the teacher-head term under no-grad. In ``sumall`` the gradient of
    ``- kappa_y * CE_T`` flows into ``z_s`` through the frozen head and pushes the head's probability
    of the true class *down*; the reference's total ``CE + FA + LA`` also counts ``CE_S`` twice.
    ``head_ce`` keeps the stated intent (align the teacher head's predictions on student features
    with the labels) with a gradient in that direction; ``reference`` reproduces the code.

Total: ``CE + fa * FA + la * LA``. The teacher is frozen. Different feature sizes get a linear
projector (the reference requires equal sizes). With the paired protocol the same losses apply;
they then ignore the pairing, which is the point.
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
from bench.models import ModelOutput


def cosine_cost(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) matrix of ``1 - cos(a_i, b_j)``, clamped at 0."""
    return (1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).clamp_min(0.0)


def sinkhorn_cost(cost: torch.Tensor, eps: float = 0.1, iters: int = 100) -> torch.Tensor:
    """Entropic OT cost <P, C> with uniform marginals, log-domain Sinkhorn (differentiable in C).

    P = diag(u) K diag(v), K = exp(-C / eps); the returned value is sum(P * C), the quantity
    POT's ``sinkhorn2`` returns.
    """
    n, m = cost.shape
    log_a = torch.full((n,), -math.log(n), dtype=cost.dtype, device=cost.device)
    log_b = torch.full((m,), -math.log(m), dtype=cost.dtype, device=cost.device)
    f = torch.zeros(n, dtype=cost.dtype, device=cost.device)
    g = torch.zeros(m, dtype=cost.dtype, device=cost.device)
    for _ in range(iters):
        f = eps * (log_a - torch.logsumexp((g[None, :] - cost) / eps, dim=1))
        g = eps * (log_b - torch.logsumexp((f[:, None] - cost) / eps, dim=0))
    log_p = (f[:, None] + g[None, :] - cost) / eps
    return (log_p.exp() * cost).sum()


def feature_alignment(z_s: torch.Tensor, z_t: torch.Tensor, *, eps: float = 0.1, iters: int = 100,
                      y_s: torch.Tensor | None = None, y_t: torch.Tensor | None = None) -> torch.Tensor:
    """FA: OT cost between the two batches; class-conditional when both label vectors are given."""
    z_t = z_t.detach()
    if y_s is None or y_t is None:
        return sinkhorn_cost(cosine_cost(z_s, z_t), eps, iters)
    total = z_s.new_zeros(())
    n = z_s.shape[0]
    for c in torch.unique(y_s):
        a, b = z_s[y_s == c], z_t[y_t == c]
        if len(b) == 0:
            continue
        total = total + (len(a) / n) * sinkhorn_cost(cosine_cost(a, b), eps, iters)
    return total


def label_alignment(z_s: torch.Tensor, teacher_head: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """LA (``head_ce``): CE of the frozen teacher head on the student's features."""
    return F.cross_entropy(teacher_head(z_s), y)


def label_alignment_reference(logits_s: torch.Tensor, z_s: torch.Tensor, teacher_head: nn.Module,
                              y: torch.Tensor) -> torch.Tensor:
    """LA (``reference``): mean over the batch of ``CE_S - kappa_y * CE_T``, where ``CE_S`` is the
    student's own cross-entropy, ``CE_T`` that of the frozen teacher head on the student's features
    and ``kappa = softmax(h_T(z_s))`` without gradient (the reference's ``sumall`` term)."""
    log_p_s = F.log_softmax(logits_s, dim=-1)
    log_q = F.log_softmax(teacher_head(z_s), dim=-1)
    kappa = log_q.detach().exp()
    return F.nll_loss(log_p_s - kappa * log_q, y)


@dataclass
class UCMKDParams:
    fa: float = hp(1.0, "weight of feature alignment (OT between feature distributions)", ge=0)
    la: float = hp(1.0, "weight of label alignment (teacher head on student features)", ge=0)
    eps: float = hp(0.1, "Sinkhorn entropic regularisation (absolute, cost in [0, 2])", gt=0)
    iters: int = hp(100, "Sinkhorn iterations", ge=1)
    fa_scope: str = hp("batch", "batch (reference) | class (OT within each class of the batch)")
    la_form: str = hp("head_ce", "head_ce (CE of the teacher head on student features) | reference "
                                 "(the code's CE_S - kappa_y * CE_T)")

    def validate(self) -> None:
        if self.fa < 0 or self.la < 0 or self.eps <= 0 or self.iters < 1:
            raise ValueError("fa, la >= 0, eps > 0 and iters >= 1 required")
        if self.fa_scope not in ("batch", "class"):
            raise ValueError("fa_scope must be 'batch' or 'class'")
        if self.la_form not in ("head_ce", "reference"):
            raise ValueError("la_form must be 'head_ce' or 'reference'")


@register_method("ucmkd")
class UCMKD(Method):
    category = "Cross-Modal"
    description = "Unpaired CMKD: OT feature alignment + teacher-head label alignment (distributions, not pairs)"
    reference = "Cross-Modal KD without Paired Data (2026); khiembk/UnpairedCMKD"
    Params = UCMKDParams
    # unpaired CMKD: feature and label alignment weights 1
    search_space = {"fa": Real(0.1, 10.0, log=True), "la": Real(0.1, 10.0, log=True)}
    dense_ok = False
    dense_reason = "defined on pooled features and image-level labels"

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None and teacher is not None
        ds, dt = s_probe.feature.shape[-1], t_probe.feature.shape[-1]
        if ds != dt:
            self.modules["proj"] = nn.Linear(ds, dt)
        self._teacher_head = teacher.classifier  # frozen with the teacher (not in self.modules)

    def teacher_cache_fields(self) -> set[str]:
        return {"feature"}  # the teacher head is applied to student features, not to teacher outputs

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        z_s = s.feature
        if "proj" in self.modules:
            z_s = self.modules["proj"](z_s)
        terms = {"ce": self.task_loss(s.logits, y)}
        if self.p.fa > 0:
            # both protocols give the teacher sample of row i the label y[i] (paired: the same clip;
            # unpaired: a class-conditional random partner), so class-conditional OT uses y twice
            cls = self.p.fa_scope == "class"
            terms["fa"] = self.p.fa * feature_alignment(z_s, t.feature, eps=self.p.eps, iters=self.p.iters,
                                                        y_s=y if cls else None, y_t=y if cls else None)
        if self.p.la > 0:
            if self.p.la_form == "reference":
                terms["la"] = self.p.la * label_alignment_reference(s.logits, z_s, self._teacher_head, y)
            else:
                terms["la"] = self.p.la * label_alignment(z_s, self._teacher_head, y)
        return terms
