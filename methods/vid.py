"""VID: "Variational Information Distillation for Knowledge Transfer" (Ahn et al., CVPR 2019), as
mdistiller's VID.

Source: megvii-research/mdistiller @a08d46f1, ``mdistiller/distillers/VID.py``, defaults of
``CFG.VID`` (initial predicted variance 5.0, eps 1e-5, feature weight 1, CE 1); RepDistiller @b84f547c
``distiller_zoo/VID.py`` computes the same loss.

Per stage pair, a regressor ``1x1 conv C_s -> C_t, ReLU, 1x1 conv C_t -> C_t, ReLU, 1x1 conv C_t ->
C_t`` (no biases) predicts the mean mu of a Gaussian over the teacher's map, with one variance per
teacher channel ``var = softplus(a_c) + eps``, ``a_c`` initialised to ``log(exp(5.0 - eps) - 1)`` so
that var starts at exactly 5.0; the stage loss is the mean over batch, channels and positions of
``0.5 * ((mu - t)^2 / var + log var)`` (the Gaussian negative log-likelihood without its constant),
summed over the stage pairs. The teacher is detached.

The variances (``variance``). mdistiller creates each ``a_c`` as an ``nn.Parameter`` but keeps them
in a plain Python list, so they are never registered, never optimised and stay at 5.0: evident
from the code creating a Parameter at all, and from the paper and RepDistiller (a registered
parameter, optimised with the student), which learn them. That is a bug, so the default here is
the intended behaviour, ``trained`` (RepDistiller's); ``reference`` keeps mdistiller's fixed
variances (buffers, not optimised). The record's ``extra.method`` says which ran and the mean
predicted variance per stage at the end.

Cross-modal wiring (differs from the original, which feeds one image to both networks, pairs
``feats[1:]`` index by index and pools the larger map to the smaller *square* size): the stage
pairing AT and NST use (:class:`~bench.methods._connectors.SpatialStagePairs`: every stage after
the stem, paired from the deepest, or ``stages=last``), each pair pooled to the smaller size along
each spatial axis separately (a 1-D audio map (B, C, L) is (B, C, L, 1)). The regressor is the
channel connector (C_s != C_t is the normal case). Stage vectors without a spatial axis (an MLP's)
are accepted: a 1x1 convolution on (B, C, 1, 1) is a Linear, and the Gaussian regression of one
feature vector from another is as meaningful as that of a map.

Dense tasks: supported (the maps of a segmentation backbone are ordinary stage maps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods._connectors import SpatialStagePairs, check_stages, common_grid, pool_to
from bench.models import ModelOutput, to_4d

VARIANCE_MODES = ("trained", "reference")


def initial_log_scale(init_var: float, eps: float) -> float:
    """The ``a`` with ``softplus(a) + eps == init_var`` (the code's ``log(exp(init - eps) - 1)``)."""
    return math.log(math.expm1(init_var - eps))


def predicted_variance(log_scale: torch.Tensor, eps: float) -> torch.Tensor:
    """``softplus(a) + eps`` per teacher channel (the code writes ``log(1 + exp(a))``)."""
    return F.softplus(log_scale) + eps


def vid_stage_loss(mu: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """mean over (B, C, H, W) of 0.5 * ((mu - target)^2 / var_c + log var_c); ``target`` is detached."""
    var = predicted_variance(log_scale, eps).view(1, -1, 1, 1).to(mu)
    return (0.5 * ((mu - target.detach()) ** 2 / var + torch.log(var))).mean()


def vid_loss(f_s: list[torch.Tensor], f_t: list[torch.Tensor], regressors: list[nn.Module],
             log_scales: list[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """Sum over stage pairs of :func:`vid_stage_loss` of ``regressor(pool(s))`` against ``pool(t)``,
    each pair pooled to the smaller size along each spatial axis first."""
    total = f_s[0].new_zeros(())
    for s, t, reg, a in zip(f_s, f_t, regressors, log_scales):
        s, t = to_4d(s), to_4d(t)
        grid = common_grid(s.shape, t.shape)
        total = total + vid_stage_loss(reg(pool_to(s, grid)), pool_to(t, grid), a, eps)
    return total


def regressor(c_s: int, c_t: int) -> nn.Sequential:
    """1x1 conv s->t, ReLU, t->t, ReLU, t->t, without biases (the code's ``conv1x1``)."""
    return nn.Sequential(nn.Conv2d(c_s, c_t, 1, bias=False), nn.ReLU(), nn.Conv2d(c_t, c_t, 1, bias=False),
                         nn.ReLU(), nn.Conv2d(c_t, c_t, 1, bias=False))


class LogScales(nn.Module):
    """One ``a`` vector per stage pair: parameters (``trained``) or buffers (``reference``: never
    optimised, as mdistiller's unregistered list); the same state keys either way."""

    def __init__(self, channels: list[int], init: float, trained: bool):
        super().__init__()
        self.n = len(channels)
        for i, c in enumerate(channels):
            v = torch.full((c,), init)
            if trained:
                self.register_parameter(f"a{i}", nn.Parameter(v))
            else:
                self.register_buffer(f"a{i}", v)

    def values(self) -> list[torch.Tensor]:
        return [getattr(self, f"a{i}") for i in range(self.n)]


@dataclass
class VIDParams:
    feat_weight: float = hp(1.0, "weight of the VID loss (mdistiller VID.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy (mdistiller VID.LOSS.CE_WEIGHT)", ge=0)
    init_var: float = hp(5.0, "initial predicted variance (mdistiller VID.INIT_PRED_VAR)", gt=0)
    eps: float = hp(1e-5, "floor added to the predicted variance (mdistiller VID.EPS)", gt=0)
    variance: str = hp("trained", "trained: the variances learn with the student (paper, RepDistiller) | "
                                  "reference: fixed at init_var (mdistiller never registers them)")
    stages: str = hp("all", "all (every stage after the stem, as mdistiller) | last")

    def validate(self) -> None:
        check_stages(self.stages)
        if self.variance not in VARIANCE_MODES:
            raise ValueError(f"variance must be one of {', '.join(VARIANCE_MODES)}, got {self.variance!r}")
        if self.init_var <= self.eps:
            raise ValueError(f"init_var must exceed eps ({self.eps:g}): the variance is softplus(a) + eps, got "
                             f"{self.init_var!r}")


@register_method("vid")
class VID(SpatialStagePairs, Method):
    category = "Feature"
    description = "VID (Ahn et al. 2019): Gaussian likelihood of every teacher stage given a 1x1 regressor of the student's"
    reference = "megvii-research/mdistiller @a08d46f1 mdistiller/distillers/VID.py"
    Params = VIDParams
    # mdistiller: weight 1 on a mean over batch, channels and positions
    search_space = {"feat_weight": Real(0.1, 10.0, log=True)}

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        self.pair_stages(s_probe, t_probe, self.p.stages, "vid", spatial=False)
        chans = [(to_4d(s_probe.feature_maps[i]).shape[1], to_4d(t_probe.feature_maps[j]).shape[1])
                 for i, j in self.pairs]
        self.modules["regressors"] = nn.ModuleList(regressor(cs, ct) for cs, ct in chans)
        self.modules["log_scales"] = LogScales([ct for _, ct in chans], initial_log_scale(self.p.init_var, self.p.eps),
                                               self.p.variance == "trained")

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        fs, ft = self.paired_maps(s, t)
        v = vid_loss(fs, ft, list(self.modules["regressors"]), self.modules["log_scales"].values(), self.p.eps)
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y), "vid": self.p.feat_weight * v}

    def report(self) -> dict[str, object]:
        """Pairs, grids, which variances ran and their mean per stage now (the record's ``extra.method``)."""
        var = [float(predicted_variance(a.detach(), self.p.eps).mean()) for a in self.modules["log_scales"].values()]
        return {"pairs": [list(p) for p in self.pairs], "grids": [list(g) for g in self.grids],
                "variance": self.p.variance, "variance_source": ("learned with the student (paper, RepDistiller)"
                                                                 if self.p.variance == "trained" else
                                                                 "fixed at init_var (mdistiller never optimises them)"),
                "mean_predicted_variance": var}
