"""The shared runner: teacher -> distilled student -> evaluation -> one result record.

One call of :func:`run` handles one (dataset, teacher modality -> student modality, method,
seed). It

1. trains the unimodal teacher of that dataset/modality/seed, or reuses the cached checkpoint
   (a file lock makes concurrent processes wait for, not duplicate, the training);
2. trains a freshly initialised student with the method's losses;
3. evaluates the student on the validation and test splits after every epoch;
4. writes one atomic JSON record.

Protocol. The epoch reported as ``best_metric`` is selected on a validation split carved from
train (seeded, stratified), never on test. The reference code's protocol (best test epoch) is
recorded too, as ``reference_best_metric``, and ``final_metric`` is the last epoch's test score.

Reproducibility. Each epoch reseeds the global and the batch-order RNG from (seed, epoch), so
a run resumed from its per-epoch checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import os
import platform
import socket
import time
import traceback
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from bench import __version__
from bench.api.errors import BenchError
from bench.api.method import MethodContext, PrepareData
from bench.api.names import join_under
from bench.data.cache import sha256_file
from bench.records.files import (
    CorruptFileError,
    UnsafeFileError,
    atomic_torch_save,
    load_torch_file,
    remove_stale_temp_files,
)
from bench.records.predictions import split_fingerprints, write_predictions
from bench.records.provenance import code_state, git_commit, runtime_environment
from bench.records.store import SCHEMA_VERSION, read_record, record_path, write_record
from bench.train.acceleration import plan_speed
from bench.train.device import keep_freed_memory, resolve_device, seed_everything
from bench.train.loop import fit, load_splits, split_summary
from bench.train.resolve import Resolved, RunSpec, resolve
from bench.train.step import probe_outputs
from bench.train.stop import file_lock
from bench.train.teacher_outputs import decide_teacher_cache
from bench.train.teachers import (
    backbone_record,
    build_network,
    check_pair,
    extra_teachers,
    get_teacher,
    teacher_epochs_to_train,
)


RUNNER_VERSION = 2
"""Bumped when a change to the runner (this module, the training loop, evaluation, selection,
teacher training, seeding) alters results at the same configuration, with a line in
docs/reference/versions.md. Recorded in every record's ``versions``; ``bench reproduce`` refuses to
publish a grid whose records were made by different runner versions."""


def result_versions(r: Resolved) -> dict[str, Any]:
    """The versions of everything that determines a run's result besides its configuration: the
    runner, the method, the dataset adapter and each role's backbone (None: the adapter's own
    network, covered by the adapter's version). Seeds of one cell must agree on all of them."""
    from bench.models.registry import backbone_version

    roles = ("teacher", "student") if r.method_cls.uses_teacher else ("student",)
    parts = getattr(r.method_cls, "part_classes", None)  # a composition: every part's version
    method = {n: int(c.version) for n, c in parts.items()} if parts else int(r.method_cls.version)
    return {"runner": RUNNER_VERSION, "method": method,
            "adapter": int(getattr(type(r.adapter), "version", 1)),
            "backbones": {role: backbone_version(r.backbones[role]) for role in roles}}


class Reporter(Protocol):
    def begin(self, run_id: str, total_epochs: int) -> None: ...
    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None: ...
    def end(self, run_id: str, record: dict[str, Any]) -> None: ...
    def note(self, run_id: str, message: str) -> None: ...


class NullReporter:
    def begin(self, run_id: str, total_epochs: int) -> None:
        pass

    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None:
        pass

    def end(self, run_id: str, record: dict[str, Any]) -> None:
        pass

    def note(self, run_id: str, message: str) -> None:
        pass


def send_note(reporter: Any, run_id: str, message: str) -> None:
    """Tell the user something the run decided on its own (a discarded checkpoint, a kept record);
    reporters written before ``note`` existed get it on stderr."""
    fn = getattr(reporter, "note", None)
    if callable(fn):
        fn(run_id, message)
    else:
        import sys

        print(f"[cmkd-bench] {run_id}: {message}", file=sys.stderr, flush=True)


def send_start(reporter: Any, run_id: str, context: dict[str, Any]) -> None:
    """Before ``begin``, tell a reporter that wants it (``start``: the trackers) what the run is:
    the record's identity fields, ``results_dir``, and ``resuming`` (its epoch checkpoint exists),
    which a tracker needs to name, tag and continue its own run. Optional for reporters."""
    fn = getattr(reporter, "start", None)
    if callable(fn):
        fn(run_id, context)


