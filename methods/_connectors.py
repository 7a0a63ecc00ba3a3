"""Connectors between teacher and student feature maps of different modalities.

Cross-modal feature maps differ in channels, in spatial size and in what the axes mean (time x
frequency vs height x width), and may have 0, 1 or 2 spatial axes. All maps are first brought to
4-D with :func:`bench.models.to_4d` ((B,C) -> (B,C,1,1), (B,C,L) -> (B,C,L,1)); spatial sizes are
then matched by adaptive average pooling to a common grid and channels by a learnable 1x1
convolution (+ BatchNorm). This replaces mdistiller's H-only ConvReg branch rule, which fails for
non-square (spectrogram) maps.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.errors import BenchError
from bench.models import ModelOutput, to_4d


def need_stage(probe: ModelOutput, index: int, role: str, setting: str, preact: bool = False) -> None:
    """Refuse (before training) a stage index the network does not have: backbones of other
    families have other numbers of stage maps (a 1-stage MLP, 12 transformer layers)."""
    maps = probe.preact_maps if preact else probe.feature_maps
    n = len(maps)
    if not -n <= index < n:
        raise BenchError(f"{setting}={index} reads stage map {index}, but the {role} network has {n} stage "
                         f"map{'s' if n != 1 else ''}" + (f" (valid: {-n}..{n - 1})" if n else ""))


def need_maps(probe: ModelOutput, role: str, method: str, preact: bool = False) -> None:
    """Refuse a network without stage maps for a method that distils them."""
    if not (probe.preact_maps if preact else probe.feature_maps):
        raise BenchError(f"{method} distils {'pre-activation ' if preact else ''}stage maps, but the {role} network "
                         f"returns none")


def common_grid(s_shape: torch.Size | tuple, t_shape: torch.Size | tuple) -> tuple[int, int]:
    """The smaller of the two spatial sizes along each axis (after :func:`to_4d`)."""
    return (min(s_shape[-2], t_shape[-2]), min(s_shape[-1], t_shape[-1]))


def pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    x = to_4d(x)
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


class ConvBNReg(nn.Module):
    """1x1 conv (C_s -> C_t) + BatchNorm (+ optional ReLU) on 4-D maps."""

    def __init__(self, c_in: int, c_out: int, relu: bool, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=bias)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(to_4d(x)))
        return F.relu(x) if self.relu else x


def deepest_pairs(n_s: int, n_t: int, which: str = "all") -> list[tuple[int, int]]:
    """Stage-index pairs (student, teacher): the last stage of each (``which="last"``) or the
    ``min(n_s, n_t)`` deepest stages of each, paired from the deepest (``"all"``); networks of
    different depths are aligned at their outputs."""
    if which == "last":
        return [(n_s - 1, n_t - 1)]
    k = min(n_s, n_t)
    return [(n_s - k + i, n_t - k + i) for i in range(k)]


def need_spatial(probe: ModelOutput, pairs_side: list[int], role: str, method: str) -> None:
    """Refuse stage maps without a spatial axis ((B, C) vectors, e.g. an MLP's stages) for a method
    whose loss is defined over spatial positions: there it is a constant and teaches nothing."""
    need_maps(probe, role, method)
    flat = [i for i in pairs_side if probe.feature_maps[i].dim() < 3]
    if flat:
        raise BenchError(f"{method} compares spatial positions of stage maps, but the {role} network's stage "
                         f"map{'s' if len(flat) > 1 else ''} {flat} {'have' if len(flat) > 1 else 'has'} no spatial "
                         f"axis (shape {tuple(probe.feature_maps[flat[0]].shape)}): the loss would be a constant")


STAGE_CHOICES = ("all", "last")
"""``stages`` of the stage-map methods: every stage after the stem paired from the deepest, or the last."""


def check_stages(stages: str) -> None:
    if stages not in STAGE_CHOICES:
        raise ValueError("stages must be 'all' or 'last'")


class SpatialStagePairs:
    """The stage pairing that AT, NST and KDSVD share: :func:`deepest_pairs`, refused where a map
    has no spatial axis (:func:`need_spatial`), each pair's common grid, and the teacher maps a
    teacher-output cache keeps. A mixin for a :class:`~bench.api.Method`'s ``setup``."""

    pairs: list[tuple[int, int]]
    grids: list[tuple[int, int]]

    def pair_stages(self, s_probe: ModelOutput, t_probe: ModelOutput, which: str, method: str,
                    spatial: bool = True) -> None:
        """``spatial=False`` (VID: a 1x1 regressor is a Linear on a (B, C) vector) accepts stage
        vectors without a spatial axis; they meet on a (1, 1) grid."""
        self.pairs = deepest_pairs(len(s_probe.feature_maps), len(t_probe.feature_maps), which)
        for probe, side, role in ((s_probe, [i for i, _ in self.pairs], "student"),
                                  (t_probe, [j for _, j in self.pairs], "teacher")):
            if spatial:
                need_spatial(probe, side, role, method)
            else:
                need_maps(probe, role, method)
        self.grids = [common_grid(to_4d(s_probe.feature_maps[i]).shape, to_4d(t_probe.feature_maps[j]).shape)
                      for i, j in self.pairs]

    def teacher_cache_fields(self) -> set[str]:
        return {f"feature_maps[{j}]" for _, j in self.pairs}

    def paired_maps(self, s: ModelOutput, t: ModelOutput) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The student's and the teacher's maps of every pair, in pair order."""
        return [s.feature_maps[i] for i, _ in self.pairs], [t.feature_maps[j] for _, j in self.pairs]
