"""Experiment trackers (``bench run --log tensorboard,mlflow,wandb``): each run's per-epoch numbers
also go to the trackers a lab already follows, through the runner's reporter interface.

Everything is written locally under ``<results>/tracking/``, nothing needs a server, an account
or the network:

* ``tensorboard/<run_id>/``: event files (``torch.utils.tensorboard``); a teacher trained in the
  run logs to ``tensorboard/<run_id>/teacher/``; the final settings and results as HParams.
* ``mlruns/``: an MLflow file store (experiment ``cmkd-bench`` or ``$MLFLOW_EXPERIMENT_NAME``);
  params = the flattened config, tags = dataset / direction / method / seed / config hash,
  metrics per epoch, the record as an artifact. A file store, not SQLite, because packed runs and
  SLURM tasks write concurrently and often on a network file system, where every run's own
  folder is safe and SQLite's locks are not (MLflow >= 3.13 wants ``MLFLOW_ALLOW_FILE_STORE``
  for it, which is set here; ``mlflow migrate-filestore`` converts the store to a database).
* ``wandb/offline-run-*``: W&B in offline mode (``wandb sync <dir>`` uploads it later; no login).

Offline means offline: the libraries' own telemetry is switched off before they are imported
(:data:`OFFLINE_ENVIRONMENT`; MLflow otherwise fetches a telemetry configuration, W&B's analytics
read its process-wide settings, which are online unless ``WANDB_MODE`` says otherwise, and look up
its cloud host), and W&B runs without its system probes (:data:`WANDB_NO_PROBES`). The tests run
each tracker under a syscall trace in a network namespace and fail on any lookup.

A resumed run (same run id, its epoch checkpoint present) continues the same tracker run: the
same TensorBoard folder (a purge step at the first epoch written, so a repeated epoch replaces
the old one), the same MLflow run (its id is kept in ``tracking/runs/<run_id>.json``), the same
W&B run id (``resume="allow"``; ``wandb sync`` appends the offline folders of one id in order).
A fresh start of a run that was tracked before (``--force``) opens a new tracker run.

A tracker that fails during a run (full disk, a library error) is reported as a note and dropped
for that run: hours of training are not lost to a logging problem.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from bench.api.errors import ConfigError
from bench.api.names import join_under
from bench.records.files import atomic_write_json
from bench.train.run import NullReporter, Reporter, send_note, send_start

INSTALL = "pip install 'cmkd-bench[tracking]'"
"""What the error for a missing tracker library tells the user to run."""

LIBRARIES = {"tensorboard": ("tensorboard", "torch.utils.tensorboard"), "mlflow": ("mlflow",), "wandb": ("wandb",)}
"""Tracker name -> the modules it imports (checked before anything runs)."""

EPOCH_FIELDS = ("val_metric", "test_metric", "lr", "train_loss")
"""Per-epoch fields of a history row logged as scalars (besides every loss term)."""

OFFLINE_ENVIRONMENT = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow's usage telemetry (a config fetched from mlflow-telemetry.io)
    "DO_NOT_TRACK": "true",  # the common opt-out, honoured by MLflow and other libraries
    "WANDB_MODE": "offline",  # W&B's process-wide settings: its analytics read these, not the run's mode
    "WANDB_ERROR_REPORTING": "false",  # W&B's error reports and OpenTelemetry analytics to its cloud host
}
"""Set in the process before a tracker library is imported or opened (set, not defaulted: a user's
``WANDB_MODE=online`` must not make an offline tracker reach for the network)."""

WANDB_NO_PROBES = {"x_disable_meta": True, "x_disable_machine_info": True, "x_disable_stats": True,
                   "disable_code": True, "disable_job_creation": True}
"""W&B settings that turn off what wandb-core probes on its own: system metadata and machine info
(cloud metadata services, GPUs), the system-metrics monitor, code saving and job artifacts. The
record keeps the environment that matters (device, versions, threads); only the names the installed
wandb knows are passed."""


def go_offline() -> None:
    """Switch off the tracker libraries' telemetry (:data:`OFFLINE_ENVIRONMENT`) for this process."""
    os.environ.update(OFFLINE_ENVIRONMENT)


