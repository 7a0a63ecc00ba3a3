"""A study's search space: the method's declared ``search_space`` plus, with ``--tune-lr``, the
learning rate shared by every method (so that w/o KD is tuned too and no method wins by its lr).

Keys are ``SCOPE.KEY`` (``dkd.beta``, ``train.lr``): the same names ``--set`` takes, so a trial's
parameters become a run's overrides without translation.
"""

from __future__ import annotations

from typing import Any

from bench.api.config import TrainConfig, params_dict
from bench.api.errors import ConfigError
from bench.api.method import Method
from bench.api.search import Categorical, Dimension, Integer, Real, contains, method_space

LR_DECADES = 1.0
"""``--tune-lr`` searches lr in [default / 10, default * 10] (log-uniform)."""


def study_space(method_cls: type[Method], train: TrainConfig, tune_lr: bool) -> dict[str, Dimension]:
    """``scope.key -> dimension`` for one study; ``train`` is the dataset's resolved settings."""
    space: dict[str, Dimension] = {f"{method_cls.name}.{k}": d for k, d in method_space(method_cls).items()}
    if tune_lr:
        low = max(train.lr / 10**LR_DECADES, train.min_lr if train.schedule in ("poly", "cosine") else 0.0)
        if not low > 0 or not low < train.lr * 10**LR_DECADES:
            raise ConfigError(f"--tune-lr: no lr range above train.min_lr={train.min_lr:g} around lr={train.lr:g}")
        space["train.lr"] = Real(low, train.lr * 10**LR_DECADES, log=True)
    return space


def defaults_of(space: dict[str, Dimension], method_params: Any, train: TrainConfig) -> dict[str, Any] | None:
    """The configuration the study starts from (its first trial): the method's defaults (or the
    values fixed with ``--set``) and the dataset's lr; None when one lies outside its range."""
    values = {"train": params_dict(train), "method": params_dict(method_params)}
    out = {}
    for key, dim in space.items():
        scope, name = key.split(".", 1)
        v = values["train" if scope == "train" else "method"][name]
        if not contains(dim, v):
            return None
        out[key] = v
    return out


def distributions(space: dict[str, Dimension]) -> dict[str, Any]:
    """Optuna distributions of ``space`` (sampled all at once by ``study.ask``)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, d in space.items():
        if isinstance(d, Real):
            out[key] = FloatDistribution(float(d.low), float(d.high), log=d.log)
        elif isinstance(d, Integer):
            out[key] = IntDistribution(int(d.low), int(d.high), log=d.log)
        elif isinstance(d, Categorical):
            out[key] = CategoricalDistribution(list(d.values))
    return out


def as_overrides(params: dict[str, Any], base: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{"dkd.beta": 2.5, "train.lr": 0.02}`` merged into a copy of the ``--set`` overrides."""
    out = {scope: dict(kv) for scope, kv in base.items()}
    for key, v in params.items():
        scope, name = key.split(".", 1)
        out.setdefault(scope, {})[name] = v
    return out
