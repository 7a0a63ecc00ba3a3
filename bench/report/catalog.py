"""What the registries know about each method and dataset, as plain data.

One source for the two places that show it: ``bench list`` (Rich tables, :mod:`bench.report.console`)
and the generated documentation pages (:mod:`bench.report.docs`), so a catalogue printed in the
terminal and one on the site can never disagree.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ParamInfo:
    name: str
    type: str
    default: Any
    help: str
    range: str  # "" when unbounded

    def default_text(self) -> str:
        d = self.default
        if isinstance(d, (list, tuple)):
            return ",".join(map(str, d)) or "(empty)"
        return "(empty)" if d == "" else str(d)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    category: str
    description: str
    reference: str
    params: list[ParamInfo]
    search_space: str  # "-" when nothing to tune; "invalid: ..." for a plug-in's broken space
    teacher: str  # how the runner treats the teacher during KD
    cache_fields: str  # what of a frozen teacher can be cached, or why nothing can
    dense: bool
    dense_reason: str
    source: str
    source_hash: str | None
    module: str
    doc: str  # the module docstring (the method's story), then the class docstring

    def params_text(self) -> str:
        return ", ".join(f"{p.name}={p.default_text()}" + (f" ({p.range})" if p.range else "") for p in self.params) or "-"

    def source_text(self) -> str:
        return self.source + (f" [{self.source_hash}]" if self.source_hash else "")

    def origin_text(self) -> str:
        """Where the method's code comes from: its ``reference`` attribute, else the module
        docstring's ``Source:`` line, else "-"."""
        if self.reference:
            return self.reference
        for line in self.doc.splitlines():
            if line.strip().lower().startswith("source:"):
                return line.split(":", 1)[1].strip() or "-"
        return "-"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    task: str
    metric: str
    modalities: list[tuple[str, str, str, tuple[int, ...]]]  # (name, code, kind, shape); [] = from the data
    directions: list[str]  # [] = from the data
    num_classes: int | None  # None: known only once the data is read (folder datasets)
    sizes: tuple[int, int, int] | None  # official (train, val, test) rows; None: set by parameters
    params: list[ParamInfo]
    train_defaults: dict[str, Any]
    source: str
    module: str
    doc: str = field(default="")
    by_name: list[str] = field(default_factory=list)
    """Directions run only when asked for (``--directions same,sets`` or by name): same-modality, teacher sets."""


def param_infos(params_cls: type) -> list[ParamInfo]:
    from bench.api.config import describe_params

    return [ParamInfo(n, t, d, h, r) for n, t, d, h, r in describe_params(params_cls)]


def space_text(cls: Any) -> str:
    """The method's search space, or why it is unusable (a plug-in's mistake shown, not raised)."""
    from bench.api.errors import ConfigError
    from bench.api.search import describe_space, method_space

    try:
        return describe_space(method_space(cls))
    except ConfigError as exc:
        return f"invalid: {exc}"


def _teacher_text(cls: Any) -> str:
    if not cls.uses_teacher:
        return "not used"
    if cls.teacher_trainable:
        return "trained with the student"
    if cls.teacher_train_mode:
        return "frozen, in train mode (batch-norm statistics of each batch)"
    return "frozen (eval mode, no gradient)"


def _cache_text(cls: Any) -> str:
    """What :meth:`Method.teacher_cache_fields` says on default parameters, before ``setup`` (a
    method whose answer depends on the networks' stages says so instead of guessing)."""
    import torch

    from bench.api.method import MethodContext

    if not cls.uses_teacher:
        return "no teacher"
    if cls.teacher_trainable or cls.teacher_train_mode:
        return "never (the teacher's outputs change during training)"
    ctx = MethodContext(num_classes=2, epochs=1, task="classification", teacher_modality="a",
                        student_modality="b", device=torch.device("cpu"))
    try:
        fields = cls(cls.Params(), ctx).teacher_cache_fields()
    except Exception:  # noqa: BLE001 - fields chosen in setup() from the networks
        return "stage maps chosen in setup() from the networks' stages"
    if fields is None:
        return f"never ({cls.no_cache_reason or 'the method does not declare what it reads'})"
    return ", ".join(sorted(fields)) or "nothing"


def _doc(cls: Any) -> str:
    mod = sys.modules.get(cls.__module__)
    parts = [inspect.getdoc(mod) if mod is not None else None, inspect.getdoc(cls) if cls.__doc__ else None]
    return "\n\n".join(p for p in parts if p)


def method_infos() -> list[MethodInfo]:
    """Every registered method (built-ins, entry points and loaded plug-ins), in registry order."""
    from bench.api.registry import METHODS

    out = []
    for e in METHODS.entries():
        cls = e.obj
        out.append(MethodInfo(
            name=e.name, category=cls.category, description=cls.description, reference=cls.reference,
            params=param_infos(cls.Params), search_space=space_text(cls), teacher=_teacher_text(cls),
            cache_fields=_cache_text(cls), dense=bool(cls.dense_ok), dense_reason=cls.dense_reason,
            source=e.source, source_hash=e.source_hash, module=cls.__module__, doc=_doc(cls)))
    return out


def dataset_infos() -> list[DatasetInfo]:
    """Every registered dataset, described from its default parameters without reading any data."""
    from bench.api.registry import DATASETS
    from bench.train.benchmark import REFERENCE_SIZES

    out = []
    for e in DATASETS.entries():
        cls = e.obj
        ad = cls(cls.Params())
        mods = ad.modalities
        # placeholders ("any" kind) stand in for what a folder's meta.json declares: say so, not a/b
        data_defined = bool(mods) and all(m.kind == "any" for m in mods)
        try:
            n_classes: int | None = None if data_defined else int(ad.num_classes)
        except Exception:  # noqa: BLE001 - known only once the data is read
            n_classes = None
        out.append(DatasetInfo(
            name=e.name, description=cls.description, task=cls.task, metric=cls.metric,
            modalities=[] if data_defined else [(m.name, m.code, m.kind, tuple(m.shape)) for m in mods],
            directions=[] if data_defined else [ad.direction_name(a, b) for a, b in ad.directions()],
            num_classes=n_classes,
            sizes=REFERENCE_SIZES.get(e.name), params=param_infos(cls.Params), train_defaults=dict(cls.train_defaults),
            source=e.source + (f" [{e.source_hash}]" if e.source_hash else ""), module=cls.__module__, doc=_doc(cls),
            by_name=[] if data_defined else _by_name(ad)))
    return out


def _by_name(ad: Any) -> list[str]:
    """The same-modality and teacher-set directions (``same``, ``sets``) of an adapter."""
    from bench.data.tsets import expand_directions

    return [ad.direction_name(t, s) for t, s in expand_directions(ad, "same,sets")]
