"""The networks of a run and its teacher.

Teacher and student are built by one function (:func:`build_network`) from the backbones the
configuration chose (:mod:`bench.models.registry`); :func:`check_pair` sets the method up on fresh
networks before anything trains, so a method that cannot connect the pair refuses with a reason.

Unimodal teachers are trained once per (dataset, modality, seed, schedule, backbone, split mode), cached as
a checkpoint under ``results/teachers/`` and shared by every run that needs them (with
``train.split_mode=per_seed`` the splits are a function of the seed, so the teacher of a seed is
trained on exactly the splits every student of that seed gets) (a file lock makes
concurrent processes wait instead of training twice). A user's trained teacher
(``train.teacher_checkpoint``) is used frozen, or fine-tuned for ``train.teacher_finetune_epochs``
epochs (cached like a trained one, keyed by the file's sha256). The random-teacher control
(``train.teacher_control=random``) is the teacher network freshly initialised from the run's seed,
never trained, never cached (:func:`random_teacher`)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from bench.api.config import params_dict
from bench.api.errors import BenchError
from bench.api.method import Method, MethodContext
from bench.api.names import join_under
from bench.data import Split
from bench.data.tsets import batch_inputs, component, is_set, members
from bench.models import Backbone
from bench.models.fusion import FusionChoice, fusion_factory
from bench.models.registry import build_for, first_mismatch, load_weights_file
from bench.records.files import CorruptFileError, atomic_torch_save, load_torch_file
from bench.records.provenance import stable_hash
from bench.train.acceleration import plan_speed
from bench.train.device import seed_everything
from bench.train.loop import evaluate, fit
from bench.train.resolve import Resolved
from bench.train.step import probe_outputs
from bench.train.stop import file_lock


def teacher_fingerprint(r: Resolved, modality: str) -> dict[str, Any]:
    t = params_dict(r.train)
    fp = {
        "dataset": r.adapter.fingerprint(), "modality": modality, "seed": r.spec.seed,
        "epochs": r.train.teacher_epochs,
        "train": {k: t[k] for k in ("batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule",
                                     "min_lr", "poly_power", "step_milestones", "step_gamma", "grad_clip",
                                     "val_fraction", "split_seed", "selection")},
    }
    if r.train.split_mode != "fixed":  # per-seed splits: the teacher of a seed is trained on that seed's split
        fp["train"]["split_mode"] = r.train.split_mode  # (the seed is in the key already); fixed keeps old names
    choice = r.backbones.get("teacher")
    if is_set(modality):  # a multimodal teacher: its fusion network and every member's backbone
        fp["fusion"] = r.backbones["teacher"].identity()
    elif choice is not None and not choice.default:  # default teachers keep their file names
        fp["backbone"] = choice.identity()
    if r.teacher_checkpoint is not None:  # a fine-tuned user teacher
        fp.update(epochs=r.train.teacher_finetune_epochs, init_sha256=r.teacher_checkpoint.sha256)
    return fp


def teacher_path(r: Resolved, modality: str) -> Path:
    fp = stable_hash(teacher_fingerprint(r, modality), 12)
    return join_under(Path(r.spec.results_dir) / "teachers", r.adapter.name, component(modality), f"seed{r.spec.seed}-{fp}.pt")


def teacher_resume_path(path: Path) -> Path:
    """Per-epoch checkpoint of a teacher still in training (removed once the teacher is saved)."""
    return path.with_name(path.stem + ".resume.pt")


def teacher_epochs_to_train(r: Resolved) -> int:
    """Teacher epochs this run still has to train (0: cached, or a checkpoint used as it is)."""
    if not r.method_cls.uses_teacher or r.train.teacher_control == "random":
        return 0
    if r.teacher_checkpoint is not None:
        n = r.train.teacher_finetune_epochs
    else:
        n = r.train.teacher_epochs
    return 0 if n == 0 or teacher_path(r, r.config["teacher_modality"]).exists() else n


def build_network(r: Resolved, role: str, splits: dict[str, Split], device: torch.device) -> Backbone:
    """The ``role`` ("teacher" | "student") network of run ``r`` on ``device``: the dataset's own
    (``adapter.build_model``, exactly as before backbones could be chosen) or the chosen backbone,
    built for the modality's input as measured on two prepared training samples. A teacher set's
    network is its fusion network over each member's (:mod:`bench.models.fusion`)."""
    modality, choice = r.config[f"{role}_modality"], r.backbones[role]
    if is_set(modality):
        nets = {m: build_for(r.adapter, choice.members[m], m, splits["train"], device) for m in members(modality)}
        return fusion_factory(choice.name).build_fusion(nets, r.adapter.num_classes, r.adapter.task).to(device)
    return build_for(r.adapter, choice, modality, splits["train"], device)


