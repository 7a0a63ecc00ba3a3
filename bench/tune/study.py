"""A study on disk: Optuna storage, the locks that let many workers share it, stale trials of killed
workers, and the exact trial budget.

Layout under the results folder::

    tuning/<study>.journal             Optuna's journal file (no database server; safe on a shared FS)
    tuning/<study>/study.json          what the study is (identity, space, budget, storage)
    tuning/<study>/trials/<n>.json     one per finished trial: parameters, value, validation history
    tuning/<study>/history.png|pdf     Optuna's optimisation-history plot
    tuning/workers/<worker>.lock       held by each live worker (a released lock = a dead worker)

Budget. A worker asks for a trial only under the study's file lock and only while finished
(complete or pruned) plus running trials stay below N, so K workers, local or SLURM array tasks,
end a study with exactly N finished trials. A trial whose worker died (``kill -9``, a node crash,
a SLURM time limit) stays RUNNING in the storage; the next worker that takes the lock finds the
worker's lock released, marks the trial failed and queues its parameters again, so a resumed
study evaluates the same configurations as an uninterrupted one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

from bench.api.errors import BenchError
from bench.api.names import check_component, join_under
from bench.records.files import atomic_write_json
from bench.train.stop import file_lock
from bench.tune.plan import StudySpec
from bench.tune.space import distributions


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO and warns that some sampler options are experimental: the
    live table says the same, and the warnings are about Optuna's API, not the user's study."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def tuning_dir(results: str | Path) -> Path:
    return Path(results) / "tuning"


def study_dir(results: str | Path, name: str) -> Path:
    return join_under(tuning_dir(results), name, where="study name")


def journal_path(results: str | Path, name: str) -> Path:
    return join_under(tuning_dir(results), f"{name}.journal", where="study name")


def storage_of(st: StudySpec, on_note: Callable[[str], None] | None = None) -> Any:
    """The study's Optuna storage: a journal file in the results folder (a torn last line repaired
    before anything is appended, see :func:`open_journal`), or ``st.storage`` (URL)."""
    if st.storage:
        return open_url(st.storage)
    path = journal_path(st.results, st.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open_journal(path, repair=True, on_note=on_note)


def repair_journals(plan: Any, on_note: Callable[[str], None]) -> None:
    """Check (and repair a torn tail of) every journal of ``plan`` before ``bench tune`` starts, so
    the repair is reported once, before the live view."""
    for st in plan.studies:
        if not st.storage and journal_path(st.results, st.name).exists():
            storage_of(st, on_note=on_note)


def open_journal(path: Path, repair: bool, on_note: Callable[[str], None] | None = None) -> Any:
    """Optuna's journal storage on ``path``, checked line by line first.

    A process killed while appending leaves a last line without its newline: Optuna skips it when
    reading but appends the next operation onto it, which makes the journal unreadable. With
    ``repair`` (every caller that may append) the file is backed up and cut back to its last
    newline, under Optuna's own journal lock, so no live writer is cut. A complete line that is not
    a journal operation (a damaged middle) is refused, naming the file and line: what follows it
    cannot be trusted, so the user chooses between the prefix before it and starting over."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    if repair and path.exists():
        lock = JournalFileSymlinkLock(str(path))
        lock.acquire()
        try:
            note = _check_journal(path, repair=True)
        finally:
            lock.release()
        if note and on_note is not None:
            on_note(note)
    elif path.exists():
        _check_journal(path, repair=False)
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise BenchError(f"{path}: Optuna cannot replay this journal ({type(exc).__name__}: {exc}); "
                         f"{_journal_remedy(path)}") from None


def _journal_remedy(path: Path, keep: int | None = None) -> str:
    prefix = (f"keep the study as it was before that line with `head -n {keep} {path} > {path}.fixed && "
              f"mv {path}.fixed {path}` (trials after it are trained again), or " if keep is not None else "")
    return (f"{prefix}move the file aside to start the study over (each finished trial's JSON stays in "
            f"{path.with_suffix('')}/trials/), then rerun the same command")


