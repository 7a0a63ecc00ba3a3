"""Packing: several runs share one GPU (``--runs-per-gpu K``), one worker process per run slot."""

from __future__ import annotations

from typing import Any

from bench.api.errors import BenchError
from bench.launch.local import GridOutcome, attempt, dead_worker_stop, fail_fast_stop
from bench.train.resolve import RunSpec
from bench.train.run import Reporter, send_note
from bench.train.trackers import with_trackers


class QueueReporter:
    """Forwards a worker's progress events to the parent process. Best-effort: the queue lives in a
    manager process, and when that is gone (killed, out of memory) the events are dropped, never the
    run: the parent still gets every record through the pool and reports its end itself."""

    def __init__(self, q):
        self.q = q

    def _put(self, event: tuple) -> None:
        if self.q is None:
            return
        try:
            self.q.put(event)
        except (OSError, EOFError):  # BrokenPipeError, ConnectionRefusedError...: the manager is gone
            self.q = None

    def begin(self, run_id: str, total_epochs: int) -> None:
        self._put(("begin", run_id, total_epochs))

    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None:
        self._put(("epoch", run_id, phase, epoch, {k: info.get(k) for k in ("test_metric", "val_metric")}))

    def end(self, run_id: str, record: dict[str, Any]) -> None:
        self._put(("end", run_id, {k: record.get(k) for k in END_FIELDS}))

    def note(self, run_id: str, message: str) -> None:
        self._put(("note", run_id, message))


END_FIELDS = ("status", "metric", "best_metric", "selected_epoch", "final_metric", "wall_time_s", "error")
"""What a run's ``end`` event carries to the parent's progress display."""


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
    from bench.train.stop import stop_on_sigterm

    stop_on_sigterm()  # a SIGTERM to the group (scancel, kill) stops each worker's run at an epoch boundary


def _worker_run(spec: RunSpec, force: bool, trackers: list[str] | None = None) -> dict[str, Any]:
    """One run in a worker. Trackers log from here, where the run's full epoch rows are (the queue
    carries only what the progress display needs), and close their runs if the worker is stopped."""
    rep = QueueReporter(_WORKER["q"]) if _WORKER.get("q") is not None else None
    try:
        with with_trackers(rep, trackers) as r:
            return attempt(spec, r, force)[0]
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

    def __init__(self, runs_per_gpu: int, reporter: Reporter | None = None, fail_fast: bool = False,
                 trackers: list[str] | None = None):
        if runs_per_gpu < 1:
            raise BenchError("--runs-per-gpu must be >= 1")
        self.k = runs_per_gpu
        self.reporter = reporter
        self.fail_fast = fail_fast
        self.trackers = list(trackers or [])
        """``--log``: the trackers each worker logs its runs to (bench.train.trackers)."""

    def run(self, specs: list[RunSpec], force: bool = False) -> GridOutcome:
        import dataclasses
        import multiprocessing as mp
        import os
        import queue as queue_mod
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
        from concurrent.futures.process import BrokenProcessPool

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
        manager = ctx.Manager()  # the progress queue's process; shut down here, not left to the collector
        q = manager.Queue()
        counter = ctx.Value("i", 0)
        specs = [dataclasses.replace(s, runs_per_gpu=self.k,
                                     device="cuda" if (gpus and s.device.startswith("cuda")) else s.device) for s in specs]
        self._ended: set[str] = set()
        self._lost = False
        try:
            with ProcessPoolExecutor(max_workers=min(slots, len(specs)), mp_context=ctx, initializer=_init_worker,
                                     initargs=(q, counter, gpus, threads)) as pool:
                futs = {pool.submit(_worker_run, s, force, self.trackers): s for s in specs}
                pending_f = set(futs)
                while pending_f:
                    done, pending_f = wait(pending_f, timeout=0.2, return_when=FIRST_COMPLETED)
                    self._drain(q, queue_mod)
                    for f in done:
                        try:
                            rec = f.result()
                        except BrokenProcessPool:
                            _cancel(pending_f)
                            n = len(out.done) + len(out.skipped)
                            raise dead_worker_stop(f"the {n} finished run(s) are kept and the unfinished ones "
                                                   f"resume from their last finished epoch") from None
                        if rec.get("status") == "error":
                            _cancel(pending_f)
                            raise BenchError(rec["error"])
                        out.add(rec)
                        self._end_unreported(rec)
                        if rec.get("status") == "failed" and self.fail_fast:
                            _cancel(pending_f)
                            raise fail_fast_stop(rec)
                self._drain(q, queue_mod)
        finally:
            manager.shutdown()
        return out

    def _end_unreported(self, rec: dict[str, Any]) -> None:
        """Once the progress queue is lost, the parent reports each run's end from its record."""
        if self._lost and self.reporter is not None and not rec.get("skipped") and rec["run_id"] not in self._ended:
            self._ended.add(rec["run_id"])
            self.reporter.end(rec["run_id"], {k: rec.get(k) for k in END_FIELDS})

    def _drain(self, q, queue_mod) -> None:
        while True:
            if self._lost:
                return
            try:
                ev = q.get_nowait()
            except queue_mod.Empty:
                return
            except (EOFError, OSError):  # the manager process is gone: progress events with it, runs go on
                self._lost = True
                if self.reporter is not None:
                    send_note(self.reporter, "grid", "the progress queue was lost (its process ended); the runs "
                              "go on and report when they finish")
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
                self._ended.add(run_id)
                self.reporter.end(run_id, rest[0])
