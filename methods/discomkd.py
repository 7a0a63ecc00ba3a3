"""DisCoM-KD: "Cross-Modal Knowledge Distillation via Disentanglement Representation and
Adversarial Learning" (Ienco & Dantas, BMVC 2024).

Source: tanodino/CMKD_Disentangle @7a9f41b4, ``main_DisCoM-KD.py`` (the losses), ``model_pytorch.py``
(heads, gradient reversal), ``functions.py`` (Adam 1e-4, batch 128, 300 epochs).

Teacher-free: one network per modality, all trained together from scratch; each splits its
representation into a modality-**invariant** part (inv), a modality-**informative** part (inf)
and a modality-**irrelevant** part (irr). Six terms, all weighted 1, each a mean over the rows of
both networks concatenated (student first, as the code's first modality):

* ``cl``: CE of each network's class scores (over 2B rows: (CE_s + CE_peer) / 2 here);
* ``adv``: a shared modality discriminator on inv behind a **gradient reversal** (lambda 1): the
  discriminator minimises its CE, the networks receive -lambda times its gradient;
* ``mod``: shared modality classifiers, one on inf and one on irr (CE over 4B rows);
* ``aux_inf``, ``aux_inv``: one shared class classifier on inf and on inv of both networks;
* ``ortho``: mean cos(inf, irr) + mean cos(inf, inv), rows L2-normalised (``F.normalize``).

Modality labels: the code uses ``ones_like``/``zeros_like`` of the (B, 2) logits as targets, i.e.
soft targets [1, 1] for the first modality and [0, 0] for the second: the second contributes 0 to
``adv`` and ``mod`` and the first is pushed to a uniform prediction, so no modality is ever told
apart. An evident bug: ``modality_labels=onehot`` (default) gives the intended class 1 to the
student's rows and class 0 to the peer's; ``reference`` keeps the code's soft targets.

Cross-modal wiring: a direction teacher modality -> student modality is run like DML
(``methods/dml.py``): the teacher-modality network is a **peer** trained jointly
(``teacher_trainable``); the student-modality network is the one evaluated, the peer's final test
score is a diagnostic. ``peer_init=scratch`` (default) resets every submodule's parameters as the
code trains all networks from scratch (PyTorch's default initialisation, which for a ResNet peer
is not the backbone's kaiming fan-out rule); ``pretrained`` starts from the cached unimodal
teacher. Either way the cached teacher file is only read, and a trained teacher never uses the
teacher-output cache (its outputs change every step). The runner still trains the unimodal
teacher once if it is not cached (shared with the other methods).

Where the parts come from: the code has two encoders per modality (inv: a ResNet-18 whose pooled
512-d output goes through a projection head Linear -> BN -> ReLU to 256; spec: a second ResNet-18
whose pooled output is halved into inf and irr) and a per-modality classifier on cat(inv, inf).
A benchmark network has one encoder, and its own classifier is what is evaluated, so here each
network's pooled penultimate vector ``ModelOutput.feature`` feeds two heads of the code's form
(Linear -> BN -> ReLU): inv (``proj_dim``, 256) and spec (2 x ``proj_dim``, halved into inf and
irr); ``cl`` is the CE of the network's own classifier on that vector. The heads are trained with
the networks and discarded at test time (the student keeps its size). The heads also absorb
different feature sizes of the two networks, so the shared classifiers need no projector.

Orthogonality: the code's signed cosine is minimal at 0 only on non-negative vectors; inv, inf and
irr here are ReLU outputs of the heads, non-negative whatever the backbone's feature is (post-ReLU
for the MLP and ResNets, signed for transformer pooled vectors), so the signed cosine is in
[0, 1] and its absolute value would change neither value nor gradient: none is offered.

Batches: the code draws the two modalities from independently shuffled loaders, so its two
halves are unpaired and carry their own labels; here batches are paired. ``train.pairing=unpaired``
gives the peer other samples of the same classes (redrawn every step), the code's unpairing up to
class matching; fully independent batches would need the peer's labels, which a method's loss is
not given, so they are not offered. Dense tasks: refused (image-level classification only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.models import ModelOutput

LABEL_FORMS = ("onehot", "reference")
PEER_INITS = ("scratch", "pretrained")


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.lambda_ * grad, None


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient multiplied by ``-lambda_`` backward (DANN's reversal layer)."""
    return _GradReverse.apply(x, lambda_)


