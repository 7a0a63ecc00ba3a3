"""SP: "Similarity-Preserving Knowledge Distillation" (Tung & Mori, ICCV 2019), as mdistiller's SP.

Source: megvii-research/mdistiller @a08d46f1 (the file was read at the stored snapshot e8c5bb33; not compared with a08d46f1),
``mdistiller/distillers/SP.py``; defaults from ``CFG.SP`` (weight 3000, CE 1, last stage only).

The last stage map of each network is flattened to (B, C*H*W); its B x B Gram matrix
``G = F F^T`` is L2-normalised row by row, and the loss is ``||G_t - G_s||_F^2 / B^2``. The code and
the paper agree here (the paper's 1/b^2 and row-wise normalisation).

Cross-modal wiring (differs from the original only in what is fed; the formula needs no
change, which is what makes SP fit two modalities): the Gram matrices are B x B whatever each network's map shape, so a (B, C_t, L) audio
map and a (B, C_s, H, W) image map are compared without any connector, pooling or resizing; only
the pairing of the B samples matters (the paired batch). The stage is the last stage map of each
network (mdistiller's ``feats[-1]``); ``stage`` picks another index (the same index in both
networks). Networks whose stage "maps" are vectors (an MLP) work too: their Gram is of the vectors.

Dense tasks: supported (the Gram is over images of the batch, whatever the output).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods._connectors import need_maps, need_stage
from bench.models import ModelOutput


def sp_gram(f: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> the (B, B) Gram matrix of the flattened samples, each row L2-normalised."""
    flat = f.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """||sp_gram(f_t) - sp_gram(f_s)||_F^2 / B^2 (the teacher detached); the two maps may differ in
    every axis except the batch."""
    if f_s.shape[0] != f_t.shape[0]:
        raise ValueError(f"sp_loss: batch sizes {f_s.shape[0]} and {f_t.shape[0]} differ")
    b = f_s.shape[0]
    return (sp_gram(f_t.detach()) - sp_gram(f_s)).pow(2).sum() / (b * b)


@dataclass
class SPParams:
    feat_weight: float = hp(3000.0, "weight of the similarity loss (mdistiller SP.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)
    stage: int = hp(-1, "stage map distilled in both networks (mdistiller: the last, -1)")


@register_method("sp")
class SP(Method):
    category = "Feature"
    description = "SP (Tung & Mori 2019): match the batch's row-normalised Gram matrices of the last stage"
    reference = "megvii-research/mdistiller @a08d46f1 mdistiller/distillers/SP.py"
    Params = SPParams
    # mdistiller / RepDistiller CIFAR: 3000; the Gram of a different modality has another scale
    search_space = {"feat_weight": Real(30.0, 3e4, log=True)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        need_maps(s_probe, "student", "sp")
        need_maps(t_probe, "teacher", "sp")
        need_stage(s_probe, self.p.stage, "student", "sp.stage")
        need_stage(t_probe, self.p.stage, "teacher", "sp.stage")
        self.t_index = self.p.stage % len(t_probe.feature_maps)

    def teacher_cache_fields(self) -> set[str]:
        return {f"feature_maps[{self.t_index}]"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "sp": self.p.feat_weight * sp_loss(s.feature_maps[self.p.stage], t.feature_maps[self.t_index])}
