"""What to run: a :class:`RunSpec` from the command line, validated and resolved into adapter,
method, training settings and the run's identity (config hash, run id) before anything trains."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api.config import SPEED_KEYS, TrainConfig, build_params, params_dict
from bench.api.errors import BenchError, ConfigError
from bench.api.method import Method
from bench.api.names import check_component
from bench.api.registry import DATASETS, METHODS
from bench.data import DatasetAdapter
from bench.records.provenance import stable_hash


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


def run_id_of(spec: RunSpec) -> str:
    return resolve(spec).run_id
