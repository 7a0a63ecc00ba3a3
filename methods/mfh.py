"""MFH: "The Modality Focusing Hypothesis: Towards Understanding Crossmodal Knowledge Distillation"
(Xue et al., ICLR 2023), modality-general decisive KD (Algorithm 1 + "mode 1").

Source: zihuixue/MFH @e6e4e856, ``ravdess/utils/helper.py`` (``cal_overlap_tag``,
``train_network_distill``), ``ravdess/utils/model.py`` (``my_permute_new``, ``my_freeze_new``),
``ravdess/main_overlap_tag.py`` (defaults), and the VGGSound scripts
``vggsound/modality_general/cal_overlap_permute.py``, ``vggsound/mfh_kd/main.py``.

1. **Salience** of each teacher feature channel (the pooled penultimate vector the classifier
   reads, RAVDESS ``--place 5``): on every training batch, the channel is permuted across the batch
   (a fresh permutation per channel and repeat, 10 repeats) and the teacher's logits recomputed;
   the salience is the MSE between them and a student-modality **reference network's** logits on
   the same samples (averaged over repeats, min-max normalised). A channel whose shuffling moves
   the teacher away from the other modality carries modality-general information.
2. **Ranking** (mode 1): the ``ratio`` = 75 % least salient channels are removed; a removed channel
   is replaced by its batch mean (``my_freeze_new``; ``fill=zero``: the VGGSound script's zeroing).
3. **KD**: pure pseudo-label KD at T = 1 (``--gt-weight 0 --pl-weight 1``), with the code's
   ``KLDivLoss(reduction="mean")``, which divides by batch x classes (``reduction=batchmean``
   divides by the batch only, the usual KL).

Quirks of the code (the spec's ground rule: a bug gets the intended behaviour by default, the
code's as a ``reference`` option). On RAVDESS the salience is *assigned* per batch, so only the last
batch counts: by default every batch counts (their mean), ``salience_batches=reference`` keeps the
last one. The VGGSound script removes the channels 256-511 of 512 whatever their salience (it
keeps the sorted indices >= 256): by default the least salient are removed,
``channels=reference`` removes the upper half of the channel indices (``ratio`` then unused).

Cross-modal wiring. The teacher is the harness's frozen unimodal teacher (the protocol gives
every method the same one); the salience is computed once, in :meth:`MFH.prepare` (before the
first epoch, on the un-augmented training split, permutations drawn from the run's seed). The
reference network of the student modality is a copy of the freshly initialised student trained
for ``ref_epochs`` (relative to the run's schedule by default: 100 of RAVDESS's 100, i.e. as many
epochs as the run) with SGD (lr 1e-2, momentum 0.9) on CE + ``ref_align`` x MSE to the frozen
teacher's logits: the RAVDESS code trains both networks jointly with that MSE term (the teacher
cannot move here); ``ref_align=0`` is a plain unimodal network as the VGGSound script uses. The KD
student is the run's own fresh student. The teacher's logits are recomputed from its (cached)
feature by its classifier, which setup checks reproduces the teacher's logits.

Dense tasks: refused (the channels are permuted across samples in the pooled vector a
classification head reads).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.errors import BenchError
from bench.api.method import Method, MethodContext, NoParams, PrepareData, relative_epochs
from bench.api.registry import register_method
from bench.api.search import Real
from bench.data.tsets import batch_inputs
from bench.models import ModelOutput

FILLS = ("mean", "zero")
EPOCH_MODES = ("relative", "absolute")


def draw_permutations(repeats: int, channels: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """(repeats, channels, batch) independent random permutations of the batch positions."""
    return torch.argsort(torch.rand(repeats, channels, batch, generator=gen), dim=-1)


def permutation_salience(f: torch.Tensor, z_ref: torch.Tensor, head: nn.Module, perms: torch.Tensor,
                         chunk_elems: int = 1 << 22) -> torch.Tensor:
    """(R, D): MSE(head(f with channel d permuted by ``perms[r, d]``), z_ref) over batch x classes.

    ``f`` (B, D) teacher features, ``z_ref`` (B, C) the reference network's logits; channels are
    evaluated in chunks of at most ``chunk_elems`` feature entries."""
    r_n, d_n, b = perms.shape
    out = f.new_empty(r_n, d_n)
    k_max = max(1, chunk_elems // max(b * d_n, 1))
    for r in range(r_n):
        for c0 in range(0, d_n, k_max):
            ch = torch.arange(c0, min(c0 + k_max, d_n), device=f.device)
            k = len(ch)
            g = f.unsqueeze(0).repeat(k, 1, 1)                          # (k, B, D)
            g[torch.arange(k, device=f.device), :, ch] = f[perms[r, c0:c0 + k].to(f.device), ch[:, None]]
            z = head(g.reshape(k * b, d_n)).reshape(k, b, -1)
            out[r, c0:c0 + k] = (z - z_ref.unsqueeze(0)).pow(2).mean(dim=(1, 2))
    return out


def min_max(v: torch.Tensor) -> torch.Tensor:
    """Linear normalisation to [0, 1] (the code's; a constant vector gives zeros)."""
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)


