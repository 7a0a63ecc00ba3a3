"""The republished offline grid (#28) as named parts, in the order they run, and its time estimate.

``bench reproduce offline`` runs these parts from one results folder; each part is an ordinary grid
(finished runs skipped, so the command resumes). Every run uses per-seed splits
(``train.split_mode=per_seed``): a seed redraws the train/validation split as well as the
initialisation, so the seed spread includes the split's.

    main              every KD method and w/o KD, both cross-modal directions, every benchmark
    controls          the label-smoothing and self-distillation (Tf-KD) controls, same cells
    studies           FD-CMKD's ablation, threshold and l1 x l2 studies on ``synthetic``
    teacher_sets      the teacher-set and same-modality directions (AV-Digits av2v, av2a, v2v, a2a;
                      mfeat's multi-view teacher fac+mor and the same-view control) for
                      :data:`SET_METHODS`; MST-Distill on the teacher-set directions only
    teacher_controls  the shuffled- and random-teacher controls on the sample-paired benchmarks for
                      :data:`CONTROL_METHODS` plus the two zoo methods (:data:`ZOO`) with the best
                      mean rank in the finished ``main`` part there (:func:`best_zoo_methods`): which
                      two is decided by the grid's own records, so this part is planned after ``main``

The choice of the two zoo methods reads test accuracies, but selects no model or epoch: it only
decides which methods get the extra control runs, and ``summary.json`` says which and why.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench.api.errors import BenchError
from bench.report.reproduce import PROTOCOL, with_protocol  # noqa: F401  (part of this module's interface)
from bench.report.teacher_controls import (  # noqa: F401  (their home; part of this module's interface)
    CONTROL_METHODS,
    TEACHER_CONTROLS,
    ZOO,
    ZOO_CONTROLS,
    best_zoo_methods,
    sample_paired,
)

SEEDS = "0,1,2,3,4"

SET_METHODS = ("none", "logit", "dkd", "dist", "c2kd", "fdcmkd", "mst")
"""w/o KD and the methods run on the teacher-set and same-modality directions (MST-Distill only where
the teacher is a set)."""

SET_DIRECTIONS = {"avdigits": "av2v,av2a,v2v,a2a", "mfeat": "sets,same"}
"""Per benchmark dataset: the teacher-set directions and their same-modality controls."""


@dataclass(frozen=True)
class Part:
    name: str
    note: str
    build: Callable[[Path], list]  # results folder -> RunSpecs (a part may read the records of earlier parts)
    choice: Callable[[Path], tuple[list[str], dict[str, float]]] | None = None  # the teacher controls' zoo pick
    left_out: list[str] = field(default_factory=list)  # filled by build: runs the part names but cannot run, why


def _dedupe(specs: list) -> list:
    from bench.train.resolve import resolve

    unique: dict[str, Any] = {}
    for s in specs:
        unique.setdefault(resolve(s).run_id, s)
    return list(unique.values())


def plan(results: Path, seeds: str = SEEDS, device: str = "cpu", benchmarks: tuple | None = None,
         epochs: int | None = None, teacher_epochs: int | None = None,
         zoo: tuple[str, ...] | None = None) -> list[Part]:
    """The parts of the republished grid, in run order. ``zoo`` fixes the teacher controls' two zoo
    methods (for an estimate before ``main`` has run); by default they are chosen from ``main``."""
    from bench.launch.grid import expand_grid
    from bench.records.store import load_records
    from bench.report.reproduce import BENCHMARKS, STUDY_DATASET, offline_specs
    from bench.train.resolve import resolve

    benchmarks = benchmarks or BENCHMARKS
    extra: dict[str, dict[str, str]] = {"train": dict(PROTOCOL["train"])}
    if epochs is not None:
        extra["train"]["epochs"] = str(epochs)
    if teacher_epochs is not None:
        extra["train"]["teacher_epochs"] = str(teacher_epochs)

    def grid(methods: str, b: Any, directions: str, more: dict[str, dict[str, str]] | None = None) -> list:
        ov = with_protocol(b.overrides, extra)
        for scope, kv in (more or {}).items():
            ov.setdefault(scope, {}).update(kv)
        return expand_grid(methods, b.dataset, directions, seeds, overrides=ov, results_dir=str(results), device=device)

    def main(_: Path) -> list:
        return _dedupe([s for b in benchmarks for s in grid("all", b, "all")])

    def controls(_: Path) -> list:
        return _dedupe([s for b in benchmarks for s in grid("controls", b, "all")])

    def studies(_: Path) -> list:
        study = tuple(b for b in benchmarks if b.dataset == STUDY_DATASET)
        specs = offline_specs(results, seeds=seeds, device=device, benchmarks=study, methods="fdcmkd",
                              epochs=epochs, teacher_epochs=teacher_epochs, protocol=PROTOCOL)
        return [s for s in specs if s.method == "fdcmkd"]

    set_left_out: list[str] = []

    def teacher_sets(_: Path) -> list:
        """SET_METHODS names its methods, so one that cannot connect a direction's networks (C2KD's
        stage maps on a fusion teacher) would fail its runs: it is left out of that direction, with
        the reason (the frozen 874a657 grid did run them, and they failed with this reason)."""
        from bench.train.teachers import refusal

        specs = _dedupe([s for b in benchmarks if b.dataset in SET_DIRECTIONS
                         for s in grid(",".join(SET_METHODS), b, SET_DIRECTIONS[b.dataset])])
        why: dict[tuple[str, str, str, str], str | None] = {}
        keep = []
        for s in specs:
            key = (s.dataset, s.teacher_modality, s.student_modality, s.method)
            if key not in why:
                why[key] = refusal(s)
            if why[key] is None:
                keep.append(s)
        set_left_out[:] = [f"{m} on {d} {t}->{st}: {w}" for (d, t, st, m), w in why.items() if w]
        return keep

    paired = sample_paired(benchmarks)

    def teacher_controls(res: Path) -> list:
        picked = list(zoo) if zoo is not None else chosen_zoo(res)[0]
        methods = ",".join(CONTROL_METHODS + tuple(picked))
        return _dedupe([s for b in paired for c in TEACHER_CONTROLS
                        for s in grid(methods, b, "all", {"train": {"teacher_control": c}})])

    def chosen_zoo(res: Path) -> tuple[list[str], dict[str, float]]:
        main_ids = {resolve(s).run_id for s in main(res) if s.dataset in {b.dataset for b in paired}}
        recs = [r for r in load_records(res, status="ok") if r["run_id"] in main_ids] if res.exists() else []
        missing = len(main_ids) - len(recs)
        if missing:
            raise BenchError(f"the two zoo methods that get the teacher controls are chosen from the finished main "
                             f"part; {missing} of its runs on {', '.join(b.dataset for b in paired)} are missing")
        return best_zoo_methods(recs)

    parts = [Part("main", "every KD method and w/o KD, both cross-modal directions", main),
             Part("controls", "label smoothing and Tf-KD (no teacher)", controls),
             Part("studies", "FD-CMKD's ablation, threshold and l1 x l2 studies on synthetic", studies),
             Part("teacher_sets", f"{', '.join(SET_METHODS)} on the teacher-set and same-modality directions", teacher_sets,
                  left_out=set_left_out)]
    if paired:
        two = f"{', '.join(zoo)} (given)" if zoo is not None else f"the {ZOO_CONTROLS} best zoo methods of main"
        parts.append(Part("teacher_controls", f"shuffled and random teacher: {', '.join(CONTROL_METHODS)} + {two}, "
                                              f"on {', '.join(b.dataset for b in paired)}", teacher_controls,
                          None if zoo is not None else chosen_zoo))
    return parts


# ---- the time estimate -------------------------------------------------------------------------

def direction_kind(teacher: str, student: str) -> str:
    from bench.data.tsets import is_set

    return "set" if is_set(teacher) else "same" if teacher == student else "cross"


class TimeModel:
    """Seconds one run takes, from the ``wall_time_s`` of calibration records: the median of the
    same (dataset, method, direction kind); else the (dataset, method) median times the dataset's
    kind ratio; else the method's ``synthetic`` time times the dataset's median ratio to
    ``synthetic``; else the dataset's median. ``source`` counts which rule each estimate used."""

    def __init__(self, records: list[dict[str, Any]]):
        self.by: dict[tuple[str, str, str], list[float]] = {}
        for r in records:
            t = r.get("wall_time_s")
            if r.get("status") != "ok" or not isinstance(t, (int, float)):
                continue
            kind = direction_kind(r["teacher_modality"], r["student_modality"])
            self.by.setdefault((r["dataset"], r["method"], kind), []).append(float(t))
        self.source: dict[str, int] = {}

    def _med(self, ds: str, m: str | None = None, kind: str | None = None) -> float | None:
        vals = [v for (d, mm, k), vs in self.by.items() for v in vs
                if d == ds and (m is None or mm == m) and (kind is None or k == kind)]
        return statistics.median(vals) if vals else None

    def _ratio(self, ds: str) -> float | None:
        rs = [self._med(ds, m) / self._med("synthetic", m) for (d, m, _) in self.by
              if d == ds and self._med("synthetic", m)]
        return statistics.median(rs) if rs else None

    def seconds(self, dataset: str, method: str, kind: str) -> float:
        base = method.split(":")[0]
        for rule, value in (("exact", lambda: self._med(dataset, base, kind)),
                            ("kind ratio", lambda: (self._med(dataset, base) or 0) * self._kind_ratio(dataset, kind) or None),
                            ("dataset ratio", lambda: (self._med("synthetic", base) or 0) * (self._ratio(dataset) or 0) or None),
                            ("dataset median", lambda: self._med(dataset))):
            v = value()
            if v:
                self.source[rule] = self.source.get(rule, 0) + 1
                return float(v)
        raise BenchError(f"no calibration record of {dataset} to estimate its runs from")

    def _kind_ratio(self, ds: str, kind: str) -> float:
        a, b = self._med(ds, None, kind), self._med(ds, None, "cross")
        return a / b if a and b else 1.0


