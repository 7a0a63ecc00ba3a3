"""Where a run's arrays live and how batches reach the training device.

``device``: every split copied to the training device once, batches gathered (and augmented)
there; ``pinned``: host RAM, batches gathered and sent by a prefetch thread; ``stream``: gathered
from the memory-mapped cache (prefetched unless speed is off). Before training, the run estimates
what each placement holds and fails with the numbers when the chosen one cannot fit.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
import queue
import threading
from dataclasses import replace
from typing import Any, Iterator

import torch

from bench.api.errors import BenchError
from bench.data import Split
from bench.train.acceleration import SpeedPlan

PREFETCH_DEPTH = 3
"""Batches gathered ahead of the training thread (stream and pinned placement)."""


PLACE_CHUNK = 256 * 2**20
"""Bytes copied at a time when a split is placed (the only transient host buffer)."""


def _nbytes(t: Any) -> int:
    return int(t.numel() * t.element_size())


def split_nbytes(split: Split, keys: list[str] | None = None) -> int:
    n = sum(_nbytes(v) for k, v in split.inputs.items() if keys is None or k in keys)
    n += sum(_nbytes(v) for v in split.aux.values())
    return n + _nbytes(split.labels)


def host_available_bytes() -> int:
    """Host RAM a process may still take: ``MemAvailable`` (free + reclaimable page cache), capped
    by the cgroup's limit (a SLURM job or container) less what the cgroup already uses."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
            avail = 8 * 2**30
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        try:
            limit = Path(limit_f).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                avail = min(avail, max(int(limit) - int(Path(usage_f).read_text().strip()), 0))
            break
        except (OSError, ValueError):
            continue
    return avail


def free_device_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return host_available_bytes()


