"""KDSVD: "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (Lee et al.,
ECCV 2018), as mdistiller's KDSVD.

Source: megvii-research/mdistiller @a08d46f1 (the file was read at the stored snapshot e8c5bb33; not compared with a08d46f1),
``mdistiller/distillers/KDSVD.py``; defaults from ``CFG.KDSVD`` (k = 1, weight 1, CE 1, stages
after the stem).

Per stage, each sample's map (C, H, W) is reshaped to a (C*H, W) matrix (mdistiller's reshape:
the SVD runs along the width) and decomposed; the teacher keeps its k leading right singular
vectors, the student its k + 3, each column L2-normalised, and the singular values are L2-
normalised over the k kept (so with k = 1 the "scaling by the teacher's singular values" is a
scaling by 1). Each teacher vector is matched by the student vector of largest |cosine|, with that
cosine's sign; both sets are multiplied by the teacher's normalised singular values. For every
pair of consecutive stages the RBF ``exp(-(v[a] - v'[b])^2 / 8)`` between every width position a
of a stage and b of the previous one is formed per vector, and the loss is the sum of the squared
student-teacher differences (non-finite entries set to 0) divided by the batch size, summed over
the consecutive pairs. The SVD runs in float32 at least (mdistiller casts to float32; float64
input stays float64). The reference sets non-finite SVD outputs to 0 (``removenan``) but lets a
non-finite *gradient* of the SVD through (its backward divides by differences of singular values:
an all-zero post-ReLU map, or any repeated singular value, makes it inf/NaN and ruins the student);
here non-finite gradients into the SVD's input are set to 0 as well, the backward counterpart of
the reference's intent (finite values are untouched, so the numbers equal the reference's). The teacher's singular-vector signs are whatever the SVD returns, as in the
reference. RepDistiller's variant (a (H*W, C) reshape, SVD along channels, equal channel counts
needed) gives different numbers and is not offered.

Cross-modal wiring (differs from the original, which feeds one image to both networks so the
widths agree): the student's and the teacher's right singular vectors live in R^W, so each pair of
stages is brought to a common width: a 1-D map (B, C, L) is read as (B, C, 1, L) (its sequence axis
is the width, the axis the SVD runs along; :func:`bench.models.to_4d` would make it the height and
leave a width of 1), then both maps are adaptive-average-pooled along the width only to
``min(W_s, W_t)``, keeping each network's own C and H (the row count C*H may differ, e.g. an audio
teacher's (C_t, L) against an image student's (C_s*H, W)). Stages: every stage (mdistiller's
``feats[1:]``), paired from the deepest; at least two pairs are needed (the loss compares
consecutive stages). Networks whose stage maps have no spatial axis are refused.

Dense tasks: supported (stage maps; an SVD per sample and stage).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods._connectors import SpatialStagePairs
from bench.models import ModelOutput


def width_4d(f: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, C, 1, 1); (B, C, L) -> (B, C, 1, L) (the sequence is the width); 4-D unchanged."""
    if f.dim() == 2:
        return f[:, :, None, None]
    if f.dim() == 3:
        return f[:, :, None, :]
    return f


def to_width(f: torch.Tensor, width: int) -> torch.Tensor:
    """Adaptive average pooling along the width only (the height and channels kept)."""
    f = width_4d(f)
    return f if f.shape[-1] == width else F.adaptive_avg_pool2d(f, (f.shape[-2], width))


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def kdsvd_svd(f: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> (singular values (B, n) L2-normalised, right singular vectors (B, W, n) with
    unit columns) of each sample's (C*H, W) matrix; fewer than n where the matrix has fewer."""
    b, c, h, w = f.shape
    x = f.reshape(b, c * h, w)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    if x.requires_grad:  # the SVD's backward is inf/NaN at repeated singular values (an all-zero map)
        x.register_hook(_finite)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(1, 2))
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def kdsvd_align(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
    """For each teacher vector, the student vector of largest |cosine|, times that cosine's sign:
    (B, W, n_s), (B, W, k) -> (B, W, k)."""
    cos = v_s.transpose(1, 2) @ v_t  # (B, n_s, k)
    best = cos.abs().amax(1, keepdim=True)
    mask = torch.where(cos.abs() == best, torch.sign(cos), torch.zeros_like(cos))
    return v_s @ mask


def kdsvd_loss(f_s: list[torch.Tensor], f_t: list[torch.Tensor], k: int = 1) -> torch.Tensor:
    """Sum over consecutive stage pairs of sum((rbf_s - sg[rbf_t])^2) / B (non-finite entries 0);
    each student map must already have its teacher map's width (:func:`to_width`)."""
    if len(f_s) != len(f_t) or len(f_s) < 2:
        raise ValueError("kdsvd_loss needs the same number (at least 2) of student and teacher stages")
    total, prev = f_s[0].new_zeros(()), None
    for s, t in zip(f_s, f_t):
        s, t = width_4d(s), width_4d(t).detach()
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"kdsvd_loss: widths {s.shape[-1]} and {t.shape[-1]} differ")
        sv_t, v_t = kdsvd_svd(t, k)
        _, v_s = kdsvd_svd(s, k + 3)
        v_s = kdsvd_align(v_s, v_t)
        scale = sv_t[:, None, :]
        v_t, v_s = v_t * scale, v_s * scale
        if prev is not None:
            v_sb, v_tb = prev
            rbf_s = torch.exp(-(v_s[:, :, None, :] - v_sb[:, None, :, :]).pow(2) / 8)
            rbf_t = torch.exp(-(v_t[:, :, None, :] - v_tb[:, None, :, :]).pow(2) / 8)
            total = total + _finite((rbf_s - rbf_t.detach()).pow(2)).sum() / s.shape[0]
        prev = (v_s, v_t)
    return total


@dataclass
class KDSVDParams:
    k: int = hp(1, "teacher singular vectors kept (the student keeps k + 3; mdistiller KDSVD.K)", ge=1)
    feat_weight: float = hp(1.0, "weight of the SVD loss (mdistiller KDSVD.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)


@register_method("kdsvd")
class KDSVD(SpatialStagePairs, Method):
    category = "Feature"
    description = "KDSVD (Lee et al. 2018): RBF relations between consecutive stages' leading singular vectors"
    reference = "megvii-research/mdistiller @a08d46f1 mdistiller/distillers/KDSVD.py"
    Params = KDSVDParams
    # mdistiller CIFAR: 1; the loss is a sum over width-position pairs, so its scale varies with the maps
    search_space = {"feat_weight": Real(0.05, 20.0, log=True)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        self.pair_stages(s_probe, t_probe, "all", "kdsvd")
        if len(self.pairs) < 2:
            raise BenchError("kdsvd relates consecutive stages, but the two networks share only "
                             f"{len(self.pairs)} stage map: at least 2 are needed")
        self.widths = [min(width_4d(s_probe.feature_maps[i]).shape[-1], width_4d(t_probe.feature_maps[j]).shape[-1])
                       for i, j in self.pairs]

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        fs = [to_width(s.feature_maps[i], w) for (i, _), w in zip(self.pairs, self.widths)]
        ft = [to_width(t.feature_maps[j], w) for (_, j), w in zip(self.pairs, self.widths)]
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "kdsvd": self.p.feat_weight * kdsvd_loss(fs, ft, self.p.k)}

    def report(self) -> dict[str, object]:
        """Which stages were paired and the common width each SVD ran along (the record's ``extra.method``)."""
        return {"pairs": [list(p) for p in self.pairs], "widths": self.widths,
                "reshape": "(N, C*H, W): SVD along the width (mdistiller)"}
