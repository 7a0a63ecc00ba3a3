"""Search spaces for equal-budget tuning (``bench tune``).

A method declares, next to its ``Params``, the one to three hyper-parameters that matter most and
the range its paper (or reference code) reports for them::

    search_space = {"beta": Real(0.5, 10.0), "tau": Real(1.0, 8.0, log=True)}

Every method gets the same number of trials over its own space, so a comparison no longer measures
who was tuned. A space is checked against the ``Params`` it belongs to before anything runs
(:func:`check_space`): each key must be a field, each range inside the field's declared bounds
(``hp(..., ge=, gt=, le=, lt=)``) and of the field's type, so a plug-in's typo or an out-of-range
bound is an error naming the method and the key, not a trial that fails after an hour.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from bench.api.config import bounds_text, coerce, within_bounds
from bench.api.errors import ConfigError


@dataclass(frozen=True)
class Real:
    """A float in [low, high]; ``log=True`` samples its logarithm uniformly (weights, temperatures)."""

    low: float
    high: float
    log: bool = False

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class Integer:
    """An integer in [low, high] (both included)."""

    low: int
    high: int
    log: bool = False

    def describe(self) -> str:
        return f"{{{self.low}..{self.high}}}" + (" log" if self.log else "")


@dataclass(frozen=True)
class Categorical:
    """One of ``values`` (strings, numbers or booleans)."""

    values: tuple[Any, ...]

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.values)) + "}"


Dimension = Union[Real, Integer, Categorical]


def space_repr(space: dict[str, Dimension]) -> dict[str, Any]:
    """A JSON form of ``space`` (for study identities, study.json and ``bench list``)."""
    out: dict[str, Any] = {}
    for k in sorted(space):
        d = space[k]
        fields = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
        out[k] = {"kind": type(d).__name__.lower(),
                  **{n: list(v) if isinstance(v, tuple) else v for n, v in fields.items()}}
    return out


def describe_space(space: dict[str, Dimension]) -> str:
    """``beta [0.5, 10], tau [1, 8] log`` (or ``-`` for nothing to tune)."""
    return ", ".join(f"{k} {space[k].describe()}" for k in space) or "-"


def check_dimension(dim: Any, typ: Any, bounds: dict[str, float], where: str) -> None:
    """One dimension against the field it sets: kind matches the type, range inside the bounds."""
    if isinstance(dim, Categorical):
        if not isinstance(dim.values, tuple) or len(dim.values) < 2:
            raise ConfigError(f"{where}: Categorical needs a tuple of at least two values, got {dim.values!r}")
        values = [coerce(v, typ, where) for v in dim.values]
        _check_in_bounds([v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)], bounds, where)
        return
    if not isinstance(dim, (Real, Integer)):
        raise ConfigError(f"{where}: expected Real(low, high), Integer(low, high) or Categorical(values), got {dim!r}")
    want = float if isinstance(dim, Real) else int
    base = _base_type(typ)
    if base is not want:
        name = getattr(base, "__name__", str(base))
        raise ConfigError(f"{where}: {type(dim).__name__} sets a {want.__name__} but the parameter is {name}")
    for v in (dim.low, dim.high):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{where}: bounds must be finite numbers, got {dim.low!r}, {dim.high!r}")
        if want is int and not float(v).is_integer():
            raise ConfigError(f"{where}: Integer bounds must be whole numbers, got {dim.low!r}, {dim.high!r}")
    if not dim.low < dim.high:
        raise ConfigError(f"{where}: low {dim.low:g} must be below high {dim.high:g}")
    if dim.log and dim.low <= 0:
        raise ConfigError(f"{where}: a log-scaled range needs low > 0, got {dim.low:g}")
    _check_in_bounds([dim.low, dim.high], bounds, where)


def _base_type(typ: Any) -> Any:
    """``float | None`` -> ``float`` (an optional number is tuned as the number)."""
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    return args[0] if typing.get_origin(typ) in (Union, types.UnionType) and len(args) == 1 else typ


def _check_in_bounds(values: list[float], bounds: dict[str, float], where: str) -> None:
    for v in values:
        if not within_bounds(v, bounds):
            raise ConfigError(f"{where}: {v:g} lies outside the parameter's valid range ({bounds_text(bounds)})")


def check_space(space: Any, params_cls: type, where: str) -> dict[str, Dimension]:
    """``space`` checked against ``params_cls`` (the method's ``Params``); returns it.

    ``where`` names the method for the error (e.g. ``method 'dkd' search_space``)."""
    if not isinstance(space, dict):
        raise ConfigError(f"{where}: expected a dict of parameter name -> Real/Integer/Categorical, "
                          f"got {type(space).__name__}")
    if len(space) > 3:
        raise ConfigError(f"{where}: {len(space)} parameters; declare the one to three that matter most "
                          f"(every method gets the same number of trials, so a larger space is tuned less well)")
    fields = {f.name: f for f in dataclasses.fields(params_cls)} if dataclasses.is_dataclass(params_cls) else {}
    hints = typing.get_type_hints(params_cls) if fields else {}
    for key, dim in space.items():
        if key not in fields:
            extra = " (train.lr is shared by every method: bench tune --tune-lr)" if key.startswith("train.") else ""
            raise ConfigError(f"{where}: {key!r} is not a parameter of {params_cls.__name__}; "
                              f"valid: {', '.join(sorted(fields)) or '(none)'}{extra}")
        check_dimension(dim, hints[key], fields[key].metadata.get("bounds", {}), f"{where}: {key}")
    return dict(space)


def method_space(method_cls: Any) -> dict[str, Dimension]:
    """A method's declared ``search_space`` checked against its ``Params`` (an error names the method)."""
    return check_space(getattr(method_cls, "search_space", {}) or {}, method_cls.Params,
                       f"method {method_cls.name!r} search_space")


def contains(dim: Dimension, value: Any) -> bool:
    """Whether ``value`` (a default) is one of the points ``dim`` can propose."""
    if isinstance(dim, Categorical):
        return value in dim.values
    return isinstance(value, (int, float)) and not isinstance(value, bool) and dim.low <= value <= dim.high
