"""The grid: method/dataset/direction/seed lists (and ``--sweep`` axes) expanded into
:class:`RunSpec`s, every name and setting validated before anything runs."""

from __future__ import annotations

from pathlib import Path

from bench.api.compose import method_class
from bench.api.errors import BenchError
from bench.api.registry import DATASETS, METHODS, select_methods
from bench.data.tsets import expand_directions, is_set
from bench.records.store import existing_ok
from bench.train.resolve import (
    RunSpec,
    build_adapter,
    is_dataset_folder,
    load_plugins,
    resolve,
)


MAX_SEED = 2**32 - 1
"""The largest seed: NumPy's global generator takes 32 bits (a larger seed would share its stream with
``seed % 2**32``) and torch's fails inside the run from 2**64 on."""


def split_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def expand_grid(
    methods: str, datasets: str, directions: str = "all", seeds: str = "0", *,
    overrides: dict[str, dict[str, str]] | None = None, results_dir: str = "results", device: str = "auto",
    save_model: bool = False, plugins: list[str] | None = None, skipped: list[str] | None = None,
) -> list[RunSpec]:
    """The runs of a grid, validated. A method that a group (``all``, ``controls``) brought in and
    that cannot connect a direction's teacher to its student (:func:`bench.train.teachers.refusal`,
    e.g. a spatial-map method on MLPs) is left out of that direction, its reason appended to
    ``skipped``; a method named on its own still fails the grid with the reason."""
    overrides = overrides or {}
    plugins = plugins or []
    load_plugins(plugins)
    mnames = select_methods(methods)  # 'all': KD methods and w/o KD; 'controls' adds the controls; names checked
    if not mnames:
        raise BenchError("--methods is empty; give 'all', 'all,controls' or a comma-separated list")
    named = {x.lower() for x in split_list(methods)}  # named, not from a group (see the teacher-set rule below)
    needs_set = {m for m in mnames if method_class(m, METHODS).requires_teacher_set}
    dnames = split_list(datasets)
    if not dnames:
        raise BenchError("--datasets is empty; valid datasets: " + ", ".join(DATASETS.names()))
    try:
        seed_list = [int(s) for s in split_list(seeds)]
    except ValueError:
        raise BenchError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if not seed_list:
        raise BenchError("--seeds is empty")
    if any(not 0 <= sd <= MAX_SEED for sd in seed_list):
        raise BenchError(f"--seeds {seeds!r}: seeds must be between 0 and {MAX_SEED} (2**32 - 1)")
    if directions.strip().lower() != "all" and not split_list(directions):
        raise BenchError("--directions is empty; give 'all' (cross-modal), 'same', 'sets' or e.g. a2v,v2a,v2v,av2v")
    from bench.train.device import resolve_device

    resolve_device(device)  # a bad --device fails here, before any run, with the valid choices
    specs: list[RunSpec] = []
    for d in dnames:
        adapter = build_adapter(d, overrides)
        dirs = expand_directions(adapter, directions)  # 'all' = the cross-modal pairs; 'same', 'sets' by name
        any_set = any(is_set(t) for t, _ in dirs)
        for t, s in dirs:
            for m in mnames:
                if m in needs_set and not is_set(t) and (m not in named or any_set):
                    # a mixture-of-teachers method runs on the grid's teacher-set directions only; named
                    # for a grid without one, it is kept, and resolve() refuses it with the reason
                    continue
                for seed in seed_list:
                    ds = str(Path(d).expanduser().resolve()) if is_dataset_folder(d) else adapter.name
                    specs.append(RunSpec(ds, t, s, m.lower(), seed, overrides, results_dir, device,
                                         save_model, plugins))
    for spec in specs:  # validate overrides / method-dataset compatibility up front
        resolve(spec)
    return _drop_refused(specs, named, skipped)


_REFUSALS: dict[tuple[str, str], str | None] = {}


def _drop_refused(specs: list[RunSpec], named: set[str], skipped: list[str] | None) -> list[RunSpec]:
    """Leave out the group-expanded methods that refuse a direction (probed once per dataset,
    direction, method and settings, the first seed; memoised per process)."""
    from bench.records.provenance import stable_hash
    from bench.train.teachers import refusal

    out = []
    for spec in specs:
        if spec.method in named:
            out.append(spec)
            continue
        key = (stable_hash({"d": spec.dataset, "t": spec.teacher_modality, "s": spec.student_modality, "m": spec.method,
                            "o": spec.overrides, "p": spec.plugins}), spec.method)
        if key not in _REFUSALS:
            _REFUSALS[key] = refusal(spec)
        why = _REFUSALS[key]
        if why is None:
            out.append(spec)
        elif skipped is not None:
            note = f"{spec.method} left out of {spec.dataset} {spec.teacher_modality}->{spec.student_modality}: {why}"
            if note not in skipped:
                skipped.append(note)
    return out


def pending(specs: list[RunSpec], force: bool = False) -> list[RunSpec]:
    """Specs without an ok record (all of them when ``force``)."""
    if force:
        return list(specs)
    return [s for s in specs if not existing_ok(s.results_dir, resolve(s).run_id)]


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


def plan_grid(methods: str, datasets: str, directions: str, seeds: str, *, overrides: dict[str, dict[str, str]],
              sweeps: list[str], results: Path, device: str = "auto", save_model: bool = False,
              plugins: list[str] | None = None, force: bool = False,
              retry_failed: bool = False, tuned: dict | None = None,
              skipped: list[str] | None = None) -> tuple[list[RunSpec], list[RunSpec]]:
    """Every spec of the grid (all ``--sweep`` points) and the ones still to run: without an ok
    record (all with ``force``), or, with ``retry_failed``, only those whose last attempt failed
    (a failed record, or a failed or cancelled SLURM task). ``tuned`` (``trials``, ``storage``): every
    spec with its best ``bench tune`` trial's parameters (:mod:`bench.tune.best`)."""
    specs: list[RunSpec] = []
    for combo in sweep_overrides(overrides, sweeps):
        specs += expand_grid(methods, datasets, directions, seeds, overrides=combo, results_dir=str(results),
                             device=device, save_model=save_model, plugins=list(plugins or []), skipped=skipped)
    if tuned is not None:
        from bench.tune.best import with_tuned

        specs = with_tuned(specs, **tuned)
    todo = pending(specs, force)
    if retry_failed:
        from bench.launch.slurm import retry_candidates
        from bench.records.store import read_record, record_path

        again = retry_candidates(results) if (Path(results) / "slurm").exists() else set()
        ids = {id(sp): resolve(sp).run_id for sp in todo}
        for sp in todo:
            rp = record_path(results, ids[id(sp)])
            if rp.exists() and read_record(rp)["status"] == "failed":
                again.add(ids[id(sp)])
        todo = [sp for sp in todo if ids[id(sp)] in again]
    return specs, todo