def run(spec: RunSpec, reporter: Reporter | None = None, force: bool = False) -> dict[str, Any]:
    """Execute one run and write its record. Returns the record (status ok or failed).

    A run whose ok record exists is skipped (returned as is) unless ``force``. An exception
    inside training produces a ``failed`` record and is re-raised with the record attached
    (``exc.cmkd_record``); a failed ``--force`` rerun of a run that has an ok record leaves that
    record alone and writes the failure to ``failures/<run_id>.json`` instead. KeyboardInterrupt
    leaves the per-epoch checkpoint behind so that the next invocation resumes.
    """
    reporter = reporter or NullReporter()
    r = resolve(spec)
    results = Path(spec.results_dir)
    prepare_results_folder(results)
    previous = _ok_record(record_path(results, r.run_id))
    if previous is not None and not force:
        previous["skipped"] = True
        return previous
    # one trainer per run: a second process (a resubmitted SLURM task while the cancelled one winds
    # down, two grids over one folder) waits, then finds the record or resumes from the checkpoint
    with file_lock(join_under(results / "checkpoints", f"{r.run_id}.lock"),
                   on_wait=lambda m: send_note(reporter, r.run_id, m)):
        if not force:
            previous = _ok_record(record_path(results, r.run_id))
            if previous is not None:
                previous["skipped"] = True
                return previous
        return _run_locked(r, spec, reporter, force, results, previous)


def _run_locked(r: Resolved, spec: RunSpec, reporter: Reporter, force: bool, results: Path,
                previous: dict[str, Any] | None) -> dict[str, Any]:
    device = resolve_device(spec.device)
    if device.type == "cpu":
        keep_freed_memory()
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    ckpt = join_under(results / "checkpoints", f"{r.run_id}.pt")
    if force and ckpt.exists():
        ckpt.unlink()
    base = _record_base(r, device)
    notes: list[str] = []
    staged: dict[Path, Path] = {}

    def stage(final: Path) -> Path:
        """Where a file of this run is written until its record is: beside the good run's file on a
        --force rerun (swapped in after the record), so a failed rerun never replaces a good result."""
        if previous is None:
            return final
        tmp = final.with_name(final.name + ".rerun")
        staged[tmp] = final
        return tmp

    def note(message: str) -> None:
        notes.append(message)
        send_note(reporter, r.run_id, message)

    needs_teacher = r.method_cls.uses_teacher
    total_epochs = r.train.epochs + teacher_epochs_to_train(r)
    base["backbones"] = backbone_record(r)
    send_start(reporter, r.run_id, dict(base, results_dir=str(results), resuming=ckpt.exists()))
    reporter.begin(r.run_id, total_epochs)
    try:
        splits = load_splits(r.adapter, r.train, seed=spec.seed)
        base["splits"] = split_summary(r.train, r.adapter, splits, spec.seed)
        check_pair(r, splits, device)  # a method that cannot connect the two networks refuses before training
        teacher, tinfo = None, None
        if needs_teacher:
            teacher, tinfo = get_teacher(r, splits, device,
                                         on_epoch=lambda e, row: reporter.epoch(r.run_id, "teacher", e, row),
                                         on_note=note)
        student, method, plan = build_student_and_method(r, spec, splits, teacher, device)
        if method.runs_teachers and tinfo is not None:  # the mixture's other teachers (MST-Distill)
            tinfo = dict(tinfo, mixture=getattr(method, "extra_info", {}))
        base["backbones"] = backbone_record(r, student, teacher)
        s_mod, t_mod = r.config["student_modality"], r.config["teacher_modality"]
        res = fit(adapter=r.adapter, splits=splits, student=student, student_modality=s_mod, method=method,
                  teacher=teacher, teacher_modality=t_mod, train=r.train, epochs=r.train.epochs, seed=spec.seed,
                  device=device, checkpoint=ckpt,
                  on_epoch=lambda e, row: reporter.epoch(r.run_id, "student", e, row),
                  on_resume=lambda n: base.__setitem__("resumed_from_epoch", n), plan=plan,
                  teacher_key=tinfo["checkpoint"] if tinfo else None, on_note=note, collect_predictions=True)
        base["environment"] = runtime_environment()  # as trained: seed_everything set its flags since
        sel = res.history[res.selected_epoch - 1]
        ref_best = max(res.history, key=lambda h: (h["test_metric"], h["epoch"]))
        rec = dict(
            base,
            status="ok", error=None,
            best_metric=sel["test_metric"], selected_epoch=res.selected_epoch, val_at_selected=sel["val_metric"],
            final_metric=res.history[-1]["test_metric"],
            reference_best_metric=ref_best["test_metric"], reference_best_epoch=ref_best["epoch"],
            reference_protocol="best test-set epoch (what the reference code reports); not used for selection",
            history=res.history, teacher=tinfo, extra=res.extra, speed=res.plan.report() if res.plan else None,
            wall_time_s=time.perf_counter() - t0, started_at=started.isoformat(),
            finished_at=datetime.now(timezone.utc).isoformat(), **({"notes": notes} if notes else {}),
        )
        fingerprints = split_fingerprints(splits)  # the statistics pair seeds only on the same test split
        rec["split_fingerprint"] = fingerprints
        ppath, psha = write_predictions(results, r.run_id, res.predictions, fingerprints,  # type: ignore[arg-type]
                                        {"selected": res.selected_epoch, "last": res.history[-1]["epoch"]},
                                        stage=stage)
        rec["predictions_path"] = str(ppath)
        rec["predictions_sha256"] = psha  # bench results --verify re-scores the file; bench collect checks the copy
        if spec.save_model:
            mpath = join_under(results / "models", f"{r.run_id}.pt")
            atomic_torch_save({"student": res.best_state, "final_student": student.state_dict(),
                               "method": method.state_dict(), "config": r.config}, stage(mpath))
            rec["model_path"] = str(mpath)
            rec["model_sha256"] = sha256_file(stage(mpath))  # bench collect copies the file and checks it against this
        write_record(results, rec)  # may fail (full disk): the checkpoint stays, a rerun finishes the run
        for staged_path, final in staged.items():  # the rerun's record is written: its files replace the old run's
            os.replace(staged_path, final)
        staged.clear()
    except KeyboardInterrupt:
        for staged_path in staged:
            staged_path.unlink(missing_ok=True)
        raise
    except Exception as exc:
        for staged_path in staged:  # a failed rerun leaves the good run's record, predictions and model as they were
            staged_path.unlink(missing_ok=True)
        rec = dict(base, status="failed", error=f"{type(exc).__name__}: {exc}",
                   traceback=traceback.format_exc()[-4000:], wall_time_s=time.perf_counter() - t0,
                   started_at=started.isoformat(), finished_at=datetime.now(timezone.utc).isoformat(),
                   **({"notes": notes} if notes else {}))
        if isinstance(exc, OSError) and ckpt.exists():
            rec["error"] += f" (the checkpoint of epoch {_checkpoint_epochs(ckpt)} is kept: rerun to finish)"
        _write_failure(results, rec, keep_ok=previous is not None, note=note)
        exc.cmkd_record = rec  # type: ignore[attr-defined]  # what executors report, even if not on disk
        reporter.end(r.run_id, rec)
        raise
    ckpt.unlink(missing_ok=True)
    reporter.end(r.run_id, rec)
    return rec


