"""``bench speed``: time the training step of a method on a dataset's real input shapes.

No dataset is needed: the stored arrays of the adapter (its cache layout: uint8 frames, fp16
spectrograms, int16 waveforms...) are filled with random values of the right shapes and dtypes,
and the step is the runner's own (:class:`bench.train.step.Trainer`). Two configurations are timed in
the same process:

* ``on``: the speed features as the runner resolves them for the device (``train.speed=auto``);
* ``off``: everything off, as the reference code trains: fp32, eager, contiguous tensors, the
  teacher recomputed under ``no_grad`` every step, unfused optimizer, and a ``DataLoader`` whose
  workers decode every sample from files (wav -> resample -> STFT and jpg -> PIL ->
  ``RandomResizedCrop``/flip/normalise for the audio-visual sets; per-sample ``.npy`` files and the
  adapter's own transform otherwise).

Timing: a process pays one-off costs on first use (the first optimizer imports ``torch._dynamo``,
seconds on a CPU; the first backward starts autograd's engine; the first kernels initialise oneDNN /
cuBLAS and the thread pools), so :func:`warm_up_process` pays them before the first method, and
each set-up runs ``warmup`` untimed steps of its own (its kernels, allocator, loader workers). Then
``repeats`` blocks of ``steps`` un-instrumented steps are timed: samples/s is the median block's,
with the spread (IQR, min, max) and every block in ``timing``, and the load average beside them
(on a shared machine other processes' work lands in some blocks, not in all).

For each: samples/s, the step split into data / teacher forward /
student forward+backward / optimizer (a second loop that synchronises between phases), peak
memory, model FLOPs counted with ``torch.utils.flop_counter`` (what the step executes: a cached
teacher's forward is not counted), achieved TFLOP/s and MFU against the device's dense bf16 peak.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from bench.api.errors import BenchError
from bench.api.method import MethodContext
from bench.api.compose import method_class
from bench.api.registry import METHODS
from bench.data import DatasetAdapter
from bench.models.registry import BackboneChoice, build_for
from bench.train.acceleration import SpeedPlan, all_off, plan_speed, to_channels_last
from bench.train.placement import choose_placement
from bench.train.speed_inputs import ReferenceFiles, fake_split
from bench.train.step import Trainer, probe_outputs
from bench.train.teacher_outputs import decide_teacher_cache

# Dense (no sparsity) peak tensor throughput in TFLOP/s for bf16/fp16, from the vendors' data sheets.
PEAK_TFLOPS = [
    ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("GH200", 989.4),
    ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0), ("A10", 125.0), ("V100", 125.0), ("RTX 4090", 165.2),
    ("RTX 3090", 71.0), ("T4", 65.0),
]


# Official split sizes (datasets.md) used by the grid estimate: train / val / test samples.
REFERENCE_SIZES = {
    "crema": (6698, 0, 744), "ave": (3339, 402, 402), "vggsound": (25835, 0, 2500),
    "crisismmd": (9601, 1573, 1534), "nyudv2": (795, 0, 654), "avdigits": (2400, 0, 600),
}


def device_peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forever(epoch: Callable[[], Any]):
    """Batches without end: ``epoch()`` is one pass (a DataLoader or an epoch of the batch source)."""
    while True:
        yield from epoch()


class _Mode:
    """One configuration's models, engine and batch supplier."""

    def __init__(self, name: str, adapter: DatasetAdapter, method_name: str, t_mod: str, s_mod: str, train: Any,
                 device: torch.device, plan: SpeedPlan, n: int, workers: int, tmp: Path, seed: int,
                 backbones: dict[str, BackboneChoice]):
        self.name, self.device = name, device
        torch.manual_seed(seed)
        mcls = method_class(method_name, METHODS)  # a composition too (bench speed --methods dkd+rkd)
        params = mcls.Params()
        split = fake_split(adapter, n, seed)
        student = build_for(adapter, backbones["student"], s_mod, split, device)
        teacher = build_for(adapter, backbones["teacher"], t_mod, split, device) if mcls.uses_teacher else None
        ctx = MethodContext(adapter.num_classes, 100, adapter.task, t_mod if teacher is not None else None, s_mod,
                            device, adapter.ignore_index)
        method = mcls(params, ctx)
        s_probe, t_probe = probe_outputs(adapter, split, student, teacher, s_mod, t_mod, device)
        method.setup(student, teacher, s_probe, t_probe)
        method.modules.to(device)
        if teacher is not None:
            plan = decide_teacher_cache(plan, method, adapter, t_mod, t_probe, n, device)
        keys = [s_mod] + ([t_mod] if teacher is not None else [])
        plan = choose_placement(plan, train, {"train": split}, keys, device)
        t0 = time.perf_counter()
        self.engine = Trainer(adapter=adapter, train_split=split, student=student, student_modality=s_mod,
                              method=method, teacher=teacher, teacher_modality=t_mod, train=train, device=device,
                              plan=plan)
        _sync(device)
        self.cache_build_s = time.perf_counter() - t0 if self.engine.tcache is not None else 0.0
        self.plan = self.engine.plan
        self.student, self.teacher, self.method = student, teacher, method
        student.train()
        method.modules.train()
        if teacher is not None:
            teacher.train(method.teacher_train_mode or method.teacher_trainable)
        self.loader = None
        if name == "off":
            files = ReferenceFiles(adapter, tmp / "files", n, keys, seed)
            self.loader = torch.utils.data.DataLoader(
                files, batch_size=train.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                pin_memory=device.type == "cuda", persistent_workers=workers > 0)
            self._it = _forever(lambda: self.loader)
        else:
            gen = torch.Generator().manual_seed(seed)
            self._it = _forever(lambda: self.engine.src.iterate(self.engine.batches(gen)))
        self.gen = torch.Generator().manual_seed(seed + 1)

    def close(self) -> None:
        """Stop the DataLoader workers now, in this process (a later mode's forked workers must not
        inherit a live iterator whose finaliser then runs in the wrong process)."""
        if self.loader is None:
            return
        self._it.close()
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader = None

    def next_inputs(self):
        if self.loader is not None:
            xs, y = next(self._it)
            xb = {k: v.to(self.device) for k, v in xs.items()}
            return xb, y.to(self.device), torch.arange(len(y))  # the teacher is never cached here
        s_like, li, idx = next(self._it)
        return self.engine.inputs(s_like, li, idx, self.gen)

    def step(self, timed: Callable[[str], None] | None = None) -> None:
        e = self.engine
        xb, y, t_idx = self.next_inputs()
        if timed:
            timed("data")
        t_out = e.teacher_out(xb, t_idx)
        if timed:
            timed("teacher_forward")
        e.student_step(xb, t_out, y, 1)
        if timed:
            timed("student_forward_backward")
        e.optimizer_step()
        if timed:
            timed("optimizer")

    def count_flops(self) -> int:
        """FLOPs one step executes (eager modules; the cached teacher's forward is not executed)."""
        from torch.utils.flop_counter import FlopCounterMode

        e = self.engine
        xb, y, t_idx = self.next_inputs()
        with e.eager(), FlopCounterMode(display=False) as fc:
            e.student_step(xb, e.teacher_out(xb, t_idx), y, 1)
        e.opt.zero_grad(set_to_none=True)
        return int(fc.get_total_flops())


