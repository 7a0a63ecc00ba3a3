"""Fan a grid out to SLURM as job arrays through submitit; status, collection and retries.

Layout under the results folder::

    slurm/logs/<array job id>/...        submitit's pickles and per-task stdout/stderr logs
    slurm/submissions/<time>-<id>.json   what was submitted: array job ids, task -> run id and spec

One array task per run (dataset, direction, method, seed), or per K runs with ``--runs-per-gpu K``
(they run side by side on the task's GPU, as the local packed executor does). Teachers come first: every distinct
unimodal teacher the grid needs (and that is not cached yet) is trained by one task of a teacher
array, and the run array depends on it (``afterany``: a failed teacher does not strand the runs,
which then train it themselves under the cache's file lock, so no two tasks ever train the same
teacher concurrently). Each task is a ``submitit.helpers.Checkpointable``: on a time limit or a
pre-emption signal it is requeued and resumes from the run's own per-epoch checkpoint, so history
epochs are neither repeated nor lost; a plain ``scancel`` + resubmission resumes the same way.

A grid larger than the cluster's ``MaxArraySize`` (1001 tasks by default) is submitted as several
arrays; its manifest lists them all, and ``bench status``, ``--retry-failed`` and ``bench collect``
treat them as one grid.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api.errors import BenchError, ConfigError
from bench.launch.arrays import (  # noqa: F401  (TERMINAL, BAD, sacct_states: part of this module's interface)
    BAD,
    TERMINAL,
    array_states,
    arrays_of,
    cluster_max_array_size,
    grid_label,
    sacct_states,
    submit_in_arrays,
)
from bench.records.files import atomic_write_json, plain_json
from bench.train.resolve import RunSpec, resolve
from bench.train.run import run
from bench.train.stop import stop_on_sigterm
from bench.train.teachers import teacher_path
from bench.train.trackers import parse_trackers, with_trackers

CONFIG_FILE = "slurm.toml"


@dataclass
class SlurmOptions:
    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem: str | None = None
    time: int = 24 * 60
    """Time limit in minutes."""
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    """Further sbatch options, e.g. {"constraint": "a100", "exclude": "node12"}."""
    log: list[str] = field(default_factory=list)
    """Trackers every task logs its runs to (``--log``; tensorboard, mlflow, wandb)."""
    max_array_size: int | None = None
    """Tasks per job array; default: the cluster's ``MaxArraySize`` (a site may allow fewer per user)."""

    @classmethod
    def from_sources(cls, config: Path | None, cli: dict[str, Any], extra: list[str]) -> "SlurmOptions":
        """Defaults < the config file's [slurm] table < command-line options."""
        values: dict[str, Any] = {}
        path = config if config is not None else (Path(CONFIG_FILE) if Path(CONFIG_FILE).exists() else None)
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read the SLURM config ({exc})") from None
            table = data.get("slurm", data)
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(table) - names)
            if unknown:
                raise ConfigError(f"{path}: unknown [slurm] key(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
            values.update(table)
        values.update({k: v for k, v in cli.items() if v is not None})
        ex = dict(values.get("extra", {}))
        for item in extra:
            if "=" not in item:
                raise ConfigError(f"--slurm-arg {item!r}: expected KEY=VALUE (an sbatch option without dashes)")
            k, v = item.split("=", 1)
            ex[k.strip().lstrip("-").replace("-", "_")] = v.strip()
        values["extra"] = ex
        where = "--log" if cli.get("log") is not None else f"{path}: [slurm] log"
        values["log"] = parse_trackers(values.get("log"), where)
        opts = cls(**values)
        if opts.time < 1 or opts.cpus_per_task < 1 or opts.array_parallelism < 1 or opts.gpus_per_task < 0:
            raise ConfigError("SLURM options: time, cpus_per_task and array_parallelism must be >= 1, gpus_per_task >= 0")
        if opts.max_array_size is not None and (not isinstance(opts.max_array_size, int) or opts.max_array_size < 1):
            raise ConfigError(f"SLURM options: max_array_size must be an integer >= 1, got {opts.max_array_size!r}")
        return opts


def array_size_limit(opts: SlurmOptions) -> int:
    """Tasks one submitted array may hold: ``max_array_size`` when set, else the cluster's limit."""
    return opts.max_array_size if opts.max_array_size is not None else cluster_max_array_size()


def _executor(folder: Path, opts: SlurmOptions, name: str):
    import submitit

    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm")
    params: dict[str, Any] = {"timeout_min": opts.time, "cpus_per_task": opts.cpus_per_task,
                              "slurm_array_parallelism": opts.array_parallelism, "name": name,
                              "slurm_signal_delay_s": 120 if opts.time > 10 else 20}
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.gpus_per_task:
        params["slurm_gpus_per_task"] = opts.gpus_per_task
    if opts.mem:
        params["slurm_mem"] = opts.mem
    if opts.account:
        params["slurm_account"] = opts.account
    if opts.qos:
        params["slurm_qos"] = opts.qos
    add = dict(opts.extra)
    ex.update_parameters(**params, slurm_additional_parameters=add)
    return ex


try:
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is a dependency
    _Checkpointable = object  # type: ignore[misc,assignment]


class RunTask(_Checkpointable):
    """One run as a requeueable SLURM task (resumes from the run's epoch checkpoint)."""

    def __init__(self, spec: RunSpec, trackers: list[str] | None = None):
        self.spec = spec
        self.trackers = list(trackers or [])

    def __call__(self) -> dict[str, Any]:
        stop_on_sigterm()  # scancel: stop at the epoch boundary, keep the checkpoint, write no record
        with with_trackers(_LogReporter(), getattr(self, "trackers", [])) as rep:  # a requeue resumes them
            rec = run(self.spec, rep)
        if rec.get("status") != "ok":
            raise RuntimeError(rec.get("error") or "run failed")
        return plain_json(rec)  # submitit pickles it: plain data, readable by collect_finished without running code


class PackedRunTask(_Checkpointable):
    """Several runs as one requeueable SLURM task, run side by side on the task's GPU
    (``--runs-per-gpu``); each resumes from its own epoch checkpoint on a requeue."""

    def __init__(self, specs: list[RunSpec], trackers: list[str] | None = None):
        self.specs = specs
        self.trackers = list(trackers or [])

    def __call__(self) -> list[dict[str, Any]]:
        from bench.launch.packed import PackedExecutor

        stop_on_sigterm()
        out = PackedExecutor(len(self.specs), _LogReporter(),  # the reporter logs each run's end
                             trackers=getattr(self, "trackers", [])).run(self.specs)
        for rec in out.skipped:
            print(f"[cmkd-bench] {rec['run_id']}: already done ({rec.get('best_metric')})", flush=True)
        if out.failed:
            raise RuntimeError("; ".join(f"{r['run_id']}: {r.get('error')}" for r in out.failed))
        return [plain_json(rec) for rec in out.done + out.skipped]  # plain data, as RunTask's


class TeacherTask(_Checkpointable):
    """Train (or find cached) the unimodal teacher one run of the grid needs."""

    def __init__(self, spec: RunSpec):
        self.spec = spec

    def __call__(self) -> str:
        from bench.train.device import resolve_device
        from bench.train.loop import load_splits
        from bench.train.teachers import get_teacher

        stop_on_sigterm()
        r = resolve(self.spec)
        splits = load_splits(r.adapter, r.train, seed=r.spec.seed)
        _, info = get_teacher(r, splits, resolve_device(self.spec.device),
                              on_note=lambda m: print(f"[cmkd-bench] teacher: {m}", flush=True))
        return info["checkpoint"]


class _LogReporter:
    def begin(self, run_id: str, total_epochs: int) -> None:
        print(f"[cmkd-bench] {run_id}: {total_epochs} epochs", flush=True)

    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None:
        print(f"[cmkd-bench] {run_id} {phase} epoch {epoch} test={info['test_metric']:.2f} "
              f"val={info.get('val_metric')}", flush=True)

    def end(self, run_id: str, record: dict[str, Any]) -> None:
        print(f"[cmkd-bench] {run_id}: {record['status']} {record.get('best_metric')}", flush=True)

    def note(self, run_id: str, message: str) -> None:
        print(f"[cmkd-bench] {run_id}: {message}", flush=True)


def _absolute(spec: RunSpec) -> RunSpec:
    return dataclasses.replace(spec, results_dir=str(Path(spec.results_dir).resolve()),
                               plugins=[str(Path(p).resolve()) for p in spec.plugins])


def submit(specs: list[RunSpec], results: Path, opts: SlurmOptions, runs_per_task: int = 1) -> dict[str, Any]:
    """Submit the teacher array (if any teacher is missing) and the run array; write a manifest.

    ``runs_per_task`` > 1 packs that many runs into each array task (they share its GPU); the
    manifest still lists every run, with the job id of the task that holds it."""
    if not specs:
        raise BenchError("nothing to submit")
    results = Path(results).resolve()
    specs = [_absolute(s) for s in specs]
    logs = results / "slurm" / "logs"
    teachers: dict[str, RunSpec] = {}
    for s in specs:
        r = resolve(s)
        if r.method_cls.uses_teacher:
            tp = teacher_path(r, r.config["teacher_modality"])
            if not tp.exists():
                teachers.setdefault(str(tp), s)
    if runs_per_task < 1:
        raise BenchError("--runs-per-gpu must be >= 1")
    limit = array_size_limit(opts)

    def executor(name: str, after: list[str]):  # type: ignore[no-untyped-def]
        def make(parallelism: int):  # type: ignore[no-untyped-def]
            ex = _executor(logs, dataclasses.replace(opts, array_parallelism=parallelism), name)
            if after:  # each run array waits for every teacher array
                ex.update_parameters(slurm_additional_parameters={**opts.extra, "dependency": "afterany:" + ":".join(after)})
            return ex
        return make

    teacher_jobs: list[str] = []
    if teachers:
        tjobs = submit_in_arrays([TeacherTask(s) for s in teachers.values()], limit, opts.array_parallelism,
                                 executor("cmkd-teachers", []), "teacher")
        teacher_jobs = list(dict.fromkeys(j.job_id.split("_")[0] for j in tjobs))
    groups = [specs[i:i + runs_per_task] for i in range(0, len(specs), runs_per_task)]
    run_ids = [resolve(s).run_id for s in specs]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    manifest: dict[str, Any] = {}

    def record(gjobs: list[Any]) -> None:
        """The manifest of what is submitted so far, rewritten after each array: a refused later
        array leaves the earlier ones followed by ``bench status``."""
        jobs = [j for j, g in zip(gjobs, groups) for _ in g]
        arrays = list(dict.fromkeys(j.job_id.split("_")[0] for j in gjobs))
        manifest.clear()
        manifest.update({
            "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "array_job": arrays[0], "array_jobs": arrays,
            "teacher_job": teacher_jobs[0] if teacher_jobs else None, "teacher_jobs": teacher_jobs,
            "teachers": list(teachers), "logs": str(logs), "options": dataclasses.asdict(opts),
            "runs_per_task": runs_per_task, "max_array_size": limit,
            "tasks": [{"task": i, "job_id": j.job_id, "run_id": run_ids[i], "spec": dataclasses.asdict(s)}
                      for i, (j, s) in enumerate(zip(jobs, specs))],
        })
        path = results / "slurm" / "submissions" / f"{stamp}-{arrays[0]}.json"
        atomic_write_json(path, manifest)
        manifest["path"] = str(path)

    submit_in_arrays([RunTask(g[0], opts.log) if len(g) == 1 else PackedRunTask(g, opts.log) for g in groups], limit,
                     opts.array_parallelism, executor("cmkd-runs", teacher_jobs), "run", on_array=record)
    return manifest


def _submission_order(path: Path) -> tuple[str, int, str]:
    """``<YYYYmmdd-HHMMSS>-<array job id>``: by time, then by job id as a number, so that of two
    submissions in one second the later one (a larger id, maybe with more digits: 99 < 100) is last."""
    stamp, _, job = path.stem.rpartition("-")
    return (stamp, int(job), path.stem) if job.isdigit() else (path.stem, -1, path.stem)


def manifests(results: Path) -> list[dict[str, Any]]:
    """Every submission of a results folder, oldest first (the latest attempt of a run wins)."""
    out = []
    for p in sorted((Path(results) / "slurm" / "submissions").glob("*.json"), key=_submission_order):
        m = json.loads(p.read_text())
        m["path"] = str(p)
        out.append(m)
    return out


def task_table(results: Path) -> list[dict[str, Any]]:
    """One row per submitted task of the latest submission of each run: state, record, error tail."""
    from bench.records.store import read_record, record_path

    results = Path(results)
    latest: dict[str, tuple[dict, dict]] = {}
    for m in manifests(results):
        for t in m["tasks"]:
            latest[t["run_id"]] = (m, t)
    by_grid: dict[str, tuple[dict, list[dict[str, Any]]]] = {}
    for m, t in latest.values():
        by_grid.setdefault(m["path"], (m, []))[1].append(t)
    states: dict[str, str] = {}
    for m, ts in by_grid.values():
        states.update(array_states(arrays_of(m), ts))
    rows = []
    for run_id, (m, t) in latest.items():
        st = states.get(t["job_id"], "UNKNOWN")
        rp = record_path(results, run_id)
        rec = None
        if rp.exists():
            try:
                rec = read_record(rp)
            except Exception:  # noqa: BLE001
                rec = None
        status = st
        if rec is not None and rec["status"] == "ok":
            status = "DONE"
        error = None
        if rec is not None and rec["status"] == "failed":
            error = (rec.get("traceback") or rec.get("error") or "")[-800:]
        elif st in BAD:
            error = _log_tail(Path(m["logs"]), t["job_id"]) or f"SLURM state {st}"
        rows.append({"array_job": grid_label(m), "job_id": t["job_id"], "run_id": run_id, "slurm_state": st,
                     "status": status, "error": error, "record": rec["status"] if rec else None, "spec": t["spec"]})
    return rows


def _log_tail(logs: Path, job_id: str, n: int = 800) -> str | None:
    arr = job_id.split("_")[0]
    cands = sorted((logs / arr).glob(f"{job_id}_*_log.err")) + sorted((logs / job_id).glob("*_log.err"))
    for c in cands:
        try:
            text = c.read_text(errors="replace").strip()
        except OSError:
            continue
        if text:
            return text[-n:]
    return None


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        s = r["status"]
        key = ("done" if s == "DONE" else "running" if s in ("RUNNING", "COMPLETING", "CONFIGURING") else
               "pending" if s in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED") else
               "failed" if (s in BAD or r["record"] == "failed") else "completed-no-record" if s == "COMPLETED"
               else "unknown")
        out.setdefault(r["array_job"], {}).setdefault(key, 0)
        out[r["array_job"]][key] += 1
    return out


def wait(manifest: dict[str, Any], poll_s: float = 3.0, timeout_s: float | None = None, on_poll=None) -> dict[str, str]:
    """Block until every task of ``manifest`` is in a terminal state; returns job id -> state."""
    ids = [t["job_id"] for t in manifest["tasks"]]
    t0 = time.time()
    while True:
        st = array_states(arrays_of(manifest), manifest["tasks"])
        done = {j: st.get(j, "UNKNOWN") for j in ids}
        if on_poll:
            on_poll(done)
        if all(s in TERMINAL for s in done.values()):
            return done
        if timeout_s is not None and time.time() - t0 > timeout_s:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for array {grid_label(manifest)}: {done}")
        time.sleep(poll_s)


def collect_finished(results: Path) -> dict[str, list[str]]:
    """Write the records of finished tasks that are missing from results/records (idempotent).

    Tasks normally write their own record (shared filesystem); this recovers records from
    submitit's result pickles when they did not (e.g. a node-local results path). Those pickles lie
    in a shared folder, so they are read as plain data only (the tasks return their records as
    JSON-like dicts): one that would build any other object is refused with a note, never run.
    """
    from submitit.core.utils import JobPaths

    from bench.api.errors import RecordError
    from bench.records.files import CorruptFileError, UnsafeFileError, load_plain_pickle
    from bench.records.store import existing_ok, validate_record, write_record

    out: dict[str, list[str]] = {"present": [], "recovered": [], "unfinished": [], "notes": []}
    for m in manifests(results):
        for t in m["tasks"]:
            if existing_ok(results, t["run_id"]):
                out["present"].append(t["run_id"])
                continue
            arr, _, idx = t["job_id"].partition("_")
            paths = JobPaths(Path(m["logs"]) / arr, job_id=t["job_id"], task_id=0)
            if not paths.result_pickle.exists():
                out["unfinished"].append(t["run_id"])
                continue
            try:
                kind, value = load_plain_pickle(paths.result_pickle, "SLURM task result",
                                                remedy="Its record was not recovered; rerun the run instead")
                recs = value if isinstance(value, list) else [value]  # a packed task returns its runs' records
                mine = [r for r in recs if isinstance(r, dict) and r.get("run_id") == t["run_id"]]
                rec = dict(mine[0]) if kind == "success" and mine and mine[0].get("status") == "ok" else None
                if rec is not None:
                    rec.pop("skipped", None)
                    rec = validate_record(rec, str(paths.result_pickle))
            except (UnsafeFileError, CorruptFileError, RecordError, TypeError, ValueError) as exc:
                out["notes"].append(f"{t['run_id']}: {exc}")
                rec = None
            if rec is not None:
                note = _predictions_here(results, rec)
                if note is not None:
                    out["notes"].append(f"{t['run_id']}: {note}")
                write_record(results, rec)
                out["recovered"].append(t["run_id"])
            else:
                out["unfinished"].append(t["run_id"])
    return out


def _predictions_here(results: Path, rec: dict[str, Any]) -> str | None:
    """A recovered record's predictions file into ``results/predictions``: already there (a task on
    a shared filesystem wrote it), or copied from the task's results folder (the folder of its
    ``predictions_path``), read as plain arrays and checked by sha256 like a collected model; else
    the note why (the record keeps its fields, and ``bench results --verify`` names the missing file)."""
    from bench.records.predictions import PredictionsError, adopt_predictions, predictions_file, read_predictions

    given = rec.get("predictions_path")
    if not given:
        return None
    try:
        read_predictions(predictions_file(results, rec["run_id"]), rec.get("predictions_sha256"))
        return None
    except (PredictionsError, BenchError):
        pass
    return adopt_predictions(dict(rec), Path(str(given)).parent.parent, results)  # the record stays as the task wrote it


def retry_candidates(results: Path) -> set[str]:
    """Run ids whose latest task failed (record failed, or a bad SLURM state without an ok record)."""
    return {r["run_id"] for r in task_table(results) if r["status"] != "DONE" and
            (r["record"] == "failed" or r["slurm_state"] in BAD)}
