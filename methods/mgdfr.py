"""MGDFR: modality-general decisive feature ranking (MFH's Algorithm 1) as MST-Distill's baseline.

Source: Gray-OREO/MST-Distill @093b2fe8, ``KD_methods/MGDFR.py`` (hooks, ``my_permute_new``,
``my_freeze_new``, ``DistLoss``), ``main-MGDFR.py`` (the three phases and their defaults),
``KD_methods/KD.py`` (``distillation_loss``).

1. **Co-training** (``co_epochs`` 100): teacher and a student-modality network trained jointly with
   CE_t + CE_s + MSE(z_t, z_s) by SGD (lr 1e-3, momentum 0.9).
2. **Ranking**: the salience of each channel of the teacher's penultimate feature is the MSE
   between the co-trained teacher's logits with that channel permuted across the batch and the
   co-trained student's logits, 10 repeats, accumulated over every batch of the training split
   (batches of 6 x 32), min-max normalised; the ``ratio`` = 75 % least salient channels are removed
   (:mod:`bench.methods.mfh` holds the shared code).
3. **KD** from the co-trained teacher into a fresh student: ``(1 - alpha) CE + alpha T^2 KL``
   (batch-mean, T 4), alpha 0.5 halved every 30 epochs (after epochs 30, 60, 90 of 100).

The code's bug (the spec's ground rule: intended behaviour by default, the code's as
``reference``): its forward hook has no ``freeze`` branch, so the KD phase distils the unmodified
co-trained teacher and the ranking changes nothing. By default (``freeze=intended``) the removed
channels are set to their batch mean, as ``my_freeze_new`` (which the hook was meant to call) does;
``freeze=reference`` distils the unmodified co-trained teacher.

Schedules (``epochs_mode=relative``, the default) keep the reference's ratios to its 100-epoch KD
run: ``ceil(100/100 x train.epochs)`` co-training epochs (as many as the run) and a halving period
of ``ceil(30/100 x train.epochs)`` (3 of 10 epochs); ``absolute`` uses 100 and 30 as they are.

Cross-modal wiring. The reference co-trains both networks from scratch; here the co-training
starts from the harness's trained unimodal teacher (``teacher_init=pretrained``; ``scratch``
re-initialises it as the code does) and a copy of the run's fresh student. All of it happens once,
in :meth:`MGDFR.prepare`, before the first epoch, reseeded from the run's seed. The co-training trains a
*copy* of the teacher (:class:`~bench.methods.mfh.PairTraining`, ``teacher_trainable`` in its own
loop), whose weights then replace those of this run's in-memory teacher; the cached teacher file is
never written, and the run keeps its teacher out of the teacher-output cache (its outputs are not
the cached teacher's). The reference hooks ``fc2`` (pre-ReLU); here the channels are those of the
pooled post-activation feature the classifier reads (a permutation commutes with the ReLU; the
batch-mean fill is taken after it).

Dense tasks: refused (the reference's NYU-Depth branch hooks a decoder map; this harness's
ranking permutes the pooled feature a classification head reads).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.api.config import hp
from bench.api.method import Method, PrepareData
from bench.api.registry import register_method
from bench.api.search import Real
from bench.methods.mfh import EPOCH_MODES, FILLS, ChannelRemoval, channel_salience, epochs_for, train_pair
from bench.models import ModelOutput


def mgdfr_alpha(epoch: int, alpha: float, period: int) -> float:
    """alpha at 1-based ``epoch``: halved after every ``period`` epochs (the code's
    ``alpha *= 0.5 if (epoch0 + 1) % 30 == 0``, applied after the epoch)."""
    return alpha * 0.5 ** ((epoch - 1) // max(period, 1))


def kd_batchmean(z_s: torch.Tensor, z_t: torch.Tensor, tau: float = 4.0) -> torch.Tensor:
    """tau^2 batch-mean KL(sg softmax(z_t / tau) || softmax(z_s / tau)) (``distillation_loss``)."""
    log_p_t = F.log_softmax(z_t.detach() / tau, dim=1)
    return (log_p_t.exp() * (log_p_t - F.log_softmax(z_s / tau, dim=1))).sum(1).mean() * tau**2


def mgdfr_loss(z_s: torch.Tensor, z_t: torch.Tensor, y: torch.Tensor, *, alpha: float, tau: float = 4.0
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """((1 - alpha) CE, alpha tau^2 KL) at the epoch's alpha."""
    return (1.0 - alpha) * F.cross_entropy(z_s, y), alpha * kd_batchmean(z_s, z_t, tau)


