"""The republished offline grid (#28): its parts, the grid rule for methods that cannot connect a
benchmark's networks, the choice of the teacher controls' zoo methods, and the time estimate."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.api.errors import BenchError
from bench.cli import app
from bench.launch.grid import expand_grid
from conftest import tiny

MLPS = {"train": {"teacher_backbone": "mlp", "student_backbone": "mlp"}}


def test_a_group_leaves_out_a_method_that_refuses_the_networks_and_says_why(tmp_path):
    """On MLPs (no spatial axis) AT, KDSVD and NST cannot compare stage maps: ``--methods all``
    drops them from the grid with the reason instead of failing every run after the first refusal;
    named on its own such a method still fails with that reason."""
    skipped: list[str] = []
    specs = expand_grid("all", "synthetic", "a2v", "0,1", overrides=tiny(MLPS), results_dir=str(tmp_path),
                        device="cpu", skipped=skipped)
    methods = {s.method for s in specs}
    assert {"at", "kdsvd", "nst"}.isdisjoint(methods) and {"none", "logit", "fdcmkd", "crd"} <= methods
    assert len(skipped) == 3 and all("no spatial axis" in w for w in skipped)
    assert skipped[0].startswith("at left out of synthetic audio->visual: method 'at' cannot distil")
    assert len(specs) == 2 * len(methods)  # both seeds of every method kept
    full = expand_grid("all", "synthetic", "a2v", "0", overrides=tiny(), results_dir=str(tmp_path), device="cpu")
    assert {"at", "kdsvd", "nst"} <= {s.method for s in full}  # the conv nets have spatial maps: nothing dropped
    named = expand_grid("at,logit", "synthetic", "a2v", "0", overrides=tiny(MLPS), results_dir=str(tmp_path), device="cpu")
    assert [s.method for s in named] == ["at", "logit"]  # kept: the run itself refuses, naming the reason
    r = CliRunner().invoke(app, ["run", "--methods", "at", "--datasets", "synthetic", "--directions", "a2v", "--seeds", "0",
                                 "-r", str(tmp_path / "res"), "--device", "cpu", "--epochs", "1", "--teacher-epochs", "1",
                                 *[a for k, v in tiny(MLPS).items() for kk, vv in v.items() for a in ("--set", f"{k}.{kk}={vv}")]])
    assert r.exit_code != 0 and "no spatial axis" in r.output


def _rec(ds: str, student: str, method: str, seed: int, metric: float, wall: float = 1.0,
         teacher: str = "other") -> dict:
    return {"status": "ok", "dataset": ds, "student_modality": student, "teacher_modality": teacher, "method": method,
            "seed": seed, "best_metric": metric, "wall_time_s": wall}


def test_the_zoo_controls_go_to_the_two_zoo_methods_with_the_best_mean_rank():
    from bench.report.offline_grid import best_zoo_methods

    recs = []
    for cell, order in ((("a", "x"), ["crd", "logit", "vid", "sp", "at"]), (("a", "y"), ["vid", "crd", "logit", "at", "sp"]),
                        (("b", "x"), ["sp", "vid", "crd", "logit", "at"])):
        for rank, m in enumerate(order):
            recs += [_rec(cell[0], cell[1], m, sd, 90.0 - 10 * rank + sd * 0.1) for sd in range(3)]
    picked, ranks = best_zoo_methods(recs)
    # mean ranks: crd (1+2+3)/3 = 2, vid (3+1+2)/3 = 2, sp (4+5+1)/3 = 3.33, at (5+4+5)/3; logit is not a zoo method
    assert ranks == pytest.approx({"crd": 2.0, "vid": 2.0, "sp": 10 / 3, "at": 14 / 3})
    assert picked == ["crd", "vid"]  # tie on rank broken by name
    with pytest.raises(BenchError, match="1 zoo method"):
        best_zoo_methods([r for r in recs if r["method"] in ("logit", "at")])


def test_the_time_model_falls_back_from_exact_to_ratios():
    from bench.report.offline_grid import TimeModel

    recs = [_rec("synthetic", "v", "logit", 0, 50, wall=2.0), _rec("synthetic", "v", "crd", 0, 50, wall=4.0),
            _rec("big", "v", "logit", 0, 50, wall=20.0), _rec("big", "v", "logit", 1, 50, wall=22.0),
            _rec("big", "v", "none", 0, 50, wall=9.0, teacher="v"), {"status": "failed", "dataset": "big"}]
    m = TimeModel(recs)
    assert m.seconds("big", "logit", "cross") == pytest.approx(21.0)  # exact: the median
    assert m.seconds("big", "logit", "same") == pytest.approx(21.0 * 9.0 / 21.0)  # the dataset's same/cross ratio
    assert m.seconds("big", "crd", "cross") == pytest.approx(4.0 * 21.0 / 2.0)  # synthetic time x the dataset ratio
    assert m.seconds("big", "crd:shuffled", "cross") == pytest.approx(42.0)
    assert m.source == {"exact": 1, "kind ratio": 1, "dataset ratio": 2}
    with pytest.raises(BenchError, match="no calibration record of nowhere"):
        m.seconds("nowhere", "logit", "cross")


def test_the_plan_has_every_part_with_per_seed_splits(tmp_path):
    """A toy plan on synthetic alone (2 seeds, 1 epoch): the parts in order, every run with per-seed
    splits, the teacher controls only on a sample-paired benchmark and only once main has run."""
    from bench.report.offline_grid import CONTROL_METHODS, plan
    from bench.report.reproduce import Benchmark

    tiny_b = (Benchmark("synthetic", "synthetic", tiny()),)
    parts = plan(tmp_path, seeds="0,1", device="cpu", benchmarks=tiny_b, epochs=1, teacher_epochs=1)
    assert [p.name for p in parts] == ["main", "controls", "studies", "teacher_sets", "teacher_controls"]
    by = {p.name: p.build(tmp_path) for p in parts[:-1]}
    assert all(s.overrides["train"]["split_mode"] == "per_seed" for specs in by.values() for s in specs)
    assert {s.method for s in by["controls"]} == {"ls", "tfkd"}
    assert {s.method for s in by["studies"]} == {"fdcmkd"} and len(by["studies"]) == 17 * 2 * 2
    assert by["teacher_sets"] == []  # synthetic has no teacher-set directions in the plan
    assert "mst" not in {s.method for s in by["main"]}
    with pytest.raises(BenchError, match="chosen from the finished main part"):
        parts[-1].build(tmp_path)
    given = plan(tmp_path, seeds="0,1", device="cpu", benchmarks=tiny_b, zoo=("crd", "vid"))[-1].build(tmp_path)
    assert {s.method for s in given} == set(CONTROL_METHODS) | {"crd", "vid"}
    assert {s.overrides["train"]["teacher_control"] for s in given} == {"shuffled", "random"}
    assert len(given) == 9 * 2 * 2 * 2  # methods x controls x directions x seeds


def test_reproduce_plan_and_bad_parts_from_the_command_line(tmp_path):
    cal = tmp_path / "cal"
    r = CliRunner().invoke(app, ["reproduce", "--plan", "-r", str(tmp_path / "res"), "--calibration", str(cal)])
    assert r.exit_code != 0 and "no ok records" in r.output
    r = CliRunner().invoke(app, ["reproduce", "--parts", "main,nope", "-r", str(tmp_path / "res")])
    assert r.exit_code != 0 and "unknown part(s) 'nope'" in r.output


def test_coverage_excuses_a_method_the_benchmark_cannot_run_and_keeps_real_gaps():
    """A grid that left AT out on MLPs is complete; a missing Logit run still makes it partial."""
    from bench.report.reproduce import Benchmark, excuse_refused

    cov = {"synthetic": {"expected": 10, "done": 6,
                         "missing": ["at->visual seed 0", "at->visual seed 1", "logit->audio seed 0", "nst->audio seed 3"]}}
    excuse_refused(cov, (Benchmark("synthetic", "synthetic", tiny(MLPS)),))
    c = cov["synthetic"]
    assert c["missing"] == ["logit->audio seed 0"] and c["expected"] == 7
    assert set(c["not_applicable"]) == {"at->visual", "nst->audio"}
    assert all("no spatial axis" in why for why in c["not_applicable"].values())


def test_teacher_sets_leave_out_a_named_method_that_cannot_use_a_fusion_teacher(tmp_path, monkeypatch):
    """SET_METHODS names C2KD, which reads a teacher stage map; a fusion teacher has none, so the
    part keeps C2KD on the same-modality direction only and says why (the frozen grid's runs of it
    on av2v failed with this reason)."""
    from bench.report import offline_grid as G
    from bench.report.reproduce import Benchmark

    monkeypatch.setattr(G, "SET_DIRECTIONS", {"synthetic": "av2v,v2v"})
    part = next(p for p in G.plan(tmp_path, seeds="0", device="cpu", benchmarks=(Benchmark("synthetic", "synthetic", tiny()),),
                                  epochs=1, teacher_epochs=1) if p.name == "teacher_sets")
    specs = part.build(tmp_path)
    by_dir = {}
    for s in specs:
        by_dir.setdefault(f"{s.teacher_modality}->{s.student_modality}", set()).add(s.method)
    assert by_dir["visual->visual"] == set(G.SET_METHODS) - {"mst"}
    assert by_dir["audio+visual->visual"] == set(G.SET_METHODS) - {"c2kd"}
    assert len(part.left_out) == 1 and part.left_out[0].startswith("c2kd on synthetic audio+visual->visual: ")
    assert "stage map" in part.left_out[0]


def test_coverage_counts_only_the_comparison_grid():
    """MST-Distill exists only on teacher-set directions and the teacher controls have pages of their
    own: neither may make the cross-modal grid look incomplete (every method x direction x seed)."""
    import pandas as pd

    from bench.report.reproduce import comparison_records, grid_coverage

    rows = [dict(dataset="avdigits", teacher_modality=t, student_modality=s, method=m, seed=sd, teacher_control=c,
                 method_params={}, tuned=False, config_hash=f"{m}{t}{s}{sd}{c}")
            for sd in (0, 1) for (t, s, m, c) in [("audio", "visual", "none", "none"), ("audio", "visual", "logit", "none"),
                                                  ("audio+visual", "visual", "mst", "none"), ("visual", "visual", "logit", "none"),
                                                  ("audio", "visual", "logit", "shuffled")]]
    df = pd.DataFrame(rows)
    kept = comparison_records(df)
    assert sorted(set(zip(kept["teacher_modality"], kept["method"], kept["teacher_control"]))) == [
        ("audio", "logit", "none"), ("audio", "none", "none")]
    cov = grid_coverage(kept, {"avdigits": ["visual"]})
    assert cov["avdigits"] == {"expected": 4, "done": 4, "missing": []}
    # a missing cross-modal run is not hidden by the same method's runs on other directions
    gap = df[~((df["method"] == "logit") & (df["teacher_modality"] == "audio") & (df["seed"] == 1)
               & (df["teacher_control"] == "none"))]
    assert grid_coverage(comparison_records(gap), {"avdigits": ["visual"]})["avdigits"]["missing"] == ["logit->visual seed 1"]
    assert grid_coverage(gap, {"avdigits": ["visual"]})["avdigits"]["missing"] == []  # what the unfiltered count said
