"""CRD: "Contrastive Representation Distillation" (Tian et al., ICLR 2020), as mdistiller's CRD.

Source: megvii-research/mdistiller @a08d46f1, ``mdistiller/distillers/CRD.py`` (``ContrastMemory``,
``ContrastLoss``, ``Embed``) with the contrast index of ``mdistiller/dataset/cifar100.py``
(``CIFAR100InstanceSample``, mode ``exact``) and the defaults of ``CFG.CRD``; the same maths as
HobbitLong/RepDistiller @b84f547c ``crd/memory.py``, ``crd/criterion.py``.

What the code does, and this module does too:

* each network's pooled feature goes through its own ``Linear -> 128`` and an L2 normalisation
  (both embeddings train with the student; the teacher's feature is detached first);
* two memory banks of one unit vector per **training sample** (student bank, teacher bank),
  initialised uniform in [-s, s], s = 1/sqrt(128/3), updated after every step by
  ``bank[i] = normalise(0.5 bank[i] + 0.5 v_i)`` (momentum 0.5);
* the contrast index of a sample has K+1 columns: the sample itself first (the positive), then K
  samples of *other classes* drawn uniformly without replacement (the dataset's ``cls_negative``);
* the scores ``exp(<bank_t[j], v_s> / 0.07)`` (student anchor) and ``exp(<bank_s[j], v_t> / 0.07)``
  (teacher anchor) are divided by a normaliser Z per anchor that is estimated at the first call
  (``mean(scores) * N``, N = training-set size) and then frozen; both enter the NCE loss of Eq. 18
  (noise ``P_n = 1/N``, ``m = K``, eps 1e-7), summed; weight 0.8, CE 1.

Here Z, both banks and the method's random generator are part of :meth:`CRD.state_dict`, so a run
resumed from its epoch checkpoint is bit-identical to an uninterrupted one; the negatives and the
banks' initial values are drawn from a generator seeded from the run's seed (no global RNG). The
draws run on the CPU (the same on every device), one permutation of the pool per sample, as the
reference's data loader does: about 11 ms a batch of 64 at N = 5,000, 0.1 s at CIFAR's 50,000.

Negatives (``k_mode``). The reference's 16,384 negatives belong to CIFAR-100's 50,000 samples; the
datasets here have a few hundred to a few thousand per class split. ``clamp`` (the default) uses
``K = min(nce_k, N - largest class count)``, so every sample's K negatives are distinct, as the code
draws them whenever its pool is large enough; the K that ran is in the record (``extra.method``).
``reference`` keeps K = ``nce_k`` and, as the code does for a class with fewer negatives than K,
draws that class's negatives with replacement.

Cross-modal wiring (differs from the original only in where the vectors come from): each network's
pooled penultimate vector (``ModelOutput.feature``, mdistiller's ``pooled_feat``), e.g. an audio
teacher's 32-d vector and an image student's 24-d one, each embedded by its own Linear into the
shared 128-d space; the banks are keyed by the student sample's training-set position, which the
runner hands over (:attr:`~bench.api.Method.wants_sample_indices`). Under ``train.pairing=unpaired``
or a shuffled teacher the teacher bank's row i holds the teacher embedding last paired with sample i.

Dense tasks: refused (negatives are samples of other classes, and a segmentation image has no
single class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.method import Method
from bench.api.registry import register_method
from bench.api.search import Real
from bench.models import ModelOutput

NCE_EPS = 1e-7
K_MODES = ("clamp", "reference")


def l2_rows(x: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 per row (the code's ``Normalize``: no eps)."""
    return x / x.pow(2).sum(1, keepdim=True).sqrt()


