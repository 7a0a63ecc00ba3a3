"""Feat: FitNet hint distillation (Romero et al., ICLR 2015), single-stage as in mdistiller.

``feat_loss`` is the mean-squared error between the regressed student feature and the (detached)
teacher feature, averaged over every element (mdistiller's FitNet, weight 100, CE 1).

Cross-modal connector (differs from the single-modal original, whose ConvReg picks a
conv/deconv from the two heights and assumes the same input for both nets):

* ``mode=vector`` (default): the pooled penultimate vectors (B, d_s) -> Linear(d_s -> d_t) + BN1d
  (+ ReLU when the teacher target is non-negative, i.e. ``tap=post``), then MSE. This is ConvReg at
  1x1 spatial size, and the "original feature distillation" baseline of FD-CMKD's Table 4 works on
  these vectors.
* ``mode=map``: the stage map ``stage`` of each network, both adaptive-average-pooled to the
  smaller common grid, then a 1x1 conv + BN (+ ReLU) regressor, then MSE.
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
from bench.methods._connectors import ConvBNReg, common_grid, need_stage, pool_to
from bench.models import ModelOutput, to_4d


def feat_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Mean over all elements of (f_s - sg[f_t])^2; shapes must already agree."""
    if f_s.shape != f_t.shape:
        raise ValueError(f"feat_loss: regressed student {tuple(f_s.shape)} vs teacher {tuple(f_t.shape)}")
    return F.mse_loss(f_s, f_t.detach())


class VectorReg(nn.Module):
    def __init__(self, d_in: int, d_out: int, relu: bool):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.lin(x))
        return F.relu(x) if self.relu else x


@dataclass
class FeatParams:
    mode: str = hp("vector", "vector (pooled penultimate vectors) | map (a stage's feature maps)")
    tap: str = hp("post", "vector mode: post (classifier input, non-negative) | pre (pre-ReLU)")
    stage: int = hp(-2, "map mode: stage index of the hint layer (default: the second-to-last stage)")
    feat_weight: float = hp(100.0, "weight of the MSE (mdistiller FITNET.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)

    def validate(self) -> None:
        if self.mode not in ("vector", "map"):
            raise ValueError("mode must be 'vector' or 'map'")
        if self.tap not in ("pre", "post"):
            raise ValueError("tap must be 'pre' or 'post'")


@register_method("feat")
class Feat(Method):
    category = "Feature"
    description = "Feat / FitNet (Romero et al. 2015): MSE to the teacher feature through a regressor"
    reference = "mdistiller FitNet.py + _common.ConvReg (cross-modal connector: see module docstring)"
    Params = FeatParams
    # mdistiller FitNet weight 100 is tuned for CIFAR maps; feature scales differ across modalities
    search_space = {"feat_weight": Real(0.01, 100.0, log=True)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        if self.p.mode == "vector":
            vs, vt = self._vec(s_probe), self._vec(t_probe)
            self.modules["reg"] = VectorReg(vs.shape[1], vt.shape[1], relu=self.p.tap == "post")
        else:
            need_stage(s_probe, self.p.stage, "student", "feat.stage")
            need_stage(t_probe, self.p.stage, "teacher", "feat.stage")
            fs, ft = to_4d(s_probe.feature_maps[self.p.stage]), to_4d(t_probe.feature_maps[self.p.stage])
            self.grid = common_grid(fs.shape, ft.shape)
            self.modules["reg"] = ConvBNReg(fs.shape[1], ft.shape[1], relu=True)

    def teacher_cache_fields(self) -> set[str]:
        if self.p.mode == "vector":
            return {"feature" if self.p.tap == "post" else "pre_feature"}
        return {f"feature_maps[{self.p.stage}]"}

    def _vec(self, o: ModelOutput) -> torch.Tensor:
        return o.feature if self.p.tap == "post" else o.pre_feature

    def regress(self, s: ModelOutput, t: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        if self.p.mode == "vector":
            return self.modules["reg"](self._vec(s)), self._vec(t)
        fs = pool_to(s.feature_maps[self.p.stage], self.grid)
        ft = pool_to(t.feature_maps[self.p.stage], self.grid)
        return self.modules["reg"](fs), ft

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        fs, ft = self.regress(s, t)
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y), "feat": self.p.feat_weight * feat_loss(fs, ft)}
