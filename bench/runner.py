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

import contextlib
import fcntl
import math
import os
import platform
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn as nn

from . import __version__
from .config import TrainConfig, build_params, params_dict
from .data import DatasetAdapter, Split, batch_indices, stratified_split
from .engine import Trainer, probe_outputs
from .errors import BenchError, ConfigError
from .method import Method, MethodContext
from .models import Backbone, ModelOutput
from .registry import DATASETS, METHODS
from .paths import check_component, join_under
from .results import SCHEMA_VERSION, existing_ok, read_record, record_path, write_record
from .speed import (SPEED_KEYS, BatchSource, SpeedPlan, all_off, choose_placement, decide_teacher_cache, plan_speed,
                    release_placements, to_channels_last)
from .utils import (CorruptFileError, atomic_torch_save, git_commit, load_torch_file, remove_stale_temp_files,
                    resolve_device, seed_everything, stable_hash)


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


@dataclass
class RunSpec:
    """What to run. ``overrides`` maps a scope (``train``, a method or a dataset name) to raw
    ``key -> value`` strings from ``--set``."""

    dataset: str
    teacher_modality: str
    student_modality: str
    method: str
    seed: int = 0
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    results_dir: str = "results"
    device: str = "auto"
    save_model: bool = False
    plugins: list[str] = field(default_factory=list)
    runs_per_gpu: int = 1
    """How many runs share this run's GPU (``--runs-per-gpu``): memory budgets are divided by it."""


@dataclass
class Resolved:
    spec: RunSpec
    adapter: DatasetAdapter
    method_cls: type[Method]
    method_params: Any
    train: TrainConfig
    direction: str
    run_id: str
    config: dict[str, Any]
    config_hash: str
    group_hash: str
    method_source: str
    method_source_hash: str | None


def load_plugins(paths: list[str]) -> None:
    for p in paths:
        METHODS.load_plugin_file(p)


def is_dataset_folder(name: str) -> bool:
    """A ``--datasets`` entry that is a path to a bring-your-own folder (has meta.json)."""
    return ("/" in name or name.startswith(".")) or (Path(name).expanduser() / "meta.json").exists()


def build_adapter(name: str, overrides: dict[str, dict[str, str]]) -> DatasetAdapter:
    if is_dataset_folder(name):
        cls = DATASETS.get("folder")
        folder = Path(name).expanduser()
        if not (folder / "meta.json").exists():
            raise BenchError(f"--datasets {name}: {folder} is not a dataset folder (meta.json missing)")
        probe = cls(build_params(cls.Params, {"root": str(folder.resolve())}, "folder"))
        values = {**overrides.get("folder", {}), **overrides.get(probe.name, {}), "root": str(folder.resolve())}
        return cls(build_params(cls.Params, values, probe.name))
    cls = DATASETS.get(name)
    params = build_params(cls.Params, overrides.get(cls.name, {}), cls.name)
    return cls(params)


def build_train_config(adapter: DatasetAdapter, overrides: dict[str, dict[str, str]]) -> TrainConfig:
    merged: dict[str, Any] = dict(adapter.train_defaults)
    merged.update(overrides.get("train", {}))
    return build_params(TrainConfig, merged, "train")


