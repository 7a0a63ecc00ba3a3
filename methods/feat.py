"""Feat: FitNet hint distillation (Romero et al., ICLR 2015), single-stage as in mdistiller.

``feat_loss`` is the mean-squared error between the regressed student feature and the (detached)
teacher feature, averaged over every element (mdistiller's FitNet, weight 100, CE 1).

Cross-modal connector (differs from the single-modal original, whose ConvReg picks a
conv/deconv from the two heights and assumes the same input for both nets):

* ``mode=map``: the stage map ``stage`` of each network, both adaptive-average-pooled to the
  smaller common grid, then a 1x1 conv + BN + ReLU regressor, then MSE. ``stage=1`` is
  mdistiller's hint layer (``HINT_LAYER`` 2 of [stem, stage 1, stage 2, stage 3]: the output of
  the second stage; the stem is not a stage map here), i.e. ``-2`` on three-stage networks.
* ``mode=vector``: the pooled penultimate vectors (B, d_s) -> Linear(d_s -> d_t) + BN1d
  (+ ReLU when the teacher target is non-negative, i.e. ``tap=post``), then MSE. This is ConvReg at
  1x1 spatial size, and the "original feature distillation" baseline of FD-CMKD's Table 4 works on
  these vectors.
* ``mode=auto`` (default, version 2; version 1 defaulted to ``vector``): ``map`` at the hint
  layer where both networks have spatial stage maps (ResNets, CNNs), ``vector`` where one has none
  (an MLP's stage outputs are vectors). The record's ``extra.method`` states which ran and why.

At the reference weight 100 this method sits at chance on ``synthetic`` (``scripts/diagnose-feat.py``
measures why): the hint target is mostly what the student's modality cannot predict (80 % of the
hint map's variance is within-class), the hint gradient is 40x (map) to 70x (vector) the
cross-entropy's at the first step, and the regressor settles on the teacher's mean (its output
variance -> 0, the MSE -> the target's variance) while the student's feature keeps little class
information. No unit dies, and gradient clipping or an lr warm-up do not change it; weight 1 does
(above w/o KD). That is the reference recipe's behaviour, not a defect; ``bench tune`` searches
the weight.
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


def has_stage_maps(o: ModelOutput, stage: int) -> bool:
    """Whether the network returns a spatial map (1 or 2 spatial axes) at stage index ``stage``."""
    n = len(o.feature_maps)
    return -n <= stage < n and o.feature_maps[stage].dim() >= 3


def resolve_mode(p: "FeatParams", s_probe: ModelOutput, t_probe: ModelOutput) -> tuple[str, str]:
    """The connector that runs (``map`` | ``vector``) and why, from the two networks' dry-run outputs."""
    if p.mode != "auto":
        return p.mode, f"mode={p.mode} as set"
    lacking = [role for role, o in (("student", s_probe), ("teacher", t_probe)) if not has_stage_maps(o, p.stage)]
    if lacking:
        return "vector", (f"the {' and the '.join(lacking)} network{'s have' if len(lacking) > 1 else ' has'} no "
                          f"spatial stage map at stage {p.stage}: pooled penultimate vectors instead")
    return "map", f"the hint layer: stage map {p.stage} of both networks (mdistiller HINT_LAYER 2)"


@dataclass
class FeatParams:
    mode: str = hp("auto", "auto (map at the hint layer where both networks have stage maps, else vector) | "
                           "map (a stage's feature maps) | vector (pooled penultimate vectors)")
    tap: str = hp("post", "vector mode: post (classifier input, non-negative) | pre (pre-ReLU)")
    stage: int = hp(1, "map mode: stage index of the hint layer (mdistiller HINT_LAYER 2: the second stage; "
                       "-2 on three-stage networks)")
    feat_weight: float = hp(100.0, "weight of the MSE (mdistiller FITNET.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)

    def validate(self) -> None:
        if self.mode not in ("auto", "vector", "map"):
            raise ValueError("mode must be 'auto', 'vector' or 'map'")
        if self.tap not in ("pre", "post"):
            raise ValueError("tap must be 'pre' or 'post'")


@register_method("feat")
class Feat(Method):
    category = "Feature"
    description = "Feat / FitNet (Romero et al. 2015): MSE to the teacher feature through a regressor"
    reference = "mdistiller FitNet.py + _common.ConvReg (cross-modal connector: see module docstring)"
    Params = FeatParams
    version = 2  # default mode auto (the reference's hint-layer map), was vector
    # mdistiller FitNet weight 100 is tuned for CIFAR maps; feature scales differ across modalities
    search_space = {"feat_weight": Real(0.01, 100.0, log=True)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        self.mode, self.why = resolve_mode(self.p, s_probe, t_probe)
        if self.mode == "vector":
            vs, vt = self._vec(s_probe), self._vec(t_probe)
            self.modules["reg"] = VectorReg(vs.shape[1], vt.shape[1], relu=self.p.tap == "post")
        else:
            need_stage(s_probe, self.p.stage, "student", "feat.stage")
            need_stage(t_probe, self.p.stage, "teacher", "feat.stage")
            fs, ft = to_4d(s_probe.feature_maps[self.p.stage]), to_4d(t_probe.feature_maps[self.p.stage])
            self.grid = common_grid(fs.shape, ft.shape)
            self.modules["reg"] = ConvBNReg(fs.shape[1], ft.shape[1], relu=True)

    def teacher_cache_fields(self) -> set[str]:
        if getattr(self, "mode", self.p.mode) == "vector":
            return {"feature" if self.p.tap == "post" else "pre_feature"}
        return {f"feature_maps[{self.p.stage}]"}

    def _vec(self, o: ModelOutput) -> torch.Tensor:
        return o.feature if self.p.tap == "post" else o.pre_feature

    def regress(self, s: ModelOutput, t: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "vector":
            return self.modules["reg"](self._vec(s)), self._vec(t)
        fs = pool_to(s.feature_maps[self.p.stage], self.grid)
        ft = pool_to(t.feature_maps[self.p.stage], self.grid)
        return self.modules["reg"](fs), ft

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        fs, ft = self.regress(s, t)
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y), "feat": self.p.feat_weight * feat_loss(fs, ft)}

    def report(self) -> dict[str, object]:
        """Which connector ran (the record's ``extra.method``)."""
        return {"mode": self.mode, **({"stage": self.p.stage} if self.mode == "map" else {"tap": self.p.tap}),
                "why": self.why}
