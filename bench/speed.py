"""Runner speed features: precision, memory format, data placement, teacher-output caching.

Each feature is a ``train.*`` setting (``--set train.amp=off``); ``train.speed=off`` turns all of
them off at once, which is the reference code's set-up (fp32, eager, contiguous tensors, every
teacher output recomputed, batches gathered from the memory-mapped cache on the training thread).
``auto`` resolves per device: on CUDA every feature except ``torch.compile`` is on; on CPU only the
ones that help there (in-RAM data, prefetching, teacher caching).

Why these keys are not part of a run's identity: they change how a number is computed, not what is
computed. The tests pin that a run's accuracy with them on stays within noise of the all-off run,
and every record stores the resolved settings (``record["speed"]``), so a table can still split
by them. The config hash therefore stays the same on CPU and GPU and with or without ``compile``.

Teacher-output caching. A frozen teacher in eval mode whose input is not augmented computes the
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
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator

import torch

from .data import Split, batch_indices
from .errors import ConfigError
from .models import ModelOutput

SPEED_KEYS = ("speed", "amp", "channels_last", "data_placement", "compile", "fused_optim", "teacher_cache")
"""``train.*`` keys that only change how fast a run goes; kept out of the config hash."""

_AUTO_ON_OFF = ("auto", "on", "off")
CHOICES: dict[str, tuple[str, ...]] = {
    "speed": ("auto", "off"),
    "amp": ("auto", "bf16", "fp16", "off"),
    "channels_last": _AUTO_ON_OFF,
    "data_placement": ("auto", "device", "pinned", "stream"),
    "fused_optim": _AUTO_ON_OFF,
    "teacher_cache": _AUTO_ON_OFF,
}

CPU_CACHE_BUDGET = 2 * 2**30
"""Teacher-output cache budget on CPU (bytes)."""


def validate_choices(train: Any) -> None:
    for key, allowed in CHOICES.items():
        v = getattr(train, key)
        if v not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {v!r}")


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
    runs_per_gpu: int = 1

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
        channels_last=onoff(train.channels_last, cuda),
        data_placement=placement,
        prefetch=placement != "device",
        non_blocking=cuda,
        compile=bool(train.compile),
        fused_optim=onoff(train.fused_optim, cuda),
        teacher_inference=True,
        teacher_cache=train.teacher_cache != "off",  # decided per method by decide_teacher_cache
    )


# --------------------------------------------------------------------------------------------
# data placement

def split_nbytes(split: Split, keys: list[str] | None = None) -> int:
    n = sum(int(v.numel() * v.element_size()) for k, v in split.inputs.items() if keys is None or k in keys)
    n += sum(int(v.numel() * v.element_size()) for v in split.aux.values())
    return n + int(split.labels.numel() * split.labels.element_size())


def free_device_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 * 2**30


def choose_placement(plan: SpeedPlan, train: Any, splits: dict[str, Split], keys: list[str],
                     device: torch.device) -> SpeedPlan:
    """``auto`` placement: on the device when every split fits in its share of free memory
    (40 %, divided among the runs packed on the GPU), else pinned host RAM when that fits (50 % of
    available RAM), else streaming from the memory-mapped cache."""
    if train.speed == "off" or train.data_placement != "auto":
        return plan
    need = sum(split_nbytes(s, keys) for s in splits.values())
    # arrays this process already placed there (an earlier run of the grid) need no new memory
    ids = {id(s) for s in splits.values()}
    need -= sum(int(t.numel() * t.element_size()) for (sid, _k, dev, _p), (_s, t) in BatchSource._placed.items()
                if sid in ids and dev == str(device))
    share = max(plan.runs_per_gpu, 1)
    if need <= 0.4 * free_device_bytes(device) / share:
        return replace(plan, data_placement="device", prefetch=False)
    host = free_device_bytes(torch.device("cpu"))
    if device.type == "cuda" and need <= 0.5 * host / share:
        return replace(plan, data_placement="pinned", prefetch=True)
    return replace(plan, data_placement="stream", prefetch=True)


def _select(split: Split, keys: list[str], fn) -> Split:
    """A split of ``fn(name, array)`` for the modalities in ``keys``, their side arrays and the labels."""
    return Split({k: fn(k, v) for k, v in split.inputs.items() if k in keys}, fn("<labels>", split.labels),
                 dict(split.meta), {k: fn(k, v) for k, v in split.aux.items() if k.split(".")[0] in keys})


def _move(t: torch.Tensor, device: torch.device | None, pin: bool) -> torch.Tensor:
    t = torch.as_tensor(t)
    if device is not None:
        return t.to(device)
    t = t.clone()  # read the memory map into RAM once
    return t.pin_memory() if pin else t


class BatchSource:
    """Mini-batches of one split for the modalities a run needs, placed as the plan says.

    ``iterate`` yields ``(split_like, local_index)``: pass both to :meth:`DatasetAdapter.batch`.
    Gathering and host-to-device copies involve no random numbers, so prefetching them on a
    thread cannot change a run: augmentation (which draws from the run's generator) still happens
    on the training thread, in order.
    """

    _placed: dict[tuple, tuple[Split, torch.Tensor]] = {}
    """(id(split), array name, device, pin) -> (the split it came from, the placed copy). Arrays
    are placed one by one, so a split's audio placed for teacher training is reused by the runs
    that distil from that teacher; :func:`release_placements` drops other datasets' arrays."""

    def __init__(self, split: Split, keys: list[str], device: torch.device, plan: SpeedPlan):
        self.split, self.keys, self.device, self.plan = split, list(keys), device, plan
        self.src = split
        if plan.data_placement == "device":
            self.src = self._place(split, keys, device, pin=False)
        elif plan.data_placement == "pinned":
            self.src = self._place(split, keys, None, pin=device.type == "cuda")

    @classmethod
    def _place(cls, split: Split, keys: list[str], device: torch.device | None, pin: bool) -> Split:
        def get(name: str, t: torch.Tensor) -> torch.Tensor:
            key = (id(split), name, str(device), pin)
            hit = cls._placed.get(key)
            if hit is not None and hit[0] is split:
                return hit[1]
            placed = _move(t, device, pin)
            cls._placed[key] = (split, placed)
            return placed

        return _select(split, keys, get)

    def gather(self, idx: torch.Tensor) -> tuple[Split, torch.Tensor]:
        if self.plan.data_placement == "device":
            return self.src, idx.to(self.device, non_blocking=self.plan.non_blocking)
        mini = _materialise_sub(self.src, idx, self.keys, self.device, self.plan)
        return mini, torch.arange(len(idx), device=self.device)

    def iterate(self, batches: list[torch.Tensor]) -> Iterator[tuple[Split, torch.Tensor, torch.Tensor]]:
        """(split_like, local index, global index) per batch, prefetched when the plan says so."""
        if not self.plan.prefetch or self.plan.data_placement == "device" or len(batches) < 2:
            for idx in batches:
                s, li = self.gather(idx)
                yield s, li, idx
            return
        yield from _prefetched(self, batches)


def release_placements(keep: list[Split]) -> None:
    """Free the placed copies of every split not in ``keep`` (one dataset on the device at a time)."""
    ids = {id(s) for s in keep}
    for key in [k for k, (src, _) in BatchSource._placed.items() if id(src) not in ids]:
        del BatchSource._placed[key]


def _materialise_sub(src: Split, idx: torch.Tensor, keys: list[str], device: torch.device, plan: SpeedPlan) -> Split:
    pin = device.type == "cuda" and plan.non_blocking

    def take(_name: str, t: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(t[idx])
        if pin:
            x = x.pin_memory()
        return x.to(device, non_blocking=plan.non_blocking)

    return _select(src, keys, take)


def _prefetched(source: BatchSource, batches: list[torch.Tensor], depth: int = 3):
    """Gather (and copy to the GPU on a side stream) up to ``depth`` batches ahead on a thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    cuda = source.device.type == "cuda"
    stream = torch.cuda.Stream(source.device) if cuda else None
    done = object()

    def work() -> None:
        try:
            ctx = torch.cuda.stream(stream) if cuda else contextlib.nullcontext()
            with ctx:
                for idx in batches:
                    if stop.is_set():
                        return
                    item = source.gather(idx)
                    ev = None
                    if cuda:
                        ev = torch.cuda.Event()
                        ev.record(stream)
                    while not stop.is_set():
                        try:
                            q.put((item, idx, ev), timeout=0.1)
                            break
                        except queue.Full:
                            continue
            q.put(done)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the training thread
            q.put(exc)

    th = threading.Thread(target=work, name="cmkd-prefetch", daemon=True)
    th.start()
    try:
        while True:
            got = q.get()
            if got is done:
                return
            if isinstance(got, BaseException):
                raise got
            (mini, li), idx, ev = got
            if cuda:
                cur = torch.cuda.current_stream(source.device)
                cur.wait_event(ev)
                for t in [*mini.inputs.values(), mini.labels, *mini.aux.values(), li]:
                    t.record_stream(cur)
            yield mini, li, idx
    finally:
        stop.set()
        th.join(timeout=5)


# --------------------------------------------------------------------------------------------
# teacher outputs

def to_channels_last(x: torch.Tensor, plan: SpeedPlan) -> torch.Tensor:
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
        return no(f"method {method.name!r} does not declare which teacher outputs it reads")
    fields = normalise_fields(set(fields), t_probe)
    if adapter.augments(teacher_modality):
        return no(f"the {teacher_modality} input of {adapter.name} is augmented at every training step")
    need = _field_nbytes(t_probe, set(fields), n_train, plan.amp != "off")
    budget = (0.25 * free_device_bytes(device) / max(plan.runs_per_gpu, 1)) if device.type == "cuda" else CPU_CACHE_BUDGET
    if need > budget:
        return no(f"the cached outputs would take {need / 2**30:.2f} GiB (budget {budget / 2**30:.2f} GiB)")
    return replace(plan, teacher_cache=True, teacher_cache_fields=sorted(fields),
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
            xs, _ = adapter.batch(s, li, [modality], device, True, None)
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