def resolve(spec: RunSpec) -> Resolved:
    """Validate names and overrides and compute the run's identity (no training)."""
    load_plugins(spec.plugins)
    adapter = build_adapter(spec.dataset, spec.overrides)
    mentry = METHODS.entry(spec.method)
    method_cls = mentry.obj
    known_scopes = {"train", adapter.name, "folder" if is_dataset_folder(spec.dataset) else adapter.name} | set(METHODS.names())
    for scope in spec.overrides:
        if scope not in known_scopes:
            raise ConfigError(
                f"--set {scope}.…: unknown scope {scope!r}; use 'train', the dataset name or a method name"
            )
    mparams = build_params(method_cls.Params, spec.overrides.get(method_cls.name, {}), method_cls.name)
    train = build_train_config(adapter, spec.overrides)
    t = adapter.modality(spec.teacher_modality).name
    s = adapter.modality(spec.student_modality).name
    if t == s:
        raise BenchError(f"teacher and student modality are both {s!r}")
    if adapter.task != "classification" and not method_cls.dense_ok:
        raise BenchError(
            f"method {method_cls.name!r} does not apply to {adapter.task} ({adapter.name}): {method_cls.dense_reason}"
        )
    # these become folder and file names (records, checkpoints, teachers): one gate for all of them
    check_component(adapter.name, "dataset name")
    for m in (t, s):
        check_component(m, f"dataset {adapter.name!r}: modality name")
    direction = adapter.direction_name(t, s)
    config = {
        "dataset": adapter.fingerprint(),
        "teacher_modality": t,
        "student_modality": s,
        "method": method_cls.name,
        "method_params": params_dict(mparams),
        "method_source_hash": mentry.source_hash,
        "train": {k: v for k, v in params_dict(train).items() if k not in SPEED_KEYS},
        "seed": spec.seed,
    }
    chash = stable_hash(config, 10)
    # Identity of the *cell configuration* (everything but the seed): seeds of one cell share it,
    # so tables can average over seeds and flag cells whose records disagree on anything else.
    group_hash = stable_hash({k: v for k, v in config.items() if k != "seed"}, 10)
    run_id = check_component(f"{adapter.name}_{direction}_{method_cls.name}_s{spec.seed}_{chash[:8]}", "run id")
    return Resolved(spec, adapter, method_cls, mparams, train, direction, run_id, config, chash, group_hash,
                    mentry.source, mentry.source_hash)


# --------------------------------------------------------------------------------------------
# data

_DATA_CACHE: dict[str, dict[str, Split]] = {}


def load_splits(adapter: DatasetAdapter, train: TrainConfig) -> dict[str, Split]:
    """Adapter splits plus a carved validation split when the adapter has none (cached per process)."""
    key = stable_hash({"fp": adapter.fingerprint(), "val": train.val_fraction, "split_seed": train.split_seed})
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    splits = dict(adapter.load())
    for name in ("train", "test"):
        if name not in splits:
            raise BenchError(f"dataset {adapter.name!r} produced no {name!r} split")
    mods = [m.name for m in adapter.modalities]
    for name, sp in splits.items():
        sp.check(f"{adapter.name}/{name}", mods, adapter.num_classes, adapter.ignore_index)
    if "val" not in splits:
        if train.val_fraction > 0:
            keep, held = stratified_split(splits["train"].labels, train.val_fraction, train.split_seed)
            splits["val"] = splits["train"].subset(held)
            splits["train"] = splits["train"].subset(keep)
    for name, sp in splits.items():  # an empty split would train nothing or score 0 % as a result
        if len(sp) == 0:
            raise BenchError(f"dataset {adapter.name!r}: the {name} split is empty"
                             + (f" (carved with train.val_fraction={train.val_fraction} from "
                                f"{len(splits['train'])} training samples)" if name == "val" else ""))
    if len(_DATA_CACHE) > 4:
        _DATA_CACHE.clear()
    _DATA_CACHE[key] = splits
    return splits


# --------------------------------------------------------------------------------------------
# evaluation