def modality_targets(sizes: Sequence[int], form: str, like: torch.Tensor) -> torch.Tensor:
    """Targets of the two-way modality classifiers for rows of network 0 then network 1.

    ``onehot``: class indices 1 then 0 (the intended ``ones``/``zeros`` labels); ``reference``: the
    code's soft targets, rows of [1, 1] then rows of [0, 0] (probability targets of the CE)."""
    if form not in LABEL_FORMS:
        raise ValueError(f"modality_labels must be one of {LABEL_FORMS}, got {form!r}")
    n0, n1 = sizes
    if form == "onehot":
        return torch.cat([torch.ones(n0, dtype=torch.long), torch.zeros(n1, dtype=torch.long)]).to(like.device)
    return torch.cat([like.new_ones(n0, 2), like.new_zeros(n1, 2)])


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-mean of the signed cosine of (N, P) tensors (rows normalised as ``F.normalize``, eps 1e-12)."""
    return (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1).mean()


def discomkd_terms(inv: Sequence[torch.Tensor], inf: Sequence[torch.Tensor], irr: Sequence[torch.Tensor],
                   logits: Sequence[torch.Tensor], y: Sequence[torch.Tensor], *,
                   discr: Callable[[torch.Tensor], torch.Tensor], mod_inf: Callable[[torch.Tensor], torch.Tensor],
                   mod_irr: Callable[[torch.Tensor], torch.Tensor], aux: Callable[[torch.Tensor], torch.Tensor],
                   grl_lambda: float = 1.0, modality_labels: str = "onehot") -> dict[str, torch.Tensor]:
    """The six unweighted DisCoM-KD terms for two networks (index 0: the first modality).

    ``inv``/``inf``/``irr``: each network's (B_k, P) parts; ``logits``: its (B_k, C) class scores;
    ``y``: its labels. ``discr``, ``mod_inf``, ``mod_irr`` map P -> 2 and ``aux`` P -> C, shared by
    both networks. Every mean runs over the rows of both networks together, as in the code."""
    if not (len(inv) == len(inf) == len(irr) == len(logits) == len(y) == 2):
        raise ValueError("discomkd_terms takes exactly two networks' parts, scores and labels")
    sizes = [int(t.shape[0]) for t in logits]
    for name, parts in (("inv", inv), ("inf", inf), ("irr", irr), ("y", y)):
        got = [int(t.shape[0]) for t in parts]
        if got != sizes:
            raise ValueError(f"{name} has {got} rows per network, the class scores have {sizes}")
    yy = torch.cat(list(y))
    inv_all, inf_all, irr_all = torch.cat(list(inv)), torch.cat(list(inf)), torch.cat(list(irr))
    m = modality_targets(sizes, modality_labels, inv_all)
    mod_scores = torch.cat([mod_inf(inf[0]), mod_irr(irr[0]), mod_inf(inf[1]), mod_irr(irr[1])])
    m_mod = torch.cat([m[:sizes[0]], m[:sizes[0]], m[sizes[0]:], m[sizes[0]:]])
    return {
        "cl": F.cross_entropy(torch.cat(list(logits)), yy),
        "adv": F.cross_entropy(discr(grad_reverse(inv_all, grl_lambda)), m),
        "mod": F.cross_entropy(mod_scores, m_mod),
        "aux_inf": F.cross_entropy(aux(inf_all), yy),
        "aux_inv": F.cross_entropy(aux(inv_all), yy),
        "ortho": mean_cosine(inf_all, irr_all) + mean_cosine(inf_all, inv_all),
    }


class ProjHead(nn.Module):
    """The code's projection head: Linear -> BatchNorm1d -> ReLU (its unused second Linear left out)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.fc(x)))


@dataclass
class DisCoMKDParams:
    proj_dim: int = hp(256, "size of each part inv, inf, irr (the code's projection head 256)", ge=1)
    grl_lambda: float = hp(1.0, "gradient-reversal scale of the adversarial term (the code: 1)", ge=0)
    cl_weight: float = hp(1.0, "weight of the class CE of both networks (L_CL)", ge=0)
    adv_weight: float = hp(1.0, "weight of the adversarial modality term (L_ADV)", ge=0)
    mod_weight: float = hp(1.0, "weight of the modality classifiers on inf and irr (L_MOD)", ge=0)
    aux_weight: float = hp(1.0, "weight of each auxiliary class CE on inf and inv (L_AUX)", ge=0)
    ortho_weight: float = hp(1.0, "weight of the orthogonality term (L_perp)", ge=0)
    modality_labels: str = hp("onehot", "onehot (intended class labels) | reference (the code's soft targets "
                                         "[1,1] / [0,0])")
    peer_init: str = hp("scratch", "scratch (as the code: every network from scratch) | pretrained (start "
                                   "from the cached teacher)")

    def validate(self) -> None:
        if self.modality_labels not in LABEL_FORMS:
            raise ValueError(f"modality_labels must be 'onehot' or 'reference', got {self.modality_labels!r}")
        if self.peer_init not in PEER_INITS:
            raise ValueError(f"peer_init must be 'scratch' or 'pretrained', got {self.peer_init!r}")