def check_pair(r: Resolved, splits: dict[str, Split], device: torch.device) -> None:
    """Set the method up on freshly built networks before anything trains: a method that cannot
    connect this teacher to this student (a stage index one of them lacks, ...) refuses now, with
    the reason, instead of after the teacher has trained."""
    if not r.method_cls.uses_teacher:
        return
    s_mod, t_mod = r.config["student_modality"], r.config["teacher_modality"]
    student, teacher = build_network(r, "student", splits, device), build_network(r, "teacher", splits, device)
    s_probe, t_probe = probe_outputs(r.adapter, splits["train"], student, teacher, s_mod, t_mod, device)
    ctx = MethodContext(r.adapter.num_classes, r.train.epochs, r.adapter.task, t_mod, s_mod, device,
                        r.adapter.ignore_index)
    method = r.method_cls(r.method_params, ctx)
    try:
        if method.runs_teachers:
            nets = {m: frozen(build_network(as_teacher_of(r, m), "teacher", splits, device))
                    for m in method.extra_teachers()}
            method.attach_teachers(nets, {m: _probe(r, net, m, splits, device) for m, net in nets.items()})
        method.setup(student, teacher, s_probe, t_probe)
    except Exception as exc:
        t_c, s_c = r.backbones["teacher"], r.backbones["student"]
        why = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
        if t_probe is not None and not t_probe.feature_maps:
            why += f" (the teacher of direction {r.direction} has no stage maps: {NO_MAPS})"
        raise BenchError(f"method {r.method_cls.name!r} cannot distil teacher {t_c.describe()} on {t_mod} "
                         f"({_maps(t_probe)}) into student {s_c.describe()} on {s_mod} ({_maps(s_probe)}): "
                         f"{why}") from exc
    refuse_without_maps(r, method, t_probe)


def as_teacher_of(r: Resolved, modality: str) -> Resolved:
    """Run ``r`` seen from the unimodal teacher of ``modality`` (one member of its teacher set):
    the same cache key as that modality's teacher in a cross-modal run of these settings."""
    choice = r.backbones["teacher"]
    member = choice.members[modality] if isinstance(choice, FusionChoice) else choice
    return replace(r, config={**r.config, "teacher_modality": modality}, backbones={**r.backbones, "teacher": member})


