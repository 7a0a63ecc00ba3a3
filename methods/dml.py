"""DML: "Deep Mutual Learning" (Zhang et al., CVPR 2018).

Every peer minimises its own CE plus lambda/(K-1) * sum_l KL(sg[p_l] || p_k) at temperature 1.
Here K = 2: the student and a peer network of the teacher modality. The peer is *trained too*
(``teacher_trainable``), starting from the pre-trained unimodal teacher by default
(``peer_init=pretrained``; ``scratch`` re-initialises it as in the paper; under the random-teacher
control, ``train.teacher_control=random``, the "pretrained" peer is the never-trained network of the
run's seed, so both start from scratch). Update schedule: one
forward of both networks, both losses with the other side detached, one optimiser step over
both (the PyTorch port's "simultaneous" update; identical to two SGD optimisers with the same
lr stepped on the same batch). The student is the network evaluated; the peer's final test
score is recorded as a diagnostic.
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


def dml_loss(z_k: torch.Tensor, peers: list[torch.Tensor], *, lambda_: float = 1.0) -> torch.Tensor:
    """Mutual term of peer k: lambda/(K-1) * sum over peers l of batch-mean KL(sg[p_l] || p_k)."""
    log_pk = F.log_softmax(z_k, dim=1)
    total = z_k.new_zeros(())
    for z_l in peers:
        log_pl = F.log_softmax(z_l.detach(), dim=1)
        total = total + (log_pl.exp() * (log_pl - log_pk)).sum(1).mean()
    return lambda_ * total / max(len(peers), 1)


@dataclass
class DMLParams:
    lambda_: float = hp(1.0, "weight of the mutual KL term (AberHu port: 1)", ge=0)
    peer_init: str = hp("pretrained", "pretrained (start from the cached teacher) | scratch")

    def validate(self) -> None:
        if self.peer_init not in ("pretrained", "scratch"):
            raise ValueError("peer_init must be 'pretrained' or 'scratch'")


@register_method("dml")
class DML(Method):
    category = "Logits"
    description = "DML (Zhang et al. 2018): student and a teacher-modality peer learn from each other"
    reference = "YingZhangDUT/Deep-Mutual-Learning; AberHu/Knowledge-Distillation-Zoo train_dml.py"
    Params = DMLParams
    # the PyTorch port's lambda 1; a decade either side
    search_space = {"lambda_": Real(0.1, 10.0, log=True)}
    teacher_trainable = True
    dense_ok = False
    dense_reason = "not part of the paper's segmentation comparison (no dense reference)"

    def setup(self, student, teacher, s_probe, t_probe) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        if self.p.peer_init == "scratch" and teacher is not None:
            for m in teacher.modules():
                if hasattr(m, "reset_parameters") and m is not teacher:
                    m.reset_parameters()

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        return {
            "ce": self.task_loss(s.logits, y),
            "kl": dml_loss(s.logits, [t.logits], lambda_=self.p.lambda_),
            "peer_ce": self.task_loss(t.logits, y),
            "peer_kl": dml_loss(t.logits, [s.logits], lambda_=self.p.lambda_),
        }