@register_method("discomkd")
class DisCoMKD(Method):
    category = "Cross-Modal"
    description = ("DisCoM-KD (Ienco & Dantas 2024): teacher-free joint training with invariant / informative / "
                   "irrelevant parts, gradient-reversed modality discriminator")
    reference = "tanodino/CMKD_Disentangle @7a9f41b4 main_DisCoM-KD.py, model_pytorch.py"
    Params = DisCoMKDParams
    # every weight is 1 in the code (no sensitivity reported): a decade either side of it
    search_space = {"adv_weight": Real(0.1, 10.0, log=True), "ortho_weight": Real(0.1, 10.0, log=True)}
    teacher_trainable = True
    dense_ok = False
    dense_reason = ("the reference is image-level classification: its parts, modality discriminator and class "
                    "heads act on one pooled vector per image (no dense reference)")

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        if teacher is None or t_probe is None:
            raise BenchError("discomkd trains a network of the teacher modality with the student, but got no teacher "
                             "network")
        dims = {}
        for role, probe in (("student", s_probe), ("peer", t_probe)):
            if probe.feature.dim() != 2:
                raise BenchError(f"discomkd needs a pooled (B, D) feature from the {role} network, got shape "
                                 f"{tuple(probe.feature.shape)}")
            dims[role] = int(probe.feature.shape[1])
        p, c = self.p.proj_dim, self.ctx.num_classes
        for role, d in dims.items():
            self.modules[f"inv_{role}"] = ProjHead(d, p)
            self.modules[f"spec_{role}"] = ProjHead(d, 2 * p)
        self.modules["discr"] = nn.Linear(p, 2)
        self.modules["mod_inf"] = nn.Linear(p, 2)
        self.modules["mod_irr"] = nn.Linear(p, 2)
        self.modules["aux"] = nn.Linear(p, c)
        self.dims = dims
        if self.p.peer_init == "scratch":
            for mod in teacher.modules():
                if mod is not teacher and hasattr(mod, "reset_parameters"):
                    mod.reset_parameters()

    def parts(self, out: ModelOutput, role: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inv, inf, irr) of one network's pooled feature."""
        spec = self.modules[f"spec_{role}"](out.feature)
        p = self.p.proj_dim
        return self.modules[f"inv_{role}"](out.feature), spec[:, :p], spec[:, p:]

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        (inv_s, inf_s, irr_s), (inv_t, inf_t, irr_t) = self.parts(s, "student"), self.parts(t, "peer")
        mods = self.modules
        # the peer's samples share the student's labels: the same samples, or (pairing=unpaired) same-class ones
        terms = discomkd_terms([inv_s, inv_t], [inf_s, inf_t], [irr_s, irr_t], [s.logits, t.logits], [y, y],
                               discr=mods["discr"], mod_inf=mods["mod_inf"], mod_irr=mods["mod_irr"], aux=mods["aux"],
                               grl_lambda=self.p.grl_lambda, modality_labels=self.p.modality_labels)
        p = self.p
        w = {"cl": p.cl_weight, "adv": p.adv_weight, "mod": p.mod_weight, "aux_inf": p.aux_weight,
             "aux_inv": p.aux_weight, "ortho": p.ortho_weight}
        return {k: w[k] * v for k, v in terms.items()}

    def report(self) -> dict[str, object]:
        """Which options ran (the record's ``extra.method``)."""
        return {"modality_labels": self.p.modality_labels, "peer_init": self.p.peer_init,
                "features": "pooled penultimate ModelOutput.feature -> inv / spec heads (Linear-BN-ReLU)",
                "feature_dims": dict(getattr(self, "dims", {})), "ortho": "signed cosine of ReLU head outputs"}