_WARM: set[str] = set()


def warm_up_process(device: torch.device) -> float | None:
    """Pay the process's first-use costs on ``device`` before anything is timed (once per process
    and device; seconds spent, or None when already warm): a small conv net trained for a few steps
    with SGD imports ``torch._dynamo`` (the optimizer's first use), starts autograd's engine and the
    intra-op pool, and initialises oneDNN / cuBLAS. Measured on the 2-core CPU: 4.6 s for the
    import, ~90 ms for the first backward, against 6-15 ms for a ``synthetic`` step."""
    key = str(device)
    if key in _WARM:
        return None
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32, generator=g).to(device), torch.randint(0, 4, (8,), generator=g).to(device)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    _sync(device)
    _WARM.add(key)
    return time.perf_counter() - t0


def _spread(step_s: list[float], batch: int) -> dict[str, Any]:
    """Median and spread of the per-step times of the timed blocks (ms), with samples/s of the median."""
    ms = [1000 * v for v in step_s]
    med = statistics.median(ms)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else (med, med, med)
    return {"median_step_ms": med, "iqr_step_ms": q3 - q1, "min_step_ms": min(ms), "max_step_ms": max(ms),
            "samples_per_s_median": 1000 * batch / med,
            "samples_per_s_range": [1000 * batch / max(ms), 1000 * batch / min(ms)], "repeat_step_ms": ms}


