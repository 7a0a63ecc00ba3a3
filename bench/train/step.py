"""One training step, split into the phases ``bench speed`` times separately.

:class:`Trainer` holds everything a step needs (optimizer, GradScaler, compiled forwards, the
batch source, the teacher-output cache) and exposes the step as four calls, in the order
:func:`bench.train.loop.fit` makes them:

1. :meth:`Trainer.inputs`        data: gather + transfer (possibly prefetched) and augmentation;
2. :meth:`Trainer.teacher`       teacher forward (or a lookup in the cached outputs);
3. :meth:`Trainer.student_step`  student forward, the method's losses, backward;
4. :meth:`Trainer.optimizer_step`.

The runner and the benchmark therefore measure the same code.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Any

import torch
import torch.nn as nn

from bench.api.method import Method
from bench.data import DatasetAdapter, Split, batch_indices
from bench.data.tsets import batch_inputs
from bench.models import Backbone, ModelOutput
from bench.train.acceleration import (
    SpeedPlan,
    for_loss,
    frozen_forward,
    to_channels_last,
)
from bench.train.placement import BatchSource
from bench.train.teacher_outputs import TeacherOutputs, shuffled_partners

_TEACHER_OUTPUTS: dict[tuple, TeacherOutputs] = {}


def make_optimizer(train: Any, params: list[nn.Parameter], device: torch.device, fused: bool = False) -> torch.optim.Optimizer:
    kw = {"fused": True} if fused and device.type in ("cuda", "cpu") else {}
    if train.optimizer == "sgd":
        return torch.optim.SGD(params, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay, **kw)
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, weight_decay=train.weight_decay, **kw)
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay, **kw)


def unique_params(*groups: list[nn.Parameter]) -> list[nn.Parameter]:
    seen: set[int] = set()
    out = []
    for g in groups:
        for p in g:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def maybe_compile(model: nn.Module, plan: SpeedPlan):
    return torch.compile(model) if plan.compile else model


class Trainer:
    def __init__(self, *, adapter: DatasetAdapter, train_split: Split, student: Backbone, student_modality: str,
                 method: Method, teacher: Backbone | None, teacher_modality: str | None, train: Any,
                 device: torch.device, plan: SpeedPlan, teacher_key: str | None = None, seed: int = 0):
        self.adapter, self.tr, self.student, self.s_mod = adapter, train_split, student, student_modality
        self.method, self.teacher, self.t_mod, self.train, self.device = method, teacher, teacher_modality, train, device
        # a same-modality teacher's re-paired input must not replace the student's (v2v, unpaired/shuffled)
        self.t_key = f"teacher:{teacher_modality}" if teacher_modality == student_modality else teacher_modality
        self.need_t = method.uses_teacher and teacher is not None
        if method.wants_sample_indices:  # before the optimizer and any resume: state sized by the training set
            method.bind_training_set(train_split.labels, seed)
        self.teacher_in_opt = self.need_t and method.teacher_trainable
        self.unpaired = self.need_t and train.pairing == "unpaired"
        # the shuffled-teacher control: a fixed partner of the same class per sample (drawn from the seed)
        self.partners = (shuffled_partners(train_split.labels, seed)
                         if self.need_t and getattr(train, "teacher_control", "none") == "shuffled" else None)
        repaired = self.unpaired or self.partners is not None
        if not self.need_t:
            plan = replace(plan, teacher_cache=False, teacher_cache_fields=[], teacher_cache_reason="the method uses no teacher")
        elif self.teacher_in_opt or not plan.teacher_cache_fields:
            plan = replace(plan, teacher_cache=False, teacher_cache_fields=[],
                           teacher_cache_reason=plan.teacher_cache_reason or "not decided for this run")
        if self.need_t and (method.teacher_train_mode or self.teacher_in_opt):
            plan = replace(plan, teacher_inference=False)
        self.plan = plan
        if plan.channels_last:
            student.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.to(memory_format=torch.channels_last)
        self.params = unique_params(list(student.parameters()), method.extra_parameters(),
                                    list(teacher.parameters()) if self.teacher_in_opt else [])
        self.opt = make_optimizer(train, self.params, device, plan.fused_optim)
        self.scaler = torch.amp.GradScaler(device.type) if plan.amp == "fp16" else None
        self.student_fwd = maybe_compile(student, plan)
        self.teacher_fwd = maybe_compile(teacher, plan) if teacher is not None else None
        self.tcache: TeacherOutputs | None = None
        if self.need_t and plan.teacher_cache:
            key = (teacher_key, id(train_split), tuple(plan.teacher_cache_fields), plan.amp, str(device)) if teacher_key else None
            self.tcache = _TEACHER_OUTPUTS.get(key) if key else None
            if self.tcache is None:
                teacher.eval()  # type: ignore[union-attr]  # as in training: frozen, running statistics
                # one pass, streamed: the teacher's input need not stay in device memory afterwards
                once = replace(plan, data_placement="stream", prefetch=True)
                self.tcache = TeacherOutputs.compute(self.teacher_fwd, adapter, train_split, teacher_modality,
                                                     set(plan.teacher_cache_fields), once, device, train.eval_batch_size)
                if key:
                    _TEACHER_OUTPUTS.clear()  # one teacher's outputs at a time
                    _TEACHER_OUTPUTS[key] = self.tcache
        fetch_t = self.need_t and not repaired and self.tcache is None
        self.fetch_mods = [student_modality] + ([teacher_modality] if fetch_t else [])  # type: ignore[list-item]
        self.src = BatchSource(train_split, self.fetch_mods, device, plan)
        self.t_src = BatchSource(train_split, [teacher_modality], device, plan) if repaired and self.tcache is None else None  # type: ignore[list-item]
        self.by_class = class_index(train_split.labels) if self.unpaired else {}

    # -- phases ----------------------------------------------------------------------------
    def batches(self, gen: torch.Generator) -> list[torch.Tensor]:
        """The epoch's shuffled index batches (drawn first, before any augmentation)."""
        return list(batch_indices(len(self.tr), self.train.batch_size, True, gen, drop_last=True))

    def inputs(self, s_like: Split, li: torch.Tensor, idx: torch.Tensor, gen: torch.Generator
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Network inputs (augmented on the device), labels, and the teacher's sample indices; a
        method that asks for them (:attr:`~bench.api.Method.wants_sample_indices`) gets ``idx``."""
        xb, y = batch_inputs(self.adapter, s_like, li, self.fetch_mods, self.device, True, gen)
        if self.method.wants_sample_indices:
            self.method.sample_indices = idx
        t_idx = idx
        if self.unpaired or self.partners is not None:
            # the teacher sees other samples of the same classes: only the label space is shared
            t_idx = (self.partners[idx.cpu()].to(idx.device) if self.partners is not None
                     else repair_by_class(self.tr.labels, idx, self.by_class, gen))
            if self.t_src is not None:
                ts, tli = self.t_src.gather(t_idx)
                xb[self.t_key] = batch_inputs(self.adapter, ts, tli, [self.t_mod], self.device, True, gen)[0][self.t_mod]  # type: ignore[index,list-item]
        return xb, y, t_idx

    def teacher_out(self, xb: dict[str, torch.Tensor], t_idx: torch.Tensor) -> ModelOutput | None:
        if not self.need_t:
            return None
        if self.tcache is not None:
            return self.tcache.take(t_idx)
        xt = xb[self.t_key] if self.t_key in xb else xb[self.t_mod]  # type: ignore[index]
        if self.teacher_in_opt:
            with self.plan.autocast(self.device):
                return self.teacher_fwd(to_channels_last(xt, self.plan))  # type: ignore[misc]
        return frozen_forward(self.teacher_fwd, xt, self.plan, self.device)

    def student_step(self, xb: dict[str, torch.Tensor], t_out: ModelOutput | None, y: torch.Tensor, epoch: int
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Student forward, the method's losses (in fp32), backward. Returns (total, terms)."""
        with self.plan.autocast(self.device):
            s_out = self.student_fwd(to_channels_last(xb[self.s_mod], self.plan))
        if self.method.runs_teachers:  # it runs its teachers itself on the step's inputs
            self.method.inputs = xb
        terms = self.method.loss(for_loss(s_out, self.plan), for_loss(t_out, self.plan) if t_out is not None else None,
                                 y, epoch)
        total = sum(terms.values())
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
        else:
            total.backward()
        return total, terms

    def optimizer_step(self) -> None:
        clip = self.train.grad_clip
        if self.scaler is not None:
            if clip > 0:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            return
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.opt.step()

    @contextlib.contextmanager
    def eager(self):
        """The step with the uncompiled modules (FLOP counting sees every operator)."""
        saved = self.student_fwd, self.teacher_fwd
        self.student_fwd, self.teacher_fwd = self.student, self.teacher
        try:
            yield self
        finally:
            self.student_fwd, self.teacher_fwd = saved

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def probe_outputs(adapter: DatasetAdapter, split: Split, student: Backbone, teacher: Backbone | None, s_mod: str,
                  t_mod: str | None, device: torch.device) -> tuple[ModelOutput, ModelOutput | None]:
    """Dry-run both networks on two training samples of their own modality (eval mode), for
    :meth:`Method.setup` (connector shapes) and the teacher-cache decision."""
    idx = torch.arange(min(2, len(split)))
    was = student.training
    student.eval()
    xb, _ = batch_inputs(adapter, split, idx, [s_mod] + ([t_mod] if teacher is not None else []), device, False, None)  # type: ignore[list-item]
    with torch.no_grad():
        s_probe = student(xb[s_mod])
        t_probe = None
        if teacher is not None:
            tw = teacher.training
            teacher.eval()
            t_probe = teacher(xb[t_mod])  # type: ignore[index]
            teacher.train(tw)
    student.train(was)
    return s_probe, t_probe


def class_index(labels: torch.Tensor) -> dict[int, torch.Tensor]:
    lab = labels.cpu()
    return {int(c): torch.nonzero(lab == c).flatten() for c in torch.unique(lab)}


def repair_by_class(labels: torch.Tensor, idx: torch.Tensor, by_class: dict[int, torch.Tensor],
                    gen: torch.Generator | None) -> torch.Tensor:
    """The unpaired protocol (UnpairedCMKD's loaders): for every student sample, a teacher-modality
    sample drawn uniformly from the training samples of the same class, redrawn at every step."""
    out = torch.empty_like(idx)
    lab = labels[idx].cpu()
    for c in torch.unique(lab):
        pool = by_class[int(c)]
        sel = lab == c
        out[sel] = pool[torch.randint(0, len(pool), (int(sel.sum()),), generator=gen)]
    return out
