"""The KD-method API.

A method is a class with:

* ``Params``: a dataclass of hyper-parameters whose defaults are the reference defaults
  (settable with ``--set <method>.<field>=value``, recorded in every result record);
* a pure, documented loss function ``<method>_loss`` in its module (tested against oracles);
* :meth:`Method.setup`, which builds learnable connectors from shapes found by a dry run of
  **each** network on its own input (teacher and student see different modalities);
* :meth:`Method.loss`, which returns a dict of already-weighted loss terms. The runner sums
  them, so every term is logged separately.

Class attributes tell the runner how to treat the teacher: frozen in eval mode under
``no_grad`` (default), trainable (DML's peer, C2KD's bidirectional teacher), or in train mode
(OFD's batch statistics). Epoch numbers passed to methods are 1-based (mdistiller convention,
which DKD's warm-up formula assumes). :meth:`Method.prepare` runs once before the first epoch with
the training data, for what a reference computes before distilling (MFH's channel salience,
MGDFR's co-training phase).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.models import Backbone, ModelOutput


CONTROL = "Control"
"""The category of the control methods (label smoothing, a teacher-free virtual teacher)."""


def relative_epochs(reference: int, reference_total: int, epochs: int) -> int:
    """An epoch count of a reference recipe rescaled to this run's schedule, keeping its ratio:
    ``ceil(reference / reference_total * epochs)``, at least 1 (DKD's 20-epoch warm-up of 240
    epochs is 1 epoch of 10). Integer arithmetic, so 20 of 240 at 12 epochs is exactly 1."""
    return max(1, -(-reference * epochs // reference_total))


@dataclass
class NoParams:
    """This method has no hyper-parameters of its own."""


@dataclass
class MethodContext:
    num_classes: int
    epochs: int
    task: str
    teacher_modality: str | None
    student_modality: str
    device: torch.device
    ignore_index: int | None = None


@dataclass
class PrepareData:
    """What :meth:`Method.prepare` gets: the run's training data and settings, before the first epoch."""
    adapter: Any
    """The dataset adapter (``adapter.batch(split, idx, modalities, device, augment, gen)`` gives inputs)."""
    train_split: Any
    val_split: Any
    """The validation split, or None (``train.val_fraction=0``)."""
    train: Any
    """The run's :class:`~bench.api.config.TrainConfig`."""
    seed: int
    teacher_modality: str | None
    student_modality: str
    device: torch.device


class Method:
    name: ClassVar[str]
    category: ClassVar[str] = "Logits"
    """Table-2 group: Uni-Modal | Logits | Feature | Cross-Modal, or ``Control`` (:data:`CONTROL`: a
    baseline that isolates what a teacher adds; run by ``--methods controls``, not by ``all``)."""
    version: ClassVar[int] = 1
    """Bumped when a change alters the method's results at the same parameters (part of the run's
    identity from 2 on, so version-1 identities, i.e. every earlier record, keep their hashes)."""
    description: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    uses_teacher: ClassVar[bool] = True
    teacher_trainable: ClassVar[bool] = False
    teacher_train_mode: ClassVar[bool] = False
    dense_ok: ClassVar[bool] = True
    """False where the method has no meaning on segmentation outputs; the runner refuses."""
    dense_reason: ClassVar[str] = ""
    wants_sample_indices: ClassVar[bool] = False
    """True for a method keyed by training sample (CRD's memory bank): the runner calls
    :meth:`bind_training_set` once before training (before a resume loads :meth:`state_dict`) and
    sets :attr:`sample_indices` to the batch's positions in the training split before every
    :meth:`loss`. Off by default, so no other method's step changes."""
    no_cache_reason: ClassVar[str] = ""
    """Why :meth:`teacher_cache_fields` is None, where the method knows (the record's cache reason)."""
    runs_teachers: ClassVar[bool] = False
    """The method runs its teachers itself (MST-Distill's masked experts): the runner loads the
    cached unimodal teachers :meth:`extra_teachers` names, hands them over with
    :meth:`attach_teachers` before :meth:`setup`, and sets ``self.inputs`` (modality -> the step's
    prepared input) before every :meth:`loss` call. Its teacher outputs are never cached."""
    requires_teacher_set: ClassVar[bool] = False
    """The method distils a teacher set's mixture (MST-Distill): a grid runs it on its teacher-set
    directions only (so ``--methods all`` and ``none,mst`` over ``a2v,av2v`` do not fail on it), and
    refuses it, with the reason, when it is named for a grid that has no teacher-set direction."""
    search_space: ClassVar[dict[str, Any]] = {}
    """What ``bench tune`` searches: the 1-3 hyper-parameters that matter most, with the ranges the
    paper reports (``{"beta": Real(0.5, 10.0)}``, see :mod:`bench.api.search`); empty: nothing to tune."""

    def __init__(self, params: Any, ctx: MethodContext):
        self.p = params
        self.ctx = ctx
        self.modules = nn.ModuleDict()
        self.student: Backbone | None = None
        self.teacher: Backbone | None = None
        self.sample_indices: torch.Tensor | None = None
        """With :attr:`wants_sample_indices`: the current batch's training-split positions, shape (B,)."""

    def setup(self, student: Backbone, teacher: Backbone | None, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        """Build learnable add-ons from dry-run outputs. Default: nothing."""
        self.student, self.teacher = student, teacher

    def bind_training_set(self, labels: torch.Tensor, seed: int) -> None:
        """With :attr:`wants_sample_indices`: the training split's labels (its size and classes) and
        the run's seed, for state sized by the training set and draws of the method's own. Default: nothing."""

    def prepare(self, data: PrepareData) -> None:
        """Once per run, after :meth:`setup` and before the first epoch (also of a resumed run, so
        it must be a deterministic function of ``data.seed``). A method that changes the teacher's
        weights here must keep the teacher out of the output cache (:meth:`teacher_cache_fields`
        None): its outputs are no longer those of the cached teacher. Default: nothing."""

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def teacher_cache_fields(self) -> set[str] | None:
        """The teacher outputs :meth:`loss` reads (``logits``, ``feature``, ``pre_feature``,
        ``feature_maps[i]``, ``preact_maps[i]``), so that a frozen teacher on an un-augmented
        modality can be cached (see :mod:`bench.train.teacher_outputs`). ``None``: never cache (the default, so a
        plugin method is only cached when it says what it reads)."""
        return None

    def extra_teachers(self) -> list[str]:
        """The modalities whose cached unimodal teachers this method needs besides the run's own
        teacher (only with ``runs_teachers``); refusing a direction is :meth:`setup`'s job."""
        return []

    def attach_teachers(self, nets: dict[str, Backbone], probes: dict[str, ModelOutput]) -> None:
        """The frozen teachers :meth:`extra_teachers` named (eval mode) and their dry-run outputs on
        two training samples (shapes for connectors), before :meth:`setup`."""
        self.extra_nets, self.extra_probes = dict(nets), dict(probes)

    def extra_parameters(self) -> list[nn.Parameter]:
        return list(self.modules.parameters())

    def task_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with hard labels (pixel-wise with the void label ignored for dense tasks)."""
        if self.ctx.ignore_index is not None:
            return F.cross_entropy(logits, y, ignore_index=self.ctx.ignore_index)
        return F.cross_entropy(logits, y)

    def state_dict(self) -> dict[str, Any]:
        return {"modules": self.modules.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.modules.load_state_dict(state["modules"])