@dataclass
class MGDFRParams:
    alpha: float = hp(0.5, "initial weight of the KL term; CE gets 1 - alpha (--alpha)", ge=0, le=1)
    tau: float = hp(4.0, "temperature of the KL term (distillation_loss T)", gt=0)
    alpha_every: int = hp(30, "reference halving period of alpha, in epochs (30 of 100)", ge=1)
    co_epochs: int = hp(100, "reference co-training epochs (--co_epochs 100)", ge=1)
    epochs_of: int = hp(100, "length of the KD schedule both counts above belong to (--epochs 100)", ge=1)
    epochs_mode: str = hp("relative", "relative: both counts scaled by train.epochs / epochs_of | absolute")
    co_lr: float = hp(0.001, "SGD learning rate (momentum 0.9) of the co-training phase (--co_lr)", gt=0)
    ratio: float = hp(0.75, "fraction of the teacher's feature channels removed, least salient first (--ratio)",
                      ge=0, lt=1)
    repeats: int = hp(10, "permutations per channel and batch (--repeat_permute)", ge=1)
    salience_batch: int = hp(192, "batch size of the salience pass (6 x --batch_size 32)", ge=2)
    freeze: str = hp("intended", "intended: removed channels set to their batch mean | reference: the code's "
                                 "unmodified co-trained teacher (its hook has no freeze branch)")
    fill: str = hp("mean", "with freeze=intended: mean (my_freeze_new) | zero")
    teacher_init: str = hp("pretrained", "co-training starts from the trained teacher | scratch (re-initialised, "
                                         "as the code)")

    def validate(self) -> None:
        choices = {"epochs_mode": EPOCH_MODES, "freeze": ("intended", "reference"), "fill": FILLS,
                   "teacher_init": ("pretrained", "scratch")}
        for name, ok in choices.items():
            if getattr(self, name) not in ok:
                raise ValueError(f"{name} must be one of {', '.join(ok)}, got {getattr(self, name)!r}")

    def co_training_epochs(self, epochs: int) -> int:
        return epochs_for(self.co_epochs, self.epochs_of, self.epochs_mode, epochs)

    def halving_period(self, epochs: int) -> int:
        return epochs_for(self.alpha_every, self.epochs_of, self.epochs_mode, epochs)


@register_method("mgdfr")
class MGDFR(ChannelRemoval, Method):
    category = "Cross-Modal"
    description = "MGDFR (MFH ranking, MST-Distill baseline): co-training, salience ranking, KD from the kept channels"
    reference = "Gray-OREO/MST-Distill @093b2fe8 KD_methods/MGDFR.py, main-MGDFR.py"
    Params = MGDFRParams
    # the reference's alpha 0.5 and ratio 0.75, each over most of its range
    search_space = {"alpha": Real(0.1, 0.9), "ratio": Real(0.25, 0.9)}
    dense_ok = False
    dense_reason = "its ranking permutes channels of the pooled feature across samples (classification heads only)"
    no_cache_reason = "the co-training phase changes this run's teacher: its outputs are not the cached teacher's"

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        assert t_probe is not None
        self.init_removal(t_probe, self.p.ratio, "mgdfr")

    def prepare(self, data: PrepareData) -> None:
        assert self.student is not None and self.teacher is not None
        co_t, co_s = copy.deepcopy(self.teacher), copy.deepcopy(self.student)
        if self.p.teacher_init == "scratch":
            for m in co_t.modules():
                if hasattr(m, "reset_parameters") and m is not co_t:
                    m.reset_parameters()
        n = self.p.co_training_epochs(self.ctx.epochs)
        row = train_pair(data, co_s, co_t, epochs=n, lr=self.p.co_lr, align=1.0, train_teacher=True,
                         num_classes=self.ctx.num_classes, salt=41)
        sal = channel_salience(data, co_t, co_s, repeats=self.p.repeats, batch_size=self.p.salience_batch,
                               every_batch=True, salt=43)
        self.rank(sal, self.p.ratio)
        self.teacher.load_state_dict(co_t.state_dict())
        self.teacher.eval()
        self.prepared_info = {"prepared": True, "co_training_epochs": n, "co_student_val_metric": row["val_metric"],
                              "co_training_terms": row["terms"]}

    def teacher_cache_fields(self) -> None:
        return None  # see no_cache_reason

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        assert t is not None
        z_t = t.logits.detach() if self.p.freeze == "reference" else self.masked_teacher_logits(t, self.p.fill)
        a = mgdfr_alpha(epoch, self.p.alpha, self.p.halving_period(self.ctx.epochs))
        ce, kd = mgdfr_loss(s.logits, z_t, y, alpha=a, tau=self.p.tau)
        return {"ce": ce, "kd": kd}

    def report(self) -> dict[str, object]:
        period = self.p.halving_period(self.ctx.epochs)
        return {**self.removal_report(), "freeze": self.p.freeze, "halving_period": period,
                "alpha": [mgdfr_alpha(e, self.p.alpha, period) for e in range(1, self.ctx.epochs + 1)]}
