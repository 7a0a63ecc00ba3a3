"""The teacher-control report of the republished grid (#28, bench.report.teacher_controls): the
paired gains over w/o KD with the paired, shuffled and random teacher, paired minus shuffled, the
share that survives the shuffle, Holm per family, the zoo choice, and teacher_controls.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import holm_by_hand, tiny
from scipy import stats

from bench.records.store import load_records, teacher_control, write_record
from bench.report import teacher_controls as T

CLEAN = {"commit": "0" * 40, "dirty": False, "diff_hash": None, "untracked": 0}
OV = {"synthetic": {"n_train": "240", "n_test": "120"}, "train": {"epochs": "1", "teacher_epochs": "1",
                                                                  "split_mode": "per_seed"}}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Tiny synthetic runs, both directions, 3 seeds, 1 epoch: w/o KD and Logit, and Logit with the
    shuffled and with the random teacher; every record from the clean commit :data:`CLEAN`."""
    from bench.launch.grid import expand_grid
    from bench.launch.local import LocalExecutor
    from bench.report.reproduce import Benchmark

    res = tmp_path_factory.mktemp("tc") / "res"
    specs = expand_grid("none,logit", "synthetic", "all", "0,1,2", overrides=tiny(OV), results_dir=str(res), device="cpu")
    for c in T.TEACHER_CONTROLS:
        specs += expand_grid("logit", "synthetic", "all", "0,1,2", overrides=tiny(OV | {"train": {
            **OV["train"], "teacher_control": c}}), results_dir=str(res), device="cpu")
    assert len(specs) == 4 * 2 * 3
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("bench.train.run.code_state", lambda path=None: dict(CLEAN))
        assert not LocalExecutor().run(specs).failed
    return res, (Benchmark("synthetic", "synthetic", tiny(OV)),)


def _outputs(res: Path, out: Path, benchmarks: tuple, monkeypatch) -> dict:
    """build_outputs without the FD-CMKD study tables (the toy grid has no FD-CMKD runs; they are
    tested in test_evidence) and without pdflatex/chromium (slow here, and not what is tested)."""
    import bench.report.render as RR
    from bench.report.reproduce import build_outputs

    full = RR.render_table
    monkeypatch.setattr(RR, "render_table", lambda results, kind, **kw: RR.Rendered() if kind in (
        "ablation", "threshold", "sensitivity") else full(results, kind, **kw))
    monkeypatch.setattr("bench.report.reproduce._tool", lambda name: None)
    return build_outputs(res, out, benchmarks=benchmarks)


def _by_hand(recs: list[dict], student: str) -> dict[str, dict[int, tuple[str, float]]]:
    """Per row (none, paired, shuffled, random): seed -> (test-split fingerprint, best metric)."""
    out: dict[str, dict[int, tuple[str, float]]] = {}
    for r in recs:
        if r["student_modality"] != student:
            continue
        row = "none" if r["method"] == "none" else {"none": "paired"}.get(teacher_control(r), teacher_control(r))
        assert r["seed"] not in out.setdefault(row, {})
        out[row][r["seed"]] = (r["split_fingerprint"]["test"], float(r["best_metric"]))
    return out



def _check(p: dict, gains: list[float]) -> None:
    """A reported comparison against its per-seed gains: mean, sd, the t-interval, the paired t p."""
    g = np.asarray(gains)
    assert [x["gain"] for x in p["per_seed"]] == pytest.approx(gains, abs=1e-9)
    assert p["n"] == 3 and p["diff"] == pytest.approx(g.mean(), abs=1e-9)
    sd = g.std(ddof=1)
    if sd < 1e-9:  # every seed moved alike: a point interval
        assert p["ci"] == pytest.approx([g.mean(), g.mean()])
        return
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert p["ci"] == pytest.approx([g.mean() - half, g.mean() + half], abs=1e-9)
    assert p["p"] == pytest.approx(stats.ttest_1samp(g, 0.0).pvalue, rel=1e-9)