def fmt_bytes(n: float) -> str:
    """``1.50 GiB`` or ``12.3 MiB``."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _split_sizes(splits: dict[str, Split], keys: list[str]) -> dict[str, tuple[int, int, int]]:
    """Per split: (samples, bytes a run reads, bytes of it always in RAM: class ids, side arrays).
    Training reads every modality in ``keys`` of train, evaluation only ``keys[0]`` elsewhere."""
    out = {}
    for name, sp in splits.items():
        in_ram = sum(_nbytes(v) for v in sp.aux.values()) + (_nbytes(sp.labels) if sp.labels.dim() == 1 else 0)
        out[name] = (len(sp), split_nbytes(sp, keys if name == "train" else keys[:1]), in_ram)
    return out


def manifest_sizes(manifest: dict[str, Any], keys: list[str],
                   label_key: str = "label") -> dict[str, tuple[int, int, int]]:
    """:func:`_split_sizes` from a cache manifest (array shapes and dtypes), without opening it."""
    import numpy as np

    out = {}
    for name, s in manifest["splits"].items():
        use = keys if name == "train" else keys[:1]
        data = in_ram = 0
        for key, a in s["arrays"].items():
            b = s["n"] * int(np.prod(a["shape"], dtype=np.int64)) * np.dtype(a["dtype"]).itemsize
            if key == label_key and not a["shape"]:
                b = s["n"] * 8  # class ids are loaded as int64
            if "." in key or key == label_key:
                data += b
                in_ram += b if ("." in key or not a["shape"]) else 0
            elif key in use:
                data += b
        out[name] = (s["n"], data, in_ram)
    return out


def placement_needs(sizes: dict[str, tuple[int, int, int]], batch_size: int, eval_batch_size: int, cuda: bool,
                    teacher_cache_bytes: int = 0, already_placed: int = 0) -> dict[str, dict[str, int]]:
    """Bytes of host RAM, device memory and page cache a run holds under each placement.

    ``device`` (GPU) and ``pinned`` hold a copy of the arrays the run reads; ``stream``, and
    ``device`` on a CPU, hold only the batches in flight (the prefetch queue and the one in use,
    in RAM on a CPU and on the GPU otherwise) while the memory-mapped arrays stay page cache
    (reclaimable, but what does not fit is re-read from disk every epoch). Class ids and side
    arrays are always in RAM; the teacher-output cache lives on the device (on a CPU: in RAM).
    """
    total = sum(d for _n, d, _r in sizes.values())
    in_ram = sum(r for _n, _d, r in sizes.values())
    copy = max(total - already_placed, 0)
    mapped = max(total - in_ram, 0)
    # the largest batch: a training batch, or an evaluation batch of any split
    one = max([-(-d // n) * min(batch_size if name == "train" else eval_batch_size, n)
               for name, (n, d, _r) in sizes.items() if n] or [0])
    queued = (PREFETCH_DEPTH + 1) * one  # the prefetch queue and the batch in use
    t = teacher_cache_bytes
    if cuda:  # the queue is on the GPU; the host holds the batch being gathered and its pinned copy
        return {"device": {"host_bytes": in_ram + min(PLACE_CHUNK, copy), "device_bytes": copy + t,
                           "page_cache_bytes": 0},
                "pinned": {"host_bytes": in_ram + copy + 2 * one, "device_bytes": t + queued, "page_cache_bytes": 0},
                "stream": {"host_bytes": in_ram + 2 * one, "device_bytes": t + queued, "page_cache_bytes": mapped}}
    # on a CPU, device placement gathers batches straight from the arrays (nothing is copied)
    return {"device": {"host_bytes": in_ram + t + one, "device_bytes": 0, "page_cache_bytes": mapped},
            "pinned": {"host_bytes": in_ram + t + copy + queued, "device_bytes": 0, "page_cache_bytes": 0},
            "stream": {"host_bytes": in_ram + t + queued, "device_bytes": 0, "page_cache_bytes": mapped}}


def memory_estimate(plan: SpeedPlan, train: Any, splits: dict[str, Split], keys: list[str],
                    device: torch.device, dataset: str = "") -> dict[str, Any]:
    """:func:`placement_needs` of this run (``keys[0]`` trained, the rest the teacher's), with the
    memory available to it: host RAM and free device memory, divided among the runs packed on
    one GPU. Arrays this process already placed on ``device`` (an earlier run of the grid) need
    no new memory."""
    cuda = device.type == "cuda"
    rank = {"train": 0, "val": 1, "test": 2}
    order = sorted(splits, key=lambda k: rank.get(k, 3))
    sizes = _split_sizes({k: splits[k] for k in order}, keys)
    ids = {id(s) for s in splits.values()}
    placed = sum(_nbytes(t) for (sid, _k, dev, _p), (_s, t) in BatchSource._placed.items()
                 if sid in ids and dev == str(device))
    per = placement_needs(sizes, train.batch_size, train.eval_batch_size, cuda,
                          plan.teacher_cache_bytes if plan.teacher_cache else 0, placed)
    share = max(plan.runs_per_gpu, 1)
    return {"dataset": dataset, "device": str(device), "arrays_bytes": {k: d for k, (_n, d, _r) in sizes.items()},
            "already_placed_bytes": placed, "host_available_bytes": host_available_bytes() // share,
            "device_available_bytes": free_device_bytes(device) // share if cuda else None,
            "runs_sharing": share, "per_placement": per}


def _fits(est: dict[str, Any], placement: str, frac_dev: float = 1.0, frac_host: float = 1.0,
          frac_cache: float | None = None) -> bool:
    need = est["per_placement"][placement]
    ok = need["host_bytes"] <= frac_host * est["host_available_bytes"]
    if frac_cache is not None:  # the mapped arrays should stay in the page cache, too
        ok = ok and need["host_bytes"] + need["page_cache_bytes"] <= frac_cache * est["host_available_bytes"]
    if est["device_available_bytes"] is not None:
        ok = ok and need["device_bytes"] <= frac_dev * est["device_available_bytes"]
    return ok


def _too_big(est: dict[str, Any], placement: str, why: str) -> BenchError:
    need = est["per_placement"][placement]
    short = []
    if need["host_bytes"] > est["host_available_bytes"] or est["device_available_bytes"] is None:
        short.append(f"{fmt_bytes(need['host_bytes'])} of host RAM with "
                     f"{fmt_bytes(est['host_available_bytes'])} available")
    if est["device_available_bytes"] is not None and need["device_bytes"] > est["device_available_bytes"]:
        short.append(f"{fmt_bytes(need['device_bytes'])} of {est['device']} memory with "
                     f"{fmt_bytes(est['device_available_bytes'])} free")
    per_run = f" (per run: {est['runs_sharing']} runs share the memory)" if est["runs_sharing"] > 1 else ""
    others = [p for p in ("stream", "pinned", "device") if p != placement and _fits(est, p)]
    if others:
        alt = est["per_placement"][others[0]]
        hint = (f"use --set train.data_placement={others[0]} (holds {fmt_bytes(alt['host_bytes'])} of host RAM"
                + (", the arrays stay memory-mapped)" if alt["page_cache_bytes"] else ")"))
    else:
        hint = "free memory, run fewer runs at once, or prepare smaller arrays (e.g. a smaller frame_cache)"
    arrays = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in est["arrays_bytes"].items())
    return BenchError(f"{est['dataset'] or 'dataset'}: train.data_placement={placement}{why} needs "
                      f"{' and '.join(short)}{per_run} (arrays read: {arrays}); {hint}")


def choose_placement(plan: SpeedPlan, train: Any, splits: dict[str, Split], keys: list[str],
                     device: torch.device) -> SpeedPlan:
    """Resolve ``auto`` placement and check that the chosen one fits, before anything is copied.

    ``auto``: on the device when the arrays fit in 40 % of its free memory (divided among the runs
    packed on the GPU; on a CPU: 40 % of available RAM, as page cache), else pinned host RAM when
    that fits in 50 % of available RAM, else streaming from the memory-mapped cache when the
    batches in flight fit. An explicit placement that cannot fit, or ``auto`` with none left,
    raises :class:`BenchError` naming the dataset, the bytes needed and available, and the way out.
    The estimate is recorded in the plan (``memory``; the record's ``speed.memory``).
    """
    name = next((str(s.meta["dataset"]) for s in splits.values() if s.meta.get("dataset")), "")
    est = memory_estimate(plan, train, splits, keys, device, name)
    placement = plan.data_placement
    if train.speed != "off" and train.data_placement == "auto":
        if _fits(est, "device", frac_dev=0.4, frac_host=0.5, frac_cache=None if device.type == "cuda" else 0.4):
            plan = replace(plan, data_placement="device", prefetch=False)
        elif device.type == "cuda" and _fits(est, "pinned", frac_host=0.5):
            plan = replace(plan, data_placement="pinned", prefetch=True)
        elif _fits(est, "stream"):
            plan = replace(plan, data_placement="stream", prefetch=True)
        else:
            raise _too_big(est, "stream", " (auto: no placement fits)")
        placement = plan.data_placement
    elif not _fits(est, placement):
        raise _too_big(est, placement, "")
    need = est["per_placement"][placement]
    return replace(plan, memory={**est, "placement": placement, **need})


def _select(split: Split, keys: list[str], fn) -> Split:
    """A split of ``fn(name, array)`` for the modalities in ``keys``, their side arrays and the labels."""
    return Split({k: fn(k, v) for k, v in split.inputs.items() if k in keys}, fn("<labels>", split.labels),
                 dict(split.meta), {k: fn(k, v) for k, v in split.aux.items() if k.split(".")[0] in keys})


def _move(t: Any, device: torch.device | None, pin: bool) -> Any:
    """``t`` (a tensor, possibly memory-mapped, or a lazy row view of one) copied to ``device``, or
    into host RAM (pinned when ``pin``) when ``device`` is None, a chunk at a time: the result is
    the only full-size allocation (no clone before pinning, no gathered copy before the upload).
    On a CPU, device placement is the array itself: memory-mapped pages are host memory already."""
    if device is not None and device.type == "cpu":
        return t
    out = torch.empty(tuple(t.shape), dtype=t.dtype, device=device or "cpu", pin_memory=pin and device is None)
    if t.dim() == 0:
        return out.copy_(t)
    n = int(t.shape[0])
    step = max(1, PLACE_CHUNK // max(_nbytes(t) // max(n, 1), 1))
    for i in range(0, n, step):
        out[i:i + step].copy_(torch.as_tensor(t[i:i + step]))
    return out


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
        from bench.data.tsets import expand

        keys = expand(list(keys))  # a teacher set's entry is its member modalities' arrays
        self.split, self.keys, self.device, self.plan = split, keys, device, plan
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


def _prefetched(source: BatchSource, batches: list[torch.Tensor], depth: int = PREFETCH_DEPTH):
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
