"""w/o KD + LS: the unimodal student trained with label smoothing (Szegedy et al., CVPR 2016).

A **control**, not a KD method: it has no teacher. The target is ``(1 - epsilon) * onehot(y) +
epsilon / K`` (uniform over all K classes, PyTorch's ``label_smoothing``), i.e. the regularisation a
soft teacher brings without any knowledge of the other modality. A KD method's gain over w/o KD
that this control matches is regularisation, not cross-modal knowledge (the w/o KD students of
the offline benchmarks over-fit: training CE 0.07-0.17 at their last epoch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import CONTROL, Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.models import ModelOutput


def ls_loss(logits: torch.Tensor, y: torch.Tensor, epsilon: float = 0.1, ignore_index: int | None = None) -> torch.Tensor:
    """Batch-mean cross-entropy against ``(1 - epsilon) * onehot + epsilon / K`` (dense logits
    pixel-wise, the void label ignored)."""
    if ignore_index is None:
        return F.cross_entropy(logits, y, label_smoothing=epsilon)
    return F.cross_entropy(logits, y, label_smoothing=epsilon, ignore_index=ignore_index)


@dataclass
class LSParams:
    epsilon: float = hp(0.1, "label-smoothing mass spread uniformly over the classes (Szegedy et al.: 0.1)",
                        ge=0, lt=1)


@register_method("ls")
class LabelSmoothing(Method):
    category = CONTROL
    description = "w/o KD + LS: unimodal student, label-smoothed cross-entropy (control: no teacher)"
    reference = "Szegedy et al. 2016 (Inception-v3), PyTorch cross_entropy(label_smoothing=epsilon)"
    Params = LSParams
    uses_teacher = False
    search_space = {"epsilon": Real(0.01, 0.3, log=True)}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        return {"ce": ls_loss(s.logits, y, self.p.epsilon, self.ctx.ignore_index)}