def evaluate(model: Backbone, adapter: DatasetAdapter, split: Split, modality: str, device: torch.device,
             batch_size: int, plan: SpeedPlan | None = None, fwd: Callable[..., ModelOutput] | None = None) -> float:
    """Top-1 accuracy (%) or mIoU (%) of ``model`` on ``split`` (counts stay on the device)."""
    plan = plan or all_off()
    fwd = fwd if fwd is not None else model
    was_training = model.training
    model.eval()
    k = adapter.num_classes
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    conf = torch.zeros(k, k, dtype=torch.long, device=device) if adapter.metric == "mIoU" else None
    source = BatchSource(split, [modality], device, plan)
    with torch.inference_mode(), plan.autocast(device):
        for s_like, li, _idx in source.iterate(list(batch_indices(len(split), batch_size, False, None, False))):
            xs, y = adapter.batch(s_like, li, [modality], device, False, None)
            logits = fwd(to_channels_last(xs[modality], plan)).logits.float()
            pred = logits.argmax(1)
            if conf is not None:
                if pred.shape[-2:] != y.shape[-2:]:
                    pred = nn.functional.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
                valid = y != adapter.ignore_index if adapter.ignore_index is not None else torch.ones_like(y, dtype=torch.bool)
                conf += torch.bincount(y[valid] * k + pred[valid], minlength=k * k).view(k, k)
            else:
                correct += (pred == y).sum()
                total += int(y.numel())
    model.train(was_training)
    if conf is not None:
        return miou_from_confusion(conf)
    return 100.0 * int(correct) / max(total, 1)


