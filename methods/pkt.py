"""PKT: "Learning Deep Representations with Probabilistic Knowledge Transfer" (Passalis & Tefas,
ECCV 2018), as mdistiller's PKT.

Source: megvii-research/mdistiller @a08d46f1 (the file was read at the stored snapshot e8c5bb33; not compared with a08d46f1),
``mdistiller/distillers/PKT.py``; defaults from ``CFG.PKT`` (weight 30,000, CE 1, eps 1e-7).

The pooled features are L2-normalised (norm + eps; NaN set to 0); their cosine similarities are
mapped to [0, 1] by ``(c + 1) / 2`` and each row is divided by its sum (a conditional distribution
over the other samples, the sample itself included); the loss is
``mean_{i,j} p_t(j|i) log((p_t(j|i) + eps) / (p_s(j|i) + eps))``. Convention (code followed): the
code averages over all B^2 entries, i.e. the paper's sum over j of the KL divided by B^2 instead
of B, which is why the weight is 30,000; ``reduction=batchmean`` gives the paper's per-sample KL
summed over j and averaged over i (= B times the code's value).

Cross-modal wiring (differs from the original only in where the vectors come from): each network's
pooled penultimate vector (``ModelOutput.feature``, mdistiller's ``pooled_feat``; e.g. an audio
network's 32-d and an image network's 24-d vector). The similarities are B x B within each
network, so different feature sizes need no projector.

Dense tasks: supported (pooled features of each image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.api.config import hp
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.models import ModelOutput


def pkt_conditional(f: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, D) -> (B, B): rows of (cos + 1) / 2, each normalised to sum 1."""
    f = f.flatten(1)
    f = f / (f.pow(2).sum(1, keepdim=True).sqrt() + eps)
    f = torch.nan_to_num(f, nan=0.0)
    sim = (f @ f.t() + 1.0) / 2.0
    return sim / sim.sum(1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7, reduction: str = "mean") -> torch.Tensor:
    """mean over the B x B entries of p_t log((p_t + eps) / (p_s + eps)), the teacher detached
    (``reduction="batchmean"``: summed over j, averaged over i)."""
    p_s, p_t = pkt_conditional(f_s, eps), pkt_conditional(f_t.detach(), eps)
    terms = p_t * torch.log((p_t + eps) / (p_s + eps))
    return terms.mean() if reduction == "mean" else terms.sum() / f_s.shape[0]


@dataclass
class PKTParams:
    feat_weight: float = hp(30000.0, "weight of the PKT loss (mdistiller PKT.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy", ge=0)
    eps: float = hp(1e-7, "epsilon of the norm and of the log ratio", gt=0)
    reduction: str = hp("mean", "mean (the code: over B^2 entries) | batchmean (the paper: KL per sample)")

    def validate(self) -> None:
        if self.reduction not in ("mean", "batchmean"):
            raise ValueError("reduction must be 'mean' or 'batchmean'")


@register_method("pkt")
class PKT(Method):
    category = "Feature"
    description = "PKT (Passalis & Tefas 2018): KL between cosine-kernel conditional distributions of pooled features"
    reference = "megvii-research/mdistiller @a08d46f1 mdistiller/distillers/PKT.py"
    Params = PKTParams
    # mdistiller / RepDistiller CIFAR: 30,000 (on a mean over B^2 entries)
    search_space = {"feat_weight": Real(300.0, 3e5, log=True)}

    def teacher_cache_fields(self) -> set[str]:
        return {"feature"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "pkt": self.p.feat_weight * pkt_loss(s.feature, t.feature, self.p.eps, self.p.reduction)}

    def report(self) -> dict[str, object]:
        """The reduction used (the record's ``extra.method``)."""
        return {"reduction": self.p.reduction,
                "convention": "code (mean over B^2)" if self.p.reduction == "mean" else "paper (KL per sample)"}