def build_student_and_method(r: Resolved, spec: RunSpec, splits: dict[str, Any], teacher: Any,
                             device: torch.device) -> tuple[Any, Any, Any]:
    """Seed, then the student, the method set up on both networks and prepared on the training data
    (:meth:`~bench.api.method.Method.prepare`), and the speed plan, in one fixed order: a run and a
    tuning trial of the same configuration start from the same random state."""
    needs_teacher = r.method_cls.uses_teacher
    seed_everything(spec.seed, r.train.deterministic)
    s_mod, t_mod = r.config["student_modality"], r.config["teacher_modality"]
    student = build_network(r, "student", splits, device)
    ctx = MethodContext(r.adapter.num_classes, r.train.epochs, r.adapter.task, t_mod if needs_teacher else None,
                        s_mod, device, r.adapter.ignore_index)
    method = r.method_cls(r.method_params, ctx)
    if method.runs_teachers:  # its other teachers (cached, locked; seeded again so the student is unchanged)
        method.extra_info = extra_teachers(r, method, splits, device)
        seed_everything(spec.seed, r.train.deterministic)
        student = build_network(r, "student", splits, device)
    s_probe, t_probe = probe_outputs(r.adapter, splits["train"], student, teacher, s_mod, t_mod, device)
    method.setup(student, teacher, s_probe, t_probe)
    method.modules.to(device)
    method.prepare(PrepareData(r.adapter, splits["train"], splits.get("val"), r.train, spec.seed,
                               t_mod if needs_teacher else None, s_mod, device))
    plan = replace(plan_speed(r.train, device), runs_per_gpu=max(spec.runs_per_gpu, 1))
    if needs_teacher:
        plan = decide_teacher_cache(plan, method, r.adapter, t_mod, t_probe, len(splits["train"]), device)
    return student, method, plan


