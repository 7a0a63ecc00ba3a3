"""Workers: the trial loop every worker runs over the studies of a plan, K of them as local
processes (``-j K``) or as the tasks of a SLURM array (``--executor slurm``).

Every worker goes through the studies in order and takes the next trial of the first study that
still has one to give (:func:`bench.tune.study.ask`), so K workers cooperate on one study at a time
and never exceed its budget. A pruned trial or one whose loss diverged counts as finished (the
configuration was evaluated; it was bad); any other error fails the trial and stops the worker
with the error (rerunning ``bench tune`` resumes).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from bench.api.errors import BenchError
from bench.tune.objective import prepare, run_trial
from bench.tune.plan import StudySpec, TunePlan
from bench.tune.space import as_overrides
from bench.tune.study import (
    WorkerLock,
    ask,
    counts,
    open_study,
    quiet_optuna,
    requeue,
    storage_of,
    study_lock,
    write_trial,
)

POLL_S = 2.0
"""How long a worker waits when every remaining trial is running elsewhere."""


@dataclass
class Hooks:
    """What a worker tells its caller (the live view): a finished epoch, a finished trial, a note."""

    epoch: Callable[[str, int, int, dict[str, Any]], None] = lambda study, trial, epoch, row: None
    trial: Callable[[str, int, str, float | None], None] = lambda study, trial, state, value: None
    note: Callable[[str], None] = lambda message: None


@dataclass
class WorkerSummary:
    worker: str = ""
    trials: dict[str, list[int]] = field(default_factory=dict)


def trial_spec(st: StudySpec, params: dict[str, Any]) -> Any:
    """The run a trial trains: the study's base run with the trial's parameters as overrides."""
    return dataclasses.replace(st.base, overrides=as_overrides(params, st.base.overrides))


def work(plan: TunePlan, hooks: Hooks | None = None) -> WorkerSummary:
    """Run trials until every study of ``plan`` has its N finished trials."""
    hooks = hooks or Hooks()
    quiet_optuna()
    out = WorkerSummary()
    with WorkerLock(plan.results) as me:
        out.worker = me.id
        studies: dict[str, Any] = {}  # opened once: a journal is then read incrementally
        prepared: set[str] = set()
        pending = list(plan.studies)
        while pending:
            progressed = False
            for st in list(pending):
                if st.name not in studies:
                    with study_lock(st):
                        studies[st.name] = open_study(st, storage_of(st, on_note=hooks.note))
                study = studies[st.name]
                if counts(study)["finished"] >= st.n_trials:
                    pending.remove(st)
                    continue
                if st.name not in prepared:  # the teacher trains before any trial is taken
                    prepare(st.base, on_note=hooks.note)
                    prepared.add(st.name)
                with study_lock(st):
                    trial = ask(st, study, me.id)
                if trial is None:
                    continue  # the rest of this study is running elsewhere
                _one_trial(st, study, trial, me.id, hooks)
                out.trials.setdefault(st.name, []).append(trial.number)
                progressed = True
                break
            if pending and not progressed:
                time.sleep(POLL_S)
    return out


def _one_trial(st: StudySpec, study: Any, trial: Any, me: str, hooks: Hooks) -> None:
    """Train one trial and tell the study how it ended; write its JSON."""
    import optuna
    from optuna.trial import TrialState

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    info: dict[str, Any] = {"params": dict(trial.params), "worker": me, "seed": st.seed, "slurm": _slurm_task(),
                            **{k: v for k, v in trial.user_attrs.items() if k in ("retry_of", "defaults")}}

    def on_epoch(epoch: int, row: dict[str, Any]) -> None:
        rows.append({k: row.get(k) for k in ("epoch", "val_metric", "train_loss", "lr", "seconds")})
        trial.report(row["val_metric"], epoch)
        hooks.epoch(st.name, trial.number, epoch, row)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: validation {row['val_metric']:.2f} below the median")

    try:
        res = run_trial(trial_spec(st, trial.params), on_epoch=on_epoch)
    except optuna.TrialPruned as exc:
        study.tell(trial, state=TrialState.PRUNED)
        write_trial(st, trial.number, dict(info, state="pruned", reason=str(exc), history=rows,
                                           seconds=time.perf_counter() - t0))
        hooks.trial(st.name, trial.number, "pruned", None)
        return
    except FloatingPointError as exc:  # the configuration diverges: evaluated, and bad
        study.tell(trial, state=TrialState.PRUNED)
        write_trial(st, trial.number, dict(info, state="pruned", reason=f"diverged: {exc}", history=rows,
                                           seconds=time.perf_counter() - t0))
        hooks.trial(st.name, trial.number, "pruned", None)
        return
    except BaseException as exc:  # failed; after Ctrl-C or SIGTERM also queued again (a resume reruns it)
        study.tell(trial, state=TrialState.FAIL)
        stopped = isinstance(exc, KeyboardInterrupt)
        if stopped:
            requeue(study, trial)
        write_trial(st, trial.number, dict(info, state="fail", history=rows, seconds=time.perf_counter() - t0,
                                           error=f"{type(exc).__name__}: {exc}",
                                           **({} if stopped else {"traceback": traceback.format_exc()[-4000:]})))
        hooks.trial(st.name, trial.number, "fail", None)
        if stopped or isinstance(exc, BenchError):
            raise
        raise BenchError(f"study {st.name}: trial {trial.number} failed ({type(exc).__name__}: {exc}); the traceback "
                         f"is in {st.results}/tuning/{st.name}/trials/{trial.number:04d}.json") from exc
    study.tell(trial, res["value"])
    write_trial(st, trial.number, dict(info, state="complete", value=res["value"], selected_epoch=res["selected_epoch"],
                                       history=res["history"], config_hash=res["config_hash"], teacher=res["teacher"],
                                       method_params=res["method_params"], extra=res["extra"],
                                       seconds=time.perf_counter() - t0))
    hooks.trial(st.name, trial.number, "complete", res["value"])


def _slurm_task() -> dict[str, str] | None:
    """The SLURM array task a trial ran in (None outside SLURM)."""
    import os

    if "SLURM_JOB_ID" not in os.environ:
        return None
    return {k.lower().removeprefix("slurm_"): os.environ.get(k, "") for k in
            ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME")}


# -- K local worker processes -------------------------------------------------------------------------


def _process_main(plan: TunePlan, threads: int) -> dict[str, Any]:
    import torch

    from bench.train.stop import stop_on_sigterm

    torch.set_num_threads(max(threads, 1))
    stop_on_sigterm()
    try:
        return {"ok": dataclasses.asdict(work(plan))}
    except KeyboardInterrupt:
        return {"stopped": True}
    except BenchError as exc:
        return {"error": str(exc)}


def work_in_processes(plan: TunePlan, k: int, poll: Callable[[], None] | None = None) -> list[WorkerSummary]:
    """``k`` worker processes on one plan (one CPU thread each, or the CPUs split between them);
    ``poll`` runs about once a second meanwhile (the live view)."""
    import multiprocessing as mp
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from bench.launch.local import dead_worker_stop

    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ctx = mp.get_context("spawn")
    out: list[WorkerSummary] = []
    errors: list[str] = []
    with ProcessPoolExecutor(max_workers=k, mp_context=ctx) as pool:
        futs = {pool.submit(_process_main, plan, max(1, ncpu // k)) for _ in range(k)}
        while futs:
            done, futs = wait(futs, timeout=1.0, return_when=FIRST_COMPLETED)
            if poll is not None:
                poll()
            for f in done:
                try:
                    r = f.result()
                except BrokenProcessPool:
                    raise dead_worker_stop("finished trials are kept and the trials that were in progress are "
                                           "queued again") from None
                if "error" in r:
                    errors.append(r["error"])
                elif "stopped" in r:
                    errors.append("a worker was stopped (SIGTERM or Ctrl-C); rerun the same command to resume")
                else:
                    out.append(WorkerSummary(**r["ok"]))
    if errors:
        raise BenchError("; ".join(dict.fromkeys(errors)))
    return out


# -- SLURM -------------------------------------------------------------------------------------------

try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is a dependency
    _Checkpointable = object  # type: ignore[misc,assignment]


class TuneTask(_Checkpointable):
    """One SLURM array task: a worker (or ``jobs`` worker processes) on the plan. Requeued on a
    time limit; the trial it was training is found stale and queued again by the next worker."""

    def __init__(self, plan: TunePlan, jobs: int = 1):
        self.plan = plan
        self.jobs = jobs

    def __call__(self) -> dict[str, Any]:
        from bench.train.stop import stop_on_sigterm

        stop_on_sigterm()
        log = Hooks(trial=lambda s, n, state, v: print(f"[cmkd-bench] {s} trial {n}: {state} {v}", flush=True),
                    note=lambda m: print(f"[cmkd-bench] {m}", flush=True))
        if self.jobs > 1:
            return {"workers": [dataclasses.asdict(w) for w in work_in_processes(self.plan, self.jobs)]}
        return {"workers": [dataclasses.asdict(work(self.plan, log))]}


def submit(plan: TunePlan, opts: Any, tasks: int, jobs: int = 1) -> dict[str, Any]:
    """Submit an array of ``tasks`` workers on ``plan``; write a manifest under tuning/slurm/."""
    from pathlib import Path

    from bench.launch.slurm import _executor
    from bench.records.files import atomic_write_json

    if tasks < 1:
        raise BenchError(f"--tasks {tasks}: expected at least 1")
    root = Path(plan.results) / "tuning" / "slurm"
    ex = _executor(root / "logs", opts, "cmkd-tune")
    with ex.batch():
        jobs_ = [ex.submit(TuneTask(plan, jobs)) for _ in range(tasks)]
    array_job = jobs_[0].job_id.split("_")[0]
    manifest = {"submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "array_job": array_job,
                "studies": [s.name for s in plan.studies], "logs": str(root / "logs"),
                "tasks": [{"task": i, "job_id": j.job_id} for i, j in enumerate(jobs_)]}
    path = root / "submissions" / f"{time.strftime('%Y%m%d-%H%M%S')}-{array_job}.json"
    atomic_write_json(path, manifest)
    manifest["path"] = str(path)
    return manifest
