"""Method composition: ``--methods dkd+rkd`` trains one student with the loss terms of every part.

Why a composition is one run and not a new method: the parts are the registered methods, with their
own ``Params`` (``--set dkd.beta=4`` sets the part), their connectors and their teacher-cache
fields; the composition only sums what they return. Rules, each one a reason given on refusal:

* **Loss.** ``ce_weight * CE + sum over parts of weight_part * (the part's terms other than ce)``.
  The cross-entropy is counted once, computed here as the plain (pixel-wise for dense tasks) task
  loss; its weight is the parts' common ``ce_weight`` (1 for a part without one), so parts that
  disagree are refused rather than one of them silently winning. A part's own CE variant (MLKD's
  CE counted twice for its two views) is replaced by the one CE. Terms are logged as ``PART.TERM``.
* **Weights.** ``--set PART.weight=W`` (>= 0) scales a part's terms. The key exists only inside a
  composition; it enters the identity only when it is not 1.
* **Order.** Canonical, since the sum commutes: parts sorted by category (Logits, Feature,
  Cross-Modal, then any other) and then by name (``rkd+dkd`` is the run ``dkd+rkd``).
* **Names in files.** Run ids and file names allow only ``[A-Za-z0-9._-]``; there the separator
  ``+`` is written ``.`` (``synthetic_a2v_dkd.rkd_s0_1a2b3c4d``). A method name can never contain
  ``.`` (the registry refuses it), so the encoding is reversible (:func:`encode`, :func:`decode`),
  and ``--methods dkd.rkd`` is read as ``dkd+rkd``.
* **One student, one teacher.** Refused: fewer than two parts, a repeated part, a control (label
  smoothing, Tf-KD) or a part without a teacher (``none``, w/o KD: the CE is already there), two
  parts that train the teacher, and parts that disagree on the teacher's mode (trained / frozen in
  train mode / frozen in eval mode), because the runner has one teacher forward per step.
* **Identity.** ``method_params`` is flat, ``PART.FIELD -> value`` (every part's hashed parameters,
  ``PART.weight`` only when not 1), so a key reads as its ``--set`` spelling; ``method_version``
  holds every part's version. No single-method identity changes.
* **Hooks.** A part's per-run hooks run for it: CRD's sample indices and training-set binding,
  MFH's ``prepare``. A part that runs a mixture of its own teachers (MST-Distill) is refused.
* Dense support is every part's (the reason is the refusing part's); the teacher-cache fields are
  the union (none cached if a part does not declare them); ``bench tune`` does not tune a
  composition (tune the parts, compose with their values).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from bench.api.config import coerce, hashed_params, params_dict
from bench.api.errors import BenchError, ConfigError
from bench.api.method import CONTROL, Method, MethodContext
from bench.api.names import FILE_PART_SEPARATOR as FILE_SEPARATOR
from bench.api.names import PART_SEPARATOR as SEPARATOR
from bench.api.names import decode_method, encode_method
from bench.models import ModelOutput

CATEGORY = "Composition"
"""The category of every composition (its own group in the tables and the leaderboard)."""


PART_ORDER = ("Logits", "Feature", "Cross-Modal")
"""Categories in the canonical order of parts; any other category comes after them, by name."""


WEIGHT = "weight"
"""The composition-only key of a part: ``--set PART.weight=W``."""


USAGE = ("Compose methods: --methods dkd+rkd (two or more parts) trains one student with the CE once plus every "
         "part's terms, each times --set PART.weight=W (default 1; hashed only when not 1); parts are put in a "
         "canonical order (category, then name). Run ids and file names write '+' as '.' "
         "(synthetic_a2v_dkd.rkd_s0_<hash>). Refused: controls, none, repeated parts, two parts that train the "
         "teacher or that need it in different modes.")
"""The composition syntax in one paragraph (the footer of ``bench list methods``)."""


def is_composition(name: str) -> bool:
    return SEPARATOR in name or FILE_SEPARATOR in name


encode = encode_method
decode = decode_method


def parts_of(name: str) -> list[str]:
    """``dkd+rkd`` (or ``dkd.rkd``) -> ``["dkd", "rkd"]``, as written (not checked)."""
    return [p.strip().lower() for p in decode(name).split(SEPARATOR)]


def _rank(cls: Any, name: str) -> tuple[int, str, str]:
    cat = str(getattr(cls, "category", ""))
    return (PART_ORDER.index(cat) if cat in PART_ORDER else len(PART_ORDER), cat, name)


def teacher_mode(m: Any) -> str:
    """How a part (class or instance: WSLD decides per instance) needs the teacher during KD."""
    if m.teacher_trainable:
        return "trains the teacher"
    if m.teacher_train_mode:
        return "reads a frozen teacher in train mode (batch statistics)"
    return "reads a frozen teacher in eval mode"


def check_modes(where: str, parts: list[tuple[str, Any]]) -> str:
    """The parts' common teacher mode, or a BenchError saying which parts cannot share one teacher."""
    trainers = [n for n, m in parts if m.teacher_trainable]
    if len(trainers) > 1:
        raise BenchError(f"composition {where}: {' and '.join(trainers)} both train the teacher; one teacher "
                         f"cannot be trained by two methods' losses in one run (compose at most one of them)")
    modes = {n: teacher_mode(m) for n, m in parts}
    if len(set(modes.values())) > 1:
        said = "; ".join(f"{n} {mode}" for n, mode in modes.items())
        raise BenchError(f"composition {where}: the parts need the teacher in different ways ({said}); the run has "
                         f"one teacher forward per step, so they cannot share a student")
    return next(iter(modes.values()))