SUMMARY_FIELDS = ("best_metric", "final_metric", "selected_epoch", "val_at_selected", "reference_best_metric",
                  "reference_best_epoch", "wall_time_s")


def parse_trackers(value: str | list[str] | tuple[str, ...] | None, where: str = "--log") -> list[str]:
    """The tracker names of ``--log`` / slurm.toml ``log`` (comma-separated or a list), validated
    before anything runs: unknown names and libraries that are not installed are errors."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in LIBRARIES:
            raise ConfigError(f"{where}: unknown tracker {str(item).strip()!r}; valid: {', '.join(LIBRARIES)}")
        if name not in out:
            out.append(name)
    if out:
        go_offline()  # before the first import: some libraries read their telemetry settings then
    for name in out:
        for module in LIBRARIES[name]:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigError(f"{where} {name}: the {LIBRARIES[name][0]} library is not installed ({exc}); "
                                 f"install the tracking extra: {INSTALL}") from None
    return out


@dataclass
class RunContext:
    """What a tracker knows about a run when it opens it (from the runner's ``start`` call)."""

    run_id: str
    results: Path
    resuming: bool
    base: dict[str, Any]
    """The record's identity fields: config, dataset, direction, method, seed, config hash ..."""

    @property
    def tags(self) -> dict[str, str]:
        b = self.base
        return {k: str(b.get(k)) for k in ("dataset", "direction", "method", "seed", "config_hash", "group_hash",
                                           "teacher_modality", "student_modality", "metric", "run_id")}


def flat_config(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists become comma-joined text."""
    out: dict[str, Any] = {}
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            out.update(flat_config(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    if isinstance(cfg, (list, tuple)):
        cfg = ",".join(map(str, cfg))
    out[key] = cfg
    return out


_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_key(name: str) -> str:
    """A loss-term or metric name as a key every tracker accepts (MLflow allows the fewest)."""
    return _KEY_BAD.sub("_", str(name))[:200] or "_"


def epoch_scalars(phase: str, info: dict[str, Any]) -> dict[str, float]:
    """The scalars of one history row: val/test metric, lr, total loss and every loss term."""
    out: dict[str, float] = {}
    for k in EPOCH_FIELDS:
        v = info.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{phase}/{k}"] = float(v)
    for term, v in (info.get("terms") or {}).items():
        if isinstance(v, (int, float)):
            out[f"{phase}/loss/{metric_key(term)}"] = float(v)
    return out


class TensorBoardTracker:
    """Event files per run; the purge step makes a resumed run's repeated epoch replace the old one."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}

    def open(self, run_id: str, ctx: RunContext, previous: dict[str, Any] | None) -> dict[str, Any]:
        logdir = join_under(ctx.results / "tracking" / "tensorboard", run_id, where="run id")
        self.runs[run_id] = {"dir": logdir, "writers": {}, "ctx": ctx}
        return {"logdir": str(logdir)}

    def _writer(self, run_id: str, phase: str, first_step: int):
        from torch.utils.tensorboard import SummaryWriter

        h = self.runs[run_id]
        if phase not in h["writers"]:
            d = h["dir"] if phase == "student" else h["dir"] / metric_key(phase)
            # purge_step: events of an earlier attempt at or after this step are dropped by readers
            h["writers"][phase] = SummaryWriter(str(d), purge_step=first_step)
        return h["writers"][phase]

    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None:
        w = self._writer(run_id, phase, epoch)
        for k, v in epoch_scalars(phase, info).items():
            w.add_scalar(k, v, epoch)
        w.flush()  # an interrupted run keeps every epoch it reported

    def end(self, run_id: str, record: dict[str, Any]) -> None:
        try:
            if record.get("status") == "ok":
                last = int(record["history"][-1]["epoch"]) if record.get("history") else 0
                w = self._writer(run_id, "student", last)
                hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                      for k, v in flat_config(record.get("config") or {}).items()}
                w.add_hparams(hp, {f"hparams/{k}": float(record[k]) for k in ("best_metric", "final_metric")},
                              run_name="hparams", global_step=last)
        finally:
            self.close(run_id)

    def close(self, run_id: str, status: str = "KILLED") -> None:
        for w in self.runs.pop(run_id, {"writers": {}})["writers"].values():
            w.close()


class MLflowTracker:
    """One MLflow run per tracked run, in a file store under the results folder (client API: no
    process-global active run, so several runs of a grid never share one by accident)."""

    name = "mlflow"

    def __init__(self) -> None:
        self.runs: dict[str, tuple[Any, str, RunContext]] = {}

    @staticmethod
    def client(results: Path):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow >= 3.13 refuses file stores without it
        go_offline()
        from mlflow.tracking import MlflowClient

        store = (results / "tracking" / "mlruns").resolve()
        store.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=store.as_uri())

    def open(self, run_id: str, ctx: RunContext, previous: dict[str, Any] | None) -> dict[str, Any]:
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        client = self.client(ctx.results)
        mid = None
        if previous and previous.get("run_id"):
            try:
                old = client.get_run(previous["run_id"])
            except MlflowException:
                old = None
            if old is not None and ctx.resuming:
                mid = old.info.run_id
                client.update_run(mid, status="RUNNING")
            elif old is not None and old.info.status == "RUNNING":
                client.set_terminated(old.info.run_id, "KILLED")  # superseded by a fresh start
        if mid is None:
            exp = self._experiment(client, ctx.results)
            mid = client.create_run(exp, run_name=run_id, tags=ctx.tags).info.run_id
            params = [Param(k[:250], str(v)[:500]) for k, v in sorted(flat_config(ctx.base.get("config") or {}).items())]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 params
                client.log_batch(mid, params=params[i:i + 100])
        self.runs[run_id] = (client, mid, ctx)
        return {"run_id": mid, "tracking_uri": client.tracking_uri}

    @staticmethod
    def _experiment(client, results: Path) -> str:
        from bench.train.stop import file_lock

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "cmkd-bench"
        with file_lock(results / "tracking" / "mlruns.lock"):  # packed workers: create it once
            exp = client.get_experiment_by_name(name)
            return exp.experiment_id if exp is not None else client.create_experiment(name)

    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        client, mid, _ = self.runs[run_id]
        ts = int(time.time() * 1000)
        client.log_batch(mid, metrics=[Metric(k, v, ts, epoch) for k, v in epoch_scalars(phase, info).items()])

    def end(self, run_id: str, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        client, mid, _ = self.runs.pop(run_id)
        ok = record.get("status") == "ok"
        ts = int(time.time() * 1000)
        summary = [Metric(k, float(record[k]), ts, 0) for k in SUMMARY_FIELDS
                   if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)]
        if summary:
            client.log_batch(mid, metrics=summary)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{run_id}.json"
            path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
            client.log_artifact(mid, str(path))
        client.set_terminated(mid, "FINISHED" if ok else "FAILED")

    def close(self, run_id: str, status: str = "KILLED") -> None:
        client, mid, _ = self.runs.pop(run_id)
        client.set_terminated(mid, status)


