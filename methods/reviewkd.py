"""ReviewKD: "Distilling Knowledge via Knowledge Review" (Chen et al., CVPR 2021), as mdistiller's ReviewKD.

Source: megvii-research/mdistiller @a08d46f1, ``mdistiller/distillers/ReviewKD.py``; defaults from
``mdistiller/engine/cfg.py`` (``CFG.REVIEWKD``: ReviewKD weight 1, CE 1, warm-up 20 epochs of the
240-epoch CIFAR schedule; ``configs/cifar100/reviewkd.yaml`` raises the weight to 5 for
res32x4 -> res8x4).

* **Levels.** The student's stage maps after the stem (mdistiller drops the stem feature: its 5
  student features meet 4 ABFs) plus its pooled vector as a 1x1 map, deepest first. The
  targets are the teacher's **pre-activation** stage maps plus its pooled (post-activation)
  vector, while the student side is post-activation (the code; ``student_preact=true`` is
  mdistiller's ``STU_PREACT``).
* **ABF** (attention-based fusion), one per level: 1x1 conv (no bias) + BN to ``mid`` channels;
  except at the deepest level, the residual of the level below is resized to this level's grid,
  both are concatenated and a 1x1 conv (with bias) + sigmoid gives two attention maps that weight
  the sum ``x a_0 + r a_1``; the result is resized to the teacher's grid, kept as the next
  level's residual, and a 3x3 conv (no bias) + BN maps it to the teacher's channels. Both convs
  are Kaiming-uniform (a = 1). ``mid = min(512, C)`` of the deepest student level (the code
  ignores its ``MAX_MID_CHANNEL`` setting; ``max_mid`` is that 512).
* **HCL** (hierarchical context loss), per level: MSE of the full maps plus the MSE of both maps
  adaptive-average-pooled to 4x4, 2x2 and 1x1 with weights 1/2, 1/4, 1/8 (a size is skipped when it
  is not smaller than the map), divided by the sum of the weights used; levels are summed.
* **Loss** ``ce_weight CE + weight * min(epoch / W, 1) * HCL`` with 1-based epochs; W keeps the
  reference's ratio by default (``warmup_mode=relative``: ceil(20/240 x train.epochs), 1 epoch of
  10), or is 20 epochs whatever the schedule (``warmup_mode=absolute``: mdistiller exactly).

Cross-modal wiring (the original feeds one image to two CIFAR ResNets whose grids agree level by
level, with square shapes from the config):

* stages are paired from the deepest (:func:`~bench.methods._connectors.deepest_pairs`) when the
  two networks have different numbers of stages, and the pooled level is always paired;
* every map is made 4-D first (:func:`bench.models.to_4d`: a 1-D sequence map (B, C, L) is
  (B, C, L, 1), an MLP's stage vector (B, C) is 1x1), so 1-D and 2-D maps, non-square spectrogram
  maps and vectors share one code path; the channel gap is what the ABFs' convs bridge;
* grids are matched per axis (:func:`resize_to`): nearest-neighbour where the target is larger
  (the code's mode, which it only ever uses to upsample) and adaptive averaging where it is smaller,
  so an image map meeting a 1-D audio target on (L, 1) is averaged over its width instead of
  sampled on its first column; ``resize=nearest`` is the code's nearest mode on every axis. The two
  agree wherever the target grid is a multiple of the source (the reference's case);
* the pyramid sizes are min(4, H) x min(4, W) etc. for non-square maps, skipped when they do not
  shrink the map (for square maps exactly the code's ``l >= h`` rule).

Dense tasks: supported (the ABFs and HCL work on any backbone's stage maps; ReviewKD's paper
distils detectors the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method, relative_epochs
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods._connectors import deepest_pairs, need_maps
from bench.models import ModelOutput, to_4d

RESIZE_CHOICES = ("area", "nearest")
PYRAMID = (4, 2, 1)


def resize_to(x: torch.Tensor, size: tuple[int, int], mode: str = "area") -> torch.Tensor:
    """``x`` (4-D) on the grid ``size``: ``area`` upsamples by nearest neighbour along the axes that
    grow and averages (adaptive pooling) along the axes that shrink; ``nearest`` is F.interpolate's
    nearest mode on both."""
    h, w = x.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    up = (max(h, size[0]), max(w, size[1]))
    if up != (h, w):
        x = F.interpolate(x, size=up, mode="nearest")
    return x if up == size else F.adaptive_avg_pool2d(x, size)


def hcl_loss(f_s: list[torch.Tensor], f_t: list[torch.Tensor], levels: tuple[int, ...] = PYRAMID) -> torch.Tensor:
    """Hierarchical context loss summed over level pairs (same shapes within a pair; the teacher
    detached): (MSE + sum_k 2^-k MSE of the maps pooled to level k) / (1 + sum_k 2^-k)."""
    total = f_s[0].new_zeros(())
    for s, t in zip(f_s, f_t):
        s, t = to_4d(s), to_4d(t).detach()
        h, w = s.shape[-2:]
        loss, cnt, tot = F.mse_loss(s, t), 1.0, 1.0
        for lv in levels:
            if lv >= max(h, w):
                continue
            size = (min(lv, h), min(lv, w))
            cnt /= 2.0
            loss = loss + F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size)) * cnt
            tot += cnt
        total = total + loss / tot
    return total


class ABF(nn.Module):
    """Attention-based fusion of one level (see the module docstring)."""

    def __init__(self, c_in: int, c_mid: int, c_out: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, c_mid, 1, bias=False), nn.BatchNorm2d(c_mid))
        self.conv2 = nn.Sequential(nn.Conv2d(c_mid, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.att = nn.Sequential(nn.Conv2d(2 * c_mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, out_size: tuple[int, int],
                mode: str = "area") -> tuple[torch.Tensor, torch.Tensor]:
        """(output on the teacher's grid with its channels, residual for the next shallower level)."""
        x = self.conv1(to_4d(x))
        if self.att is not None:
            assert residual is not None
            r = resize_to(residual, tuple(x.shape[-2:]), mode)
            a = self.att(torch.cat([x, r], dim=1))
            x = x * a[:, 0:1] + r * a[:, 1:2]
        x = resize_to(x, out_size, mode)
        return self.conv2(x), x


def review_features(abfs: list[ABF] | nn.ModuleList, f_s: list[torch.Tensor], out_sizes: list[tuple[int, int]],
                    mode: str = "area") -> list[torch.Tensor]:
    """The ABF outputs of the student levels ``f_s`` (shallow to deep, ``abfs`` in the same order),
    computed from the deepest level up, returned shallow to deep like ``f_s``."""
    out: list[torch.Tensor] = []
    residual = None
    for k in range(len(f_s) - 1, -1, -1):
        y, residual = abfs[k](f_s[k], residual, out_sizes[k], mode)
        out.insert(0, y)
    return out


def reviewkd_loss(abfs, f_s: list[torch.Tensor], f_t: list[torch.Tensor], mode: str = "area") -> torch.Tensor:
    """HCL between the reviewed student levels and the teacher levels (unweighted, no warm-up)."""
    sizes = [tuple(to_4d(t).shape[-2:]) for t in f_t]
    return hcl_loss(review_features(abfs, f_s, sizes, mode), f_t)  # type: ignore[arg-type]


def reviewkd_warmup(epoch: int, warmup: int) -> float:
    """mdistiller's factor min(epoch / warmup, 1), 1-based epochs."""
    return min(epoch / max(warmup, 1), 1.0)


@dataclass
class ReviewKDParams:
    weight: float = hp(1.0, "weight of the HCL loss (mdistiller REVIEWKD_WEIGHT: 1; 5 for res32x4 -> res8x4)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy (mdistiller CE_WEIGHT)", ge=0)
    warmup: int = hp(20, "reference warm-up epochs over which the weight ramps from 1/W to 1 (mdistiller 20)", ge=1)
    warmup_of: int = hp(240, "length of the schedule the reference warm-up belongs to (mdistiller CIFAR: 240)", ge=1)
    warmup_mode: str = hp("relative", "relative: W = ceil(warmup / warmup_of x train.epochs) | absolute: W = warmup")
    max_mid: int = hp(512, "cap of the ABFs' middle width: mid = min(max_mid, deepest student channels)", ge=1)
    resize: str = hp("area", "area: nearest up, average down, per axis | nearest: nearest on every axis (the code)")
    student_preact: bool = hp(False, "student side pre-activation maps (mdistiller STU_PREACT; default post-activation)")

    def validate(self) -> None:
        if self.warmup_mode not in ("relative", "absolute"):
            raise ValueError(f"warmup_mode must be 'relative' or 'absolute', got {self.warmup_mode!r}")
        if self.resize not in RESIZE_CHOICES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_CHOICES)}, got {self.resize!r}")

    def warmup_epochs(self, epochs: int) -> int:
        return self.warmup if self.warmup_mode == "absolute" else relative_epochs(self.warmup, self.warmup_of, epochs)


