"""What a study is (:class:`StudySpec`) and a tuning grid (:class:`TunePlan`); :mod:`bench.tune.grid`
builds them from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.api.errors import ConfigError
from bench.api.search import Dimension, describe_space, space_repr
from bench.train.resolve import RunSpec

TUNING_SEED = 1000
"""Default seed of every trial: the final runs' seeds (0, 1, 2, ...) stay fresh, so the reported
test numbers are not those of the run whose validation score picked the configuration."""


SAMPLER = "tpe"


OBJECTIVE = "validation metric of the selected epoch (best validation epoch; test never read)"


@dataclass
class StudySpec:
    """One study: the base run (tuning seed, ``--set`` overrides, no trial parameters), its space
    and budget. Picklable: it travels to worker processes and SLURM tasks."""

    name: str
    base: RunSpec
    space: dict[str, Dimension]
    n_trials: int
    seed: int
    pruning: dict[str, Any]
    group_hash: str
    dataset: str
    direction: str
    method: str
    defaults: dict[str, Any] | None
    """The first trial: the method's defaults (None when a default lies outside its range)."""
    results: str
    storage: str | None = None
    """A database URL; None: Optuna's journal file ``results/tuning/<name>.journal``."""

    def identity(self) -> dict[str, Any]:
        """What study.json and the study's own attributes record about it."""
        return {"study": self.name, "dataset": self.dataset, "direction": self.direction, "method": self.method,
                "group_hash": self.group_hash, "n_trials": self.n_trials, "seed": self.seed,
                "space": space_repr(self.space), "space_text": describe_space(self.space), "pruning": self.pruning,
                "sampler": SAMPLER, "objective": OBJECTIVE, "defaults": self.defaults,
                "overrides": self.base.overrides}


@dataclass
class TunePlan:
    studies: list[StudySpec]
    results: str
    skipped: list[str] = field(default_factory=list)
    """Methods with nothing to tune (no search space, lr not tuned): their tuned run is the default."""


def pruning_settings(kind: str, startup: int, warmup: int | None, epochs: int) -> dict[str, Any]:
    """The median pruner's settings (or none): part of a study's identity."""
    if kind not in ("median", "none"):
        raise ConfigError(f"--pruner {kind!r}: expected median or none")
    if kind == "none":
        return {"kind": "none"}
    if startup < 0 or (warmup is not None and warmup < 0):
        raise ConfigError("--prune-startup and --prune-warmup must be >= 0")
    return {"kind": "median", "startup": startup, "warmup": max(1, epochs // 3) if warmup is None else warmup}