def estimate(parts: list[Part], results: Path, model: "TimeModel", jobs: int,
             stand_in: list[Part] | None = None) -> list[dict[str, Any]]:
    """Per part: runs, runs already done, and the estimated seconds of the runs still to do (summed
    over runs, and divided by ``jobs`` parallel single-threaded processes). A part that cannot be
    planned yet (the teacher controls before ``main`` is done) is estimated from the part of the
    same name in ``stand_in`` (the plan with two zoo methods standing in), and says so."""
    from bench.launch.grid import pending

    rows = []
    for p in parts:
        note = p.note
        try:
            specs = p.build(results)
        except BenchError as e:
            alt = next((q for q in stand_in or [] if q.name == p.name), None)
            if alt is None:
                raise
            specs, note = alt.build(results), f"{alt.note}; not plannable yet ({e})"
        if p.left_out:
            note += f"; {len(p.left_out)} (method, direction) left out: " + "; ".join(p.left_out)
        todo = pending(specs)
        secs = 0.0
        for s in todo:
            secs += model.seconds(Path(s.dataset).name if "/" in s.dataset else s.dataset, s.method,
                                  direction_kind(s.teacher_modality, s.student_modality))
        rows.append({"part": p.name, "runs": len(specs), "done": len(specs) - len(todo), "run_seconds": secs,
                     "wall_seconds": secs / max(jobs, 1), "note": note})
    return rows
