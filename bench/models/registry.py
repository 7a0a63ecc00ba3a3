"""Backbones by name: the contract of a registered backbone factory, the input it is built for,
and the checks every factory shares (does it take this input, does a weights file fit it).

A factory is a class (or a function) registered with ``@register_backbone("name")``; it has a
``Params`` dataclass (settable per role with ``--set teacher.KEY=V`` / ``--set student.KEY=V``) and
``build(params, spec, num_classes) -> Backbone``. ``spec`` is the :class:`InputSpec` of the
modality the network will see, measured on the adapter's own prepared batch, so a factory never
has to know the dataset. What a factory may take is declared (``layouts``, ``tasks``) and checked
before it builds, so a wrong pairing is an error naming the modality, not a shape error mid-run.

Nothing here downloads: weights come from local files only (:func:`load_weights_file`), and a
missing file is an error that says where to put it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from bench.api.config import build_params, params_dict
from bench.api.errors import BenchError
from bench.api.registry import BACKBONES
from bench.models.output import Backbone

KIND_LAYOUTS = {"vector": "vector", "sequence": "sequence", "image": "image", "spectrogram": "image",
                "video": "video", "text": "tokens"}
"""The input layout a modality kind implies, for checks before any data is read ("any": unknown)."""


@dataclass(frozen=True)
class InputSpec:
    """What one sample of a modality looks like to the network (after ``prepare_batch``)."""

    modality: str
    kind: str
    """The adapter's modality kind (vector | sequence | image | spectrogram | video | text | any)."""
    shape: tuple[int, ...]
    """Per-sample network-input shape, e.g. (13, 64) for MFCC frames, (3, 32, 32), (T, 3, H, W)."""
    dtype: str = "float32"
    task: str = "classification"

    @property
    def layout(self) -> str:
        """vector (D,) | sequence (C, L) | tokens (2, L) ids + mask | image (C, H, W) | video (T, C, H, W)."""
        if self.kind == "text" or (len(self.shape) == 2 and not self.dtype.startswith(("float", "bfloat"))):
            return "tokens"
        if not self.shape:
            return KIND_LAYOUTS.get(self.kind, "other")
        return {1: "vector", 2: "sequence", 3: "image", 4: "video"}.get(len(self.shape), "other")

    @property
    def channels(self) -> int:
        if not self.shape:  # a default build before any data is read: only the kind is known
            raise BenchError(f"{self.describe()}: the number of input channels is not known before the data "
                             "is read; give the backbone's in_channels")
        return self.shape[1] if self.layout == "video" else self.shape[0]

    @property
    def frames(self) -> int:
        return self.shape[0] if self.layout == "video" and self.shape else 1

    def describe(self) -> str:
        what = self.layout if self.kind in (self.layout, "any") else f"{self.kind}: {self.layout}"
        return f"modality {self.modality!r} ({what}" + (f" of shape {tuple(self.shape)})" if self.shape else ")")


@dataclass
class NoBackboneParams:
    """This backbone has no parameters."""


class BackboneFactory:
    """Base class of registered backbones (a plain function ``build(params, spec, num_classes)``
    with the same optional attributes works too)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    library: ClassVar[str] = ""
    """Python package the network comes from ("" = this package)."""
    layouts: ClassVar[tuple[str, ...]] = ()
    """Input layouts it takes (see :attr:`InputSpec.layout`); empty: any."""
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    Params: ClassVar[type] = NoBackboneParams
    version: ClassVar[int] = 1
    """Bumped when a change to the network (layers, initialisation, defaults) alters results at the
    same parameters, with a line in docs/reference/versions.md; recorded in every record's ``versions``."""

    @classmethod
    def build(cls, params: Any, spec: InputSpec, num_classes: int) -> Backbone:
        raise NotImplementedError