def frozen(net: Backbone) -> Backbone:
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def extra_teachers(r: Resolved, method: Method, splits: dict[str, Split], device: torch.device,
                   on_note: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The cached unimodal teachers a method that runs its teachers itself asks for (trained once
    under their lock, like any teacher), frozen, and what the record says about them."""
    nets, infos = {}, {}
    for m in method.extra_teachers():
        net, info = get_teacher(as_teacher_of(r, m), splits, device, on_note=on_note)
        nets[m], infos[m] = frozen(net), info
    method.attach_teachers(nets, {m: _probe(r, net, m, splits, device) for m, net in nets.items()})
    return infos


def _probe(r: Resolved, net: Backbone, modality: str, splits: dict[str, Split], device: torch.device) -> Any:
    """``net``'s outputs on two training samples of ``modality`` (eval mode, no grad)."""
    xb, _ = batch_inputs(r.adapter, splits["train"], torch.arange(min(2, len(splits["train"]))), [modality],
                         device, False, None)
    with torch.no_grad():
        return net(xb[modality])


MAP_FIELDS = ("feature_maps", "preact_maps")


NO_MAPS = "a fusion of pooled features exposes only the fused feature vector and logits; use a logit- or vector-based method"


def refuse_without_maps(r: Resolved, method: Method, t_probe: Any) -> None:
    """A method that reads the teacher's stage maps cannot use a teacher that has none (the fusion
    teacher of a teacher set): refuse, naming the direction, before anything trains."""
    if t_probe is None or t_probe.feature_maps:
        return
    reads = sorted(f for f in method.teacher_cache_fields() or () if f.startswith(MAP_FIELDS))
    if reads:
        raise BenchError(f"method {r.method_cls.name!r} reads the teacher's stage maps ({', '.join(reads)}); the "
                         f"teacher of direction {r.direction} ({r.backbones['teacher'].name}) has none: {NO_MAPS}")


def _maps(out: Any) -> str:
    chans = [int(m.shape[1]) for m in out.feature_maps]
    return f"{len(chans)} stage map{'s' if len(chans) != 1 else ''}, channels {chans}"


def backbone_record(r: Resolved, student: Backbone | None = None, teacher: Backbone | None = None) -> dict[str, Any]:
    """What the record says about the two networks (name, parameters, default or not, size)."""
    out: dict[str, Any] = {}
    roles = (("teacher", teacher), ("student", student)) if r.method_cls.uses_teacher else (("student", student),)
    for role, net in roles:
        c = r.backbones[role]
        out[role] = {**c.identity(), "default": c.default, "source": c.source,
                     **({"parameters": sum(p.numel() for p in net.parameters())} if net is not None else {})}
    return out


def load_teacher_checkpoint(r: Resolved, model: Backbone) -> None:
    """Load the user's teacher into ``model`` or raise naming the file and the first offending key."""
    ck = r.teacher_checkpoint
    assert ck is not None
    state = load_weights_file(ck.path, "train.teacher_checkpoint")
    problem = first_mismatch(model.state_dict(), state)
    if problem is not None:
        raise BenchError(f"teacher checkpoint {ck.path} does not fit the teacher backbone "
                         f"{r.backbones['teacher'].describe()} on {r.config['teacher_modality']}: {problem}")
    model.load_state_dict(state)


def get_teacher(r: Resolved, splits: dict[str, Split], device: torch.device,
                on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
                on_note: Callable[[str], None] | None = None) -> tuple[Backbone, dict[str, Any]]:
    """Load the cached unimodal teacher or train it (once, under a file lock).

    Training resumes from the teacher's own per-epoch checkpoint when a process was killed while
    training it; a cached teacher file that cannot be read back is moved aside (``.corrupt``) and
    the teacher trained again, with a note."""
    modality = r.config["teacher_modality"]
    if r.train.teacher_control == "random":
        return random_teacher(r, splits, device)
    if r.teacher_checkpoint is not None and r.train.teacher_finetune_epochs == 0 and not is_set(modality):
        return _frozen_checkpoint_teacher(r, splits, device)
    path = teacher_path(r, modality)
    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            model = build_network(r, "teacher", splits, device)
            try:
                state = load_torch_file(path, "cached teacher", device, required=("model", "info"),
                                        remedy="Delete it to train the teacher again")
                model.load_state_dict(state["model"])
                info = state["info"]
                if "test" in splits and info.get("test_metric") is None:  # trained while tuning
                    info = _score_on_test(r, path, state, model, splits, device)
                return model, dict(info, cached=True, checkpoint=str(path))
            except (CorruptFileError, RuntimeError) as exc:
                if not isinstance(exc, CorruptFileError):
                    exc = CorruptFileError(path, "cached teacher", exc)
                aside = path.with_name(path.name + ".corrupt")
                os.replace(path, aside)
                if on_note is not None:
                    on_note(f"{exc}; moved it to {aside.name} and trained the teacher again")
        seed_everything(r.spec.seed, r.train.deterministic)
        model = build_network(r, "teacher", splits, device)
        epochs = r.train.teacher_epochs
        if r.teacher_checkpoint is not None:
            load_teacher_checkpoint(r, model)
            epochs = r.train.teacher_finetune_epochs
        ce = _plain_ce_method(r, modality, device, epochs)
        resumed: list[int] = []
        with_test = "test" in splits  # bench tune trains it without (tuning never reads the test split)
        res = fit(adapter=r.adapter, splits=splits, student=model, student_modality=modality, method=ce,
                  teacher=None, teacher_modality=None, train=r.train, epochs=epochs,
                  seed=r.spec.seed, device=device, on_epoch=on_epoch, salt=17,
                  checkpoint=teacher_resume_path(path), on_resume=resumed.append, on_note=on_note,
                  evaluate_test=with_test)
        last_unscored = res.history[-1]["test_metric"] is None
        final = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                 if last_unscored and res.selected_epoch != len(res.history) else None)
        model.load_state_dict(res.best_state)
        sel = res.history[res.selected_epoch - 1]
        info = {
            "modality": modality, "epochs": epochs, "selected_epoch": res.selected_epoch,
            "selection": r.train.selection, "val_metric": sel["val_metric"], "test_metric": sel["test_metric"],
            "final_test_metric": res.history[-1]["test_metric"], "fingerprint": teacher_fingerprint(r, modality),
            **({"resumed_from_epoch": resumed[0]} if resumed else {}),
            **({"finetuned_from": r.teacher_checkpoint.path, "finetuned_from_sha256": r.teacher_checkpoint.sha256}
               if r.teacher_checkpoint is not None else {}),
        }
        state = {"model": model.state_dict(), "info": info, "history": res.history,
                 **({"final_model": final} if final is not None else {})}
        if with_test and None in (info["test_metric"], info["final_test_metric"]):  # resumed from tuning's epochs
            info = _score_on_test(r, path, state, model, splits, device)
        else:
            atomic_torch_save(state, path)
        teacher_resume_path(path).unlink(missing_ok=True)
        return model, dict(info, cached=False, checkpoint=str(path))