def _measure(mode: Any, steps: int, warmup: int, batch: int, peak: float | None, repeats: int = 1) -> dict[str, Any]:
    """Warm-up steps (each timed alone, kept apart), then ``repeats`` timed blocks of ``steps`` steps,
    then an instrumented pass for the phase breakdown and the FLOP count (never in the timed blocks)."""
    dev = mode.device
    warm_ms = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        mode.step()
        _sync(dev)
        warm_ms.append(1000 * (time.perf_counter() - t0))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    per_step = []
    for _ in range(max(repeats, 1)):
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(steps):
            mode.step()
        _sync(dev)
        per_step.append((time.perf_counter() - t0) / steps)
    timing = {"repeats": len(per_step), "steps_per_repeat": steps, **_spread(per_step, batch),
              "warmup_step_ms": warm_ms, "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    phases = {"data": 0.0, "teacher_forward": 0.0, "student_forward_backward": 0.0, "optimizer": 0.0}
    clock = [0.0]

    def timed(name: str) -> None:
        _sync(dev)
        now = time.perf_counter()
        phases[name] += now - clock[0]
        clock[0] = now

    for _ in range(steps):
        _sync(dev)
        clock[0] = time.perf_counter()
        mode.step(timed)
    flops = mode.count_flops()
    step_s = timing["median_step_ms"] / 1000
    tflops = flops / step_s / 1e12
    total_ph = sum(phases.values())
    out = {
        "samples_per_s": timing["samples_per_s_median"],
        "step_ms": timing["median_step_ms"],
        "timing": timing,
        "breakdown_ms": {k: 1000 * v / steps for k, v in phases.items()},
        "breakdown_pct": {k: 100 * v / total_ph for k, v in phases.items()} if total_ph else {},
        "flops_per_step": flops,
        "tflops": tflops,
        "mfu": (tflops / peak) if peak else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(dev) / 2**30) if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if dev.type == "cuda" else "process peak RSS (whole run)",
        "teacher_cache_build_s": mode.cache_build_s,
        "settings": mode.plan.report(),
    }
    return out


