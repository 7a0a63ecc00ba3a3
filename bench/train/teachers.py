"""Unimodal teachers: trained once per (dataset, modality, seed, schedule), cached as a checkpoint
under ``results/teachers/`` and shared by every run that needs them (a file lock makes concurrent
processes wait instead of training twice)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from bench.api.config import params_dict
from bench.api.method import Method, MethodContext
from bench.api.names import join_under
from bench.data import Split
from bench.models import Backbone
from bench.records.files import CorruptFileError, atomic_torch_save, load_torch_file
from bench.records.provenance import stable_hash
from bench.train.device import seed_everything
from bench.train.loop import fit
from bench.train.resolve import Resolved
from bench.train.stop import file_lock


def teacher_fingerprint(r: Resolved, modality: str) -> dict[str, Any]:
    t = params_dict(r.train)
    return {
        "dataset": r.adapter.fingerprint(), "modality": modality, "seed": r.spec.seed,
        "epochs": r.train.teacher_epochs,
        "train": {k: t[k] for k in ("batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                                     "min_lr", "poly_power", "step_milestones", "step_gamma", "grad_clip",
                                     "val_fraction", "split_seed", "selection")},
    }


def teacher_path(r: Resolved, modality: str) -> Path:
    fp = stable_hash(teacher_fingerprint(r, modality), 12)
    return join_under(Path(r.spec.results_dir) / "teachers", r.adapter.name, modality, f"seed{r.spec.seed}-{fp}.pt")


def teacher_resume_path(path: Path) -> Path:
    """Per-epoch checkpoint of a teacher still in training (removed once the teacher is saved)."""
    return path.with_name(path.stem + ".resume.pt")


def get_teacher(r: Resolved, splits: dict[str, Split], device: torch.device,
                on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
                on_note: Callable[[str], None] | None = None) -> tuple[Backbone, dict[str, Any]]:
    """Load the cached unimodal teacher or train it (once, under a file lock).

    Training resumes from the teacher's own per-epoch checkpoint when a process was killed while
    training it; a cached teacher file that cannot be read back is moved aside (``.corrupt``) and
    the teacher trained again, with a note."""
    modality = r.config["teacher_modality"]
    path = teacher_path(r, modality)
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            model = r.adapter.build_model(modality, r.adapter.num_classes).to(device)
            try:
                state = load_torch_file(path, "cached teacher", device, required=("model", "info"))
                model.load_state_dict(state["model"])
                return model, dict(state["info"], cached=True, checkpoint=str(path))
            except (CorruptFileError, RuntimeError) as exc:
                if not isinstance(exc, CorruptFileError):
                    exc = CorruptFileError(path, "cached teacher", exc)
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                if on_note is not None:
                    on_note(f"{exc}; moved it to {aside.name} and trained the teacher again")
        seed_everything(r.spec.seed, r.train.deterministic)
        model = r.adapter.build_model(modality, r.adapter.num_classes).to(device)
        ce = _plain_ce_method(r, modality, device)
        resumed: list[int] = []
        res = fit(adapter=r.adapter, splits=splits, student=model, student_modality=modality, method=ce,
                  teacher=None, teacher_modality=None, train=r.train, epochs=r.train.teacher_epochs,
                  seed=r.spec.seed, device=device, on_epoch=on_epoch, salt=17,
                  checkpoint=teacher_resume_path(path), on_resume=resumed.append, on_note=on_note)
        model.load_state_dict(res.best_state)
        sel = res.history[res.selected_epoch - 1]
        info = {
            "modality": modality, "epochs": r.train.teacher_epochs, "selected_epoch": res.selected_epoch,
            "selection": r.train.selection, "val_metric": sel["val_metric"], "test_metric": sel["test_metric"],
            "final_test_metric": res.history[-1]["test_metric"], "fingerprint": teacher_fingerprint(r, modality),
            **({"resumed_from_epoch": resumed[0]} if resumed else {}),
        }
        atomic_torch_save({"model": model.state_dict(), "info": info, "history": res.history}, path)
        teacher_resume_path(path).unlink(missing_ok=True)
        return model, dict(info, cached=False, checkpoint=str(path))


def _plain_ce_method(r: Resolved, modality: str, device: torch.device) -> Method:
    from bench.methods.none import NoKD

    ctx = MethodContext(r.adapter.num_classes, r.train.teacher_epochs, r.adapter.task, None, modality, device,
                        r.adapter.ignore_index)
    return NoKD(NoKD.Params(), ctx)