def test_summary_numbers_are_the_paired_gains_of_the_records(grid, tmp_path, monkeypatch):
    res, benchmarks = grid
    summary = _outputs(res, tmp_path / "out", benchmarks, monkeypatch)
    tc = summary["teacher_controls"]
    assert tc["status"] == "ok" and tc["datasets"] == ["synthetic"] and tc["correction"] == "holm"
    rows = {r["student_modality"]: r for r in tc["rows"]}
    assert set(rows) == {"audio", "visual"} and {r["method"] for r in tc["rows"]} == {"logit"}
    recs = load_records(res, status="ok")
    ps: dict[str, list[float]] = {k: [] for k in T.COMPARISONS}
    for student in ("audio", "visual"):
        v, row = _by_hand(recs, student), rows[student]
        assert set(v) == {"none", "paired", "shuffled", "random"} and row["missing"] == {}
        for seed in range(3):  # per-seed splits: one fingerprint per seed, the same for every row
            assert len({v[k][seed][0] for k in v}) == 1
        assert len({v["none"][s][0] for s in range(3)}) == 3
        for name, (a, b) in (("paired", ("paired", "none")), ("shuffled", ("shuffled", "none")),
                             ("random", ("random", "none")), ("paired_minus_shuffled", ("paired", "shuffled"))):
            _check(row[name], [v[a][s][1] - v[b][s][1] for s in range(3)])
            assert row[name]["seeds"] == [0, 1, 2] and row[name]["per_seed"][0]["split_fingerprint"] == v["none"][0][0]
            ps[name].append(row[name]["p"])
    for name, family in tc["families"].items():  # Holm over the two cells of each family, on its own
        assert family["tested"] == 2 and "Holm-corrected over the 2 rows" in family["rule"]
        want = holm_by_hand(ps[name])
        for student, adj in zip(("audio", "visual"), want):
            p = rows[student][name]
            assert p["p_adj"] == pytest.approx(adj, rel=1e-9)
            assert p["verdict"] == ("better" if adj < 0.05 and p["diff"] > 0 else "worse" if adj < 0.05
                                    else "equivalent" if p["p_tost_adj"] < 0.05 else "inconclusive")
    for r in tc["rows"]:  # the share only where the paired gain is shown > 0
        if r["paired"]["verdict"] == "better":
            assert r["share_shuffled"] == pytest.approx(r["shuffled"]["diff"] / r["paired"]["diff"])
        else:
            assert r["share_shuffled"] is None and "not shown > 0" in r["share_reason"]
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["teacher_controls"]["rows"][0]["paired"]["p_adj"] == pytest.approx(tc["rows"][0]["paired"]["p_adj"])
    assert on_disk["zoo_controls"]["picked"] is None and "0 zoo method(s)" in on_disk["zoo_controls"]["why"]
    md = (tmp_path / "out" / "teacher_controls.md").read_text()
    assert "| Logit | synthetic/audio |" in md and "Holm-corrected on its own" in md
    assert f"{rows['audio']['paired']['diff']:+.2f} \\[" in md
    # the controls are rows of the comparison, never ranked: no leaderboard row, no mark
    assert sorted(r["display"] for r in summary["leaderboard"]) == ["Logit", "w/o KD"]
    comp = (tmp_path / "out" / "comparison.md").read_text()
    shuffled_line = next(ln for ln in comp.splitlines() if ln.startswith("| Logit (shuffled teacher)"))
    assert "**" not in shuffled_line and "<u>" not in shuffled_line and "†" not in shuffled_line
    assert "logit:shuffled-teacher|synthetic|audio" in summary["vs_baseline"]  # tested against w/o KD
    assert "conflict" not in (tmp_path / "out" / "comparison_vs_baseline.md").read_text().lower()


def test_a_grid_without_teacher_controls_says_so(grid, tmp_path, monkeypatch):
    res, benchmarks = grid
    plain = tmp_path / "res"
    for r in load_records(res, status="ok"):
        if teacher_control(r) == "none":
            r.pop("path")
            write_record(plain, r)
    summary = _outputs(plain, tmp_path / "out", benchmarks, monkeypatch)
    tc = summary["teacher_controls"]
    assert tc["status"] == "no records" and tc["rows"] == [] and "has not run yet" in tc["why"]
    md = (tmp_path / "out" / "teacher_controls.md").read_text()
    assert "no shuffled- or random-teacher records on synthetic" in md and "|---|" not in md
    assert summary["zoo_controls"]["with_control_records"] == []


# -- crafted records: the share rule, untested rows, hostile names, the zoo choice -----------------

def _rec(method: str, student: str, seed: int, value: float, control: str = "none", ds: str = "toy") -> dict:
    train = {} if control == "none" else {"teacher_control": control}
    return {"schema": 1, "run_id": f"{ds}_{student}_{method}_{control}_s{seed}", "status": "ok", "method": method,
            "method_category": "Uni-Modal" if method == "none" else "Logits", "dataset": ds, "task": "classification",
            "teacher_modality": "t", "student_modality": student, "direction": f"t2{student[0]}", "seed": seed,
            "metric": "top1", "config": {"method_params": {}, "train": train, "dataset": {"params": {}}},
            "config_hash": f"{method}{control}{ds}{student}{seed}", "group_hash": f"{method}{control}{ds}{student}",
            "best_metric": value, "final_metric": value, "split_fingerprint": {"test": f"fp{seed}"}}


def _cell(method: str, student: str, base: list[float], paired: list[float], shuffled: list[float] | None,
          random: list[float] | None = None) -> list[dict]:
    out = []
    for s in range(len(base)):
        out.append(_rec("none", student, s, base[s]))
        out.append(_rec(method, student, s, paired[s]))
        for control, vals in (("shuffled", shuffled), ("random", random)):
            if vals is not None and s < len(vals):
                out.append(_rec(method, student, s, vals[s], control))
    return out