def canonical_name(text: str, registry: Any) -> str:
    """The checked, canonically ordered name of the composition ``text`` (parts from ``registry``);
    a BenchError with the reason for one that cannot be trained."""
    names = parts_of(text)
    if any(not n for n in names):
        raise BenchError(f"--methods {text!r}: an empty part; write e.g. dkd{SEPARATOR}rkd")
    if len(names) < 2:
        raise BenchError(f"--methods {text!r}: a composition needs at least two methods")
    seen: list[str] = []
    for n in names:
        entry = registry.entry(n)  # unknown -> the registry's error with the valid names
        if entry.name in seen:
            raise BenchError(f"composition {text!r}: {entry.name} appears twice; weight a part with "
                             f"--set {entry.name}.{WEIGHT}=W instead")
        seen.append(entry.name)
        cls = entry.obj
        if getattr(cls, "category", None) == CONTROL:
            raise BenchError(f"composition {text!r}: {entry.name} is a control (it isolates what a teacher adds and "
                             f"replaces the cross-entropy); it cannot be a part")
        if not cls.uses_teacher:
            raise BenchError(f"composition {text!r}: {entry.name} uses no teacher and adds no distillation term "
                             f"(the cross-entropy is in every composition already); it cannot be a part")
        if cls.runs_teachers or cls.requires_teacher_set:
            raise BenchError(f"composition {text!r}: {entry.name} runs a mixture of its own teachers; the other "
                             f"parts read the run's one teacher, so it cannot be a part")
        if WEIGHT in getattr(cls.Params, "__dataclass_fields__", {}):
            raise BenchError(f"composition {text!r}: {entry.name} has a parameter named {WEIGHT!r}, which in a "
                             f"composition is the part's weight; it cannot be a part")
    ordered = sorted(seen, key=lambda n: _rank(registry.get(n), n))
    name = SEPARATOR.join(ordered)
    check_modes(name, [(n, registry.get(n)) for n in ordered])
    return name


class CompositionParams:
    """Every part's ``Params`` and weight (defaults: each part's defaults, weight 1)."""

    part_classes: ClassVar[dict[str, Any]] = {}

    def __init__(self, parts: dict[str, Any] | None = None, weights: dict[str, float] | None = None):
        self.parts = {n: (parts or {}).get(n) or c.Params() for n, c in self.part_classes.items()}
        self.weights = {n: float((weights or {}).get(n, 1.0)) for n in self.part_classes}

    @property
    def ce_weight(self) -> float:
        return float(next(iter(ce_weights(self).values())))

    def hashed(self) -> dict[str, Any]:
        """``PART.FIELD -> value`` as the identity holds it (``PART.weight`` only when not 1)."""
        out: dict[str, Any] = {}
        for n, p in self.parts.items():
            out.update({f"{n}.{k}": v for k, v in hashed_params(p).items()})
            if self.weights[n] != 1.0:
                out[f"{n}.{WEIGHT}"] = self.weights[n]
        return out

    def as_dict(self) -> dict[str, Any]:
        """Every value, defaults included (what :func:`default_params` compares against)."""
        out: dict[str, Any] = {}
        for n, p in self.parts.items():
            out.update({f"{n}.{k}": v for k, v in params_dict(p).items()})
            out[f"{n}.{WEIGHT}"] = self.weights[n]
        return out


