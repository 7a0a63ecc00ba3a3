"""Typed hyper-parameters and ``--set key=value`` overrides.

Every method and dataset declares its hyper-parameters as a dataclass whose defaults are the
reference defaults. Overrides are strings from the CLI (``--set dkd.beta=8``); they are coerced
to the declared field type, and unknown keys are rejected with the list of valid ones, so a
typo can never silently run the default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from bench.api.errors import ConfigError

_TRUE = {"1", "true", "yes", "on", "y"}


_FALSE = {"0", "false", "no", "off", "n"}


def coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert ``value`` (usually a CLI string) to ``typ``; raise ConfigError naming ``where``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in {"none", "null"} and type(None) in args:
            return None
        if value is None and type(None) in args:
            return None
        errors = []
        for a in non_none:
            try:
                return coerce(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: cannot read {value!r} as {typ}")
    if typing.get_origin(typ) is typing.Literal:
        allowed = typing.get_args(typ)
        for a in allowed:
            if str(a) == str(value):
                return a
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
    if origin in (tuple, list):
        if isinstance(value, str):
            parts = [p for p in value.replace(";", ",").split(",") if p.strip() != ""]
        else:
            parts = list(value)
        inner = args[0] if args else str
        conv = [coerce(p.strip() if isinstance(p, str) else p, inner, where) for p in parts]
        return tuple(conv) if origin is tuple else conv
    if typ is bool:
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ConfigError(f"{where}: expected a boolean (true/false), got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(f):  # nan would train without complaint and inf overflows silently
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return f
    if typ is str:
        return str(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def build_params(cls: type, overrides: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from its defaults plus ``overrides`` (validated)."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, raw in overrides.items():
        if key not in types_:
            valid = ", ".join(sorted(types_)) or "(none)"
            raise ConfigError(f"unknown parameter {prefix}.{key}; valid {prefix} parameters: {valid}")
        kwargs[key] = coerce(raw, types_[key], f"{prefix}.{key}")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}: {exc}") from exc
    check_bounds(obj, prefix)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{prefix}: {exc}") from exc
    return obj


def params_dict(obj: Any) -> dict[str, Any]:
    d = dataclasses.asdict(obj)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def hashed_params(obj: Any) -> dict[str, Any]:
    """A method's parameters as they enter the run's identity: :func:`params_dict` without the
    ``later`` fields (see :func:`hp`) that are at their default. A record's ``method_params`` is
    this, so a key missing from it reads as its default (as :func:`bench.report.studies.default_params_keep` does)."""
    d = params_dict(obj)
    for f in fields(obj):
        if f.metadata.get("later") and f.default is not dataclasses.MISSING and d[f.name] == f.default:
            del d[f.name]
    return d


def describe_params(cls: type) -> list[tuple[str, str, Any, str, str]]:
    """(name, type, default, help, valid range or "") for each field, for ``bench list``."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        tname = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
        rng = bounds_text(f.metadata["bounds"]) if f.metadata.get("bounds") else ""
        out.append((f.name, tname, default, f.metadata.get("help", ""), rng))
    return out


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    """``["dkd.beta=8", "train.lr=0.1"]`` -> ``{"dkd": {"beta": "8"}, "train": {"lr": "0.1"}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected SCOPE.KEY=VALUE, e.g. dkd.beta=8 or train.lr=0.01")
        key, value = item.split("=", 1)
        if "." not in key:
            raise ConfigError(f"--set {item!r}: the key needs a scope (a method, a dataset or 'train'), e.g. dkd.beta=8")
        scope, name = key.split(".", 1)
        out.setdefault(scope.strip().lower(), {})[name.strip()] = value.strip()
    return out


_BOUND_WORDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def hp(default: Any, help: str = "", *, ge: float | None = None, gt: float | None = None,  # noqa: A002
       le: float | None = None, lt: float | None = None, later: bool = False) -> Any:
    """A dataclass field with a help string shown by ``bench list methods`` and, for numbers, its
    valid range (``ge``/``gt``/``le``/``lt``; for a tuple, every element), checked by
    :func:`build_params` before anything runs: a batch size of -1 must be an error, not an ok
    record with 0 % at every epoch.

    ``later=True`` marks a field added to a method after records existed (an off-by-default
    switch such as ``logit.logit_std``): :func:`hashed_params` leaves it out of the run's identity
    while it is at its default, so every earlier configuration keeps its config hash."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    meta = {"help": help, **({"bounds": bounds} if bounds else {}), **({"later": True} if later else {})}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def bounds_text(bounds: dict[str, float]) -> str:
    """``{"ge": 0, "lt": 1}`` -> ``">= 0, < 1"``."""
    return ", ".join(f"{_BOUND_WORDS[k]} {v:g}" for k, v in bounds.items())


