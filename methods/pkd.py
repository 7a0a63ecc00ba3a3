"""PKD: "PKD: General Distillation Framework for Object Detectors via Pearson Correlation
Coefficient" (Cao et al., NeurIPS 2022), as mmrazor's ``PKDLoss``.

Each feature map is z-scored per channel over batch and spatial positions jointly (unbiased std,
eps 1e-6), then ``loss_weight * 1/2 * mean((s_hat - t_hat)^2)`` summed over levels; this equals
``(M-1)/M * mean_c (1 - r_c)`` with r_c the per-channel Pearson correlation (M = N*H*W), so it is
invariant to per-channel positive affine maps: robust to the scale gap between modalities.
Spatial mismatch: bilinear resize of the student map to the teacher's size (``resize_stu``, the
reference default).

Cross-modal connector (not in the reference, which asserts equal channels): a learnable 1x1 conv
C_s -> C_t on the student map. Maps with fewer than 2 spatial axes are made 4-D first
((B,C,L) -> (B,C,L,1)). Levels: the last stage by default (``stages=last``) or every stage
(``all``), paired from the deepest. Weight 6 (mmrazor's Faster R-CNN configs).
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
from bench.methods._connectors import need_maps
from bench.models import ModelOutput, to_4d


def _norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1)
    mean = flat.mean(1, keepdim=True)
    std = flat.std(1, keepdim=True, unbiased=True)
    return ((flat - mean) / (std + eps)).reshape(c, x.shape[0], *x.shape[2:]).transpose(0, 1)


def pkd_loss(f_s: torch.Tensor | list[torch.Tensor], f_t: torch.Tensor | list[torch.Tensor], *,
             loss_weight: float = 1.0, resize_stu: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Sum over levels of loss_weight * 0.5 * mean((norm(f_s) - norm(f_t))^2) on (N, C, H, W) maps."""
    fs_list = f_s if isinstance(f_s, (list, tuple)) else [f_s]
    ft_list = f_t if isinstance(f_t, (list, tuple)) else [f_t]
    total = fs_list[0].new_zeros(())
    for s, t in zip(fs_list, ft_list):
        s, t = to_4d(s), to_4d(t).detach()
        if s.shape[-2:] != t.shape[-2:]:
            if resize_stu:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            else:
                t = F.interpolate(t, size=s.shape[-2:], mode="bilinear", align_corners=False)
        if s.shape != t.shape:
            raise ValueError(f"pkd_loss: shapes {tuple(s.shape)} and {tuple(t.shape)} differ (channels must match)")
        total = total + loss_weight * 0.5 * F.mse_loss(_norm(s, eps), _norm(t, eps))
    return total


@dataclass
class PKDParams:
    loss_weight: float = hp(6.0, "weight per level (mmrazor Faster R-CNN configs: 6)", ge=0)
    stages: str = hp("last", "last | all: which stage maps are distilled")
    resize_stu: bool = hp(True, "resize the student map to the teacher's size (else the reverse)")

    def validate(self) -> None:
        if self.stages not in ("last", "all"):
            raise ValueError("stages must be 'last' or 'all'")


@register_method("pkd")
class PKD(Method):
    category = "Feature"
    description = "PKD (Cao et al. 2022): MSE of per-channel z-scored feature maps (Pearson)"
    reference = "open-mmlab/mmrazor mmrazor/models/losses/pkd_loss.py"
    Params = PKDParams
    # mmrazor PKD configs: loss weight 6 (Faster/Mask R-CNN) and 10 (RetinaNet, FCOS3D)
    search_space = {"loss_weight": Real(0.5, 20.0, log=True)}

    def _pairs(self, s: ModelOutput, t: ModelOutput) -> list[tuple[int, int]]:
        ns, nt = len(s.feature_maps), len(t.feature_maps)
        if self.p.stages == "last":
            return [(ns - 1, nt - 1)]
        k = min(ns, nt)
        return [(ns - k + i, nt - k + i) for i in range(k)]  # aligned from the deepest stage

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        need_maps(s_probe, "student", "pkd")
        need_maps(t_probe, "teacher", "pkd")
        self.pairs = self._pairs(s_probe, t_probe)
        self.modules["adapters"] = nn.ModuleList(
            nn.Conv2d(to_4d(s_probe.feature_maps[i]).shape[1], to_4d(t_probe.feature_maps[j]).shape[1], 1)
            for i, j in self.pairs
        )

    def teacher_cache_fields(self) -> set[str]:
        return {f"feature_maps[{j}]" for _, j in self.pairs}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        fs = [ad(to_4d(s.feature_maps[i])) for ad, (i, _) in zip(self.modules["adapters"], self.pairs)]
        ft = [t.feature_maps[j] for _, j in self.pairs]
        return {"ce": self.task_loss(s.logits, y),
                "pkd": pkd_loss(fs, ft, loss_weight=self.p.loss_weight, resize_stu=self.p.resize_stu)}