def ce_weights(params: CompositionParams) -> dict[str, float]:
    return {n: float(getattr(p, "ce_weight", 1.0)) for n, p in params.parts.items()}


def compose_terms(ce: torch.Tensor, part_terms: dict[str, dict[str, torch.Tensor]], weights: dict[str, float],
                  ce_weight: float) -> dict[str, torch.Tensor]:
    """The composition's loss terms: ``ce_weight * ce`` once, then ``weight_part * term`` under
    ``PART.TERM`` for every part's term except its own ``ce``."""
    out = {"ce": ce_weight * ce}
    for part, terms in part_terms.items():
        for k, v in terms.items():
            if k != "ce":
                out[f"{part}.{k}"] = weights[part] * v
    return out


class Composition(Method):
    """Base class of the composition classes :func:`composition_class` builds (one per name)."""

    category = CATEGORY
    part_classes: ClassVar[dict[str, Any]] = {}
    part_sources: ClassVar[dict[str, tuple[str, str | None]]] = {}
    search_space: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: CompositionParams, ctx: MethodContext):
        super().__init__(params, ctx)
        self.parts = {n: c(params.parts[n], ctx) for n, c in self.part_classes.items()}
        mode = check_modes(self.name, list(self.parts.items()))  # an instance may decide (WSLD's teacher_mode)
        self.teacher_train_mode = mode.startswith("reads a frozen teacher in train")
        self.modules = nn.ModuleDict({n: p.modules for n, p in self.parts.items()})

    def setup(self, student, teacher, s_probe: ModelOutput, t_probe: ModelOutput | None) -> None:
        super().setup(student, teacher, s_probe, t_probe)
        for n, p in self.parts.items():
            try:
                p.setup(student, teacher, s_probe, t_probe)
            except BenchError as exc:
                raise BenchError(f"part {n}: {exc}") from exc
        self.modules = nn.ModuleDict({n: p.modules for n, p in self.parts.items()})

    def bind_training_set(self, labels: torch.Tensor, seed: int) -> None:
        for p in self.parts.values():
            if p.wants_sample_indices:
                p.bind_training_set(labels, seed)

    def prepare(self, data: Any) -> None:
        for n, p in self.parts.items():
            try:
                p.prepare(data)
            except BenchError as exc:
                raise BenchError(f"part {n}: {exc}") from exc

    def loss(self, s: ModelOutput, t: ModelOutput | None, y: torch.Tensor, epoch: int) -> dict[str, torch.Tensor]:
        for p in self.parts.values():
            if p.wants_sample_indices:  # the runner sets the composition's; each part reads its own
                p.sample_indices = self.sample_indices
        part_terms = {n: p.loss(s, t, y, epoch) for n, p in self.parts.items()}
        return compose_terms(self.task_loss(s.logits, y), part_terms, self.p.weights, self.p.ce_weight)

    def teacher_cache_fields(self) -> set[str] | None:
        out: set[str] = set()
        for p in self.parts.values():
            f = p.teacher_cache_fields()
            if f is None:
                return None
            out |= set(f)
        return out

    def extra_parameters(self) -> list[nn.Parameter]:
        return [q for p in self.parts.values() for q in p.extra_parameters()]

    def state_dict(self) -> dict[str, Any]:
        return {"modules": self.modules.state_dict(), "parts": {n: p.state_dict() for n, p in self.parts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for n, p in self.parts.items():
            p.load_state_dict(state["parts"][n])

    def report(self) -> dict[str, object]:
        """The parts' own reports (the record's ``extra.method``), by part."""
        out: dict[str, object] = {}
        for n, p in self.parts.items():
            rep = getattr(p, "report", None)
            if callable(rep) and rep():
                out[n] = rep()
        return out

    @classmethod
    def identity(cls, params: CompositionParams) -> dict[str, Any]:
        """The config entries a composition contributes to the run's identity."""
        hashes = {n: h for n, (_, h) in cls.part_sources.items()}
        return {"method_params": params.hashed(),
                "method_source_hash": hashes if any(h is not None for h in hashes.values()) else None,
                "method_version": {n: int(c.version) for n, c in cls.part_classes.items()}}

    @classmethod
    def source(cls) -> tuple[str, str | None]:
        """The record's ``method_source`` (the parts' distinct sources joined by `` + ``) and
        ``method_source_hash`` (None when no part has one)."""
        from bench.records.provenance import stable_hash

        srcs = list(dict.fromkeys(s for s, _ in cls.part_sources.values()))
        hashes = {n: h for n, (_, h) in cls.part_sources.items()}
        return " + ".join(srcs), (stable_hash(hashes, 16) if any(hashes.values()) else None)


_CLASSES: dict[tuple[str, tuple[int, ...]], type[Composition]] = {}


def composition_class(text: str, registry: Any) -> type[Composition]:
    """The class of the composition ``text`` (checked, canonical; one class per name and part classes)."""
    name = canonical_name(text, registry)
    entries = [registry.entry(n) for n in name.split(SEPARATOR)]
    key = (name, tuple(id(e.obj) for e in entries))
    if key not in _CLASSES:
        parts = {e.name: e.obj for e in entries}
        params_cls = type("CompositionParams", (CompositionParams,), {"part_classes": parts})
        dense = [(e.name, e.obj) for e in entries if not e.obj.dense_ok]
        _CLASSES[key] = type(f"Composition[{name}]", (Composition,), {
            "name": name, "part_classes": parts, "Params": params_cls,
            "part_sources": {e.name: (e.source, e.source_hash) for e in entries},
            "description": " + ".join(e.obj.description or e.name for e in entries),
            "reference": "; ".join(f"{e.name}: {e.obj.reference or '-'}" for e in entries),
            "dense_ok": not dense,
            "dense_reason": f"part {dense[0][0]}: {dense[0][1].dense_reason}" if dense else "",
            "teacher_train_mode": bool(entries[0].obj.teacher_train_mode),
            "wants_sample_indices": any(e.obj.wants_sample_indices for e in entries),
            "no_cache_reason": "; ".join(f"part {e.name}: {e.obj.no_cache_reason}" for e in entries
                                         if e.obj.no_cache_reason),
            "__module__": __name__,
        })
    return _CLASSES[key]


def method_class(name: str, registry: Any) -> type[Method]:
    """A registered method's class, or a composition's."""
    return composition_class(name, registry) if is_composition(name) else registry.get(name)


def composition_params(cls: type[Composition], overrides: dict[str, dict[str, str]]) -> CompositionParams:
    """Every part's parameters from ``--set PART.KEY=V`` and its ``PART.weight``, checked: the CE
    weights agree, and the parts' instances agree on the teacher (WSLD decides it from its params)."""
    from bench.api.config import build_params

    parts, weights = {}, {}
    for n, c in cls.part_classes.items():
        values = dict(overrides.get(n, {}))
        if WEIGHT in values:
            w = coerce(values.pop(WEIGHT), float, f"{n}.{WEIGHT}")
            if w < 0:
                raise ConfigError(f"{n}.{WEIGHT}={w}: must be >= 0 (the part's terms are multiplied by it)")
            weights[n] = w
        parts[n] = build_params(c.Params, values, n)
    params = cls.Params(parts, weights)
    ces = ce_weights(params)
    if len(set(ces.values())) > 1:
        said = ", ".join(f"{n}.ce_weight={v:g}" for n, v in ces.items())
        first = next(iter(ces.values()))
        fix = " ".join(f"--set {n}.ce_weight={first:g}" for n, v in ces.items() if v != first)
        raise ConfigError(f"composition {cls.name}: the cross-entropy is counted once, so its weight must be the "
                          f"same in every part ({said}; a part without ce_weight counts 1); set it on each part, "
                          f"e.g. {fix}")
    ctx = MethodContext(2, 1, "classification", "teacher", "student", torch.device("cpu"))
    try:
        instances = [(n, c(parts[n], ctx)) for n, c in cls.part_classes.items()]
    except Exception:  # noqa: BLE001 - a part that needs the real context: its class answered already
        instances = []
    if instances:
        check_modes(cls.name, instances)
    return params


def default_params(name: str, registry: Any) -> dict[str, Any]:
    """A composition's defaults as its flat ``method_params`` reads (``PART.weight`` 1 included)."""
    return composition_class(name, registry).Params().as_dict()
