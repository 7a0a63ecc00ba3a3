"""NST: "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer" (Huang & Wang,
2017), as mdistiller's NST.

Source: megvii-research/mdistiller @a08d46f1 (the file was read at the stored snapshot e8c5bb33; not compared with a08d46f1),
``mdistiller/distillers/NST.py``; defaults from ``CFG.NST`` (weight 50, CE 1, stages after the
stem).

Per stage, each channel's map is flattened over the spatial positions and L2-normalised (a
channel is a sample of the distribution, a position a dimension); the loss is the squared MMD
with the polynomial kernel ``k(x, y) = (x . y)^2`` (degree 2, c = 0):
``mean_{i,j} k(t_i, t_j) + mean_{i,j} k(s_i, s_j) - 2 mean_{i,j} k(s_i, t_j)``, summed over stages.
The teacher-teacher term is a constant (detached), which keeps the value an MMD (>= 0).

Cross-modal wiring (differs from the original, which pools the larger map to the smaller
*square* size ``(H_min, H_min)``):

* maps are made 4-D (a 1-D audio map (B, C, L) becomes (B, C, L, 1)) and both are adaptive-
  average-pooled to the smaller size along each axis separately, so that the two networks'
  channel vectors live on the same positions; for a 1-D teacher and a 2-D student that is a
  (min(L, H), 1) grid (time against image height, averaged over the width);
* no channel connector: the MMD compares two *sets* of channels, so C_s != C_t is allowed (the
  original relies on this as well);
* stages: every stage (mdistiller's ``feats[1:]``), paired from the deepest; ``stages=last``
  keeps only the last pair;
* networks whose stage maps have no spatial axis are refused: a normalised 1-position channel is
  +-1 and every kernel value is 1 (the loss is 0).

Dense tasks: supported (stage maps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods._connectors import SpatialStagePairs, check_stages, common_grid, pool_to
from bench.models import ModelOutput, to_4d


def poly_kernel_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over batch and channel pairs of (a_i . b_j)^2 for (B, C_a, P) and (B, C_b, P)."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_loss(f_s: list[torch.Tensor], f_t: list[torch.Tensor]) -> torch.Tensor:
    """Sum over stage pairs of the polynomial-kernel MMD^2 between the student's and the
    (detached) teacher's spatially L2-normalised channels, on the common grid of each pair."""
    total = f_s[0].new_zeros(())
    for s, t in zip(f_s, f_t):
        s, t = to_4d(s), to_4d(t).detach()
        grid = common_grid(s.shape, t.shape)
        s = F.normalize(pool_to(s, grid).flatten(2), dim=2)
        t = F.normalize(pool_to(t, grid).flatten(2), dim=2)
        total = total + poly_kernel_mean(t, t) + poly_kernel_mean(s, s) - 2 * poly_kernel_mean(s, t)
    return total


@dataclass
class NSTParams:
    feat_weight: float = hp(50.0, "weight of the MMD loss (mdistiller NST.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)
    stages: str = hp("all", "all (every stage after the stem, as mdistiller) | last")

    def validate(self) -> None:
        check_stages(self.stages)


@register_method("nst")
class NST(SpatialStagePairs, Method):
    category = "Feature"
    description = "NST (Huang & Wang 2017): polynomial-kernel MMD between the channels' spatial activation patterns"
    reference = "megvii-research/mdistiller @a08d46f1 mdistiller/distillers/NST.py"
    Params = NSTParams
    # mdistiller CIFAR: 50
    search_space = {"feat_weight": Real(1.0, 500.0, log=True)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        self.pair_stages(s_probe, t_probe, self.p.stages, "nst")

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        fs, ft = self.paired_maps(s, t)
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y), "nst": self.p.feat_weight * nst_loss(fs, ft)}

    def report(self) -> dict[str, object]:
        """Which stages were paired and the grid each pair met on (the record's ``extra.method``)."""
        return {"pairs": [list(p) for p in self.pairs], "grids": [list(g) for g in self.grids]}
