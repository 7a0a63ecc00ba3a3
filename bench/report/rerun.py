"""The ``bench run`` command that recreates a record's run (the leaderboard's "exact command").

Everything in a record's configuration that makes up its config hash has a command-line spelling:
the dataset (a registered name, or the folder of a bring-your-own dataset) and its parameters,
the method's parameters, the training settings, the two networks (``train.ROLE_backbone`` and
``--set ROLE.KEY=V``), the teacher checkpoint (``--teacher-checkpoint``: the file whose sha256 the
record holds), the tuned study (``--tuned``), the plug-ins the method, dataset and networks came
from, the direction and the seeds. Settings at their defaults are left out; where the defaults
cannot be known here (a plug-in that is not loaded, a folder that is not on this machine) every
value is spelled out, which gives the same configuration. Plug-ins are never imported to find a
default: a report does not run code from a results folder.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from bench.api.names import PART_SEPARATOR

_UNKNOWN = object()


def reproduce_command(rec: dict[str, Any], seeds: list[int]) -> str:
    """The shell command (``bench run ...``) that recreates the cell of ``rec`` for ``seeds``."""
    return " ".join(shlex.quote(p) for p in ["bench", *reproduce_args(rec, seeds)])


def reproduce_args(rec: dict[str, Any], seeds: list[int]) -> list[str]:
    """The arguments after ``bench`` of :func:`reproduce_command`."""
    cfg = rec.get("config") or {}
    method = rec["method"]
    ds_cfg = cfg.get("dataset") or {}
    folder = bool(ds_cfg.get("folder"))
    dataset = rec.get("dataset_folder") or (f"FOLDER-OF-{rec['dataset']}" if folder else rec["dataset"])
    adapter = _adapter(dataset, []) if not dataset.startswith("FOLDER-OF-") else None
    tuned_keys = _tuned_keys(rec) if cfg.get("tuned") else set()
    sets: list[str] = []

    def changed(scope: str, values: dict[str, Any], defaults: dict[str, Any]) -> None:
        for k, v in values.items():
            if f"{scope}.{k}" not in tuned_keys and defaults.get(k, _UNKNOWN) != v:
                sets.append(f"{scope}.{k}={_text(v)}")

    changed(rec["dataset"], ds_cfg.get("params") or {}, _dataset_defaults(adapter))
    if adapter is not None and sets:  # training defaults and networks can depend on the dataset's settings
        adapter = _adapter(dataset, sets)
    train = cfg.get("train") or {}
    changed("train", train, _train_defaults(adapter))
    if PART_SEPARATOR in method:  # a composition: its keys are PART.KEY, each part's own --set spelling
        defaults = _composition_defaults(method, cfg.get("method_source_hash"))
        sets += [f"{k}={_text(v)}" for k, v in (cfg.get("method_params") or {}).items()
                 if defaults.get(k, _UNKNOWN) != v]
    else:
        changed(method, cfg.get("method_params") or {}, _method_defaults(method, rec.get("method_source_hash")))
    for role, ident in (cfg.get("backbones") or {}).items():
        modality = cfg.get(f"{role}_modality") or rec.get(f"{role}_modality")
        changed(role, ident.get("params") or {}, _backbone_defaults(adapter, role, modality,
                                                                    train.get(f"{role}_backbone", "default")))
    args = ["run", "--methods", method, "--datasets", dataset, "--directions", rec["direction"],
            "--seeds", ",".join(map(str, sorted(seeds)))]
    for p in _plugins(rec):
        args += ["--plugin", p]
    if cfg.get("teacher_checkpoint"):
        args += ["--teacher-checkpoint", _teacher_file(rec)]
    if cfg.get("tuned"):
        args.append("--tuned")
        trials = _study_trials(rec)
        if trials is not None:
            args += ["--tuned-trials", str(trials)]
    for s in sets:
        args += ["--set", s]
    return args


def _text(v: Any) -> str:
    """A value as ``--set`` reads it back (lists comma-separated, as the parser splits them)."""
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def _adapter(dataset: str, sets: list[str]) -> Any:
    """The dataset as the command's ``--set`` options configure it, or None where it is not
    available here (a plug-in dataset not loaded, a folder on another machine)."""
    from bench.api.config import parse_overrides
    from bench.train.resolve import build_adapter

    try:
        return build_adapter(dataset, parse_overrides(sets))
    except Exception:  # noqa: BLE001 - no defaults known: every value is spelled out
        return None


def _dataset_defaults(adapter: Any) -> dict[str, Any]:
    from bench.api.config import params_dict

    return params_dict(adapter.params) if adapter is not None else {}


def _train_defaults(adapter: Any) -> dict[str, Any]:
    """The dataset's training settings as the config hash holds them (keys added later are left
    out at their defaults: absent in the record means default)."""
    from bench.api.config import hashed_train
    from bench.train.resolve import build_train_config

    if adapter is None:
        return {}
    return hashed_train(build_train_config(adapter, {}))


def _method_defaults(method: str, source_hash: str | None) -> dict[str, Any]:
    """The method's defaults where the version that made the record is registered here (a plug-in
    that is not loaded is never imported by a report)."""
    from bench.api.config import params_dict
    from bench.api.registry import METHODS

    if method.lower() not in METHODS.names() or METHODS.entry(method).source_hash != source_hash:
        return {}
    return params_dict(METHODS.get(method).Params())


def _composition_defaults(method: str, source_hashes: Any) -> dict[str, Any]:
    """A composition's flat defaults where every part's recorded version is registered here."""
    from bench.api.compose import default_params
    from bench.api.registry import METHODS

    hashes = source_hashes if isinstance(source_hashes, dict) else {}
    for part in method.split(PART_SEPARATOR):
        if part not in METHODS.names() or METHODS.entry(part).source_hash != hashes.get(part):
            return {}
    try:
        return default_params(method, METHODS)
    except Exception:  # noqa: BLE001 - parts that no longer compose here: every value is spelled out
        return {}


def _backbone_defaults(adapter: Any, role: str, modality: str | None, chosen: str) -> dict[str, Any]:
    """The parameters ``--set ROLE.KEY`` starts from: the dataset's declared network for
    ``default``, the registered backbone's own defaults otherwise."""
    from bench.api.config import params_dict
    from bench.api.registry import BACKBONES
    from bench.models.registry import backbone_params

    try:
        if str(chosen).strip().lower() == "default":
            declared = getattr(adapter, "default_backbone", None)
            if adapter is None or modality is None or not callable(declared):
                return {}
            fam, base = declared(modality)
            return params_dict(backbone_params(fam, base, role))
        name = str(chosen).strip().lower()
        if name not in BACKBONES.names():
            return {}
        return params_dict(backbone_params(name, {}, role))
    except Exception:  # noqa: BLE001 - defaults unknown: spell every value out
        return {}