_BOUND_OPS = {"ge": lambda a, b: a >= b, "gt": lambda a, b: a > b, "le": lambda a, b: a <= b,
              "lt": lambda a, b: a < b}


def within_bounds(value: float, bounds: dict[str, float]) -> bool:
    """Whether ``value`` satisfies every ``hp`` bound (``{"ge": 0, "lt": 1}``)."""
    return all(_BOUND_OPS[k](value, b) for k, b in bounds.items())


def check_bounds(obj: Any, prefix: str) -> None:
    """Raise ConfigError for the first field of ``obj`` outside its declared range."""
    for f in fields(obj):
        bounds = f.metadata.get("bounds")
        if not bounds:
            continue
        value = getattr(obj, f.name)
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if v is None:
                continue
            if not within_bounds(v, bounds):
                raise ConfigError(f"{prefix}.{f.name}={_show(value)}: must be {bounds_text(bounds)}")


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


@dataclass
class TrainConfig:
    """Optimisation and protocol settings shared by every run (scope ``train`` in ``--set``).

    Dataset adapters supply their own defaults (e.g. 100 epochs of SGD 0.01 with the C2KD poly
    schedule for the audio-visual sets); these class defaults only apply where they do not.
    """

    epochs: int = hp(20, "student training epochs", ge=1)
    teacher_epochs: int = hp(20, "unimodal teacher training epochs", ge=1)
    batch_size: int = hp(64, "mini-batch size", ge=2)
    eval_batch_size: int = hp(256, "evaluation batch size", ge=1)
    optimizer: str = hp("sgd", "sgd | adam | adamw")
    lr: float = hp(0.01, "initial learning rate", gt=0)
    momentum: float = hp(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = hp(0.0, "weight decay", ge=0)
    schedule: str = hp("poly", "poly (C2KD: 1e-4 + (lr-1e-4)(1-e/E)^0.9) | cosine | step | constant")
    min_lr: float = hp(1e-4, "final learning rate of the poly/cosine schedules", ge=0)
    poly_power: float = hp(0.9, "exponent of the poly schedule", gt=0)
    step_milestones: tuple[int, ...] = hp((), "epochs at which the step schedule multiplies lr by step_gamma", ge=1)
    step_gamma: float = hp(0.1, "step schedule factor", gt=0)
    grad_clip: float = hp(0.0, "max gradient norm (0 = off)", ge=0)
    val_fraction: float = hp(0.1, "fraction of train carved out (stratified, seeded) for model selection", ge=0, lt=0.9)
    split_seed: int = hp(0, "seed of the train/validation split (shared by teacher and students)", ge=0)
    split_mode: str = hp("fixed", "fixed (one split for every seed: train.split_seed and the dataset's prepared "
                                  "split; paper reproductions) | per_seed (the carved validation split, and the "
                                  "splits a dataset drew itself, drawn again from each run's seed: split variance "
                                  "enters the seed spread; for published results)")
    selection: str = hp("val", "val (default, no test peeking) | test (the reference code's protocol)")
    deterministic: bool = hp(True, "deterministic kernels (bit-identical reruns on CPU)")
    pairing: str = hp("paired", "paired | unpaired (teacher inputs re-drawn at random from the same class at every step)")
    teacher_control: str = hp("none", "none | shuffled (every training sample gets the teacher outputs of another "
                                      "training sample of its class, fixed from the seed) | random (a freshly "
                                      "initialised teacher of the seed, never trained)")
    # speed features (bench.train.acceleration): not part of the config hash; the record stores them resolved
    speed: str = hp("auto", "auto (each feature below at its default: on for CUDA) | off (fp32, eager, streamed, teacher recomputed: the reference set-up)")
    amp: str = hp("auto", "auto (bf16 on CUDA, fp16 + GradScaler without bf16, off on CPU) | bf16 | fp16 | off")
    channels_last: str = hp("auto", "auto (on) | on | off: NHWC memory format for 2-D convolutions")
    data_placement: str = hp("auto", "auto | device (splits in device memory, augmentation there) | pinned (host RAM, prefetched) | stream (memory-mapped cache, prefetched)")
    compile: bool = hp(False, "torch.compile the student and the frozen teacher")
    fused_optim: str = hp("auto", "auto (fused on CUDA) | on | off")
    teacher_cache: str = hp("auto", "auto | on | off: compute a frozen teacher's outputs once per run where its input is not augmented")
    # networks (bench.models.registry): parameters of the chosen backbones go in scopes teacher.* / student.*
    teacher_backbone: str = hp("default", "teacher network: default (the dataset's) or a name from `bench list backbones` "
                                          "(its parameters: --set teacher.KEY=VALUE)")
    student_backbone: str = hp("default", "student network: default or a registered backbone (--set student.KEY=VALUE)")
    teacher_fusion: str = hp("late_fusion", "multimodal teacher of a teacher-set direction (av2v): a registered fusion "
                                            "network over the members' backbones (late_fusion | late_fusion_linear)")
    teacher_checkpoint: str = hp("", "a trained teacher (results/teachers/*.pt, or a state dict) used instead of "
                                     "training one; its sha256 is part of the run's identity")
    teacher_finetune_epochs: int = hp(0, "with teacher_checkpoint: epochs of fine-tuning it first (0: used frozen, as it is)",
                                      ge=0)

    def validate(self) -> None:
        if self.min_lr > self.lr and self.schedule in ("poly", "cosine"):
            raise ValueError(f"min_lr={self.min_lr} must not exceed lr={self.lr} (the {self.schedule} schedule decays lr to min_lr)")
        if self.optimizer not in {"sgd", "adam", "adamw"}:
            raise ValueError(f"optimizer must be sgd, adam or adamw, got {self.optimizer!r}")
        if self.schedule not in {"poly", "cosine", "step", "constant"}:
            raise ValueError(f"schedule must be poly, cosine, step or constant, got {self.schedule!r}")
        if self.pairing not in {"paired", "unpaired"}:
            raise ValueError(f"pairing must be 'paired' or 'unpaired', got {self.pairing!r}")
        if self.teacher_control not in TEACHER_CONTROLS:
            raise ValueError(f"teacher_control must be none, shuffled or random, got {self.teacher_control!r}")
        if self.split_mode not in SPLIT_MODES:
            raise ValueError(f"split_mode must be fixed or per_seed, got {self.split_mode!r}")
        if self.split_mode == "per_seed" and self.split_seed != 0:
            raise ValueError(f"split_mode=per_seed draws the splits from the run's seed; split_seed={self.split_seed} "
                             f"would be ignored: leave it at 0 (or use split_mode=fixed)")
        if self.selection not in {"val", "test"}:
            raise ValueError(f"selection must be 'val' or 'test', got {self.selection!r}")
        from bench.api.config import validate_choices

        validate_choices(self)


SPLIT_MODES = ("fixed", "per_seed")
"""``train.split_mode``: one split for every seed, or the splits drawn from each run's seed
(:func:`bench.train.loop.load_splits`)."""


def split_seed_of(train: Any, seed: int | None) -> int:
    """The seed the splits of a run are drawn with: ``train.split_seed`` (fixed) or the run's seed."""
    if getattr(train, "split_mode", "fixed") == "fixed":
        return train.split_seed
    if seed is None:
        raise ConfigError("train.split_mode=per_seed draws the splits from the run's seed, and none was given")
    return int(seed)


TEACHER_CONTROLS = ("none", "shuffled", "random")
"""``train.teacher_control``: the trained teacher on the paired sample (none), another training
sample's teacher outputs of the same class (shuffled), a never-trained teacher (random); see
:mod:`bench.train.teacher_outputs`."""


SPEED_KEYS = ("speed", "amp", "channels_last", "data_placement", "compile", "fused_optim", "teacher_cache")
"""``train.*`` keys that only change how fast a run goes; kept out of the config hash."""


LATER_KEYS = ("teacher_backbone", "student_backbone", "teacher_finetune_epochs", "teacher_control", "split_mode",
              "teacher_fusion")
"""``train.*`` keys added after records existed: hashed only when not at their default, so every
configuration from before keeps its config hash and run id."""


UNHASHED_KEYS = SPEED_KEYS + ("teacher_checkpoint",)
"""Never hashed: the speed keys, and the teacher checkpoint's path (the file's sha256 is, where it is set)."""


def hashed_train(train: Any) -> dict[str, Any]:
    """The ``train`` settings that make up a run's identity (the one place that decides it)."""
    defaults = {f.name: f.default for f in fields(train)}
    return {k: v for k, v in params_dict(train).items()
            if k not in UNHASHED_KEYS and not (k in LATER_KEYS and v == defaults[k])}


_AUTO_ON_OFF = ("auto", "on", "off")


CHOICES: dict[str, tuple[str, ...]] = {
    "speed": ("auto", "off"),
    "amp": ("auto", "bf16", "fp16", "off"),
    "channels_last": _AUTO_ON_OFF,
    "data_placement": ("auto", "device", "pinned", "stream"),
    "fused_optim": _AUTO_ON_OFF,
    "teacher_cache": _AUTO_ON_OFF,
}


def validate_choices(train: Any) -> None:
    for key, allowed in CHOICES.items():
        v = getattr(train, key)
        if v not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {v!r}")
