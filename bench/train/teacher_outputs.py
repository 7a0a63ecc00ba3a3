"""Teacher-output caching. A frozen teacher in eval mode whose input is not augmented computes the
same outputs for a sample at every step, so the runner computes them once per run and indexes
them by sample instead of running the teacher (exactly equal in fp32; the tests compare whole
training histories). It applies when all of these hold:

* the method declares which teacher outputs it reads (:meth:`Method.teacher_cache_fields`); the
  built-in logit methods (Logit KD, DIST, NKD, DKD), the feature methods FitNet, PKD, AFD, FD-CMKD
  and UCMKD do; methods from plugins are never cached unless they declare it;
* the teacher is frozen and in eval mode: **not** DML and C2KD (the teacher is trained with the
  student, its outputs change every step) and **not** OFD (it runs the teacher in train mode, so
  batch-norm statistics depend on the batch);
* the adapter says the teacher modality's training input is not augmented
  (:meth:`DatasetAdapter.augments`): CREMA-D/AVE audio (recipes A and B), CrisisMMD text, the
  synthetic set and AV-Digits; **not** visual frames (random crop, flip, frame choice), VGGSound
  audio (random 5-s crop) or NYU-Depth (joint scale/crop/flip);
* the cached tensors fit the memory budget (feature maps of every training sample can be large).

Teacher controls (``train.teacher_control``, :func:`check_teacher_control`) change which teacher a
sample gets, for any method: ``shuffled`` hands every training sample the teacher outputs of
another training sample of its class (:func:`shuffled_partners`: class-level knowledge only), and
``random`` uses a freshly initialised teacher that is never trained
(:func:`bench.train.teachers.random_teacher`). A method minus its shuffled control is the
sample-level knowledge it transfers; a method minus its random control is what a trained teacher adds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from bench.api.errors import ConfigError
from bench.data import Split, batch_indices
from bench.data.tsets import batch_inputs, members
from bench.models import ModelOutput
from bench.train.acceleration import SpeedPlan, frozen_forward
from bench.train.placement import BatchSource, free_device_bytes

CPU_CACHE_BUDGET = 2 * 2**30
"""Teacher-output cache budget on CPU (bytes)."""


def check_teacher_control(train: Any, adapter: Any, method_cls: Any) -> None:
    """Refuse a teacher control that cannot mean what it says, before anything is read or trained."""
    control = train.teacher_control
    if control == "none" or not method_cls.uses_teacher:
        return
    if control == "shuffled":
        if getattr(adapter, "paired_by", "sample") == "class":
            raise ConfigError(
                f"train.teacher_control=shuffled on {adapter.name!r}: its modalities are paired by class, not by "
                f"sample, so every sample already receives the teacher outputs of another sample of its class; "
                f"the shuffled-teacher control is the method itself by construction (nothing to run)")
        if adapter.task != "classification":
            raise ConfigError(f"train.teacher_control=shuffled needs image-level labels (it re-pairs samples "
                              f"within a class); {adapter.name!r} is {adapter.task}")
        if train.pairing == "unpaired":
            raise ConfigError("train.teacher_control=shuffled with train.pairing=unpaired: both re-pair the teacher's "
                              "samples within a class (a fixed partner vs one redrawn at every step); choose one")
    if control == "random" and train.teacher_checkpoint:
        raise ConfigError("train.teacher_control=random uses a never-trained teacher; it cannot be combined with "
                          "train.teacher_checkpoint")


def shuffled_partners(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """``partner[i]``: the training sample whose teacher outputs sample ``i`` receives under the
    shuffled-teacher control. Within each class the samples are put in an order drawn from the run
    seed and each takes the next one's outputs (one cycle per class), so the partner is always
    another sample of the same class and every sample's outputs are used exactly once; fixed for
    the whole run, unlike ``train.pairing=unpaired``, which redraws (with replacement, possibly the
    sample itself) at every step."""
    lab = labels.cpu()
    gen = torch.Generator().manual_seed((seed * 1_000_003 + 7_777_777) % 2**62)
    partner = torch.arange(len(lab))
    for c in torch.unique(lab):
        pool = torch.nonzero(lab == c).flatten()
        if len(pool) < 2:
            raise ConfigError(f"train.teacher_control=shuffled: class {int(c)} has {len(pool)} training sample, "
                              f"so no other sample of its class can lend it teacher outputs")
        order = pool[torch.randperm(len(pool), generator=gen)]
        partner[order] = order.roll(-1)
    return partner


def _parse_field(name: str) -> tuple[str, int | None]:
    """``"feature_maps[2]"`` -> ``("feature_maps", 2)``; ``"logits"`` -> ``("logits", None)``."""
    if name.endswith("]") and "[" in name:
        base, i = name[:-1].split("[")
        return base, int(i)
    return name, None


def normalise_fields(fields: set[str], probe: ModelOutput) -> set[str]:
    """``feature_maps[-2]`` -> ``feature_maps[2]`` (indices as stored in the cache)."""
    out = set()
    for name in fields:
        base, i = _parse_field(name)
        out.add(name if i is None else f"{base}[{i % len(getattr(probe, base))}]")
    return out


def _field_nbytes(probe: ModelOutput, fields: set[str], n: int, half: bool) -> int:
    per = 0
    for name in fields:
        t = _get_field(probe, name)
        per += t[0].numel() * (2 if half else 4)
    return per * n


def _get_field(out: ModelOutput, name: str) -> torch.Tensor:
    base, i = _parse_field(name)
    return getattr(out, base) if i is None else getattr(out, base)[i]


def decide_teacher_cache(plan: SpeedPlan, method: Any, adapter: Any, teacher_modality: str | None,
                         t_probe: ModelOutput | None, n_train: int, device: torch.device) -> SpeedPlan:
    """Whether this run caches its teacher's outputs, and why (or why not)."""
    def no(reason: str) -> SpeedPlan:
        return replace(plan, teacher_cache=False, teacher_cache_reason=reason)

    if not plan.teacher_cache:
        return no("off")
    if teacher_modality is None or t_probe is None or not method.uses_teacher:
        return no("the method uses no teacher")
    if method.teacher_trainable:
        return no("the teacher is trained with the student, so its outputs change every step")
    if method.teacher_train_mode:
        return no("the teacher runs in train mode (batch statistics depend on the batch)")
    fields = method.teacher_cache_fields()
    if fields is None:
        return no(method.no_cache_reason or f"method {method.name!r} does not declare which teacher outputs it reads")
    fields = normalise_fields(set(fields), t_probe)
    augmented = [m for m in members(teacher_modality) if adapter.augments(m)]
    if augmented:
        return no(f"the {augmented[0]} input of {adapter.name} is augmented at every training step")
    need = _field_nbytes(t_probe, set(fields), n_train, plan.amp != "off")
    budget = (0.25 * free_device_bytes(device) / max(plan.runs_per_gpu, 1)) if device.type == "cuda" else CPU_CACHE_BUDGET
    if need > budget:
        return no(f"the cached outputs would take {need / 2**30:.2f} GiB (budget {budget / 2**30:.2f} GiB)")
    return replace(plan, teacher_cache=True, teacher_cache_fields=sorted(fields), teacher_cache_bytes=need,
                   teacher_cache_reason=f"{', '.join(sorted(fields))} cached once per run ({need / 2**20:.1f} MiB)")