def _plugins(rec: dict[str, Any]) -> list[str]:
    """The plug-in files the method, the dataset and the two networks were registered from."""
    sources = [*str(rec.get("method_source") or "").split(" + "), rec.get("dataset_source")]  # a composition's parts
    sources += [(b or {}).get("source") for b in (rec.get("backbones") or {}).values() if isinstance(b, dict)]
    out: list[str] = []
    for s in sources:
        if isinstance(s, str) and s.startswith("plugin:") and s[len("plugin:"):] not in out:
            out.append(s[len("plugin:"):])
    return out


def _teacher_file(rec: dict[str, Any]) -> str:
    """The checkpoint the run's teacher came from (used frozen, or fine-tuned from)."""
    t = rec.get("teacher") if isinstance(rec.get("teacher"), dict) else {}
    path = t.get("checkpoint") if t.get("source") == "checkpoint" else t.get("finetuned_from")
    if isinstance(path, str) and path:
        return path
    sha = str(((rec.get("config") or {}).get("teacher_checkpoint") or {}).get("sha256", ""))
    return f"TEACHER-FILE-WITH-SHA256-{sha[:16]}"


def _study_info(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The study.json of the record's tuned study, where the record lies in a results folder
    that has it (``RESULTS/records/x.json`` -> ``RESULTS/tuning/STUDY/study.json``)."""
    study = ((rec.get("config") or {}).get("tuned") or {}).get("study")
    if not isinstance(study, str) or not rec.get("path"):
        return None
    p = Path(rec["path"]).parent.parent / "tuning" / study / "study.json"
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _tuned_keys(rec: dict[str, Any]) -> set[str]:
    """``SCOPE.KEY`` of the tuned study's space: ``--tuned`` sets them from the best trial, and the
    study was found by the configuration without them (at their defaults), so they stay out of the
    ``--set`` options. Without the study's description: the method's declared search space."""
    info = _study_info(rec)
    if info is not None and isinstance(info.get("space"), dict):
        return set(info["space"])
    from bench.api.registry import METHODS
    from bench.api.search import method_space

    m = rec["method"]
    return {f"{m}.{k}" for k in method_space(METHODS.get(m))} if m in METHODS.names() else set()


def _study_trials(rec: dict[str, Any]) -> int | None:
    """The study's budget (``--tuned-trials``: which study, where several tuned the same runs)."""
    info = _study_info(rec)
    if info is not None and isinstance(info.get("n_trials"), int):
        return info["n_trials"]
    m = re.search(r"_n(\d+)_s\d+_[0-9a-f]+$", str(rec["config"]["tuned"].get("study", "")))
    return int(m.group(1)) if m else None
