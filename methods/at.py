"""AT: "Paying More Attention to Attention" (Zagoruyko & Komodakis, ICLR 2017), as mdistiller's AT.

Source: megvii-research/mdistiller @a08d46f1 (the file was read at the stored snapshot e8c5bb33; not compared with a08d46f1),
``mdistiller/distillers/AT.py``; defaults from ``mdistiller/engine/cfg.py`` (``CFG.AT``).

Per stage, the attention map of a (B, C, H, W) feature is ``mean_c f^p`` flattened to (B, H*W)
and L2-normalised per sample; the stage loss is the mean over batch and positions of the squared
difference of the two normalised maps (a mean, not the paper's sum of norms, hence the large
weight); stages are summed. p = 2, weight 1000, CE 1. The code raises the features to p without
an absolute value (the paper writes ``|f|^p``); the two agree for even p and for post-ReLU maps,
and this module follows the code.

Cross-modal wiring (differs from the original, which feeds one image to both networks and pools
the larger map to the smaller *square* size ``(H_min, H_min)``):

* maps are made 4-D (:func:`bench.models.to_4d`: a 1-D audio map (B, C, L) becomes (B, C, L, 1)),
  then both are adaptive-average-pooled to the smaller size along each axis separately
  (:func:`~bench.methods._connectors.common_grid`), so non-square spectrogram maps keep their
  shape; a 1-D teacher and a 2-D student therefore meet on an (min(L, H), 1) grid (the time axis
  against the image height, averaged over the width);
* no channel connector is needed: the attention map averages the channels away, so stages of
  different widths are compared directly (C_s != C_t is the normal case);
* stages: mdistiller's ``feats[1:]`` (every stage after the stem; this harness's stage maps
  exclude the stem), paired from the deepest when the two networks have different numbers of
  stages; ``stages=last`` keeps only the last pair;
* networks whose stage maps have no spatial axis (an MLP) are refused: an attention map over one
  position is always 1 and the loss is 0.

Dense tasks: supported (the maps of a segmentation backbone are ordinary stage maps).
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


def attention_map(f: torch.Tensor, p: float) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W): mean over channels of f^p, L2-normalised per sample (eps 1e-12)."""
    return F.normalize(to_4d(f).pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: list[torch.Tensor], f_t: list[torch.Tensor], p: float = 2.0) -> torch.Tensor:
    """Sum over stage pairs of mean_{b, position} (a_s - sg[a_t])^2 with a = :func:`attention_map`;
    each pair is pooled to the smaller size along each spatial axis first."""
    total = f_s[0].new_zeros(())
    for s, t in zip(f_s, f_t):
        s, t = to_4d(s), to_4d(t).detach()
        grid = common_grid(s.shape, t.shape)
        diff = attention_map(pool_to(s, grid), p) - attention_map(pool_to(t, grid), p)
        total = total + diff.pow(2).mean()
    return total


@dataclass
class ATParams:
    p: float = hp(2.0, "exponent of the attention map (mdistiller AT.P)", gt=0)
    feat_weight: float = hp(1000.0, "weight of the attention loss (mdistiller AT.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)
    stages: str = hp("all", "all (every stage after the stem, as mdistiller) | last")

    def validate(self) -> None:
        check_stages(self.stages)


@register_method("at")
class AT(SpatialStagePairs, Method):
    category = "Feature"
    description = "AT (Zagoruyko & Komodakis 2017): match L2-normalised spatial attention maps of every stage"
    reference = "megvii-research/mdistiller @a08d46f1 mdistiller/distillers/AT.py"
    Params = ATParams
    # mdistiller CIFAR: 1000 (on a mean over batch and positions); attention maps of other modalities differ
    search_space = {"feat_weight": Real(10.0, 1e4, log=True)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        self.pair_stages(s_probe, t_probe, self.p.stages, "at")

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        fs, ft = self.paired_maps(s, t)
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "at": self.p.feat_weight * at_loss(fs, ft, self.p.p)}

    def report(self) -> dict[str, object]:
        """Which stages were paired and the grid each pair met on (the record's ``extra.method``)."""
        return {"pairs": [list(p) for p in self.pairs], "grids": [list(g) for g in self.grids],
                "exponent": "f^p without abs (mdistiller's code; the paper's |f|^p agrees for even p, post-ReLU maps)"}
