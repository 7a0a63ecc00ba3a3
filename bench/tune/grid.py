"""The studies of a tuning grid: one per (dataset, direction, method), each with an identity that
names everything its trials depend on, so a rerun finds (and resumes) the same study and any
change (epochs, a ``--set``, the space, the budget, the tuning seed, the pruner) starts a new one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bench.api.errors import BenchError, ConfigError
from bench.api.names import check_component, resolve_path
from bench.api.search import space_repr
from bench.records.provenance import stable_hash
from bench.train.resolve import resolve
from bench.tune.plan import OBJECTIVE, SAMPLER, TUNING_SEED, StudySpec, TunePlan, pruning_settings
from bench.tune.space import defaults_of, study_space


def plan_studies(methods: str, datasets: str, directions: str, *, n_trials: int, seed: int = TUNING_SEED,
                 tune_lr: bool = False, overrides: dict[str, dict[str, Any]] | None = None, results: Path,
                 device: str = "auto", plugins: list[str] | None = None, pruner: str = "median",
                 prune_startup: int = 5, prune_warmup: int | None = None, storage: str | None = None,
                 runs_per_gpu: int = 1) -> TunePlan:
    """Every study of the grid, validated (names, overrides, spaces) before anything trains."""
    from bench.launch.grid import MAX_SEED, expand_grid

    if n_trials < 1:
        raise BenchError(f"--trials {n_trials}: expected at least 1")
    if not 0 <= seed <= MAX_SEED:
        raise BenchError(f"--seed {seed}: expected an integer between 0 and {MAX_SEED} (2**32 - 1)")
    overrides = overrides or {}
    results = resolve_path(results, "--results")
    specs = expand_grid(methods, datasets, directions, str(seed), overrides=overrides, results_dir=str(results),
                        device=device, plugins=[str(resolve_path(p, "--plugin")) for p in plugins or []])
    plan = TunePlan([], str(results))
    for spec in specs:
        spec = dataclasses.replace(spec, runs_per_gpu=max(runs_per_gpu, 1))
        r = resolve(spec)
        if getattr(r.method_cls, "part_classes", None):
            raise ConfigError(f"bench tune --methods {r.method_cls.name}: a composition is not tuned (its parts' "
                              f"spaces together would be a different study); tune the parts, then compose them "
                              f"with their values (--set PART.KEY=V)")
        if r.train.selection != "val":
            raise ConfigError("bench tune selects on the validation split: train.selection must be val")
        space = study_space(r.method_cls, r.train, tune_lr)
        fixed = {f"{scope}.{k}" for scope, kv in overrides.items() for k in kv}
        space = {k: d for k, d in space.items() if k not in fixed}  # fixed with --set: not searched
        if not space:
            if r.method_cls.name not in plan.skipped:
                plan.skipped.append(r.method_cls.name)
            continue
        pruning = pruning_settings(pruner, prune_startup, prune_warmup, r.train.epochs)
        ident = {"group": r.group_hash, "seed": seed, "trials": n_trials, "space": space_repr(space),
                 "pruning": pruning, "sampler": SAMPLER, "objective": OBJECTIVE}
        name = check_component(f"{r.adapter.name}_{r.direction}_{r.method_cls.name}_n{n_trials}_s{seed}_"
                               f"{stable_hash(ident, 8)}", "study name")
        plan.studies.append(StudySpec(name, spec, space, n_trials, seed, pruning, r.group_hash, r.adapter.name,
                                      r.direction, r.method_cls.name, defaults_of(space, r.method_params, r.train),
                                      str(results), storage))
    return plan