@register_method("reviewkd")
class ReviewKD(Method):
    category = "Feature"
    description = "ReviewKD (Chen et al. 2021): attention-fused student levels matched to every teacher level by HCL"
    reference = "megvii-research/mdistiller @a08d46f1 mdistiller/distillers/ReviewKD.py"
    Params = ReviewKDParams
    # mdistiller: 1 (default) and 5 (res32x4 -> res8x4); a decade around them
    search_space = {"weight": Real(0.2, 20.0, log=True)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        need_maps(s_probe, "student", "reviewkd", preact=self.p.student_preact)
        need_maps(t_probe, "teacher", "reviewkd", preact=True)
        self.pairs = deepest_pairs(len(s_probe.feature_maps), len(t_probe.preact_maps))
        f_s, f_t = self._levels(s_probe, t_probe)
        c_in = [to_4d(f).shape[1] for f in f_s]
        mid = min(self.p.max_mid, c_in[-1])
        self.grids = [(list(to_4d(s).shape[-2:]), list(to_4d(t).shape[-2:])) for s, t in zip(f_s, f_t)]
        self.mid = mid
        self.modules["abfs"] = nn.ModuleList(
            ABF(c, mid, to_4d(t).shape[1], fuse=k < len(f_s) - 1) for k, (c, t) in enumerate(zip(c_in, f_t)))

    def _levels(self, s: ModelOutput, t: ModelOutput) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(student levels, teacher levels), shallow to deep, the pooled vectors last."""
        s_maps = s.preact_maps if self.p.student_preact else s.feature_maps
        s_feat = s.pre_feature if self.p.student_preact else s.feature
        return ([s_maps[i] for i, _ in self.pairs] + [s_feat],
                [t.preact_maps[j] for _, j in self.pairs] + [t.feature])

    def teacher_cache_fields(self) -> set[str]:
        return {f"preact_maps[{j}]" for _, j in self.pairs} | {"feature"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        f_s, f_t = self._levels(s, t)
        w = reviewkd_warmup(epoch, self.p.warmup_epochs(self.ctx.epochs))
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "hcl": w * self.p.weight * reviewkd_loss(self.modules["abfs"], f_s, f_t, self.p.resize)}

    def report(self) -> dict[str, object]:
        """The levels paired, their grids (student -> teacher), the ABF width and the warm-up that ran."""
        w = self.p.warmup_epochs(self.ctx.epochs)
        return {"pairs": [list(p) for p in self.pairs] + [["pooled", "pooled"]], "grids": self.grids,
                "mid_channels": self.mid, "warmup_mode": self.p.warmup_mode, "warmup_epochs": w,
                "teacher_side": "pre-activation maps + pooled feature (mdistiller)",
                "student_side": "pre-activation" if self.p.student_preact else "post-activation"}
