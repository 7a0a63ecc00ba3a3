"""One trial: the student of a run trained exactly as :func:`bench.train.run.run` trains it, scored
on validation only. The test split is never read while tuning: splits are loaded with
``with_test=False`` (:meth:`~bench.data.DatasetAdapter.load_without_test`: a folder's test.npz or a
cache's test arrays are never loaded, so they may be absent or damaged; a folder's fingerprint only
hashes the file, as the dataset's identity), so they have no ``test`` entry, and
:func:`bench.train.loop.fit` runs with ``evaluate_test=False``; nothing downstream (teacher training
and loading, probes, the method, the epoch loop) can read it. A trial writes no record and no
checkpoint; its history (validation only) goes to ``tuning/<study>/trials/<n>.json``.

Teachers are prepared before the first trial (:func:`prepare`), by the same code and into the same
cache file as ``bench run``, on the same splits as the trials; a trial only loads them.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from bench.api.errors import BenchError, ConfigError
from bench.data import Split
from bench.train.device import resolve_device
from bench.train.loop import fit, load_splits
from bench.train.resolve import Resolved, RunSpec, resolve
from bench.train.run import build_student_and_method
from bench.train.teachers import (
    build_network,
    check_pair,
    get_teacher,
    load_teacher_checkpoint,
    teacher_epochs_to_train,
)

TRIAL_SPLITS = ("train", "val")
"""The only splits a trial is given."""


def trial_splits(r: Resolved) -> dict[str, Split]:
    """The splits of a trial: train and validation, loaded without the test split (dropped as the
    adapter hands it over, before any check could read it); no test entry at all."""
    splits = load_splits(r.adapter, r.train, with_test=False, seed=r.spec.seed)
    if "val" not in splits:
        raise ConfigError(f"dataset {r.adapter.name!r}: tuning selects on a validation split and there is none; "
                          f"set train.val_fraction > 0")
    return {k: splits[k] for k in TRIAL_SPLITS}


def prepare(spec: RunSpec, on_note: Callable[[str], None] | None = None) -> None:
    """Before a study's first trial in this process: check that the method can connect the pair
    and train (or find) the cached teacher, by the code and into the file ``bench run`` uses. It is
    trained on the trial splits, so without test: the same weights (test scores never steer
    training), scored on test by the first run that has the test split
    (:func:`bench.train.teachers.get_teacher`)."""
    r = resolve(spec)
    device = resolve_device(spec.device)
    splits = trial_splits(r)
    check_pair(r, splits, device)
    if r.method_cls.uses_teacher and teacher_epochs_to_train(r) > 0:
        get_teacher(r, splits, device, on_note=on_note)


def trial_teacher(r: Resolved, splits: dict[str, Split], device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The run's teacher, loaded (never trained, never evaluated) for a trial."""
    if r.teacher_checkpoint is not None and r.train.teacher_finetune_epochs == 0:
        model = build_network(r, "teacher", splits, device)
        load_teacher_checkpoint(r, model)
        return model, {"checkpoint": r.teacher_checkpoint.path, "source": "checkpoint"}
    if teacher_epochs_to_train(r) > 0:
        raise BenchError(f"the {r.config['teacher_modality']} teacher of {r.adapter.name} (seed {r.spec.seed}) is not "
                         f"trained: bench tune trains it before the first trial (it was removed meanwhile?)")
    model, info = get_teacher(r, splits, device)
    return model, {k: info.get(k) for k in ("checkpoint", "epochs", "selected_epoch", "val_metric")}


def run_trial(spec: RunSpec, on_epoch: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train the student of ``spec`` (trial parameters in its overrides) and return the trial's
    result: ``value`` (validation metric of the selected epoch), ``selected_epoch``, ``history``
    (validation only) and the run's config hash. ``on_epoch`` may raise to stop it (pruning)."""
    r = resolve(spec)
    if r.train.selection != "val":
        raise ConfigError("a trial selects on validation: train.selection must be val")
    device = resolve_device(spec.device)
    splits = trial_splits(r)
    needs_teacher = r.method_cls.uses_teacher
    teacher, tinfo = trial_teacher(r, splits, device) if needs_teacher else (None, None)
    student, method, plan = build_student_and_method(r, spec, splits, teacher, device)  # as bench.train.run
    s_mod, t_mod = r.config["student_modality"], r.config["teacher_modality"]
    res = fit(adapter=r.adapter, splits=splits, student=student, student_modality=s_mod, method=method,
              teacher=teacher, teacher_modality=t_mod, train=r.train, epochs=r.train.epochs, seed=spec.seed,
              device=device, checkpoint=None, on_epoch=on_epoch, plan=plan,
              teacher_key=tinfo["checkpoint"] if tinfo else None, evaluate_test=False)
    sel = res.history[res.selected_epoch - 1]
    return {"value": sel["val_metric"], "selected_epoch": res.selected_epoch,
            "history": [val_row(h) for h in res.history], "config_hash": r.config_hash, "run_id": r.run_id,
            "teacher": tinfo, "method_params": r.config["method_params"], "extra": res.extra}


def val_row(row: dict[str, Any]) -> dict[str, Any]:
    """An epoch row of a trial (``test_metric`` is None in every one: it is left out)."""
    return {k: row[k] for k in ("epoch", "lr", "train_loss", "terms", "val_metric", "seconds") if k in row}