def miou_from_confusion(conf: torch.Tensor) -> float:
    """Mean IoU (%) over classes present in the ground truth or the prediction."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    present = denom > 0
    if not present.any():
        return 0.0
    return float(100.0 * (tp[present] / denom[present]).mean())


# --------------------------------------------------------------------------------------------
# optimisation

def lr_at(train: TrainConfig, epoch0: int, total: int) -> float:
    """Learning rate for 0-based ``epoch0`` of ``total`` epochs (set at the start of the epoch)."""
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "poly":  # C2KD / re-FD-CMKD convention
        return train.min_lr + (train.lr - train.min_lr) * (1 - epoch0 / total) ** train.poly_power
    if train.schedule == "cosine":
        return train.min_lr + 0.5 * (train.lr - train.min_lr) * (1 + math.cos(math.pi * epoch0 / total))
    factor = train.step_gamma ** sum(1 for m in train.step_milestones if epoch0 >= m)
    return train.lr * factor


def _epoch_seed(seed: int, epoch: int, salt: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + salt * 104_729) % (2**62)


CHECKPOINT_FIELDS = ("student", "method", "optimizer", "history", "best_state", "best_key", "selected")


def _read_resume_checkpoint(path: Path | None, device: torch.device, modules: dict[str, nn.Module], engine: Trainer,
                            on_note: Callable[[str], None] | None) -> dict[str, Any] | None:
    """The resume state in ``path``, checked against the modules it must fit before anything is
    loaded into them; a file cut short by a crash or a full disk (or one that no longer fits the
    model) is discarded, with a note, and the run starts over: resuming from it is impossible."""
    if path is None or not path.exists():
        return None
    try:
        state = load_torch_file(path, "resume checkpoint", device, required=CHECKPOINT_FIELDS)
        for name, module in modules.items():
            saved = state[name]
            if name == "method":  # Method.state_dict's layout; a plug-in's own layout is not checked
                if not (isinstance(saved, dict) and "modules" in saved):
                    continue
                saved = saved["modules"]
            have = module.state_dict()
            if saved is None or set(saved) != set(have) or any(saved[k].shape != have[k].shape for k in have):
                raise CorruptFileError(path, "resume checkpoint", ValueError(f"its {name} weights do not fit this run's model"))
        engine.load_state_dict(state)  # the optimizer checks its groups before changing anything
        return state
    except (CorruptFileError, RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
        if not isinstance(exc, CorruptFileError):
            exc = CorruptFileError(path, "resume checkpoint", exc)
        path.unlink(missing_ok=True)
        if on_note is not None:
            on_note(f"{exc}; discarded it, training starts again from epoch 1")
        return None


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]
    selected_epoch: int
    extra: dict[str, Any] = field(default_factory=dict)
    plan: SpeedPlan | None = None


def fit(
    *,
    adapter: DatasetAdapter,
    splits: dict[str, Split],
    student: Backbone,
    student_modality: str,
    method: Method,
    teacher: Backbone | None,
    teacher_modality: str | None,
    train: TrainConfig,
    epochs: int,
    seed: int,
    device: torch.device,
    checkpoint: Path | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    salt: int = 0,
    on_resume: Callable[[int], None] | None = None,
    plan: SpeedPlan | None = None,
    teacher_key: str | None = None,
    on_note: Callable[[str], None] | None = None,
) -> FitResult:
    """Train ``student`` with ``method`` for ``epochs`` epochs; evaluate every epoch.

    Selection: the epoch with the best validation metric (ties: the later epoch, as the
    reference code's ``>=``), or the best test metric when ``train.selection == "test"`` (the
    reference protocol, labelled as such in the record). ``plan``: the speed features
    (:mod:`bench.speed`; default: resolved from ``train`` for ``device``).
    """
    tr, va, te = splits["train"], splits.get("val"), splits["test"]
    if train.selection == "val" and va is None:
        raise ConfigError("selection=val needs a validation split: set train.val_fraction > 0")
    if train.pairing == "unpaired" and method.uses_teacher and teacher is not None and tr.labels.dim() != 1:
        raise ConfigError("pairing=unpaired needs image-level labels (it re-pairs samples by class)")
    plan = plan or plan_speed(train, device)
    keys = [student_modality] + ([teacher_modality] if teacher_modality and method.uses_teacher else [])
    release_placements(list(splits.values()))
    plan = choose_placement(plan, train, splits, keys, device)  # type: ignore[arg-type]
    engine = Trainer(adapter=adapter, train_split=tr, student=student, student_modality=student_modality,
                     method=method, teacher=teacher, teacher_modality=teacher_modality, train=train, device=device,
                     plan=plan, teacher_key=teacher_key)
    plan = engine.plan
    teacher_in_opt = engine.teacher_in_opt
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] = {}
    best_key = -math.inf
    selected = 0
    start_epoch = 1
    state = _read_resume_checkpoint(checkpoint, device, {"student": student, "method": method.modules,
                                     **({"teacher": teacher} if teacher_in_opt else {})}, engine, on_note)
    if state is not None:
        student.load_state_dict(state["student"])
        method.load_state_dict(state["method"])
        if teacher_in_opt and state.get("teacher") is not None:
            teacher.load_state_dict(state["teacher"])  # type: ignore[union-attr]
        history = state["history"]
        best_state = state["best_state"]
        best_key = state["best_key"]
        selected = state["selected"]
        start_epoch = len(history) + 1
        if on_resume is not None and history:
            on_resume(len(history))
    check_each_step = device.type != "cuda"  # on CUDA a per-step check would stall the GPU
    ev = dict(plan=plan, fwd=engine.student_fwd)
    for epoch in range(start_epoch, epochs + 1):
        t0 = time.perf_counter()
        lr = lr_at(train, epoch - 1, epochs)
        for g in engine.opt.param_groups:
            g["lr"] = lr
        torch.manual_seed(_epoch_seed(seed, epoch, salt))
        gen = torch.Generator().manual_seed(_epoch_seed(seed, epoch, salt + 1))
        student.train()
        method.modules.train()
        if teacher is not None:
            teacher.train(teacher_in_opt or method.teacher_train_mode)
        sums: dict[str, torch.Tensor] = {}
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        n_batches = 0
        for s_like, li, idx in engine.src.iterate(engine.batches(gen)):
            xb, y, t_idx = engine.inputs(s_like, li, idx, gen)
            t_out = engine.teacher_out(xb, t_idx)
            total, terms = engine.student_step(xb, t_out, y, epoch)
            if check_each_step and not torch.isfinite(total):
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch}: " + ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
                )
            nonfinite |= ~torch.isfinite(total.detach())
            engine.optimizer_step()
            for k, v in terms.items():
                v = v.detach().float()
                sums[k] = sums[k] + v if k in sums else v
            n_batches += 1
        means = {k: float(v) / max(n_batches, 1) for k, v in sums.items()}
        if bool(nonfinite):
            raise FloatingPointError(f"non-finite loss during epoch {epoch} (epoch means: "
                                     + ", ".join(f"{k}={v:.4g}" for k, v in means.items()) + ")")
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": sum(means.values()), "terms": means}
        row["val_metric"] = evaluate(student, adapter, va, student_modality, device, train.eval_batch_size, **ev) if va is not None else None
        row["test_metric"] = evaluate(student, adapter, te, student_modality, device, train.eval_batch_size, **ev)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        key = row["val_metric"] if train.selection == "val" else row["test_metric"]
        if key >= best_key:  # ties -> later epoch
            best_key = key
            selected = epoch
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        if checkpoint is not None:
            atomic_torch_save({
                "student": student.state_dict(), "method": method.state_dict(),
                "teacher": teacher.state_dict() if teacher_in_opt else None,  # type: ignore[union-attr]
                **engine.state_dict(), "history": history, "best_state": best_state,
                "best_key": best_key, "selected": selected,
            }, checkpoint)
        if on_epoch:
            on_epoch(epoch, row)
        if epoch < epochs:
            _check_stop("training", epoch)
    extra: dict[str, Any] = {}
    rep = getattr(method, "report", None)
    if callable(rep) and rep():
        extra["method"] = rep()
    if teacher_in_opt:
        extra["teacher_final_test_metric"] = evaluate(teacher, adapter, te, teacher_modality, device,  # type: ignore[arg-type]
                                                      train.eval_batch_size, plan=plan)
    return FitResult(history, best_state, selected, extra, plan)


# --------------------------------------------------------------------------------------------
# teachers

@contextlib.contextmanager
def file_lock(path: Path, on_wait: Callable[[str], None] | None = None):
    """An exclusive advisory lock (works across processes and SLURM tasks on a shared FS).

    The holder writes its host and pid into the lock file, so a process that has to wait can say
    for whom (``on_wait``) before it blocks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                on_wait(f"waiting for {holder}, which holds {path.name}")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
            fh.flush()
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class StopRequested(KeyboardInterrupt):
    """SIGTERM (``scancel``, a scheduler pre-empting the job, ``kill``) asked this process to stop:
    the run stops at the end of its current epoch, after that epoch's checkpoint, and writes no
    record, exactly as after Ctrl-C; running the same command again resumes it."""


