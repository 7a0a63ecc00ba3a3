"""Grid expansion and executors.

``expand_grid`` turns the CLI's method/dataset/direction/seed lists into :class:`RunSpec`s and
validates every name before anything runs. The local executor runs them in-process, one after
the other: teachers are trained on first use and shared through the checkpoint cache, finished
runs are skipped, and a failing run is recorded as failed without stopping the grid (unless
``fail_fast``).
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from .errors import BenchError
from .registry import DATASETS, METHODS
from .runner import Reporter, RunSpec, build_adapter, is_dataset_folder, load_plugins, resolve, run
from .results import existing_ok


def split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def expand_grid(
    methods: str, datasets: str, directions: str = "all", seeds: str = "0", *,
    overrides: dict[str, dict[str, str]] | None = None, results_dir: str = "results", device: str = "auto",
    save_model: bool = False, plugins: list[str] | None = None,
) -> list[RunSpec]:
    overrides = overrides or {}
    plugins = plugins or []
    load_plugins(plugins)
    mnames = METHODS.names() if methods.strip().lower() == "all" else split_list(methods)
    if not mnames:
        raise BenchError("--methods is empty; give 'all' or a comma-separated list")
    for m in mnames:
        METHODS.entry(m)  # validates the name
    dnames = split_list(datasets)
    if not dnames:
        raise BenchError("--datasets is empty; valid datasets: " + ", ".join(DATASETS.names()))
    try:
        seed_list = [int(s) for s in split_list(seeds)]
    except ValueError:
        raise BenchError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seed_list:
        raise BenchError("--seeds is empty")
    specs: list[RunSpec] = []
    for d in dnames:
        adapter = build_adapter(d, overrides)
        if directions.strip().lower() == "all":
            dirs = adapter.directions()
        else:
            dirs = [adapter.parse_direction(x) for x in split_list(directions)]
        for t, s in dirs:
            for m in mnames:
                for seed in seed_list:
                    ds = str(Path(d).expanduser().resolve()) if is_dataset_folder(d) else adapter.name
                    specs.append(RunSpec(ds, t, s, m.lower(), seed, overrides, results_dir, device,
                                         save_model, plugins))
    for spec in specs:  # validate overrides / method-dataset compatibility up front
        resolve(spec)
    return specs


@dataclass
class GridOutcome:
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


def pending(specs: list[RunSpec], force: bool = False) -> list[RunSpec]:
    """Specs without an ok record (all of them when ``force``)."""
    if force:
        return list(specs)
    return [s for s in specs if not existing_ok(s.results_dir, resolve(s).run_id)]


class LocalExecutor:
    """Run specs in this process, in order."""

    def __init__(self, reporter: Reporter | None = None, fail_fast: bool = False):
        self.reporter = reporter
        self.fail_fast = fail_fast

    def run(self, specs: list[RunSpec], force: bool = False) -> GridOutcome:
        out = GridOutcome()
        for spec in specs:
            try:
                rec = run(spec, self.reporter, force=force)
            except KeyboardInterrupt:
                raise
            except BenchError:
                raise
            except Exception:
                from .results import read_record, record_path

                rec = read_record(record_path(spec.results_dir, resolve(spec).run_id))
                out.failed.append(rec)
                if self.fail_fast:
                    raise
                continue
            (out.skipped if rec.get("skipped") else out.done).append(rec)
        return out



def sweep_overrides(base: dict[str, dict[str, str]], sweeps: list[str]) -> list[dict[str, dict[str, str]]]:
    """``--sweep SCOPE.KEY=v1,v2`` (repeatable) -> one override dict per point of the cartesian grid.

    The comparison/ablation/threshold/sensitivity studies are grids of this kind; every point is
    an ordinary run with its own config hash, so finished points are skipped on a rerun.
    """
    import itertools

    axes = []
    for item in sweeps:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise BenchError(f"--sweep {item!r}: expected SCOPE.KEY=v1,v2,... (e.g. fdcmkd.ratio=0.25,0.5,0.75)")
        key, vals = item.split("=", 1)
        scope, k = key.split(".", 1)
        values = [v.strip() for v in vals.split(",") if v.strip()]
        if not values:
            raise BenchError(f"--sweep {item!r}: no values")
        axes.append([(scope.strip(), k.strip(), v) for v in values])
    out = []
    for point in itertools.product(*axes) if axes else [()]:
        o = {s: dict(v) for s, v in base.items()}
        for scope, k, v in point:
            o.setdefault(scope, {})[k] = v
        out.append(o)
    return out