@dataclass
class BackboneChoice:
    """One role's network as resolved from the configuration."""

    role: str
    """teacher | student"""
    name: str
    """Registered backbone name, or "default" for an adapter that only has ``build_model``."""
    params: Any = None
    """The factory's Params instance (None for an adapter's own ``build_model``)."""
    default: bool = True
    """The dataset's default network (left out of the config hash)."""
    source: str = "builtin"
    weights: list[str] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "params": params_dict(self.params) if self.params is not None else {}}

    def describe(self) -> str:
        ps = ", ".join(f"{k}={_short(v)}" for k, v in self.identity()["params"].items())
        return f"{self.name}({ps})" if ps else self.name


def _short(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def factory_attr(obj: Any, attr: str) -> Any:
    """``obj.attr`` or the :class:`BackboneFactory` default (plug-ins may leave attributes out)."""
    return getattr(obj, attr, getattr(BackboneFactory, attr, None))


def backbone_version(choice: BackboneChoice) -> int | None:
    """The version of the registered backbone a role was built from; None for an adapter's own
    ``build_model`` (the adapter's version covers it)."""
    if choice.params is None and choice.name == "default":
        return None
    return int(factory_attr(BACKBONES.get(choice.name), "version"))


def factory_description(obj: Any) -> str:
    return factory_attr(obj, "description") or (inspect.getdoc(obj) or "").split("\n")[0]


def backbone_params(name: str, values: dict[str, Any], where: str) -> Any:
    """The Params of registered backbone ``name`` from ``values`` (validated like method settings)."""
    obj = BACKBONES.get(name)
    return build_params(factory_attr(obj, "Params"), values, where)


def check_fits(name: str, spec: InputSpec, role: str = "") -> None:
    """Refuse an input layout or task the backbone does not declare, naming both."""
    obj = BACKBONES.get(name)
    layouts, tasks = factory_attr(obj, "layouts"), factory_attr(obj, "tasks")
    who = f"{role} backbone {name!r}" if role else f"backbone {name!r}"
    if layouts and spec.layout not in layouts and spec.layout != "other":
        raise BenchError(f"{who} does not take {spec.describe()}; it takes {', '.join(layouts)} inputs")
    if tasks and spec.task not in tasks:
        raise BenchError(f"{who} makes {'/'.join(tasks)} outputs; {spec.modality!r} is a {spec.task} task "
                         f"(choose a backbone whose tasks include {spec.task}, e.g. deeplabv3plus)")


def build_backbone(choice: BackboneChoice, spec: InputSpec, num_classes: int) -> Backbone:
    """Build ``choice`` for ``spec`` and check that what came back honours the Backbone contract."""
    obj = BACKBONES.get(choice.name)
    check_fits(choice.name, spec, choice.role)
    fn = obj.build if hasattr(obj, "build") else obj
    try:
        net = fn(choice.params, spec, num_classes)
    except BenchError:
        raise
    except (ValueError, RuntimeError, TypeError, KeyError) as exc:
        raise BenchError(f"{choice.role} backbone {choice.describe()} for {spec.describe()}: "
                         f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(net, Backbone):
        raise BenchError(f"backbone {choice.name!r} returned a {type(net).__name__}, not a bench.models.Backbone")
    return net


def spec_of(adapter: Any, modality: str, x: torch.Tensor | None = None) -> InputSpec:
    """The InputSpec of ``modality``: measured on a prepared batch ``x`` when given, else only the
    declared kind (adapters declare stored shapes, which need not be the network's input shape),
    enough for the checks made before any data is read."""
    m = adapter.modality(modality)
    if x is not None:
        return InputSpec(m.name, m.kind, tuple(int(d) for d in x.shape[1:]), str(x.dtype).replace("torch.", ""),
                         adapter.task)
    return InputSpec(m.name, m.kind, (), "int64" if m.kind == "text" else "float32", adapter.task)


def build_for(adapter: Any, choice: BackboneChoice, modality: str, split: Any, device: torch.device) -> Backbone:
    """``choice`` built for ``modality`` on ``device``: the adapter's ``build_model`` for the
    default, else the registered backbone for the input measured on two prepared samples of
    ``split`` (the runner's teacher and student, and ``bench speed``, all come from here)."""
    if choice.default:
        return adapter.build_model(modality, adapter.num_classes).to(device)
    idx = torch.arange(min(2, len(split)))
    xb, _ = adapter.batch(split, idx, [modality], torch.device("cpu"), False, None)
    return build_backbone(choice, spec_of(adapter, modality, xb[modality]), adapter.num_classes).to(device)


def build_default(adapter: Any, modality: str, num_classes: int) -> Backbone:
    """``build_model`` of an adapter that declares ``default_backbone(modality) -> (name, params)``:
    its network built through the registry, so the default and a chosen backbone are one code path."""
    name, values = adapter.default_backbone(modality)
    params = backbone_params(name, values, f"{adapter.name} {modality} default backbone")
    obj = BACKBONES.get(name)
    net = (obj.build if hasattr(obj, "build") else obj)(params, spec_of(adapter, modality), num_classes)
    return net


def parse_kwargs(text: str, where: str) -> dict[str, Any]:
    """``"channels=16,32,64,128;stem_width=16"`` -> ``{"channels": (16, 32, 64, 128), "stem_width": 16}``:
    extra constructor arguments of a library model, values read as Python literals where they are
    (numbers, booleans, comma lists), else as strings."""
    import ast

    out: dict[str, Any] = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise BenchError(f"{where}={text!r}: expected KEY=VALUE;KEY=VALUE, e.g. channels=16,32,64,128;stem_width=16")
        try:
            value: Any = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        out[key.strip()] = value
    return out


# -- weights files ----------------------------------------------------------------------------

def require_file(path: str, where: str) -> Path:
    """``path`` as an existing local file, or an error saying where the weights must go."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BenchError(f"{where}={path}: no such file. Put the weights there (a .safetensors file or a "
                         f"torch.save'd state dict); nothing is downloaded at run time")
    return p


def load_weights_file(path: str, where: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file: ``.safetensors``, or a ``torch.save`` of a state dict or of a
    dict holding one under ``model`` / ``state_dict`` (the format of results/teachers/*.pt and of
    most training scripts); a ``module.`` prefix (DataParallel) is dropped."""
    p = require_file(path, where)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or damaged file: say which one
        raise BenchError(f"{where}={path}: cannot read it as weights ({type(exc).__name__}: {exc})") from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BenchError(f"{where}={path}: not a state dict (expected name -> tensor, or one under 'model')")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def first_mismatch(expected: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> str | None:
    """The first key of ``got`` that does not fit ``expected``: missing, shape, then unexpected."""
    extra = [k for k in got if k not in expected]
    for k, v in expected.items():
        if k not in got:
            return f"missing key {k!r}" + _more(expected, got, extra)
        if tuple(got[k].shape) != tuple(v.shape):
            return f"shape mismatch at {k!r}: the file has {tuple(got[k].shape)}, the backbone {tuple(v.shape)}"
    if extra:
        return f"unexpected key {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
    return None


def _more(expected: dict[str, Any], got: dict[str, Any], extra: list[str]) -> str:
    n = sum(k not in got for k in expected)
    parts = ([f"{n - 1} more missing"] if n > 1 else []) + ([f"{len(extra)} unexpected"] if extra else [])
    return f" ({', '.join(parts)})" if parts else ""


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    """Load ``state`` into ``module`` or raise naming the file and the first offending key."""
    problem = first_mismatch(module.state_dict(), state)
    if problem is not None:
        raise BenchError(f"{what} {path} does not fit: {problem}")
    module.load_state_dict(state)


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-layer conv weight (O, 3, kh, kw) for ``in_chans`` inputs: summed for one channel,
    tiled and rescaled otherwise (what timm does for pretrained stems on other channel counts)."""
    c = weight.shape[1]
    if in_chans == c:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-in_chans // c)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (c / in_chans)