class TeacherOutputs:
    """A frozen teacher's outputs on every training sample (only the fields the method reads)."""

    def __init__(self, store: dict[str, torch.Tensor], n_maps: int, n_pre: int):
        self.store, self.n_maps, self.n_pre = store, n_maps, n_pre

    @classmethod
    def compute(cls, teacher_fwd, adapter: Any, split: Split, modality: str, fields: set[str], plan: SpeedPlan,
                device: torch.device, batch_size: int) -> "TeacherOutputs":
        store: dict[str, torch.Tensor] = {}
        n_maps = n_pre = 0
        source = BatchSource(split, [modality], device, plan)
        for s, li, idx in source.iterate(list(batch_indices(len(split), batch_size, False, None, False))):
            xs, _ = batch_inputs(adapter, s, li, [modality], device, True, None)
            out = frozen_forward(teacher_fwd, xs[modality], plan, device)
            n_maps, n_pre = len(out.feature_maps), len(out.preact_maps)
            for name in fields:
                t = _get_field(out, name)
                if name not in store:
                    store[name] = torch.empty((len(split), *t.shape[1:]), dtype=t.dtype, device=device)
                store[name][idx.to(device)] = t
        return cls(store, n_maps, n_pre)

    def take(self, idx: torch.Tensor) -> ModelOutput:
        idx = idx.to(next(iter(self.store.values())).device)
        g = {k: v[idx] for k, v in self.store.items()}
        maps = [g.get(f"feature_maps[{i}]") for i in range(self.n_maps)]
        pre = [g.get(f"preact_maps[{i}]") for i in range(self.n_pre)]
        return ModelOutput(g.get("logits"), g.get("feature"), g.get("pre_feature"), maps, pre)  # type: ignore[arg-type]
