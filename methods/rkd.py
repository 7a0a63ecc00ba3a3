"""RKD: "Relational Knowledge Distillation" (Park et al., CVPR 2019), as mdistiller's RKD.

Source: megvii-research/mdistiller @a08d46f1 (the file was read at the stored snapshot e8c5bb33; not compared with a08d46f1),
``mdistiller/distillers/RKD.py``; defaults from ``CFG.RKD`` (distance weight 25, angle weight 50,
eps 1e-12, not squared, feature weight 1, CE 1).

* Distance term: the pairwise Euclidean distances of the pooled features (``d^2`` clamped at eps
  before the square root, diagonal set to 0), each matrix divided by the mean of its positive
  entries, then a smooth-L1 (Huber, beta 1) averaged over the B^2 entries.
* Angle term: for every (i, j, k), the cosine of the angle at i between the unit vectors e_ij =
  (f_j - f_i)/|.| and e_ik, Huber-compared, averaged over all B^3 entries. As in the code, the
  degenerate entries (j = i or k = i, whose unit vector is 0) are counted in the mean with value
  0 on both sides (a convention of the reduction; the paper leaves the normaliser open).

Cross-modal wiring (differs from the original only in where the vectors come from): each network's
pooled penultimate vector (``ModelOutput.feature``, mdistiller's ``pooled_feat``). Distances and
angles are computed within each network (B x B and B x B x B), so an audio teacher's 32-d vectors and
an image student's 24-d vectors need no projector; the normalisation by the mean distance removes
the scale gap between modalities.

Dense tasks: supported (pooled features of each image).
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


def rkd_pdist(e: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """(B, D) -> (B, B) pairwise distances (squared distances clamped at eps, diagonal 0)."""
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [i, j] = unit(e_j - e_i)
    return (diff @ diff.transpose(1, 2)).flatten()


def rkd_terms(f_s: torch.Tensor, f_t: torch.Tensor, squared: bool = False, eps: float = 1e-12
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance term, angle term), unweighted; the teacher detached."""
    s, t = f_s.flatten(1), f_t.detach().flatten(1)
    t_d = rkd_pdist(t, squared, eps)
    t_d = t_d / t_d[t_d > 0].mean()
    s_d = rkd_pdist(s, squared, eps)
    s_d = s_d / s_d[s_d > 0].mean()
    return F.smooth_l1_loss(s_d, t_d), F.smooth_l1_loss(_angles(s), _angles(t))


def rkd_loss(f_s: torch.Tensor, f_t: torch.Tensor, squared: bool = False, eps: float = 1e-12,
             distance_weight: float = 25.0, angle_weight: float = 50.0) -> torch.Tensor:
    """distance_weight * distance term + angle_weight * angle term (:func:`rkd_terms`)."""
    d, a = rkd_terms(f_s, f_t, squared, eps)
    return distance_weight * d + angle_weight * a


@dataclass
class RKDParams:
    distance_weight: float = hp(25.0, "weight of the distance term (mdistiller RKD.DISTANCE_WEIGHT)", ge=0)
    angle_weight: float = hp(50.0, "weight of the angle term (mdistiller RKD.ANGLE_WEIGHT)", ge=0)
    feat_weight: float = hp(1.0, "overall weight of the RKD loss (mdistiller RKD.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)
    eps: float = hp(1e-12, "clamp of the squared distances (mdistiller RKD.PDIST.EPSILON)", gt=0)
    squared: bool = hp(False, "use squared distances (mdistiller RKD.PDIST.SQUARED)")


@register_method("rkd")
class RKD(Method):
    category = "Feature"
    description = "RKD (Park et al. 2019): Huber match of normalised pairwise distances and triplet angles"
    reference = "megvii-research/mdistiller @a08d46f1 mdistiller/distillers/RKD.py"
    Params = RKDParams
    # mdistiller: distance 25 / angle 50 under an overall weight 1, which rescales them together
    search_space = {"feat_weight": Real(0.05, 20.0, log=True), "angle_weight": Real(5.0, 200.0, log=True)}

    def teacher_cache_fields(self) -> set[str]:
        return {"feature"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        d, a = rkd_terms(s.feature, t.feature, self.p.squared, self.p.eps)
        w = self.p.feat_weight
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "rkd_distance": w * self.p.distance_weight * d, "rkd_angle": w * self.p.angle_weight * a}