_STOP = threading.Event()


def stop_on_sigterm() -> None:
    """Make SIGTERM stop training at the next epoch boundary instead of killing it mid-write or
    (SLURM, where submitit only logs SIGTERM) letting a cancelled task train on until SIGKILL and
    even finish the run after ``scancel``. The previous handler still runs. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum, frame):  # type: ignore[no-untyped-def]
        _STOP.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


def _check_stop(what: str, epoch: int) -> None:
    if _STOP.is_set():
        raise StopRequested(f"SIGTERM: {what} stopped after epoch {epoch} (its checkpoint is kept)")


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
    from .methods.none import NoKD  # the unimodal baseline is exactly teacher training

    ctx = MethodContext(r.adapter.num_classes, r.train.teacher_epochs, r.adapter.task, None, modality, device,
                        r.adapter.ignore_index)
    return NoKD(NoKD.Params(), ctx)


# --------------------------------------------------------------------------------------------
# one run

def run_id_of(spec: RunSpec) -> str:
    return resolve(spec).run_id


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
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    ckpt = join_under(results / "checkpoints", f"{r.run_id}.pt")
    if force and ckpt.exists():
        ckpt.unlink()
    base = _record_base(r, device)
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        send_note(reporter, r.run_id, message)

    needs_teacher = r.method_cls.uses_teacher
    total_epochs = r.train.epochs + (r.train.teacher_epochs if needs_teacher and not teacher_path(r, r.config["teacher_modality"]).exists() else 0)
    reporter.begin(r.run_id, total_epochs)
    try:
        splits = load_splits(r.adapter, r.train)
        teacher, tinfo = None, None
        if needs_teacher:
            teacher, tinfo = get_teacher(r, splits, device,
                                         on_epoch=lambda e, row: reporter.epoch(r.run_id, "teacher", e, row),
                                         on_note=note)
        seed_everything(spec.seed, r.train.deterministic)
        s_mod, t_mod = r.config["student_modality"], r.config["teacher_modality"]
        student = r.adapter.build_model(s_mod, r.adapter.num_classes).to(device)
        ctx = MethodContext(r.adapter.num_classes, r.train.epochs, r.adapter.task, t_mod if needs_teacher else None,
                            s_mod, device, r.adapter.ignore_index)
        method = r.method_cls(r.method_params, ctx)
        s_probe, t_probe = probe_outputs(r.adapter, splits["train"], student, teacher, s_mod, t_mod, device)
        method.setup(student, teacher, s_probe, t_probe)
        method.modules.to(device)
        plan = replace(plan_speed(r.train, device), runs_per_gpu=max(spec.runs_per_gpu, 1))
        if needs_teacher:
            plan = decide_teacher_cache(plan, method, r.adapter, t_mod, t_probe, len(splits["train"]), device)
        res = fit(adapter=r.adapter, splits=splits, student=student, student_modality=s_mod, method=method,
                  teacher=teacher, teacher_modality=t_mod, train=r.train, epochs=r.train.epochs, seed=spec.seed,
                  device=device, checkpoint=ckpt,
                  on_epoch=lambda e, row: reporter.epoch(r.run_id, "student", e, row),
                  on_resume=lambda n: base.__setitem__("resumed_from_epoch", n), plan=plan,
                  teacher_key=tinfo["checkpoint"] if tinfo else None, on_note=note)
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
        if spec.save_model:
            mpath = join_under(results / "models", f"{r.run_id}.pt")
            atomic_torch_save({"student": res.best_state, "final_student": student.state_dict(),
                               "method": method.state_dict(), "config": r.config}, mpath)
            rec["model_path"] = str(mpath)
        write_record(results, rec)  # may fail (full disk): the checkpoint stays, a rerun finishes the run
    except KeyboardInterrupt:
        raise
    except Exception as exc:
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


def _ok_record(path: Path) -> dict[str, Any] | None:
    """The ok record at ``path``, or None (absent, failed, or not a valid record)."""
    from .errors import RecordError

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
            from .utils import atomic_write_json

            atomic_write_json(path, rec)
            note(f"the rerun failed; the earlier ok record is kept, the failure is in {path}")
        else:
            write_record(results, rec)
    except OSError as werr:
        rec["error"] += f"; the failure record could not be written either ({werr.strerror or werr})"


def _checkpoint_epochs(path: Path) -> str:
    try:
        return str(len(load_torch_file(path, "resume checkpoint", required=("history",))["history"]))
    except CorruptFileError:
        return "?"


def _slurm_env() -> dict[str, Any] | None:
    """Where the run executed when it ran as a SLURM task (job, array task, requeue count)."""
    if "SLURM_JOB_ID" not in os.environ:
        return None
    keys = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_PARTITION",
            "SLURMD_NODENAME")
    return {k.lower().replace("slurm_", "").replace("slurmd_", ""): os.environ.get(k) for k in keys}


def _record_base(r: Resolved, device: torch.device) -> dict[str, Any]:
    return {
        "slurm": _slurm_env(),
        "schema": SCHEMA_VERSION,
        "run_id": r.run_id,
        "method": r.method_cls.name,
        "method_category": r.method_cls.category,
        "method_source": r.method_source,
        "method_source_hash": r.method_source_hash,
        "dataset": r.adapter.name,
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
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "device": _device_name(device),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


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
