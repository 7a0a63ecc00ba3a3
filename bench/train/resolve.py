"""What to run: a :class:`RunSpec` from the command line, validated and resolved into adapter,
method, training settings and the run's identity (config hash, run id) before anything trains."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api.compose import SEPARATOR, WEIGHT, composition_class, composition_params, encode, is_composition
from bench.api.config import TrainConfig, build_params, hashed_params, hashed_train, params_dict
from bench.api.errors import BenchError, ConfigError
from bench.api.method import Method
from bench.api.names import check_component, resolve_path
from bench.api.registry import BACKBONES, DATASETS, METHODS
from bench.data import DatasetAdapter
from bench.data.tsets import canonical, check_set, is_set, members, parse_teacher
from bench.models.fusion import DEFAULT_FUSION, FusionChoice, fusion_factory
from bench.models.registry import BackboneChoice, backbone_params, check_fits, spec_of
from bench.records.provenance import stable_hash
from bench.train.teacher_outputs import check_teacher_control

ROLES = ("teacher", "student")
"""Scopes of the backbone parameters: ``--set teacher.KEY=V`` / ``--set student.KEY=V``."""


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
    tuned: dict[str, Any] | None = None
    """``bench run --tuned``: the study and trial whose parameters are in ``overrides`` (part of the
    run's identity, labelled "tuned" in tables); None for every other run, whose hash it leaves alone."""


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
    backbones: dict[str, BackboneChoice] = field(default_factory=dict)
    """The teacher's and the student's network (``default``: the dataset's own)."""
    teacher_checkpoint: TeacherCheckpoint | None = None


@dataclass(frozen=True)
class TeacherCheckpoint:
    """A user's trained teacher (``train.teacher_checkpoint``): the file and its content hash."""

    path: str
    sha256: str


def load_plugins(paths: list[str]) -> None:
    from bench.api.registry import load_plugin_file

    for p in paths:
        load_plugin_file(p)


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
    known_scopes = ({"train", adapter.name, "folder" if is_dataset_folder(spec.dataset) else adapter.name, *ROLES}
                    | set(METHODS.names()))
    for scope in spec.overrides:
        if scope not in known_scopes:
            raise ConfigError(
                f"--set {scope}.…: unknown scope {scope!r}; use 'train', the dataset name, a method name, "
                f"or 'teacher' / 'student' (backbone parameters)"
            )
    method_cls, mparams, ident, (msource, msource_hash) = resolve_method(spec)
    train = build_train_config(adapter, spec.overrides)
    t = parse_teacher(adapter, spec.teacher_modality)  # a modality, the student's own, or a teacher set
    s = adapter.modality(spec.student_modality).name
    check_set(adapter, t, s)
    if method_cls.requires_teacher_set and not is_set(t):
        raise BenchError(f"method {method_cls.name!r} distils a mixture of a multimodal and a cross-modal teacher: it "
                         f"needs a teacher-set direction (e.g. {adapter.direction_name(canonical(adapter, [t, s]), s) if t != s else 'av2v'}); "
                         f"{adapter.direction_name(t, s)} has one teacher")
    if method_cls.runs_teachers and (train.teacher_control != "none" or train.pairing != "paired"):
        raise ConfigError(f"method {method_cls.name!r} runs its teachers itself on the step's paired inputs: "
                          f"train.teacher_control={train.teacher_control} / train.pairing={train.pairing} would not "
                          f"reach its teachers (only none / paired apply)")
    if adapter.task != "classification" and not method_cls.dense_ok:
        raise BenchError(
            f"method {method_cls.name!r} does not apply to {adapter.task} ({adapter.name}): {method_cls.dense_reason}"
        )
    # these become folder and file names (records, checkpoints, teachers): one gate for all of them
    check_component(adapter.name, "dataset name")
    for m in (*members(t), s):
        check_component(m, f"dataset {adapter.name!r}: modality name")
    direction = adapter.direction_name(t, s)
    config = {
        "dataset": adapter.fingerprint(),  # settles preparation settings read from a cache (before the backbones)
        "teacher_modality": t,
        "student_modality": s,
        "method": method_cls.name,
        **ident,  # method_params (a later switch at its default leaves the hash alone), method_source_hash
        "train": hashed_train(train),
        "seed": spec.seed,
    }
    check_teacher_control(train, adapter, method_cls)
    uses_teacher = method_cls.uses_teacher
    backbones = {role: resolve_backbone(adapter, role, mod, getattr(train, f"{role}_backbone"),
                                        spec.overrides.get(role, {}) if uses_teacher or role == "student" else {},
                                        train.teacher_fusion)
                 for role, mod in (("teacher", t), ("student", s))}
    ckpt = resolve_teacher_checkpoint(train)
    if ckpt is not None and is_set(t) and uses_teacher:
        raise ConfigError(f"train.teacher_checkpoint with the teacher set {t!r}: a given checkpoint is one "
                          f"modality's teacher; the multimodal teacher is trained here (drop the checkpoint)")
    if not uses_teacher:  # a run without a teacher is the same run whatever teacher was configured
        for k in ("teacher_backbone", "teacher_finetune_epochs", "teacher_control", "teacher_fusion"):
            config["train"].pop(k, None)
        backbones["teacher"] = resolve_backbone(adapter, "teacher", t, "default", {})
        ckpt = None
    identity = {role: c.identity() for role, c in backbones.items() if not c.default}
    if identity:  # only where a network is not the dataset's default: earlier hashes stay as they were
        config["backbones"] = identity
    if ckpt is not None:
        config["teacher_checkpoint"] = {"sha256": ckpt.sha256}
    if spec.tuned:  # only tuned runs carry it: every other configuration keeps its hash
        config["tuned"] = dict(spec.tuned)
    chash = stable_hash(config, 10)
    # Identity of the *cell configuration* (everything but the seed): seeds of one cell share it,
    # so tables can average over seeds and flag cells whose records disagree on anything else.
    group_hash = stable_hash({k: v for k, v in config.items() if k != "seed"}, 10)
    run_id = check_component(f"{adapter.name}_{direction}_{encode(method_cls.name)}_s{spec.seed}_{chash[:8]}", "run id")
    return Resolved(spec, adapter, method_cls, mparams, train, direction, run_id, config, chash, group_hash,
                    msource, msource_hash, backbones, ckpt)


def resolve_method(spec: RunSpec) -> tuple[type[Method], Any, dict[str, Any], tuple[str, str | None]]:
    """The method's class, parameters, identity entries (``method_params``, ``method_source_hash``,
    ``method_version`` where it is not 1) and (source, source hash): a registered method, or a
    composition of them (:mod:`bench.api.compose`)."""
    if is_composition(spec.method):
        cls = composition_class(spec.method, METHODS)
        params = composition_params(cls, spec.overrides)
        return cls, params, cls.identity(params), cls.source()
    entry = METHODS.entry(spec.method)
    cls = entry.obj
    values = spec.overrides.get(cls.name, {})
    if WEIGHT in values and WEIGHT not in getattr(cls.Params, "__dataclass_fields__", {}):
        raise ConfigError(f"--set {cls.name}.{WEIGHT}: a part's weight exists only inside a composition (e.g. "
                          f"--methods {cls.name}{SEPARATOR}OTHER); run the single method {cls.name} without it, in a "
                          f"command of its own")
    params = build_params(cls.Params, values, cls.name)
    ident: dict[str, Any] = {"method_params": hashed_params(params), "method_source_hash": entry.source_hash}
    if cls.version != 1:  # only a changed method carries it: every version-1 identity keeps its hash
        ident["method_version"] = cls.version
    return cls, params, ident, (entry.source, entry.source_hash)


def resolve_backbone(adapter: DatasetAdapter, role: str, modality: str, name: str,
                     values: dict[str, str], fusion: str = DEFAULT_FUSION) -> BackboneChoice:
    """One role's network: ``default`` is the adapter's (``default_backbone``: a registered backbone
    and its parameters, which ``--set ROLE.KEY`` may change; or its own ``build_model``), any
    other name a registered backbone with its parameters. Checked against the modality's declared
    kind and the task here, before anything is read or trained. A teacher set's network is the
    fusion network ``fusion`` over each member's choice of ``name`` and ``values``."""
    if is_set(modality):
        mem = {m: resolve_backbone(adapter, role, m, name, values) for m in members(modality)}
        entry = BACKBONES.entry(fusion_factory(fusion.strip().lower()).name)
        default = entry.name == DEFAULT_FUSION and all(c.default for c in mem.values())
        return FusionChoice(role, entry.name, None, default, entry.source, members=mem)
    name = name.strip().lower()
    declared = getattr(adapter, "default_backbone", None)
    if name == "default":
        if not callable(declared):
            if values:
                raise ConfigError(f"--set {role}.{next(iter(values))}: dataset {adapter.name!r} builds its {modality} "
                                  f"network itself and has no backbone parameters; choose a backbone with "
                                  f"--set train.{role}_backbone=NAME (bench list backbones)")
            return BackboneChoice(role, "default", None, True, "adapter build_model")
        fam, base = declared(modality)
        params = backbone_params(fam, {**base, **values}, role)
        is_default = params_dict(params) == params_dict(backbone_params(fam, base, role))
        return BackboneChoice(role, fam, params, is_default, BACKBONES.entry(fam).source)
    entry = BACKBONES.entry(name)
    params = backbone_params(entry.name, values, role)
    check_fits(entry.name, spec_of(adapter, modality), role)
    return BackboneChoice(role, entry.name, params, False, entry.source)


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def resolve_teacher_checkpoint(train: TrainConfig) -> TeacherCheckpoint | None:
    """The checkpoint file (absolute path) and its sha256, computed once per file version."""
    if not train.teacher_checkpoint:
        if train.teacher_finetune_epochs:
            raise ConfigError("train.teacher_finetune_epochs fine-tunes a given teacher: set train.teacher_checkpoint "
                              "(or --teacher-checkpoint PATH) too")
        return None
    p = resolve_path(train.teacher_checkpoint, "train.teacher_checkpoint (--teacher-checkpoint)")
    if not p.is_file():
        raise ConfigError(f"train.teacher_checkpoint={train.teacher_checkpoint}: no such file")
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        from bench.data.cache import sha256_file

        _SHA_CACHE[key] = sha256_file(p)
    return TeacherCheckpoint(str(p), _SHA_CACHE[key])


def run_id_of(spec: RunSpec) -> str:
    return resolve(spec).run_id