def writable_folder_under(folder: Path, results: Path, what: str) -> Path:
    """``folder`` created if needed, resolved, inside the results folder and writable (a probe file:
    permission bits say nothing for root, a read-only mount or a full quota says it all)."""
    folder.mkdir(parents=True, exist_ok=True)
    real, root = folder.resolve(), Path(results).resolve()
    if not real.is_relative_to(root):
        raise OSError(f"{what} folder {folder} leads to {real}, outside the results folder {root}")
    try:
        with tempfile.NamedTemporaryFile(dir=real, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise OSError(f"{what} folder {real} is not writable ({exc.strerror or exc})") from None
    if not os.access(real, os.R_OK | os.W_OK | os.X_OK):  # what wandb itself checks before falling back
        raise OSError(f"{what} folder {real} is not writable")
    return real


def wandb_id(run_id: str, attempt: int) -> str:
    """A W&B run id derived from the run id (W&B ids allow few characters): the same for every
    resume of one attempt, a new one for each fresh start."""
    return hashlib.sha256(f"{run_id}#{attempt}".encode()).hexdigest()[:16]


class WandbTracker:
    """W&B in offline mode: ``<results>/tracking/wandb/offline-run-*``, uploaded later by
    ``wandb sync``; never a login prompt. Each phase's metrics use its own epoch as x axis."""

    name = "wandb"

    def __init__(self) -> None:
        self.runs: dict[str, Any] = {}

    def open(self, run_id: str, ctx: RunContext, previous: dict[str, Any] | None) -> dict[str, Any]:
        os.environ.setdefault("WANDB_SILENT", "true")
        go_offline()
        import wandb

        if previous and previous.get("id") and ctx.resuming:
            attempt = int(previous.get("attempt", 1))
        else:
            attempt = int((previous or {}).get("attempt", 0)) + 1
        wid = wandb_id(run_id, attempt)
        folder = ctx.results / "tracking"
        # wandb falls back to the system temp folder, silently, when its folder is not writable:
        # check first (and check where the run landed), so nothing is written outside the results
        writable_folder_under(folder, ctx.results, "the tracking")
        runs_dir = writable_folder_under(folder / (".wandb" if (folder / ".wandb").exists() else "wandb"),
                                         ctx.results, "the W&B")
        b = ctx.base
        known = getattr(wandb.Settings, "model_fields", {})
        probes = {k: v for k, v in WANDB_NO_PROBES.items() if k in known}
        run = wandb.init(mode="offline", id=wid, resume="allow", dir=str(folder),
                         project=os.environ.get("WANDB_PROJECT") or "cmkd-bench", name=run_id,
                         group=f"{b.get('dataset')}/{b.get('direction')}/{b.get('method')}", job_type="distill",
                         tags=[f"{k}:{v}"[:64] for k, v in ctx.tags.items() if k in ("dataset", "direction", "method",
                                                                                     "seed", "config_hash")],
                         config=b.get("config") or {},
                         settings=wandb.Settings(silent=True, console="off", **probes))
        where = Path(run.dir).resolve().parent
        if not where.is_relative_to(runs_dir):
            run.finish(exit_code=1)
            raise OSError(f"W&B put the run in {where}, not under {runs_dir}; nothing more is logged there")
        for phase in ("student", "teacher"):
            run.define_metric(f"{phase}/epoch")
            run.define_metric(f"{phase}/*", step_metric=f"{phase}/epoch")
        self.runs[run_id] = run
        return {"id": wid, "attempt": attempt, "dir": str(Path(run.dir).parent)}

    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None:
        self.runs[run_id].log({f"{phase}/epoch": epoch, **epoch_scalars(phase, info)})

    def end(self, run_id: str, record: dict[str, Any]) -> None:
        run = self.runs.pop(run_id)
        run.summary.update({k: record.get(k) for k in (*SUMMARY_FIELDS, "status", "error", "run_id", "config_hash")
                            if record.get(k) is not None})
        if isinstance(record.get("teacher"), dict):
            run.summary.update({f"teacher/{k}": v for k, v in record["teacher"].items()
                                if isinstance(v, (int, float, str, bool))})
        run.finish(exit_code=0 if record.get("status") == "ok" else 1)

    def close(self, run_id: str, status: str = "KILLED") -> None:
        self.runs.pop(run_id).finish(exit_code=1)


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker, "wandb": WandbTracker}