def least_salient(salience: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices of the ``int(ratio x D)`` least salient channels (ascending salience; ties by index)."""
    order = torch.argsort(salience, stable=True)
    return order[: int(ratio * len(salience))]


def remove_channels(f: torch.Tensor, removed: torch.Tensor, fill: str = "mean") -> torch.Tensor:
    """``f`` (B, D) with the ``removed`` channels set to their batch mean (``my_freeze_new``) or 0."""
    g = f.clone()
    if len(removed):
        g[:, removed] = f[:, removed].mean(0, keepdim=True) if fill == "mean" else 0.0
    return g


def mfh_kd_loss(z_s: torch.Tensor, z_t: torch.Tensor, tau: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """tau^2 KL(sg softmax(z_t / tau) || softmax(z_s / tau)) summed, divided by B x C (``mean``,
    the code's KLDivLoss default) or by B (``batchmean``)."""
    log_p_t = F.log_softmax(z_t.detach() / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - F.log_softmax(z_s / tau, dim=1))).sum()
    return kl / (z_s.numel() if reduction == "mean" else z_s.shape[0]) * tau**2


def check_head(teacher: Any, t_probe: ModelOutput, method: str) -> None:
    """Refuse a teacher whose logits are not ``classifier(feature)``: the salience and the
    removal recompute them from a changed feature."""
    head = getattr(teacher, "classifier", None)
    if not isinstance(head, nn.Module):
        raise BenchError(f"{method} recomputes the teacher's logits from its pooled feature, but the teacher "
                         f"network has no classifier module")
    with torch.no_grad():
        z = head(t_probe.feature)
    if z.shape != t_probe.logits.shape or not torch.allclose(z, t_probe.logits, rtol=1e-4, atol=1e-5):
        raise BenchError(f"{method} recomputes the teacher's logits as classifier(feature), but this teacher's "
                         f"logits {tuple(t_probe.logits.shape)} are not that")


class PairTraining(Method):
    """The phase before distillation that trains a student-modality network against the teacher
    (MFH's reference network, MGDFR's co-training): CE + ``align`` x MSE(z_t, z_s); with
    ``train_teacher`` the teacher trains too (its own CE, and the MSE reaches it)."""

    name = "pair-training"

    def __init__(self, ctx: MethodContext, align: float, train_teacher: bool):
        super().__init__(NoParams(), ctx)
        self.align = align
        self.teacher_trainable = train_teacher  # an instance flag: the trainer puts the teacher in the optimizer

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        z_t = t.logits if self.teacher_trainable else t.logits.detach()
        out = {"ce": F.cross_entropy(s.logits, y), "mse": self.align * F.mse_loss(z_t, s.logits)}
        if self.teacher_trainable:
            out["t_ce"] = F.cross_entropy(t.logits, y)
        return out


def train_pair(data: PrepareData, student: nn.Module, teacher: nn.Module, *, epochs: int, lr: float, align: float,
               train_teacher: bool, num_classes: int, salt: int) -> dict[str, Any]:
    """Train ``student`` (and ``teacher`` with ``train_teacher``) in place with the runner's loop:
    SGD (momentum 0.9, constant lr, no weight decay) for ``epochs`` epochs on the training split,
    reseeded from (seed, epoch, salt). Returns the final epoch's row (its val metric is the
    student-modality network's). The last weights are kept (the references keep them)."""
    from bench.train.loop import fit

    ctx = MethodContext(num_classes, epochs, "classification", data.teacher_modality, data.student_modality,
                        data.device)
    cfg = replace(data.train, optimizer="sgd", lr=lr, momentum=0.9, weight_decay=0.0, schedule="constant",
                  selection="val")
    splits = {"train": data.train_split, "val": data.val_split if data.val_split is not None else data.train_split}
    res = fit(adapter=data.adapter, splits=splits, student=student, student_modality=data.student_modality,
              method=PairTraining(ctx, align, train_teacher), teacher=teacher, teacher_modality=data.teacher_modality,
              train=cfg, epochs=epochs, seed=data.seed, device=data.device, salt=salt, evaluate_test=False)
    student.eval()
    teacher.eval()
    return {k: res.history[-1][k] for k in ("epoch", "terms", "val_metric")}


@torch.no_grad()
def channel_salience(data: PrepareData, teacher: nn.Module, ref: nn.Module, *, repeats: int, batch_size: int,
                     every_batch: bool, salt: int) -> torch.Tensor:
    """(D,) salience of the teacher's feature channels against ``ref`` over the training split
    (un-augmented, shuffled into batches of ``batch_size``); the mean over batches, or the last
    batch's value (``every_batch=False``), then the mean over repeats. Deterministic from the seed."""
    teacher.eval()
    ref.eval()
    gen = torch.Generator().manual_seed((data.seed * 1_000_003 + salt * 104_729) % (2**62))
    split, s_mod, t_mod = data.train_split, data.student_modality, data.teacher_modality
    order = torch.randperm(len(split), generator=gen)
    total, count = None, 0
    for start in range(0, len(split), batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < 2:  # one sample: a permutation changes nothing
            continue
        xb, _ = batch_inputs(data.adapter, split, idx, [s_mod, t_mod], data.device, False, None)
        z_ref = ref(xb[s_mod]).logits
        f = teacher(xb[t_mod]).feature
        sal = permutation_salience(f, z_ref, teacher.classifier, draw_permutations(repeats, f.shape[1], len(idx), gen))
        total, count = (sal, 1) if total is None or not every_batch else (total + sal, count + 1)
    assert total is not None, "the training split has fewer than 2 samples"
    return (total / count).mean(0).cpu()


def teacher_val_top1(data: PrepareData, teacher: nn.Module, removed: torch.Tensor | None, fill: str) -> float | None:
    """Top-1 (%) on the validation split of the teacher's head on its feature, with the ``removed``
    channels filled (None: all kept): what the student's only target knows (the record shows both,
    so a masked teacher that kept no label information is visible). None without a validation split."""
    from bench.train.loop import evaluate

    if data.val_split is None or len(data.val_split) == 0:
        return None

    def masked(x: Any) -> ModelOutput:
        out = teacher(x)
        return replace(out, logits=teacher.classifier(remove_channels(out.feature, removed.to(out.feature.device), fill)))

    return evaluate(teacher, data.adapter, data.val_split, data.teacher_modality, data.device,  # type: ignore[arg-type]
                    data.train.eval_batch_size, fwd=None if removed is None else masked)


def epochs_for(reference: int, reference_total: int, mode: str, epochs: int) -> int:
    """A reference epoch count on this run's schedule (``relative``) or as it is (``absolute``)."""
    return reference if mode == "absolute" else relative_epochs(reference, reference_total, epochs)


class ChannelRemoval:
    """The ranking state MFH and MGDFR share: which teacher channels are removed, and the teacher's
    logits recomputed without them. A mixin for a :class:`~bench.api.Method`."""

    removed: torch.Tensor
    salience: torch.Tensor | None = None
    prepared_info: dict[str, Any]

    def init_removal(self, t_probe: ModelOutput, ratio: float, method: str) -> None:
        check_head(self.teacher, t_probe, method)  # type: ignore[attr-defined]
        self.dim = int(t_probe.feature.shape[1])
        self.removed = torch.arange(int(ratio * self.dim))  # a placeholder of the right size until prepare()
        self.prepared_info = {"prepared": False}

    def rank(self, salience: torch.Tensor, ratio: float, channels: str = "salience") -> None:
        self.salience = min_max(salience)
        self.removed = (torch.arange(self.dim // 2, self.dim) if channels == "reference"
                        else least_salient(self.salience, ratio))

    def masked_teacher_logits(self, t: ModelOutput, fill: str) -> torch.Tensor:
        with torch.no_grad():
            f = t.feature.detach()
            return self.teacher.classifier(remove_channels(f, self.removed.to(f.device), fill))  # type: ignore[attr-defined]

    def removal_report(self) -> dict[str, Any]:
        return {**self.prepared_info, "removed_channels": sorted(int(i) for i in self.removed),
                "salience": None if self.salience is None else [round(float(v), 6) for v in self.salience]}


@dataclass
class MFHParams:
    ratio: float = hp(0.75, "fraction of the teacher's feature channels removed, least salient first (--ratio)",
                      ge=0, lt=1)
    repeats: int = hp(10, "permutations per channel and batch (M of Algorithm 1, --num-permute)", ge=1)
    tau: float = hp(1.0, "temperature (the code has none: 1; tau^2 scales the KL)", gt=0)
    kd_weight: float = hp(1.0, "weight of the pseudo-label KL (--pl-weight)", ge=0)
    ce_weight: float = hp(0.0, "weight of the cross-entropy (--gt-weight: 0, pure pseudo-label KD)", ge=0)
    reduction: str = hp("mean", "mean: KLDivLoss(reduction='mean'), sum / (batch x classes) (the code) | "
                                "batchmean: sum / batch")
    fill: str = hp("mean", "a removed channel is set to its batch mean (RAVDESS) | zero (the VGGSound script)")
    salience_batches: str = hp("all", "all: every batch counts (intended) | reference: the last batch only (the "
                                      "RAVDESS code assigns instead of accumulating)")
    channels: str = hp("salience", "salience: remove the least salient | reference: the VGGSound script's upper "
                                   "half of the channel indices whatever their salience")
    salience_batch: int = hp(512, "batch size of the salience pass (--batch-size2)", ge=2)
    ref_epochs: int = hp(100, "reference network epochs (RAVDESS: --num-epochs 100, as many as the KD run)", ge=1)
    ref_epochs_of: int = hp(100, "length of the KD schedule ref_epochs belongs to (RAVDESS 100)", ge=1)
    epochs_mode: str = hp("relative", "relative: ceil(ref_epochs / ref_epochs_of x train.epochs) | absolute")
    ref_lr: float = hp(0.01, "SGD learning rate (momentum 0.9) of the reference network (--lr)", gt=0)
    ref_align: float = hp(1.0, "weight of the reference network's MSE to the teacher's logits (RAVDESS 1; 0: plain "
                               "CE)", ge=0)

    def validate(self) -> None:
        choices = {"reduction": ("mean", "batchmean"), "fill": FILLS, "salience_batches": ("all", "reference"),
                   "channels": ("salience", "reference"), "epochs_mode": EPOCH_MODES}
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise ValueError(f"{name} must be one of {', '.join(ok)}, got {getattr(self, name)!r}")


@register_method("mfh")
class MFH(ChannelRemoval, Method):
    category = "Cross-Modal"
    description = "MFH (Xue et al. 2023): KD from the teacher's modality-general channels (permutation salience)"
    reference = "zihuixue/MFH @e6e4e856 ravdess/utils/helper.py, model.py; vggsound/*"
    Params = MFHParams
    # the paper varies the removal ratio; the temperature is 1 in the code
    search_space = {"ratio": Real(0.25, 0.9), "tau": Real(1.0, 8.0, log=True)}
    dense_ok = False
    dense_reason = "its salience permutes channels of the pooled feature across samples (classification heads only)"

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        self.init_removal(t_probe, self.p.ratio, "mfh")

    def prepare(self, data: PrepareData) -> None:
        assert self.student is not None and self.teacher is not None
        ref = copy.deepcopy(self.student)
        n = epochs_for(self.p.ref_epochs, self.p.ref_epochs_of, self.p.epochs_mode, self.ctx.epochs)
        row = train_pair(data, ref, copy.deepcopy(self.teacher), epochs=n, lr=self.p.ref_lr, align=self.p.ref_align,
                         train_teacher=False, num_classes=self.ctx.num_classes, salt=31)
        sal = channel_salience(data, self.teacher, ref, repeats=self.p.repeats, batch_size=self.p.salience_batch,
                               every_batch=self.p.salience_batches == "all", salt=37)
        self.rank(sal, self.p.ratio, self.p.channels)
        self.prepared_info = {"prepared": True, "reference_network_epochs": n,
                              "reference_network_val_metric": row["val_metric"],
                              "teacher_val_top1": teacher_val_top1(data, self.teacher, None, self.p.fill),
                              "masked_teacher_val_top1": teacher_val_top1(data, self.teacher, self.removed, self.p.fill)}

    def teacher_cache_fields(self) -> set[str]:
        return {"feature"}

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        z_t = self.masked_teacher_logits(t, self.p.fill)
        return {"ce": self.p.ce_weight * self.task_loss(s.logits, y),
                "kd": self.p.kd_weight * mfh_kd_loss(s.logits, z_t, self.p.tau, self.p.reduction)}

    def report(self) -> dict[str, object]:
        return {**self.removal_report(), "salience_batches": self.p.salience_batches, "channels": self.p.channels}
