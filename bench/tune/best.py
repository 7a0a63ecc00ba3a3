"""``bench run --tuned``: each run takes the parameters of the best trial of the study that tuned
its configuration (same dataset settings, direction, method, training settings and ``--set``
overrides; any seed). The study and trial are recorded in the run's configuration (``tuned``),
which gives the run its own config hash and the label "tuned" in tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bench.api.errors import BenchError
from bench.api.search import Integer, contains, describe_space, method_space, space_repr
from bench.train.resolve import RunSpec, resolve
from bench.tune.space import as_overrides, study_space


def study_infos(results: str | Path) -> list[dict[str, Any]]:
    """Every study.json under ``results/tuning``."""
    out = []
    for p in sorted((Path(results) / "tuning").glob("*/study.json")):
        try:
            info = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BenchError(f"{p}: cannot read the study description ({exc})") from None
        if isinstance(info, dict) and "study" in info:
            out.append(info)
    return out


def _command(spec: RunSpec, r: Any, trials: Any = "N") -> str:
    return (f"bench tune --methods {r.method_cls.name} --datasets {spec.dataset} --directions {r.direction} "
            f"--trials {trials} -r {spec.results_dir} (with the same --epochs/--set options)")


def tuned_spec(spec: RunSpec, *, trials: int | None = None, storage: str | None = None,
               infos: list[dict[str, Any]] | None = None) -> RunSpec:
    """``spec`` with the best trial's parameters and ``tuned`` set; unchanged for a method with
    nothing to tune (no search space and no study: its default is its tuned configuration)."""
    import optuna

    from bench.tune.study import best_trial, counts, quiet_optuna

    r = resolve(spec)
    infos = study_infos(spec.results_dir) if infos is None else infos
    found = [i for i in infos if i.get("group_hash") == r.group_hash and i.get("method") == r.method_cls.name
             and (trials is None or i.get("n_trials") == trials)]
    if not found:
        if not method_space(r.method_cls):
            return spec
        raise BenchError(f"no tuning study for {r.method_cls.name} on {r.adapter.name} {r.direction} with this "
                         f"configuration in {spec.results_dir}/tuning" + (f" with {trials} trials" if trials else "")
                         + f"; run: {_command(spec, r)}")
    if len(found) > 1:
        raise BenchError(f"{len(found)} studies tuned {r.method_cls.name} on {r.adapter.name} {r.direction}: "
                         + ", ".join(f"{i['study']} ({i['n_trials']} trials)" for i in found)
                         + "; choose one with --tuned-trials N")
    info = found[0]
    quiet_optuna()
    name = info["study"]
    if storage is None and info.get("storage", "journal") != "journal":
        if "***" in info["storage"]:
            raise BenchError(f"study {name} lives in {info['storage']}: pass its URL with --storage")
        storage = info["storage"]
    if isinstance(storage, str):
        from bench.tune.study import open_url

        storage = open_url(storage)
    if storage is None:
        from bench.tune.study import journal_path, open_journal

        storage = open_journal(journal_path(spec.results_dir, name), repair=False)  # read only: nothing appended
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise BenchError(f"study {name} is described in {spec.results_dir}/tuning but not in its storage") from None
    c = counts(study)
    if c["finished"] < info["n_trials"]:
        raise BenchError(f"study {name} has {c['finished']} of {info['n_trials']} finished trials (an equal budget "
                         f"for every method needs all of them); finish it: {_command(spec, r, info['n_trials'])}")
    best = best_trial(study)
    if best is None:
        raise BenchError(f"study {name} has no complete trial (all pruned or failed); "
                         f"see {spec.results_dir}/tuning/{name}/")
    check_params(spec, r, info, best)
    return dataclasses.replace(spec, overrides=as_overrides(best.params, spec.overrides),
                               tuned={"study": name, "trial": best.number, "value": best.value})


def check_params(spec: RunSpec, r: Any, info: dict[str, Any], best: Any) -> None:
    """Refuse a best trial whose parameters are not a point of the study's search space.

    The journal and study.json are files in the results folder: a hand-edited or foreign journal
    could otherwise apply anything as "tuned" (a weight far outside its range, or keys no study
    searches, such as ``train.selection=test``). The space is rebuilt from the method's declaration
    for this configuration, exactly as ``bench tune`` built it (``--set`` keys are not searched),
    and must also be the one study.json recorded."""
    recorded = info.get("space")
    tune_lr = isinstance(recorded, dict) and "train.lr" in recorded
    fixed = {f"{scope}.{k}" for scope, kv in spec.overrides.items() for k in kv}
    space = {k: d for k, d in study_space(r.method_cls, r.train, tune_lr).items() if k not in fixed}
    where = f"study {info['study']}, trial {best.number}"
    if recorded != space_repr(space):
        raise BenchError(f"{where}: study.json records the search space {recorded!r}, but {r.method_cls.name} "
                         f"searches {describe_space(space)} for this configuration; the study is not this "
                         f"configuration's (tune it again: {_command(spec, r)})")
    params = dict(best.params)
    extra = sorted(set(params) - set(space))
    if extra:
        shown = ", ".join(f"{k}={params[k]!r}" for k in extra)
        raise BenchError(f"{where} sets {shown}, outside the study's search space ({describe_space(space)}); "
                         f"refusing to apply it as tuned (was the journal edited?)")
    missing = sorted(set(space) - set(params))
    if missing:
        raise BenchError(f"{where} has no value for {', '.join(missing)} of the study's search space; "
                         f"refusing to apply it as tuned (was the journal edited?)")
    for key, dim in space.items():
        v = params[key]
        if isinstance(dim, Integer) and not isinstance(v, bool) and isinstance(v, float) and v.is_integer():
            v = int(v)
        if not contains(dim, v) or (isinstance(dim, Integer) and not isinstance(v, int)):
            raise BenchError(f"{where}: {key}={v!r} lies outside the study's search space ({key} {dim.describe()}); "
                             f"refusing to apply it as tuned (was the journal edited?)")


def with_tuned(specs: list[RunSpec], trials: int | None = None, storage: str | None = None) -> list[RunSpec]:
    """Every spec of a grid with its tuned parameters (studies read once per results folder)."""
    cache: dict[str, list[dict[str, Any]]] = {}
    out = []
    for s in specs:
        infos = cache.setdefault(s.results_dir, study_infos(s.results_dir))
        out.append(tuned_spec(s, trials=trials, storage=storage, infos=infos))
    return out
