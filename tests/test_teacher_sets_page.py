"""teacher_sets.md (#28) from hand-made records of ``synthetic`` (a2v, av2v, v2v into visual, five
seeds): gains, the set-minus-each-unimodal differences, their t-intervals and Holm by hand, the
"beats both" rule, MST-Distill's n/a gap, the page without teacher-set runs, hostile names."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import holm_by_hand
from scipy import stats

from bench.report.gap import gains_and_gaps, select_records
from bench.report.reproduce import Benchmark
from bench.report.teacher_sets import teacher_sets, verdict
from bench.train.resolve import build_adapter

SEEDS = (0, 1, 2, 3, 4)
BASE = np.array([70.0, 71.0, 72.0, 73.0, 74.0])
# KD minus w/o KD per seed, per (method, direction); w/o KD is BASE on every direction
MOVE = {("logit", "a2v"): [-1, -2, -1.5, -1, -2], ("logit", "av2v"): [3, 4, 3.5, 4.5, 3],
        ("logit", "v2v"): [1, 1.5, 0.5, 1, 2],
        ("dkd", "a2v"): [0, 1, -1, 0.5, -0.5], ("dkd", "av2v"): [2, -1, 1, 0, 3], ("dkd", "v2v"): [5, 6, 5.5, 6.5, 5],
        ("mst", "av2v"): [1, 2, 1, 2, 1.5]}
TEACHER = {"a2v": "audio", "av2v": "audio+visual", "v2v": "visual"}
CATS = {"none": "baseline", "logit": "logit", "dkd": "logit", "mst": "logit"}
SYN = Benchmark("synthetic", "synthetic")


def rec(method: str, direction: str, seed: int, value: float) -> dict:
    fp = build_adapter("synthetic", {}).fingerprint()
    h = f"{method}-{direction}-{seed}"
    return {"schema": 1, "run_id": f"synthetic_{direction}_{h}", "status": "ok", "method": method,
            "method_category": CATS.get(method, "logit"), "dataset": "synthetic", "task": "classification",
            "teacher_modality": TEACHER[direction], "student_modality": "visual", "direction": direction,
            "seed": seed, "metric": "top1", "config_hash": h, "group_hash": f"{method}-{direction}",
            "config": {"dataset": fp, "method_params": {}, "train": {"split_mode": "per_seed"}},
            "best_metric": value, "final_metric": value, "history": [{"epoch": 1, "test_metric": value}],
            "split_fingerprint": {"test": f"fp{seed}", "val": f"v{seed}"}}


def records(moves: dict = MOVE, rename: dict | None = None) -> list[dict]:
    out = [rec("none", d, s, BASE[s]) for d in TEACHER for s in SEEDS]
    for (m, d), delta in moves.items():
        out += [rec((rename or {}).get(m, m), d, s, BASE[s] + delta[s]) for s in SEEDS]
    return out



def by_hand(a: list[float], b: list[float]) -> tuple[np.ndarray, float, tuple[float, float], float]:
    d = np.subtract(a, b)
    se = d.std(ddof=1) / math.sqrt(len(d))
    t = stats.t.ppf(0.975, len(d) - 1)
    return d, d.mean(), (d.mean() - t * se, d.mean() + t * se), float(stats.ttest_1samp(d, 0).pvalue)


@pytest.fixture(scope="module")
def page():
    return teacher_sets(records(), (SYN,))


def test_gains_are_kd_minus_w_o_kd_per_seed_and_need_no_models():
    ad = build_adapter("synthetic", {})
    df, _, _ = select_records(records(), ad, "", "bench run")
    m = gains_and_gaps(df, ad, need="teacher-set", methods=["logit", "dkd", "mst"])
    rows = {(r["method"], r["direction"]): r for r in m["rows"]}
    assert set(rows) == {(a, d) for a in ("logit", "dkd", "mst") for d in TEACHER}
    for key, delta in MOVE.items():
        assert rows[key]["mean_gain"] == pytest.approx(np.mean(delta), abs=1e-9)
        assert m["per_seed"][("visual", *key)] == pytest.approx({(s, f"fp{s}"): delta[s] for s in SEEDS})
    assert not any(k in r for r in m["rows"] for k in ("teacher_file", "hs_run", "cch_missing"))
    assert rows[("logit", "av2v")]["mean_gap"] == pytest.approx(np.mean(np.subtract(MOVE[("logit", "av2v")],
                                                                                   MOVE[("logit", "v2v")])))
    assert rows[("mst", "av2v")]["gap_missing"].startswith("n/a: MST-Distill distils from a teacher set only")
    assert rows[("mst", "a2v")]["gain_missing"] == "no MST-Distill records of a2v"
    assert m["n_gain_tests"] == 7 and m["n_gap_tests"] == 4  # 2 x 3 + MST's one; 2 x 2 (MST's gap n/a)


def test_set_minus_each_unimodal_teacher_by_hand(page):
    md, summary = page
    sec = summary["synthetic"]
    assert sec["status"] == "ok" and sec["n_set_tests"] == 4
    got = {(r["method"], r["vs"]): r for r in sec["set_vs_unimodal"]}
    want = {(m, u): by_hand(MOVE[(m, "av2v")], MOVE[(m, u)]) for m in ("logit", "dkd") for u in ("a2v", "v2v")}
    adj = dict(zip(want, holm_by_hand([w[3] for w in want.values()])))
    for key, (d, mean, ci, p) in want.items():
        r = got[key]
        assert r["vs_kind"] == ("cross-modal" if key[1] == "a2v" else "same-modality")
        assert r["per_seed"] == pytest.approx({str(s): d[s] for s in SEEDS})
        assert r["mean_diff"] == pytest.approx(mean) and (r["ci_low"], r["ci_high"]) == pytest.approx(ci)
        assert r["p"] == pytest.approx(p) and r["p_adj"] == pytest.approx(adj[key])
        assert r["verdict"] == ("inconclusive" if adj[key] >= 0.05 else "better" if mean > 0 else "worse")
    # the data are built so that logit's set beats both, dkd's set is worse than its same-modality teacher
    assert got[("logit", "a2v")]["verdict"] == got[("logit", "v2v")]["verdict"] == "better"
    assert got[("dkd", "v2v")]["verdict"] == "worse" and got[("dkd", "a2v")]["verdict"] == "inconclusive"
    v = {x["method"]: x for x in sec["verdicts"]}
    assert v["logit"]["verdict"] == "beats both" and v["logit"]["text"] == "set beats both unimodal teachers"
    assert v["dkd"]["verdict"] == "worse" and v["dkd"]["text"].startswith("set worse than v2v")
    assert v["mst"]["verdict"] == "n/a" and all(r["missing"].startswith("n/a") for r in sec["set_vs_unimodal"]
                                                  if r["method"] == "mst")
    assert "| Logit | av2v | set beats both unimodal teachers |" in md
    assert "Holm-corrected over the 4 set comparisons shown" in md and "**each** one-modality teacher" in md
    assert "CCH is not computed" in md
    json.dumps(summary, default=float)  # what build_outputs writes into summary.json


def test_beats_both_only_when_every_comparison_is_better():
    both = [("a2v", "cross-modal", "better"), ("v2v", "same-modality", "better")]
    assert verdict(both) == ("beats both", "set beats both unimodal teachers")
    assert verdict(both + [("b2v", "cross-modal", "better")])[1] == "set beats all 3 unimodal teachers"
    for other in ("inconclusive", "equivalent", "untested", "missing"):
        key, text = verdict([both[0], ("v2v", "same-modality", other)])
        assert key == "not shown" and "vs cross-modal a2v: set better" in text and "vs same-modality v2v" in text
    key, text = verdict([("a2v", "cross-modal", "worse"), both[1]])
    assert key == "worse" and text.startswith("set worse than a2v")
    assert verdict([])[0] == verdict([("a2v", "cross-modal", "n/a")])[0] == "n/a"


def test_a_missing_same_modality_teacher_is_said_not_dropped():
    moves = {k: v for k, v in MOVE.items() if k[1] != "v2v"}
    recs = [r for r in records(moves) if r["direction"] != "v2v"]
    md, summary = teacher_sets(recs, (SYN,))
    sec = summary["synthetic"]
    logit = {r["vs"]: r for r in sec["set_vs_unimodal"] if r["method"] == "logit"}
    assert logit["a2v"]["verdict"] in ("better", "worse", "inconclusive", "equivalent")
    assert logit["v2v"]["missing"] == "gain on v2v missing (no records of v2v)"
    assert next(v for v in sec["verdicts"] if v["method"] == "logit")["verdict"] == "not shown"
    assert "vs same-modality v2v: missing" in md


def test_no_teacher_set_runs_is_said_without_a_crash():
    recs = [r for r in records() if r["direction"] != "av2v"]
    md, summary = teacher_sets(recs, (SYN, Benchmark("mfeat", "mfeat")))
    assert summary["synthetic"]["status"] == "no teacher-set runs"
    assert summary["mfeat"]["status"] == "no records"
    assert "No teacher-set runs in the published records" in md and "| method |" not in md


def test_hostile_names_stay_text():
    bad = "<img src=x onerror=1>|*b*_[l](http://e)"
    md, summary = teacher_sets(records(rename={"dkd": bad}), (Benchmark("<b>x</b>", "synthetic"),))
    assert bad in {r["method"] for r in summary["synthetic"]["set_vs_unimodal"]}  # the data keep the name
    assert "<img" not in md and "<b>" not in md and "*b*" not in md
    assert re.search(r"(?<!\\)\]\(", md) is None  # no link: every ']' before '(' escaped
    assert "&lt;img src=x onerror=1&gt;\\|\\*b\\*\\_\\[l\\](http://e)" in md
    rows = [line for line in md.splitlines() if line.startswith("| &lt;img")]
    assert len(rows) == 3 + 2 + 2 + 1  # gains on three choices, two gaps, two set comparisons, one verdict
    for line in rows:  # an escaped '|' does not add a column
        assert line.replace("\\|", "").count("|") in {9, 8, 10, 4}  # gain, gap, set, verdict tables


def test_build_outputs_writes_the_page_and_the_summary(tmp_path, monkeypatch):
    """The few lines in build_outputs: teacher_sets.md and summary["teacher_sets"] (the tables and
    screenshots of the other pages are stubbed: not what is checked here)."""
    import bench.report.render as render
    import bench.report.reproduce as R
    from bench.records.store import write_record

    res = tmp_path / "res"
    for r in records():
        write_record(res, r)
    monkeypatch.setattr(render, "render_table", lambda *a, **k: render.Rendered(text=""))
    monkeypatch.setattr(R, "compile_latex", lambda *a, **k: "stubbed")
    monkeypatch.setattr(R, "screenshot", lambda *a, **k: "stubbed")
    out = tmp_path / "docs"
    summary = R.build_outputs(res, out, benchmarks=(SYN,), every_direction=False, allow_mixed_provenance=True)
    on_disk = json.loads((out / "summary.json").read_text())
    sec = on_disk["teacher_sets"]["synthetic"]
    assert sec["status"] == "ok" and sec == json.loads(json.dumps(summary["teacher_sets"]["synthetic"], default=float))
    assert {v["method"]: v["verdict"] for v in sec["verdicts"]} == {"logit": "beats both", "dkd": "worse", "mst": "n/a"}
    md = (out / "teacher_sets.md").read_text()
    assert md.startswith("> **Mixed provenance**")  # hand-made records carry no code state: the banner
    assert "| Logit | av2v | set beats both unimodal teachers |" in md
