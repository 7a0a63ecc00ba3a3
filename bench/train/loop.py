"""The epoch loop of one model: training epochs, evaluation on validation and test after every
epoch, epoch selection on validation (never test), per-epoch checkpoints and exact resume.

Reproducibility. Each epoch reseeds the global and the batch-order RNG from (seed, epoch), so
a run resumed from its per-epoch checkpoint continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from bench.api.config import TrainConfig, split_seed_of
from bench.api.errors import BenchError, ConfigError
from bench.api.method import Method
from bench.data import DatasetAdapter, Split, batch_indices, stratified_split
from bench.data.adapter import concat_splits, redraw_indices
from bench.data.tsets import batch_inputs, expand
from bench.models import Backbone, ModelOutput
from bench.records.files import CorruptFileError, atomic_torch_save, load_torch_file
from bench.records.provenance import stable_hash
from bench.train.acceleration import SpeedPlan, all_off, plan_speed, to_channels_last
from bench.train.placement import BatchSource, choose_placement, release_placements
from bench.train.step import Trainer
from bench.train.stop import _check_stop

_DATA_CACHE: dict[str, dict[str, Split]] = {}


def load_splits(adapter: DatasetAdapter, train: TrainConfig, with_test: bool = True,
                seed: int | None = None) -> dict[str, Split]:
    """Adapter splits plus a carved validation split when the adapter has none (cached per process).

    ``with_test=False`` (tuning): the adapter loads without its test split
    (:meth:`~bench.data.DatasetAdapter.load_without_test`: a file-backed adapter never opens it),
    and the result has no ``test`` entry.

    ``train.split_mode``: ``fixed`` (default) carves validation with ``train.split_seed`` and keeps
    the adapter's splits as prepared, whatever the run's seed. ``per_seed`` draws from ``seed``
    (the run's seed, required): first the splits the dataset's own protocol drew
    (:attr:`~bench.data.DatasetAdapter.redrawn_splits`: mfeat's train/val/test, AV-Digits' and
    synthetic's train/test) are pooled and drawn again, class counts kept
    (:func:`~bench.data.adapter.redraw_indices`), then validation is carved from the new train.
    Official split files are never redrawn. Everything is drawn from one prepared cache, at load
    time; what preparation fitted on its own training rows (mfeat's standardisation, AV-Digits'
    MFCC z-score and the 'hard' preset's image PCA) stays fitted on the preparation split (it is in
    the cached arrays): input statistics, never labels, of some of a seed's test rows enter those
    fits. Every method of one seed gets the same splits (the draw depends on nothing else), and so
    does its teacher. Tuning (``with_test=False``) of a dataset whose test split is redrawn loads
    it to draw, then drops it: a trial's train/val are the run's at that seed.

    Every split's ``meta["rows"]`` holds its samples' positions in the adapter's splits taken in
    the order train, val, test (what :func:`bench.records.predictions.split_fingerprints` hashes)."""
    mode = getattr(train, "split_mode", "fixed")
    sseed = split_seed_of(train, seed)
    redraw = tuple(n for n in adapter.redrawn_splits if n in ("train", "val", "test")) if mode == "per_seed" else ()
    if redraw:
        problem = adapter.redraw_problem()
        if problem:
            raise ConfigError(f"train.split_mode=per_seed: dataset {adapter.name!r} cannot draw its splits per seed: {problem}")
    key = stable_hash({"fp": adapter.fingerprint(), "val": train.val_fraction, "split_seed": sseed,
                       **({"mode": mode} if mode != "fixed" else {})})
    if not with_test:
        if key in _DATA_CACHE:
            return {k: v for k, v in _DATA_CACHE[key].items() if k != "test"}
        key += "-without-test"
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]
    load_test = with_test or "test" in redraw  # a test split that is drawn per seed is needed to draw it
    splits = dict(adapter.load() if load_test else adapter.load_without_test())
    if not load_test:
        splits.pop("test", None)  # a plug-in's override that hands it over anyway: never checked nor used
    for name in ("train", "test") if load_test else ("train",):
        if name not in splits:
            raise BenchError(f"dataset {adapter.name!r} produced no {name!r} split")
    mods = [m.name for m in adapter.modalities]
    for name, sp in splits.items():
        sp.check(f"{adapter.name}/{name}", mods, adapter.num_classes, adapter.ignore_index)
    rows, offset = {}, 0
    for name in sorted(splits, key=lambda n: (SPLIT_ORDER.index(n) if n in SPLIT_ORDER else len(SPLIT_ORDER), n)):
        rows[name] = torch.arange(offset, offset + len(splits[name]))
        offset += len(splits[name])
    pooled = [n for n in ("train", "val", "test") if n in redraw and n in splits]
    if len(pooled) > 1:
        pool = concat_splits([splits[n] for n in pooled])
        pool_rows = torch.cat([rows[n] for n in pooled])
        for name, idx in redraw_indices({n: splits[n].labels for n in pooled}, sseed).items():
            splits[name], rows[name] = pool.subset(idx), pool_rows[idx]
    if "val" not in splits:
        if train.val_fraction > 0:
            keep, held = stratified_split(splits["train"].labels, train.val_fraction, sseed)
            splits["val"], rows["val"] = splits["train"].subset(held), rows["train"][held]
            splits["train"], rows["train"] = splits["train"].subset(keep), rows["train"][keep]
    if not with_test:
        splits.pop("test", None)
    for name, sp in splits.items():  # an empty split would train nothing or score 0 % as a result
        if len(sp) == 0:
            raise BenchError(f"dataset {adapter.name!r}: the {name} split is empty"
                             + (f" (carved with train.val_fraction={train.val_fraction} from "
                                f"{len(splits['train'])} training samples)" if name == "val" else ""))
        sp.meta["rows"] = rows[name]
    if len(_DATA_CACHE) > 4:
        _DATA_CACHE.clear()
    _DATA_CACHE[key] = splits
    return splits


SPLIT_ORDER = ("train", "val", "test")


def split_summary(train: TrainConfig, adapter: DatasetAdapter, splits: dict[str, Split],
                  seed: int | None) -> dict[str, Any]:
    """What a record says about its splits: the mode, the seed they were drawn with, which of
    them were drawn again per seed, their sizes."""
    mode = getattr(train, "split_mode", "fixed")
    redrawn = [n for n in SPLIT_ORDER if n in adapter.redrawn_splits and n in splits] if mode == "per_seed" else []
    return {"mode": mode, "seed": split_seed_of(train, seed), "redrawn": redrawn,
            "sizes": {n: len(sp) for n, sp in splits.items()}}


def evaluate(model: Backbone, adapter: DatasetAdapter, split: Split, modality: str, device: torch.device,
             batch_size: int, plan: SpeedPlan | None = None, fwd: Callable[..., ModelOutput] | None = None) -> float:
    """Top-1 accuracy (%) or mIoU (%) of ``model`` on ``split`` (counts stay on the device)."""
    return _evaluate(model, adapter, split, modality, device, batch_size, plan, fwd, collect=False)[0]


def evaluate_with_predictions(model: Backbone, adapter: DatasetAdapter, split: Split, modality: str,
                              device: torch.device, batch_size: int, plan: SpeedPlan | None = None,
                              fwd: Callable[..., ModelOutput] | None = None) -> tuple[float, dict[str, torch.Tensor]]:
    """:func:`evaluate`, and what it scored, per sample in the split's order (on the CPU): ``pred``
    (predicted class) with ``topk_values`` (float16) and ``topk_indices`` (int16) of the TOP_K
    largest logits for classification; ``confusion`` (per image, int32 ``[n, k, k]``, rows = label,
    columns = prediction) for dense tasks, never pixels. :func:`score_predictions` of them gives
    the metric back exactly."""
    return _evaluate(model, adapter, split, modality, device, batch_size, plan, fwd, collect=True)  # type: ignore[return-value]


TOP_K = 5
"""How many of the largest logits a run's predictions file keeps per sample (classification)."""


def _evaluate(model: Backbone, adapter: DatasetAdapter, split: Split, modality: str, device: torch.device,
              batch_size: int, plan: SpeedPlan | None, fwd: Callable[..., ModelOutput] | None,
              collect: bool) -> tuple[float, dict[str, torch.Tensor] | None]:
    plan = plan or all_off()
    fwd = fwd if fwd is not None else model
    was_training = model.training
    model.eval()
    k = adapter.num_classes
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    conf = torch.zeros(k, k, dtype=torch.long, device=device) if adapter.metric == "mIoU" else None
    kept: dict[str, list[torch.Tensor]] = {}
    source = BatchSource(split, [modality], device, plan)
    with torch.inference_mode(), plan.autocast(device):
        for s_like, li, _idx in source.iterate(list(batch_indices(len(split), batch_size, False, None, False))):
            xs, y = batch_inputs(adapter, s_like, li, [modality], device, False, None)
            logits = fwd(to_channels_last(xs[modality], plan)).logits.float()
            pred = logits.argmax(1)
            if conf is not None:
                if pred.shape[-2:] != y.shape[-2:]:
                    pred = nn.functional.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
                valid = y != adapter.ignore_index if adapter.ignore_index is not None else torch.ones_like(y, dtype=torch.bool)
                if collect:  # one k x k table per image: the sum over images is `conf`
                    img = torch.arange(y.shape[0], device=device).view(-1, *([1] * (y.dim() - 1))).expand_as(y)
                    per = torch.bincount((img[valid] * k + y[valid]) * k + pred[valid], minlength=y.shape[0] * k * k)
                    per = per.view(-1, k, k)
                    conf += per.sum(0)
                    kept.setdefault("confusion", []).append(per.to(torch.int32))
                else:
                    conf += torch.bincount(y[valid] * k + pred[valid], minlength=k * k).view(k, k)
            else:
                correct += (pred == y).sum()
                total += int(y.numel())
                if collect:
                    top = logits.topk(min(TOP_K, k), dim=1)
                    kept.setdefault("pred", []).append(pred.to(torch.int32))
                    kept.setdefault("topk_values", []).append(top.values.to(torch.float16))
                    kept.setdefault("topk_indices", []).append(top.indices.to(torch.int16 if k <= 32767 else torch.int32))
    model.train(was_training)
    preds = {name: torch.cat(parts).cpu() for name, parts in kept.items()} if collect else None
    if conf is not None:
        return miou_from_confusion(conf), preds
    return accuracy_from_counts(int(correct), total), preds


def accuracy_from_counts(correct: int, total: int) -> float:
    """Top-1 accuracy (%) from the number of correct predictions and of predictions."""
    return 100.0 * int(correct) / max(int(total), 1)


def score_predictions(metric: str, preds: dict[str, torch.Tensor], labels: torch.Tensor | None) -> float:
    """The metric of stored predictions (:func:`evaluate_with_predictions`), computed as
    :func:`evaluate` computes it: mIoU from the summed per-image confusion counts, accuracy from
    ``pred`` against ``labels``."""
    if metric == "mIoU":
        return miou_from_confusion(torch.as_tensor(preds["confusion"]).long().sum(0))
    pred, y = torch.as_tensor(preds["pred"]).long(), torch.as_tensor(labels).long()
    return accuracy_from_counts(int((pred == y).sum()), int(y.numel()))


def miou_from_confusion(conf: torch.Tensor) -> float:
    """Mean IoU (%) over classes present in the ground truth or the prediction."""
    conf = conf.double()
    tp = conf.diag()
    denom = conf.sum(0) + conf.sum(1) - tp
    present = denom > 0
    if not present.any():
        return 0.0
    return float(100.0 * (tp[present] / denom[present]).mean())


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
        state = load_torch_file(path, "resume checkpoint", device, required=CHECKPOINT_FIELDS,
                                remedy="Delete it to train the run again from epoch 1")
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
    predictions: dict[str, dict[str, dict[str, torch.Tensor]]] | None = None
    """With ``collect_predictions``: ``{"selected": {split: arrays}, "last": {split: arrays}}``, the
    :func:`evaluate_with_predictions` arrays of the evaluated splits at the selected and the last epoch."""


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
    evaluate_test: bool = True,
    collect_predictions: bool = False,
) -> FitResult:
    """Train ``student`` with ``method`` for ``epochs`` epochs; evaluate every epoch.

    Selection: the epoch with the best validation metric (ties: the later epoch, as the
    reference code's ``>=``), or the best test metric when ``train.selection == "test"`` (the
    reference protocol, labelled as such in the record). ``plan``: the speed features
    (:mod:`bench.train.acceleration`; default: resolved from ``train`` for ``device``).
    ``evaluate_test=False`` (tuning trials): ``splits`` need no test entry and test is never read;
    every ``test_metric`` is None. ``collect_predictions``: keep the per-sample predictions of the
    selected and of the last epoch (:attr:`FitResult.predictions`), in the epoch checkpoint too, so
    that a resumed run has them; a checkpoint written before they were kept is completed by
    evaluating the selected and the last weights again.
    """
    tr, va = splits["train"], splits.get("val")
    te = splits["test"] if evaluate_test else None
    if train.selection == "val" and va is None:
        raise ConfigError("selection=val needs a validation split: set train.val_fraction > 0")
    if not evaluate_test and train.selection != "val":
        raise ConfigError("without test evaluation the epoch is selected on validation: train.selection must be val")
    if train.pairing == "unpaired" and method.uses_teacher and teacher is not None and tr.labels.dim() != 1:
        raise ConfigError("pairing=unpaired needs image-level labels (it re-pairs samples by class)")
    plan = plan or plan_speed(train, device)
    keys = expand([student_modality] + ([teacher_modality] if teacher_modality and method.uses_teacher else []))
    release_placements(list(splits.values()))
    plan = choose_placement(plan, train, splits, keys, device)  # type: ignore[arg-type]
    engine = Trainer(adapter=adapter, train_split=tr, student=student, student_modality=student_modality,
                     method=method, teacher=teacher, teacher_modality=teacher_modality, train=train, device=device,
                     plan=plan, teacher_key=teacher_key, seed=seed)
    plan = engine.plan
    teacher_in_opt = engine.teacher_in_opt
    history: list[dict[str, Any]] = []
    best_state: dict[str, torch.Tensor] = {}
    best_key = -math.inf
    selected = 0
    start_epoch = 1
    kept: dict[str, dict[str, dict[str, torch.Tensor]]] = {}  # "selected" / "last" -> split -> arrays
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
        if collect_predictions and isinstance(state.get("predictions"), dict):
            kept = {k: v for k, v in state["predictions"].items() if k in ("selected", "last") and isinstance(v, dict)}
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
        if collect_predictions:
            now: dict[str, dict[str, torch.Tensor]] = {}
            for name, sp in (("val", va), ("test", te)):
                row[f"{name}_metric"] = None
                if sp is not None:
                    row[f"{name}_metric"], now[name] = evaluate_with_predictions(
                        student, adapter, sp, student_modality, device, train.eval_batch_size, **ev)
            kept["last"] = now
        else:
            row["val_metric"] = evaluate(student, adapter, va, student_modality, device, train.eval_batch_size, **ev) if va is not None else None
            row["test_metric"] = (evaluate(student, adapter, te, student_modality, device, train.eval_batch_size, **ev)
                                  if te is not None else None)
        row["seconds"] = time.perf_counter() - t0
        history.append(row)
        key = row["val_metric"] if train.selection == "val" else row["test_metric"]
        if key >= best_key:  # ties -> later epoch
            best_key = key
            selected = epoch
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
            if collect_predictions:
                kept["selected"] = kept["last"]
        if checkpoint is not None:
            atomic_torch_save({
                "student": student.state_dict(), "method": method.state_dict(),
                "teacher": teacher.state_dict() if teacher_in_opt else None,  # type: ignore[union-attr]
                **engine.state_dict(), "history": history, "best_state": best_state,
                "best_key": best_key, "selected": selected,
                **({"predictions": kept} if collect_predictions else {}),
            }, checkpoint)
        if on_epoch:
            on_epoch(epoch, row)
        if epoch < epochs:
            _check_stop("training", epoch)
    extra: dict[str, Any] = {}
    rep = getattr(method, "report", None)
    if callable(rep) and rep():
        extra["method"] = rep()
    if teacher_in_opt and te is not None:
        extra["teacher_final_test_metric"] = evaluate(teacher, adapter, te, teacher_modality, device,  # type: ignore[arg-type]
                                                      train.eval_batch_size, plan=plan)
    predictions = None
    if collect_predictions:
        splits_now = {"val": va, "test": te}
        for which, weights, epoch_no in (("last", None, len(history)), ("selected", best_state, selected)):
            if which not in kept:  # resumed from a checkpoint that did not keep them: evaluate those weights again
                kept[which] = _predict_again(student, weights, adapter, splits_now, student_modality, device, train,
                                             history[epoch_no - 1], ev, on_note, which, epoch_no)
        predictions = kept
    return FitResult(history, best_state, selected, extra, plan, predictions)


def _predict_again(student: Backbone, weights: dict[str, torch.Tensor] | None, adapter: DatasetAdapter,
                   splits: dict[str, Split | None], modality: str, device: torch.device, train: TrainConfig,
                   row: dict[str, Any], ev: dict[str, Any], on_note: Callable[[str], None] | None, which: str,
                   epoch: int) -> dict[str, dict[str, torch.Tensor]]:
    """The predictions of ``weights`` (None: the student as it is), evaluated now; a metric that
    does not come out as the history's (a nondeterministic kernel) is noted: ``bench results
    --verify`` will then report the record."""
    saved = None
    if weights is not None:
        saved = {k: v.detach().clone() for k, v in student.state_dict().items()}
        student.load_state_dict(weights)
    out: dict[str, dict[str, torch.Tensor]] = {}
    try:
        for name, sp in splits.items():
            if sp is None:
                continue
            metric, out[name] = evaluate_with_predictions(student, adapter, sp, modality, device,
                                                          train.eval_batch_size, **ev)
            if metric != row.get(f"{name}_metric") and on_note is not None:
                on_note(f"the {which} epoch's ({epoch}) {name} predictions, evaluated again after resuming, score "
                        f"{metric!r}, the history {row.get(f'{name}_metric')!r}")
    finally:
        if saved is not None:
            student.load_state_dict(saved)
    return out