def effective_k(labels: torch.Tensor, k: int, mode: str = "clamp") -> int:
    """The K that runs: ``nce_k`` (``reference``) or at most the smallest class's number of
    negatives (``clamp``), i.e. N minus the largest class count."""
    labels = labels.cpu()
    if labels.dim() != 1:
        raise BenchError(f"crd needs one class label per training sample, got labels of shape {tuple(labels.shape)}")
    fewest = len(labels) - int(torch.unique(labels, return_counts=True)[1].max())
    if fewest == 0:
        raise BenchError("crd draws its negatives from other classes, but the training split has one class only")
    return k if mode == "reference" else min(k, fewest)


def contrast_index(idx: torch.Tensor, labels: torch.Tensor, k: int, gen: torch.Generator | None) -> torch.Tensor:
    """(B,) training-set positions -> (B, K+1): column 0 is the sample itself (the positive),
    columns 1..K samples of other classes, drawn uniformly without replacement (CPU, from ``gen``);
    from a class with fewer than K negatives they are drawn with replacement (the code's rule)."""
    idx, labels = idx.cpu().long(), labels.cpu()
    y = labels[idx]
    out = torch.empty(len(idx), k + 1, dtype=torch.long)
    out[:, 0] = idx
    for c in torch.unique(y):  # sorted: the draws' order is fixed
        rows = torch.nonzero(y == c).flatten()
        pool = torch.nonzero(labels != c).flatten()
        if k <= len(pool):  # a uniform k-subset in random order per row (randperm: O(pool), no sort)
            pick = torch.stack([torch.randperm(len(pool), generator=gen)[:k] for _ in range(len(rows))])
        else:
            pick = torch.randint(0, len(pool), (len(rows), k), generator=gen)
        out[rows, 1:] = pool[pick]
    return out


