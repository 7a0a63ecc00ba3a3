"""Grid expansion and executors.

``expand_grid`` turns the CLI's method/dataset/direction/seed lists into :class:`RunSpec`s and
validates every name before anything runs. The local executor runs them in-process, one after
the other: teachers are trained on first use and shared through the checkpoint cache, finished
runs are skipped, and a failing run is recorded as failed without stopping the grid (unless
``fail_fast``).
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from .errors import BenchError
from .registry import DATASETS, METHODS
from .runner import Reporter, RunSpec, build_adapter, is_dataset_folder, load_plugins, resolve, run, send_note
from .results import existing_ok


def split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def expand_grid(
    methods: str, datasets: str, directions: str = "all", seeds: str = "0", *,
    overrides: dict[str, dict[str, str]] | None = None, results_dir: str = "results", device: str = "auto",
    save_model: bool = False, plugins: list[str] | None = None,
) -> list[RunSpec]:
    overrides = overrides or {}
    plugins = plugins or []
    load_plugins(plugins)
    mnames = METHODS.names() if methods.strip().lower() == "all" else split_list(methods)
    if not mnames:
        raise BenchError("--methods is empty; give 'all' or a comma-separated list")
    for m in mnames:
        METHODS.entry(m)  # validates the name
    dnames = split_list(datasets)
    if not dnames:
        raise BenchError("--datasets is empty; valid datasets: " + ", ".join(DATASETS.names()))
    try:
        seed_list = [int(s) for s in split_list(seeds)]
    except ValueError:
        raise BenchError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seed_list:
        raise BenchError("--seeds is empty")
    if any(sd < 0 for sd in seed_list):
        raise BenchError(f"--seeds {seeds!r}: seeds must be >= 0")
    if directions.strip().lower() != "all" and not split_list(directions):
        raise BenchError("--directions is empty; give 'all' or e.g. a2v,v2a")
    from .utils import resolve_device

    resolve_device(device)  # a bad --device fails here, before any run, with the valid choices
    specs: list[RunSpec] = []
    for d in dnames:
        adapter = build_adapter(d, overrides)
        if directions.strip().lower() == "all":
            dirs = adapter.directions()
        else:
            dirs = [adapter.parse_direction(x) for x in split_list(directions)]
        for t, s in dirs:
            for m in mnames:
                for seed in seed_list:
                    ds = str(Path(d).expanduser().resolve()) if is_dataset_folder(d) else adapter.name
                    specs.append(RunSpec(ds, t, s, m.lower(), seed, overrides, results_dir, device,
                                         save_model, plugins))
    for spec in specs:  # validate overrides / method-dataset compatibility up front
        resolve(spec)
    return specs


@dataclass
class GridOutcome:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    def add(self, rec: dict[str, Any]) -> None:
        (self.failed if rec.get("status") == "failed" else self.skipped if rec.get("skipped") else self.done).append(rec)


def attempt(spec: RunSpec, reporter: Reporter | None, force: bool) -> tuple[dict[str, Any], Exception | None]:
    """Run one spec and return its record. A run that raised comes back as its ``failed`` record
    (the one :func:`run` attached to the exception: it is what happened even when the disk refused
    to store it) with the exception. Configuration errors (BenchError) and Ctrl-C propagate."""
    try:
        return run(spec, reporter, force=force), None
    except (KeyboardInterrupt, BenchError):
        raise
    except Exception as exc:  # noqa: BLE001 - recorded by run()
        rec = getattr(exc, "cmkd_record", None)
        if rec is None:  # raised before the run started training (e.g. the results folder itself)
            rec = {"run_id": resolve(spec).run_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        return rec, exc


def pending(specs: list[RunSpec], force: bool = False) -> list[RunSpec]:
    """Specs without an ok record (all of them when ``force``)."""
    if force:
        return list(specs)
    return [s for s in specs if not existing_ok(s.results_dir, resolve(s).run_id)]


class LocalExecutor:
    """Run specs in this process, in order."""

    def __init__(self, reporter: Reporter | None = None, fail_fast: bool = False):
        self.reporter = reporter
        self.fail_fast = fail_fast

    def run(self, specs: list[RunSpec], force: bool = False) -> GridOutcome:
        out = GridOutcome()
        for spec in specs:
            rec, exc = attempt(spec, self.reporter, force)
            out.add(rec)
            if exc is not None and self.fail_fast:
                raise exc
        return out



def sweep_overrides(base: dict[str, dict[str, str]], sweeps: list[str]) -> list[dict[str, dict[str, str]]]:
    """``--sweep SCOPE.KEY=v1,v2`` (repeatable) -> one override dict per point of the cartesian grid.

    The comparison/ablation/threshold/sensitivity studies are grids of this kind; every point is
    an ordinary run with its own config hash, so finished points are skipped on a rerun.
    """
    import itertools

    axes = []
    for item in sweeps:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise BenchError(f"--sweep {item!r}: expected SCOPE.KEY=v1,v2,... (e.g. fdcmkd.ratio=0.25,0.5,0.75)")
        key, vals = item.split("=", 1)
        scope, k = key.split(".", 1)
        values = [v.strip() for v in vals.split(",") if v.strip()]
        if not values:
            raise BenchError(f"--sweep {item!r}: no values")
        axes.append([(scope.strip(), k.strip(), v) for v in values])
    out = []
    for point in itertools.product(*axes) if axes else [()]:
        o = {s: dict(v) for s, v in base.items()}
        for scope, k, v in point:
            o.setdefault(scope, {})[k] = v
        out.append(o)
    return out


# --------------------------------------------------------------------------------------------
# packing: several runs share one GPU

class QueueReporter:
    """Forwards a worker's progress events to the parent process."""

    def __init__(self, q):
        self.q = q

    def begin(self, run_id: str, total_epochs: int) -> None:
        self.q.put(("begin", run_id, total_epochs))

    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None:
        self.q.put(("epoch", run_id, phase, epoch, {k: info.get(k) for k in ("test_metric", "val_metric")}))

    def end(self, run_id: str, record: dict[str, Any]) -> None:
        keep = ("status", "metric", "best_metric", "selected_epoch", "final_metric", "wall_time_s", "error")
        self.q.put(("end", run_id, {k: record.get(k) for k in keep}))

    def note(self, run_id: str, message: str) -> None:
        self.q.put(("note", run_id, message))