def _check_journal(path: Path, repair: bool) -> str | None:
    """Refuse a damaged complete line; cut a torn tail (``repair``) after backing the file up.
    Returns a note saying what was repaired, or None."""
    import json

    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline: a torn last line
    for number, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        try:
            op = json.loads(line)
        except ValueError as exc:
            why = f"not valid JSON ({exc})"
        else:
            if isinstance(op, dict) and "op_code" in op:
                continue
            why = f"valid JSON but not a journal operation (no op_code): {line[:80]!r}"
        raise BenchError(f"{path}:{number}: damaged journal line, {why}; {_journal_remedy(path, number - 1 or None)}")
    if end == len(data) or not repair:
        return None
    backup = path.with_name(f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.bak")
    shutil.copy2(path, backup)
    with open(path, "r+b") as fh:
        fh.truncate(end)
        fh.flush()
        os.fsync(fh.fileno())
    lines = data[:end].count(b"\n")
    return (f"{path}: its last line (line {lines + 1}, {len(data) - end} bytes) was cut short by a process "
            f"stopped while writing it; removed it (a copy of the whole file is {backup.name})")


def open_url(url: str) -> Any:
    """A database storage (SQLite, PostgreSQL, ...), or a one-line error naming the URL."""
    from optuna.storages import RDBStorage

    try:
        return RDBStorage(url)
    except Exception as exc:
        raise BenchError(f"--storage {storage_label(url)}: cannot open the database "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def storage_label(url: str | None) -> str:
    """What study.json says about the storage (a database password is never written to disk)."""
    if not url:
        return "journal"
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split(":", 1)[0] + ":…"


def trial_seed(seed: int, n_finished: int) -> int:
    """The sampler's seed for the next trial: a function of the study's seed and of how many trials
    have finished, so a resumed study proposes what an uninterrupted one would have (one worker)."""
    return (seed * 1_000_003 + n_finished * 7_919) % 2**32


def make_sampler(st: StudySpec, n_finished: int) -> Any:
    import optuna

    startup = max(1, min(10, st.n_trials // 2))
    return optuna.samplers.TPESampler(seed=trial_seed(st.seed, n_finished), n_startup_trials=startup)


def make_pruner(st: StudySpec) -> Any:
    import optuna

    p = st.pruning
    if p["kind"] == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=p["startup"], n_warmup_steps=p["warmup"])


def open_study(st: StudySpec, storage: Any | None = None) -> Any:
    """Create or load ``st`` (call under :func:`study_lock`); a new study starts with the defaults
    as its first trial, so the tuned configuration is never worse than the default on validation."""
    import optuna

    quiet_optuna()
    study = optuna.create_study(study_name=st.name, storage=storage if storage is not None else storage_of(st),
                                direction="maximize", load_if_exists=True, sampler=make_sampler(st, 0),
                                pruner=make_pruner(st))
    if "cmkd" not in study.user_attrs:
        study.set_user_attr("cmkd", st.identity())
        if st.defaults is not None and not study.get_trials(deepcopy=False):
            study.enqueue_trial(dict(st.defaults), user_attrs={"defaults": True})
    info = dict(st.identity(), storage=storage_label(st.storage))
    path = study_dir(st.results, st.name) / "study.json"
    if not path.exists():
        atomic_write_json(path, info)
    return study


def study_lock(st: StudySpec):  # type: ignore[no-untyped-def]
    """The lock under which trials are asked for and stale trials failed (one per study)."""
    return file_lock(study_dir(st.results, st.name) / "study.lock")


def counts(study: Any) -> dict[str, int]:
    """Trials by state: complete, pruned, running, failed, waiting (queued), and finished."""
    from optuna.trial import TrialState

    out = {"complete": 0, "pruned": 0, "running": 0, "failed": 0, "waiting": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.RUNNING: "running",
             TrialState.FAIL: "failed", TrialState.WAITING: "waiting"}
    for t in study.get_trials(deepcopy=False):
        out[names[t.state]] += 1
    out["finished"] = out["complete"] + out["pruned"]
    return out


def best_trial(study: Any) -> Any | None:
    """The complete trial with the highest value (ties: the earliest); None when there is none."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


class WorkerLock:
    """A live worker's identity: it holds ``tuning/workers/<id>.lock`` for as long as it runs, so
    another worker can tell a trial whose process died (lock free) from one still training."""

    def __init__(self, results: str | Path):
        host = socket.gethostname().split(".")[0] or "host"
        self.id = check_component(f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}", "worker id")
        self.path = join_under(tuning_dir(results) / "workers", f"{self.id}.lock")
        self.fh: Any = None

    def __enter__(self) -> "WorkerLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a+")  # held open, and locked, for the worker's life
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        self.fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.fh.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)
        fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
        self.fh.close()


def worker_alive(results: str | Path, worker: str | None) -> bool:
    """Whether the worker that started a trial still holds its lock."""
    if not worker:
        return False
    try:
        path = join_under(tuning_dir(results) / "workers", f"{worker}.lock")
    except BenchError:
        return False
    try:
        with open(path) as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except FileNotFoundError:
        return False
    path.unlink(missing_ok=True)
    return False


def fail_stale(st: StudySpec, study: Any, me: str) -> list[int]:
    """Fail the RUNNING trials of dead workers and queue their parameters again (under the lock)."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        if worker == me or worker_alive(st.results, worker):
            continue
        study.tell(t.number, state=TrialState.FAIL)
        why = f"worker {worker} stopped while training it; its parameters were queued again"
        write_trial(st, t.number, {"state": "fail", "params": dict(t.params), "worker": worker, "error": why})
        requeue(study, t)
        out.append(t.number)
    return out


def requeue(study: Any, t: Any) -> None:
    """Queue the parameters of an interrupted trial again (marked as a retry of the first attempt)."""
    attrs = {"retry_of": t.user_attrs.get("retry_of", t.number),
             **({"defaults": True} if t.user_attrs.get("defaults") else {})}
    study.enqueue_trial(dict(t.params), user_attrs=attrs)


def ask(st: StudySpec, study: Any, me: str) -> Any | None:
    """The next trial of ``st`` for worker ``me``, or None: "done" when N trials have finished,
    "busy" when the rest are running elsewhere (the caller tells them apart with :func:`counts`).
    Call under :func:`study_lock`."""
    fail_stale(st, study, me)
    c = counts(study)
    if c["finished"] + c["running"] >= st.n_trials:
        return None
    study.sampler = make_sampler(st, c["finished"])
    trial = study.ask(distributions(st.space))
    trial.set_user_attr("worker", me)
    return trial


def write_trial(st: StudySpec, number: int, info: dict[str, Any]) -> Path:
    path = study_dir(st.results, st.name) / "trials" / f"{number:04d}.json"
    atomic_write_json(path, dict(info, study=st.name, number=number))
    return path