def _score_on_test(r: Resolved, path: Path, state: dict[str, Any], model: Backbone, splits: dict[str, Split],
                   device: torch.device) -> dict[str, Any]:
    """The test scores of a teacher that ``bench tune`` trained (tuning never reads the test split,
    so it kept the last epoch's weights too, ``final_model``, when another epoch was selected): the
    first run that has the test split scores the selected and the last epoch's weights, as training
    would have each epoch, and completes the cached file (same path: the teacher's identity never
    depended on test)."""
    modality = r.config["teacher_modality"]
    plan, bs, test = plan_speed(r.train, device), r.train.eval_batch_size, splits["test"]
    info = dict(state["info"])
    if info.get("test_metric") is None:
        info["test_metric"] = evaluate(model, r.adapter, test, modality, device, bs, plan=plan)
    if info.get("final_test_metric") is None:
        if state.get("final_model") is None:  # the selected epoch is the last one
            info["final_test_metric"] = info["test_metric"]
        else:
            last = build_network(r, "teacher", splits, device)
            last.load_state_dict(state["final_model"])
            info["final_test_metric"] = evaluate(last, r.adapter, test, modality, device, bs, plan=plan)
    atomic_torch_save({"model": state["model"], "info": info, "history": state.get("history", [])}, path)
    return info


def _frozen_checkpoint_teacher(r: Resolved, splits: dict[str, Split],
                               device: torch.device) -> tuple[Backbone, dict[str, Any]]:
    """The user's teacher as it is: loaded, evaluated once on validation and test (its metrics go
    into the record, comparable with a teacher this package trained), never trained."""
    ck = r.teacher_checkpoint
    assert ck is not None
    modality = r.config["teacher_modality"]
    model = build_network(r, "teacher", splits, device)
    load_teacher_checkpoint(r, model)
    info = {"modality": modality, "epochs": 0, "source": "checkpoint", "checkpoint": ck.path, "sha256": ck.sha256,
            **_scores(r, model, splits, modality, device), "cached": True}
    return model, info


def random_teacher(r: Resolved, splits: dict[str, Split], device: torch.device) -> tuple[Backbone, dict[str, Any]]:
    """The random-teacher control: the teacher network as a trained teacher of this seed starts
    (seeded like :func:`get_teacher` before it trains), never trained and never written to or read
    from ``results/teachers/``. Methods that train their teacher with the student (DML, C2KD) start
    from it. Evaluated once, so the record shows what it knows (about chance)."""
    modality = r.config["teacher_modality"]
    seed_everything(r.spec.seed, r.train.deterministic)
    model = build_network(r, "teacher", splits, device)
    info = {"modality": modality, "epochs": 0, "source": "random",
            "control": "random teacher: freshly initialised from the run seed, never trained",
            **_scores(r, model, splits, modality, device), "cached": False, "checkpoint": None}
    return model, info


def _scores(r: Resolved, model: Backbone, splits: dict[str, Split], modality: str,
            device: torch.device) -> dict[str, float | None]:
    """An untrained-here teacher's validation and test metrics (None for a split that is absent)."""
    bs = r.train.eval_batch_size
    return {f"{s}_metric": evaluate(model, r.adapter, splits[s], modality, device, bs) if s in splits else None
            for s in ("val", "test")}


def _plain_ce_method(r: Resolved, modality: str, device: torch.device, epochs: int) -> Method:
    from bench.methods.none import NoKD

    ctx = MethodContext(r.adapter.num_classes, epochs, r.adapter.task, None, modality, device, r.adapter.ignore_index)
    return NoKD(NoKD.Params(), ctx)


def refusal(spec: Any) -> str | None:
    """Why the method of ``spec`` cannot connect its teacher to its student (:func:`check_pair` on
    fresh CPU networks, the first seed's splits), or None. The grid asks this once per (dataset,
    direction, method) for the methods a group such as ``all`` brought in, so ``--methods all`` on
    a benchmark whose networks lack what a method needs (spatial maps on mfeat's MLPs) leaves that
    method out with the reason instead of failing the grid."""
    from bench.train.loop import load_splits
    from bench.train.resolve import resolve

    r = resolve(spec)
    if not r.method_cls.uses_teacher:
        return None
    splits = load_splits(r.adapter, r.train, seed=spec.seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            check_pair(r, splits, torch.device("cpu"))
    except BenchError as exc:
        return str(exc)
    return None