_WORKER: dict[str, Any] = {}


def _init_worker(q, counter, gpus: list[str], threads: int) -> None:
    """Runs once per worker process: its GPU (round-robin over the visible ones) and CPU threads."""
    import os

    import torch

    with counter.get_lock():
        w = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[w % len(gpus)]  # before CUDA is initialised here
    torch.set_num_threads(max(threads, 1))
    _WORKER["q"] = q
    from .runner import stop_on_sigterm

    stop_on_sigterm()  # a SIGTERM to the group (scancel, kill) stops each worker's run at an epoch boundary


def _worker_run(spec: RunSpec, force: bool) -> dict[str, Any]:
    rep = QueueReporter(_WORKER["q"]) if _WORKER.get("q") is not None else None
    try:
        return attempt(spec, rep, force)[0]
    except BenchError as exc:  # sent back as data: the parent raises it
        return {"status": "error", "error": str(exc), "run_id": None}


def visible_gpus() -> list[str]:
    import os

    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        return [g.strip() for g in env.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _cancel(futures) -> None:
    for f in futures:
        f.cancel()


class PackedExecutor:
    """Run specs ``runs_per_gpu`` at a time on every visible GPU (or on the CPU), one process per
    run slot. Runs that need the same teacher wait for one another on the teacher cache's file lock
    instead of training it twice; memory budgets of each run are divided by ``runs_per_gpu``."""

    def __init__(self, runs_per_gpu: int, reporter: Reporter | None = None, fail_fast: bool = False):
        if runs_per_gpu < 1:
            raise BenchError("--runs-per-gpu must be >= 1")
        self.k = runs_per_gpu
        self.reporter = reporter
        self.fail_fast = fail_fast

    def run(self, specs: list[RunSpec], force: bool = False) -> GridOutcome:
        import dataclasses
        import multiprocessing as mp
        import os
        import queue as queue_mod
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        out = GridOutcome()
        if not specs:
            return out
        uses_gpu = any(s.device in ("auto", "cuda") or s.device.startswith("cuda") for s in specs)
        gpus = visible_gpus() if uses_gpu else []
        explicit = sorted({s.device.split(":", 1)[1] for s in specs if s.device.startswith("cuda:")})
        if gpus and explicit:  # --device cuda:N: pack on those GPUs only
            try:
                gpus = [gpus[int(i)] for i in explicit]
            except (ValueError, IndexError):
                raise BenchError(f"--device {', '.join('cuda:' + i for i in explicit)}: only {len(gpus)} GPU(s) visible") from None
        slots = self.k * max(len(gpus), 1)
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, ncpu // slots)  # the CPUs this process may use (a SLURM task's allocation)
        ctx = mp.get_context("spawn")
        q = ctx.Manager().Queue()
        counter = ctx.Value("i", 0)
        specs = [dataclasses.replace(s, runs_per_gpu=self.k,
                                     device="cuda" if (gpus and s.device.startswith("cuda")) else s.device) for s in specs]
        with ProcessPoolExecutor(max_workers=min(slots, len(specs)), mp_context=ctx, initializer=_init_worker,
                                 initargs=(q, counter, gpus, threads)) as pool:
            futs = {pool.submit(_worker_run, s, force): s for s in specs}
            pending_f = set(futs)
            while pending_f:
                done, pending_f = wait(pending_f, timeout=0.2, return_when=FIRST_COMPLETED)
                self._drain(q, queue_mod)
                for f in done:
                    rec = f.result()
                    if rec.get("status") == "error":
                        _cancel(pending_f)
                        raise BenchError(rec["error"])
                    out.add(rec)
                    if rec.get("status") == "failed" and self.fail_fast:
                        _cancel(pending_f)
                        raise RuntimeError(f"run {rec['run_id']} failed: {rec.get('error')}")
            self._drain(q, queue_mod)
        return out

    def _drain(self, q, queue_mod) -> None:
        while True:
            try:
                ev = q.get_nowait()
            except (queue_mod.Empty, EOFError, OSError):
                return
            if self.reporter is None:
                continue
            kind, run_id, *rest = ev
            if kind == "begin":
                self.reporter.begin(run_id, rest[0])
            elif kind == "epoch":
                self.reporter.epoch(run_id, rest[0], rest[1], rest[2])
            elif kind == "note":
                send_note(self.reporter, run_id, rest[0])
            else:
                self.reporter.end(run_id, rest[0])