def test_the_share_is_given_only_where_the_paired_gain_is_shown_above_zero():
    base = [50.0, 52.0, 51.0]
    recs = (_cell("logit", "x", base, [b + g for b, g in zip(base, [10.0, 10.2, 9.9])],
                  [b + g for b, g in zip(base, [4.1, 3.8, 4.05])], [b - 1 for b in base])
            + _cell("logit", "y", base, [b + g for b, g in zip(base, [5.0, -4.0, 1.0])],
                    [b + g for b, g in zip(base, [1.0, 0.0, 2.0])])
            + _cell("dkd", "x", base, [b + 3 for b in base], [53.5]))  # one shuffled seed only
    tc = T.teacher_control_gains(recs, ["toy"])
    rows = {(r["method"], r["student_modality"]): r for r in tc["rows"]}
    assert list(rows) == [("logit", "x"), ("logit", "y"), ("dkd", "x")]  # the paper's order: Logit before DKD
    strong, weak, short = rows[("logit", "x")], rows[("logit", "y")], rows[("dkd", "x")]
    assert strong["paired"]["verdict"] == "better"
    assert strong["share_shuffled"] == pytest.approx(np.mean([4.1, 3.8, 4.05]) / np.mean([10.0, 10.2, 9.9]))
    assert strong["paired_minus_shuffled"]["diff"] == pytest.approx(np.mean([5.9, 6.4, 5.85]))
    assert strong["random"]["diff"] == pytest.approx(-1.0) and strong["random"]["ci"] == pytest.approx([-1.0, -1.0])
    assert weak["paired"]["verdict"] == "inconclusive" and weak["share_shuffled"] is None
    assert weak["share_reason"].startswith("paired-teacher gain not shown > 0 (Holm p = ")
    assert weak["random"] is None and "no Logit (random teacher) records" in weak["missing"]["random"]
    # dkd: every seed +3 exactly: a point interval, p = 0; its shuffled control has one seed: untested
    assert short["paired"]["p"] == 0.0 and short["paired"]["verdict"] == "better"
    assert short["shuffled"]["verdict"] == "untested" and short["shuffled"]["n"] == 1
    assert short["share_shuffled"] is None and short["share_reason"] == "the paired and shuffled gains stand on different seeds"
    # Holm over the family's three rows (the point-interval p = 0 included)
    ps = [rows[k]["paired"]["p"] for k in rows]
    assert [rows[k]["paired"]["p_adj"] for k in rows] == pytest.approx(holm_by_hand(ps), rel=1e-9)
    assert tc["families"]["shuffled"]["tested"] == 2 and tc["families"]["shuffled"]["comparisons"] == 3
    md = T.to_markdown(tc)
    assert f"| {strong['share_shuffled']:.2f} |" in md and "untested, n=1" in md


def test_hostile_method_names_do_not_become_markup():
    name = "<img src=x onerror=alert(1)>|**b**_[l](http://e)`c`"
    base = [50.0, 51.0, 52.0]
    recs = _cell(name, "x", base, [b + 2 for b in base], [b + 1 for b in base], [b for b in base])
    tc = T.teacher_control_gains(recs, ["toy"])
    assert tc["status"] == "ok" and tc["rows"][0]["method"] == name
    md = T.to_markdown(tc)
    row = next(ln for ln in md.splitlines() if "img" in ln)
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;\\|\\*\\*b\\*\\*\\_\\[l\\](http://e)\\`c\\`" in row
    unescaped_bars = len(row.replace("\\|", "").split("|")) - 2
    assert unescaped_bars == 7  # the seven columns, none added by the name


def test_zoo_controls_say_which_methods_the_rule_picks_and_every_mean_rank():
    recs = []
    for student, order in (("x", ["crd", "vid", "logit", "sp"]), ("y", ["vid", "sp", "crd", "logit"])):
        for rank, m in enumerate(order):
            recs += [_rec(m, student, s, 80.0 - 10 * rank + s) for s in range(3)]
    recs += [_rec(m, "x", s, 40.0, "shuffled") for m in ("crd", "vid") for s in range(3)]  # controls: not ranked
    recs += [_rec("ls", "x", s, 99.0) | {"method_category": "Control"} for s in range(3)]  # not in the main part
    z = T.zoo_controls(recs, ["toy"])
    # crd (1 + 3) / 2 = 2, vid (2 + 1) / 2 = 1.5, sp (4 + 2) / 2 = 3; logit is no zoo method
    assert z["mean_rank"] == {"vid": 1.5, "crd": 2.0, "sp": 3.0} and list(z["mean_rank"]) == ["vid", "crd", "sp"]
    assert z["picked"] == ["vid", "crd"] and z["with_control_records"] == ["crd", "vid"] and z["agrees"] is True
    assert "lowest mean rank" in z["rule"] and "best_zoo_methods" in z["rule"]
    assert T.zoo_controls(recs, ["elsewhere"])["picked"] is None
