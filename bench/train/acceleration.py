"""Runner speed features: precision, memory format, frozen-teacher forwards.

Each feature is a ``train.*`` setting (``--set train.amp=off``); ``train.speed=off`` turns all of
them off at once, which is the reference code's set-up (fp32, eager, contiguous tensors, every
teacher output recomputed, batches gathered from the memory-mapped cache on the training thread).
``auto`` resolves per device: on CUDA every feature except ``torch.compile`` is on; on CPU only the
ones that help there (in-RAM data, prefetching, teacher caching, and NHWC for 2-D convolutions:
measured on ``synthetic``'s visual ResNet, a training step of batch 64 takes 11 ms instead of
15 ms, and a whole visual-student run 3.9 s of CPU instead of 5.0 s).

Why these keys are not part of a run's identity: they change how a number is computed, not what is
computed. The tests pin that a run's accuracy with them on stays within noise of the all-off run,
and every record stores the resolved settings (``record["speed"]``), so a table can still split
by them. The config hash therefore stays the same on CPU and GPU and with or without ``compile``.

Data placement lives in :mod:`bench.train.placement`, teacher-output caching in
:mod:`bench.train.teacher_outputs`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bench.api.errors import ConfigError
from bench.models import ModelOutput


@dataclass
class SpeedPlan:
    """The resolved speed settings of one run (stored in its record as ``speed``)."""

    amp: str = "off"
    """off | bf16 | fp16 (fp16 uses a GradScaler)."""
    channels_last: bool = False
    data_placement: str = "stream"
    """device: every split copied to the training device once, batches gathered there;
    pinned: splits read into (pinned) host RAM, batches gathered and sent by a prefetch thread;
    stream: batches gathered from the memory-mapped cache (prefetched unless speed is off)."""
    prefetch: bool = False
    non_blocking: bool = False
    compile: bool = False
    fused_optim: bool = False
    teacher_inference: bool = False
    """Frozen teacher under ``torch.inference_mode`` (and autocast) instead of ``no_grad`` in fp32."""
    teacher_cache: bool = False
    teacher_cache_reason: str = ""
    teacher_cache_fields: list[str] = field(default_factory=list)
    teacher_cache_bytes: int = 0
    runs_per_gpu: int = 1
    memory: dict[str, Any] = field(default_factory=dict)
    """What the run holds in host RAM and device memory per placement, and what was available
    (:func:`memory_estimate`)."""

    def autocast(self, device: torch.device):
        if self.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def report(self) -> dict[str, Any]:
        return asdict(self)


def all_off() -> SpeedPlan:
    return SpeedPlan()


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def plan_speed(train: Any, device: torch.device) -> SpeedPlan:
    """Resolve ``auto`` settings for ``device`` (teacher caching is decided later, per method)."""
    if train.speed == "off":
        plan = all_off()
        if train.compile:
            plan.compile = True  # explicitly asked for, even with everything else off
        return plan
    cuda = device.type == "cuda"

    def onoff(v: str, auto: bool) -> bool:
        return auto if v == "auto" else v == "on"

    amp = train.amp
    if amp == "auto":
        amp = ("bf16" if bf16_supported(device) else "fp16") if cuda else "off"
    if amp == "bf16" and not bf16_supported(device):
        raise ConfigError(f"train.amp=bf16: {device} does not support bfloat16; use train.amp=fp16")
    placement = train.data_placement if train.data_placement != "auto" else "device"
    return SpeedPlan(
        amp=amp,
        channels_last=onoff(train.channels_last, True),  # NHWC helps oneDNN's CPU kernels too
        data_placement=placement,
        prefetch=placement != "device",
        non_blocking=cuda,
        compile=bool(train.compile),
        fused_optim=onoff(train.fused_optim, cuda),
        teacher_inference=True,
        teacher_cache=train.teacher_cache != "off",  # decided per method by decide_teacher_cache
    )


def to_channels_last(x: torch.Tensor, plan: SpeedPlan) -> torch.Tensor:
    if isinstance(x, dict):  # a teacher set's inputs, one per member modality
        return {k: to_channels_last(v, plan) for k, v in x.items()}  # type: ignore[return-value]
    if plan.channels_last and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def for_loss(out: ModelOutput, plan: SpeedPlan) -> ModelOutput:
    """Outputs as the losses expect them: fp32 (losses never run in half precision) and
    contiguous (methods reshape feature maps with ``view``)."""
    if plan.amp == "off" and not plan.channels_last:
        return out
    return out.apply(lambda t: (t.float() if t.is_floating_point() else t).contiguous())


def frozen_forward(teacher_fwd, x: torch.Tensor, plan: SpeedPlan, device: torch.device) -> ModelOutput:
    """A frozen teacher's outputs: inference mode + autocast when the plan says so (outputs are
    cloned out of inference mode so that losses may save them for backward), else ``no_grad``."""
    if plan.teacher_inference:
        with torch.inference_mode(), plan.autocast(device):
            out = teacher_fwd(to_channels_last(x, plan))
        return out.apply(torch.Tensor.clone)
    with torch.no_grad():
        return teacher_fwd(x).detach()