def _ok_record(path: Path) -> dict[str, Any] | None:
    """The ok record at ``path``, or None (absent, failed, or not a valid record)."""
    from bench.api.errors import RecordError

    if not path.exists():
        return None
    try:
        rec = read_record(path)
    except RecordError:
        return None
    return rec if rec["status"] == "ok" else None


def _write_failure(results: Path, rec: dict[str, Any], keep_ok: bool, note: Callable[[str], None]) -> None:
    """Write a failed record without ever replacing an ok one (a failed ``--force`` rerun goes to
    ``failures/``). If the disk refuses it too, say so in the record that goes back to the caller."""
    try:
        if keep_ok:
            path = join_under(results / "failures", f"{rec['run_id']}.json")
            from bench.records.files import atomic_write_json

            atomic_write_json(path, rec)
            note(f"the rerun failed; the earlier ok record is kept, the failure is in {path}")
        else:
            write_record(results, rec)
    except OSError as werr:
        rec["error"] += f"; the failure record could not be written either ({werr.strerror or werr})"


def _checkpoint_epochs(path: Path) -> str:
    try:
        return str(len(load_torch_file(path, "resume checkpoint", required=("history",))["history"]))
    except (CorruptFileError, UnsafeFileError):
        return "?"


def _slurm_env() -> dict[str, Any] | None:
    """Where the run executed when it ran as a SLURM task (job, array task, requeue count)."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_PARTITION",
            "SLURMD_NODENAME")
    return {k.lower().replace("slurm_", "").replace("slurmd_", ""): os.environ.get(k) for k in keys}


def _record_base(r: Resolved, device: torch.device) -> dict[str, Any]:
    code = code_state()
    return {
        "slurm": _slurm_env(),
        "schema": SCHEMA_VERSION,
        "run_id": r.run_id,
        "method": r.method_cls.name,
        "method_category": r.method_cls.category,
        "method_source": r.method_source,
        "method_source_hash": r.method_source_hash,
        **({"method_parts": list(r.method_cls.part_classes)} if getattr(r.method_cls, "part_classes", None) else {}),
        "dataset": r.adapter.name,
        **_dataset_origin(r),
        "task": r.adapter.task,
        "teacher_modality": r.config["teacher_modality"],
        "student_modality": r.config["student_modality"],
        "direction": r.direction,
        "seed": r.spec.seed,
        "metric": r.adapter.metric,
        "selection": r.train.selection,
        "config": r.config,
        "config_hash": r.config_hash,
        "group_hash": r.group_hash,
        "package_version": __version__,
        "git_commit": git_commit(state=code),
        "code": code,  # commit, dirty, and a hash of the diff when dirty (bench reproduce refuses dirty records)
        "versions": result_versions(r),
        "torch_version": torch.__version__,
        "device": _device_name(device),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "environment": runtime_environment(),  # threads, BLAS, torch build: what bit-identity depends on
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **({"tuned": r.config["tuned"]} if "tuned" in r.config else {}),  # bench run --tuned: study, trial, value
    }


def _dataset_origin(r: Resolved) -> dict[str, Any]:
    """Where the dataset came from (its plug-in, a bring-your-own folder), for the leaderboard's
    rerun command (:mod:`bench.report.rerun`); not identity: the same files elsewhere are the same data."""
    from bench.api.registry import DATASETS
    from bench.train.resolve import is_dataset_folder

    src = next((e.source for e in DATASETS.entries() if e.obj is type(r.adapter)), None)
    out: dict[str, Any] = {"dataset_source": src}
    if is_dataset_folder(r.spec.dataset):
        out["dataset_folder"] = str(Path(r.spec.dataset).expanduser().resolve())
    return out


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}"


_SWEPT: set[str] = set()


def prepare_results_folder(results: Path) -> None:
    """Check that ``results`` is writable and, once per process, delete the temporary files of
    atomic writes whose writer was killed (``kill -9`` mid-write leaves ``.*.tmp`` files behind)."""
    try:
        (results / "records").mkdir(parents=True, exist_ok=True)
        probe = results / "records" / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchError(f"results folder {results} is not writable: {exc.strerror or exc}") from None
    key = str(results.resolve())
    if key not in _SWEPT:
        _SWEPT.add(key)
        remove_stale_temp_files(results)