def state_path(results: Path, run_id: str) -> Path:
    """Where a run's tracker-run ids are kept (what a resumed attempt continues)."""
    return join_under(Path(results) / "tracking" / "runs", f"{run_id}.json", where="run id")


class TrackingReporter:
    """Fan-out: every event goes to each tracker of the run, then to ``inner`` (the console,
    a packed worker's queue, a SLURM task's log). Use as a context manager: runs left open by an
    interruption (Ctrl-C, SIGTERM) are closed as killed on exit; the next attempt continues them."""

    def __init__(self, inner: Reporter | None, trackers: list[str]):
        self.inner = inner or NullReporter()
        self.names = list(trackers)
        self.live: dict[str, list[Any]] = {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, run_id: str, context: dict[str, Any]) -> None:
        ctx = RunContext(run_id, Path(context["results_dir"]), bool(context.get("resuming")), context)
        path = state_path(ctx.results, run_id)
        try:
            previous = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            previous = {}
        state: dict[str, Any] = {"run_id": run_id}
        live = []
        for name in self.names:
            tracker = TRACKER_CLASSES[name]()
            try:
                state[name] = tracker.open(run_id, ctx, previous.get(name))
                live.append(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker must not stop the run
                self._dropped(run_id, name, exc)
        for name in set(previous) - set(state):  # trackers not used this time keep their ids
            state[name] = previous[name]
        try:
            atomic_write_json(path, state)
        except OSError as exc:
            send_note(self.inner, run_id, f"tracker run ids not saved ({exc}); a resume will open new tracker runs")
        self.live[run_id] = live
        send_start(self.inner, run_id, context)

    def _dropped(self, run_id: str, name: str, exc: BaseException) -> None:
        send_note(self.inner, run_id, f"{name} logging stopped ({type(exc).__name__}: {exc}); the run goes on "
                                      f"without it")

    def _each(self, run_id: str, method: str, *args: Any) -> None:
        for tracker in list(self.live.get(run_id, [])):
            try:
                getattr(tracker, method)(run_id, *args)
            except Exception as exc:  # noqa: BLE001 - a tracker must not stop the run
                self.live[run_id].remove(tracker)
                self._dropped(run_id, tracker.name, exc)
                try:
                    tracker.close(run_id, "FAILED")
                except Exception:  # noqa: BLE001, S110 - already reported
                    pass

    def begin(self, run_id: str, total_epochs: int) -> None:
        self.inner.begin(run_id, total_epochs)

    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None:
        self._each(run_id, "epoch", phase, epoch, info)
        self.inner.epoch(run_id, phase, epoch, info)

    def end(self, run_id: str, record: dict[str, Any]) -> None:
        self._each(run_id, "end", record)
        self.live.pop(run_id, None)
        self.inner.end(run_id, record)

    def note(self, run_id: str, message: str) -> None:
        send_note(self.inner, run_id, message)

    def close(self) -> None:
        """Close the tracker runs of runs that did not end (interrupted): status killed."""
        for run_id, trackers in list(self.live.items()):
            for tracker in trackers:
                try:
                    tracker.close(run_id, "KILLED")
                except Exception:  # noqa: BLE001, S110 - closing is best effort on the way out
                    pass
        self.live.clear()


def with_trackers(reporter: Reporter | None, trackers: list[str] | None) -> Any:
    """``reporter`` wrapped in a :class:`TrackingReporter` when trackers are asked for; otherwise
    a context manager around ``reporter`` itself (one code path for callers)."""
    if trackers:
        return TrackingReporter(reporter, list(trackers))
    return _Plain(reporter)


class _Plain:
    def __init__(self, reporter: Reporter | None):
        self.reporter = reporter

    def __enter__(self) -> Reporter | None:
        return self.reporter

    def __exit__(self, *exc: object) -> None:
        pass