def crd_scores(v_s: torch.Tensor, v_t: torch.Tensor, bank_s: torch.Tensor, bank_t: torch.Tensor,
               cidx: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised scores (B, K+1): student anchor ``exp(<bank_t[j], v_s>/T)``, teacher anchor
    ``exp(<bank_s[j], v_t>/T)`` for j in each row of ``cidx``; the banks are detached.

    Two equal ways (:func:`score_path`): gather the K+1 bank rows of every sample and multiply
    (the reference's ``index_select`` + ``bmm``), or score the whole bank once (B x N) and pick the
    K+1 columns. Where B(K+1) >= N the gather copies more rows than the bank has: on synthetic
    (64 x 901 picks of a 1080-row bank) a CRD run took 3.7 s instead of 15 s. With the
    reference's N = 50000 and K = 16384 on CIFAR the bank path does 3x the multiply-adds
    (B N D against B(K+1) D) but copies 6.4 M bank values instead of 134 M (not timed there). The
    two differ only in float rounding (tested to 1e-12 in float64)."""
    b, k1 = cidx.shape
    if score_path(b, k1, bank_s.shape[0]) == "bank":
        # copies (N x D, what the gather would copy B(K+1)/N times over): the backward needs the
        # banks as they were, and the momentum update changes them in place before it runs
        p_s = torch.exp((v_s @ bank_t.detach().t().clone()).gather(1, cidx) / temperature)
        p_t = torch.exp((v_t @ bank_s.detach().t().clone()).gather(1, cidx) / temperature)
        return p_s, p_t
    w_t = bank_t.detach().index_select(0, cidx.flatten()).view(b, k1, -1)
    w_s = bank_s.detach().index_select(0, cidx.flatten()).view(b, k1, -1)
    p_s = torch.exp(torch.bmm(w_t, v_s.unsqueeze(2)).squeeze(2) / temperature)
    p_t = torch.exp(torch.bmm(w_s, v_t.unsqueeze(2)).squeeze(2) / temperature)
    return p_s, p_t


def score_path(batch: int, k1: int, n_data: int) -> str:
    """``bank`` (score every bank row, then pick) where the batch's B(K+1) picks reach the bank's
    size N, else ``gather`` (pick the rows, then score them): a function of the shapes only, so a
    configuration always runs the same arithmetic."""
    return "bank" if batch * k1 >= n_data else "gather"


def nce_loss(p: torch.Tensor, n_data: int, eps: float = NCE_EPS) -> torch.Tensor:
    """Eq. 18 on normalised scores (B, 1+m), positive first: with noise ``m/N``,
    ``-(sum_b log(p_b0 / (p_b0 + m/N + eps)) + sum_{b,j>0} log((m/N) / (p_bj + m/N + eps))) / B``."""
    m = p.shape[1] - 1
    noise = m / float(n_data)
    log_pos = torch.log(p[:, 0] / (p[:, 0] + noise + eps))
    log_neg = torch.log(noise / (p[:, 1:] + noise + eps))
    return -(log_pos.sum() + log_neg.sum()) / p.shape[0]


def crd_loss(v_s: torch.Tensor, v_t: torch.Tensor, bank_s: torch.Tensor, bank_t: torch.Tensor, cidx: torch.Tensor,
             z_s: float, z_t: float, n_data: int, temperature: float = 0.07) -> torch.Tensor:
    """The two NCE terms, student anchor + teacher anchor, on embeddings ``v`` (unit rows) with
    the normalisers ``z_s``, ``z_t`` (constants: no gradient flows through them)."""
    p_s, p_t = crd_scores(v_s, v_t, bank_s, bank_t, cidx, temperature)
    return nce_loss(p_s / z_s, n_data) + nce_loss(p_t / z_t, n_data)


def momentum_update(bank: torch.Tensor, idx: torch.Tensor, v: torch.Tensor, momentum: float) -> None:
    """In place: ``bank[i] = normalise(momentum * bank[i] + (1 - momentum) * v)`` for the batch rows."""
    with torch.no_grad():
        rows = bank.index_select(0, idx) * momentum + v.detach().to(bank.dtype) * (1 - momentum)
        bank.index_copy_(0, idx, l2_rows(rows))


class ContrastMemory(nn.Module):
    """Both banks and the two normalisers (``z``: -1 until the first call sets them, then frozen)."""

    def __init__(self, n_data: int, dim: int, temperature: float, momentum: float, gen: torch.Generator,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.n_data, self.temperature, self.momentum = n_data, temperature, momentum
        s = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("bank_s", (torch.rand(n_data, dim, generator=gen, dtype=dtype) * 2 - 1) * s)
        self.register_buffer("bank_t", (torch.rand(n_data, dim, generator=gen, dtype=dtype) * 2 - 1) * s)
        self.register_buffer("z", torch.full((2,), -1.0, dtype=dtype))

    def forward(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor, cidx: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(student-anchor NCE, teacher-anchor NCE); sets Z at the first call, then updates the banks."""
        p_s, p_t = crd_scores(v_s, v_t, self.bank_s, self.bank_t, cidx, self.temperature)
        with torch.no_grad():
            for i, p in enumerate((p_s, p_t)):
                if float(self.z[i]) < 0:
                    self.z[i] = p.mean() * self.n_data
        out = nce_loss(p_s / self.z[0], self.n_data), nce_loss(p_t / self.z[1], self.n_data)
        momentum_update(self.bank_s, idx, v_s, self.momentum)
        momentum_update(self.bank_t, idx, v_t, self.momentum)
        return out


class Embed(nn.Module):
    """Linear + L2 normalisation (the code's ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return l2_rows(self.linear(x.flatten(1)))


@dataclass
class CRDParams:
    feat_weight: float = hp(0.8, "weight of the CRD loss (mdistiller CRD.LOSS.FEAT_WEIGHT)", ge=0)
    ce_weight: float = hp(1.0, "weight of the cross-entropy (mdistiller CRD.LOSS.CE_WEIGHT)", ge=0)
    embed_dim: int = hp(128, "size of the two embeddings and of the bank rows (mdistiller CRD.FEAT.DIM)", ge=1)
    nce_k: int = hp(16384, "negatives per sample (mdistiller CRD.NCE.K); k_mode=clamp caps it at the smallest "
                           "class's number of negatives", ge=1)
    nce_t: float = hp(0.07, "temperature of the scores (mdistiller CRD.NCE.TEMPERATURE)", gt=0)
    momentum: float = hp(0.5, "memory-bank momentum (mdistiller CRD.NCE.MOMENTUM)", ge=0, lt=1)
    k_mode: str = hp("clamp", "clamp: K = min(nce_k, N - largest class count), distinct negatives | reference: "
                              "K = nce_k, drawn with replacement where a class has fewer negatives (the code)")

    def validate(self) -> None:
        if self.k_mode not in K_MODES:
            raise ValueError(f"k_mode must be one of {', '.join(K_MODES)}, got {self.k_mode!r}")


@register_method("crd")
class CRD(Method):
    category = "Feature"
    description = "CRD (Tian et al. 2020): NCE contrast of embedded pooled features against per-sample memory banks"
    reference = "megvii-research/mdistiller @a08d46f1 mdistiller/distillers/CRD.py"
    Params = CRDParams
    dense_ok = False
    dense_reason = "its negatives are samples of other classes, and a segmentation image has no single class"
    wants_sample_indices = True
    version = 2  # scores the whole bank where the batch's picks cover it (rounding-level different; 4x faster on synthetic)
    # CRD paper: beta 0.8 on CIFAR-100; its temperature study spans 0.02-0.3
    search_space = {"feat_weight": Real(0.08, 8.0, log=True), "nce_t": Real(0.02, 0.3, log=True)}

    def __init__(self, params, ctx):
        super().__init__(params, ctx)
        self.labels: torch.Tensor | None = None
        self.k = 0
        self.gen = torch.Generator()

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        self.modules["embed_s"] = Embed(s_probe.feature.flatten(1).shape[1], self.p.embed_dim)
        self.modules["embed_t"] = Embed(t_probe.feature.flatten(1).shape[1], self.p.embed_dim)

    def bind_training_set(self, labels: torch.Tensor, seed: int) -> None:
        """Banks of one row per training sample, drawn from a generator of the run's seed."""
        self.labels = labels.detach().cpu().long()
        self.k = effective_k(self.labels, self.p.nce_k, self.p.k_mode)
        self.gen = torch.Generator().manual_seed((int(seed) * 1_000_003 + 0xC4D) % 2**62)
        self.modules["memory"] = ContrastMemory(len(self.labels), self.p.embed_dim, self.p.nce_t, self.p.momentum,
                                                self.gen).to(self.ctx.device)

    def teacher_cache_fields(self) -> set[str]:
        return {"feature"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        if self.labels is None or self.sample_indices is None:
            raise BenchError("crd keys its memory bank by training sample: it needs the runner to call "
                             "bind_training_set() and hand it each batch's sample_indices (bench.train.step.Trainer)")
        idx = self.sample_indices.to(self.ctx.device).long()
        v_s = self.modules["embed_s"](s.feature)
        v_t = self.modules["embed_t"](t.feature.detach())
        cidx = contrast_index(idx, self.labels, self.k, self.gen).to(self.ctx.device)
        loss_s, loss_t = self.modules["memory"](v_s, v_t, idx, cidx)
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "crd": self.p.feat_weight * (loss_s + loss_t)}

    def state_dict(self) -> dict[str, object]:
        """The modules (embeddings, banks, Z) and the negatives' generator: resume is bit-identical."""
        return {"modules": self.modules.state_dict(), "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.modules.load_state_dict(state["modules"])  # type: ignore[arg-type]
        if state.get("generator") is not None:
            self.gen.set_state(state["generator"])  # type: ignore[arg-type]

    def report(self) -> dict[str, object]:
        """The K that ran and the frozen normalisers (the record's ``extra.method``)."""
        out: dict[str, object] = {"k": self.k, "k_requested": self.p.nce_k, "k_mode": self.p.k_mode,
                                  "n_data": 0 if self.labels is None else len(self.labels)}
        if "memory" in self.modules:
            out["z"] = [float(v) for v in self.modules["memory"].z]
        return out
