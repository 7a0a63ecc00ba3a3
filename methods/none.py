"""w/o KD: the unimodal baseline (the student trained alone with cross-entropy).

Its records fill the "w/o KD" row of the comparison table and the reference point of the
leaderboard's gain and negative-transfer columns. The runner also trains every teacher with
this method, so "teacher" and "w/o KD" share one definition of unimodal training.
"""

from __future__ import annotations

import torch

from bench.api.method import Method, NoParams
from bench.api.registry import register_method
from bench.models import ModelOutput


@register_method("none")
class NoKD(Method):
    category = "Uni-Modal"
    description = "w/o KD: unimodal student, cross-entropy only"
    reference = "-"
    Params = NoParams
    uses_teacher = False

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {"ce": self.task_loss(s.logits, y)}