def _eval_throughput(mode: _Mode, steps: int, batch: int) -> float:
    """Forward-only samples/s of the student (evaluation epochs)."""
    e = mode.engine
    mode.student.eval()
    xb, _, _ = mode.next_inputs()
    x = to_channels_last(xb[e.s_mod], e.plan)
    with torch.inference_mode(), e.plan.autocast(mode.device):
        e.student_fwd(x)
        _sync(mode.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            e.student_fwd(x)
        _sync(mode.device)
    mode.student.train()
    return batch * steps / (time.perf_counter() - t0)


def benchmark(adapter: DatasetAdapter, method: str, teacher_modality: str, student_modality: str, train: Any,
              device: torch.device, *, steps: int, warmup: int, modes: tuple[str, ...] = ("on", "off"),
              workers: int | None = None, peak_tflops: float | None = None, seed: int = 0,
              backbones: dict[str, BackboneChoice] | None = None, repeats: int = 1) -> dict[str, Any]:
    """One (method, direction) timed in each mode; ``backbones``: the two networks (default: the dataset's)."""
    batch = train.batch_size
    backbones = backbones or {role: BackboneChoice(role, "default") for role in ("teacher", "student")}
    n = max(batch * 4, 64)
    if workers is None:
        workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    peak = device_peak_tflops(device, peak_tflops)
    out: dict[str, Any] = {
        "device": device_label(device), "device_type": device.type, "torch": torch.__version__,
        "dataset": adapter.name, "method": method, "direction": adapter.direction_name(teacher_modality, student_modality),
        "batch_size": batch, "steps": steps, "warmup": warmup, "repeats": repeats, "loader_workers": workers,
        "input_shapes": {m.name: list(m.shape) for m in adapter.modalities},
        "peak_tflops": peak, "peak_basis": "dense bf16/fp16 tensor-core peak of the device" if peak else None,
        "backbones": {role: c.describe() for role, c in backbones.items()},
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="cmkd-speed-") as tmp:
        for name in modes:
            t = replace(train, speed="auto" if name == "on" else "off")
            plan = plan_speed(t, device) if name == "on" else all_off()
            mode = _Mode(name, adapter, method, teacher_modality, student_modality, t, device, plan, n, workers,
                         Path(tmp) / name, seed, backbones)
            res = _measure(mode, steps, warmup, batch, peak, repeats)
            res["data_pipeline"] = (
                f"DataLoader, {workers} worker(s), decoding every sample from files" if name == "off" else
                f"{mode.plan.data_placement}{' + prefetch thread' if mode.plan.prefetch else ''}, augmentation on {device.type}")
            res["eval_samples_per_s"] = _eval_throughput(mode, max(steps // 2, 2), batch)
            out["modes"][name] = res
            mode.close()
            del mode
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if "on" in out["modes"] and "off" in out["modes"]:
        out["speedup"] = out["modes"]["on"]["samples_per_s"] / out["modes"]["off"]["samples_per_s"]
    return out


def official_sizes(dataset: str, val_fraction: float = 0.1) -> tuple[int, int, int] | None:
    """(train, val, test) samples of the official split, with the runner's validation carve-out
    from train where the dataset has no validation split."""
    sizes = REFERENCE_SIZES.get(dataset)
    if sizes is None:
        return None
    tr, va, te = sizes
    if va == 0:
        va = int(round(val_fraction * tr))
        tr -= va
    return tr, va, te


def epoch_seconds(res: dict[str, Any], dataset: str, val_fraction: float = 0.1) -> float | None:
    """One epoch (train + validation/test evaluation) of the dataset's official sizes at the
    measured throughput."""
    sizes = official_sizes(dataset, val_fraction)
    if sizes is None:
        return None
    tr, va, te = sizes
    return tr / res["samples_per_s"] + (va + te) / res["eval_samples_per_s"]


def grid_estimate(results: list[dict[str, Any]], dataset: str, modes: tuple[str, ...], epochs: int, teacher_epochs: int,
                  seeds: int, val_fraction: float, batch_size: int) -> dict[str, dict[str, Any]]:
    """Device-hours of the measured (method, direction) cells at the official split sizes, run one
    after another; teachers from the unimodal ('none') timings of each modality when measured."""
    sizes = official_sizes(dataset, val_fraction)
    if sizes is None or not results:
        return {}
    tr = sizes[0]
    # the teacher of direction t2s is the unimodal model of t: the 'none' run whose student is t, or the
    # chosen teacher network's own timing (role "teacher")
    own = [r for r in results if r.get("role") == "teacher"]
    results = [r for r in results if r.get("role") != "teacher"]
    nones = {r["direction"]: r for r in own} or {r["direction"]: r for r in results if r["method"] == "none"}
    out: dict[str, dict[str, Any]] = {}
    for name in modes:
        secs = [epoch_seconds(r["modes"][name], dataset, val_fraction) for r in results]
        student_h = sum(secs) * epochs * seeds / 3600  # type: ignore[arg-type]
        teacher_h = None if teacher_epochs else 0.0  # 0 epochs: a given teacher, used as it is
        if nones and teacher_epochs:
            teacher_h = sum(epoch_seconds(r["modes"][name], dataset, val_fraction) for r in nones.values()) \
                * teacher_epochs * seeds / 3600  # type: ignore[operator]
        steps = tr // batch_size
        pflop = sum(r["modes"][name]["flops_per_step"] for r in results) * steps * epochs * seeds / 1e15
        out[name] = {"student_runs_hours": student_h, "teacher_hours": teacher_h, "runs": len(results) * seeds,
                     "epochs": epochs, "train_pflop": pflop, "train_samples": tr}
    return out


def teacher_train_epochs(train: Any) -> int:
    """Teacher epochs a run trains: none for a given teacher used as it is, its fine-tuning otherwise."""
    return train.teacher_finetune_epochs if train.teacher_checkpoint else train.teacher_epochs


def run_speed(methods: str, dataset: str, directions: str, *, batch_size: int | None, steps: int | None,
              warmup: int | None, modes: str, workers: int | None, epochs: int | None, seeds: int,
              peak_tflops: float | None, overrides: dict[str, dict[str, str]], device: str,
              on_start: Callable[[str], None] | None = None, repeats: int | None = None) -> dict[str, Any]:
    """``bench speed``: every (direction, method) timed on the dataset's shapes, and the grid's
    device-hours at the official split sizes. Returns the figures (also what goes to JSON)."""
    from dataclasses import replace as dc_replace

    from bench.api.registry import METHODS, select_methods
    from bench.launch.grid import split_list
    from bench.train.device import resolve_device
    from bench.train.resolve import build_adapter, build_train_config, resolve_backbone

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    adapter = build_adapter(dataset, overrides)
    train = build_train_config(adapter, overrides)
    train = dc_replace(train, batch_size=batch_size or (train.batch_size if cuda else 8))
    mnames = select_methods(methods)
    dirs = (adapter.directions() if directions.strip().lower() == "all"
            else [adapter.parse_direction(x) for x in split_list(directions)])
    mode_list = tuple(split_list(modes))
    if not mode_list or any(m not in ("on", "off") for m in mode_list):
        raise BenchError(f"--modes {modes!r}: expected on, off or on,off")
    steps = steps or (30 if cuda else 3)
    warmup = warmup if warmup is not None else (10 if cuda else 1)
    repeats = repeats or (5 if cuda else 3)
    if steps < 1 or warmup < 0 or repeats < 1:
        raise BenchError(f"--steps {steps} / --warmup {warmup} / --repeats {repeats}: expected >= 1 / >= 0 / >= 1")
    results, timed_teachers = [], set()
    kw = dict(steps=steps, warmup=warmup, modes=mode_list, workers=workers, peak_tflops=peak_tflops, repeats=repeats)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    process_warmup_s = warm_up_process(dev)  # first-use costs paid before the first method, not inside it
    for t_mod, s_mod in dirs:
        bb = {role: resolve_backbone(adapter, role, mod, getattr(train, f"{role}_backbone"), overrides.get(role, {}))
              for role, mod in (("teacher", t_mod), ("student", s_mod))}
        for m in mnames:
            if adapter.task != "classification" and not method_class(m, METHODS).dense_ok:
                continue
            if on_start is not None:
                on_start(f"timing {m} {adapter.direction_name(t_mod, s_mod)} on {adapter.name} shapes ...")
            results.append(benchmark(adapter, m, t_mod, s_mod, train, dev, backbones=bb, **kw))  # type: ignore[arg-type]
        if not (bb["teacher"].default and bb["student"].default) and t_mod not in timed_teachers \
                and teacher_train_epochs(train):  # the chosen teacher's own training step, for the estimate
            timed_teachers.add(t_mod)
            row = benchmark(adapter, "none", s_mod, t_mod, train, dev, **kw,  # type: ignore[arg-type]
                            backbones={"teacher": bb["student"], "student": bb["teacher"]})
            results.append(dict(row, role="teacher", method="teacher"))
    estimate = grid_estimate(results, adapter.name, mode_list, epochs or train.epochs, teacher_train_epochs(train), seeds,
                             train.val_fraction, train.batch_size)
    from bench.records.provenance import runtime_environment

    return {"results": results, "grid_estimate": estimate, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "title": f"bench speed: {adapter.name} shapes, batch {train.batch_size}, "
                     f"{results[0]['device'] if results else dev}",
            "unit": "GPU" if cuda else "CPU", "dataset": adapter.name, "environment": runtime_environment(),
            "process_warmup_s": process_warmup_s,
            "load_average": {"before": load_before, "after": os.getloadavg() if load_before else None,
                             "cores": os.cpu_count()}}
