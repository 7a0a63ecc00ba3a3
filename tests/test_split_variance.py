"""Split variance (#25 item 5) and teachers in every table (#25 item 4).

``train.split_mode=per_seed`` draws the carved validation split, and the splits a dataset drew
itself (synthetic's train/test here), from the run's seed, from one prepared cache; the default
(``fixed``) keeps today's split and every config hash. The teacher of a seed is trained on the
splits its students get. Tables, the leaderboard and summary.json show the teachers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.api.config import hashed_train
from bench.api.errors import ConfigError
from bench.data import stratified_split
from bench.train.loop import load_splits
from bench.train.resolve import RunSpec, build_adapter, build_train_config, resolve
from bench.train.teachers import teacher_fingerprint, teacher_path
from tests.conftest import tiny

pytestmark = pytest.mark.usefixtures("one_thread")

PER_SEED = {"train": {"split_mode": "per_seed"}}


def _splits(mode: str, seed: int, with_test: bool = True):
    ov = tiny({"train": {"split_mode": mode}})
    ad = build_adapter("synthetic", ov)
    return ad, load_splits(ad, build_train_config(ad, ov), with_test=with_test, seed=seed)


def _rows(splits) -> dict[str, list[int]]:
    return {k: [int(i) for i in sp.meta["rows"]] for k, sp in splits.items()}


def _spec(method: str, tmp_path, seed: int = 0, extra: dict | None = None) -> RunSpec:
    return RunSpec("synthetic", "audio", "visual", method, seed, tiny(extra), str(tmp_path), "cpu")


# -- the splits ------------------------------------------------------------------------------------

def test_per_seed_splits_differ_across_seeds_and_keep_sizes_and_classes():
    ad, fixed0 = _splits("fixed", 0)
    _, fixed1 = _splits("fixed", 1)
    assert _rows(fixed0) == _rows(fixed1)  # fixed: one split whatever the seed
    _, s0 = _splits("per_seed", 0)
    _, s1 = _splits("per_seed", 1)
    _, s0_again = _splits("per_seed", 0)
    r0, r1 = _rows(s0), _rows(s1)
    assert r0 == _rows(s0_again)  # a function of the seed
    for name in ("train", "val", "test"):
        assert r0[name] != r1[name], name
        assert len(r0[name]) == len(fixed0[name])  # sizes as prepared / carved
        assert torch.equal(torch.bincount(s0[name].labels, minlength=ad.num_classes),
                           torch.bincount(fixed0[name].labels, minlength=ad.num_classes))
    for r in (r0, r1):  # disjoint, and together every generated sample
        everything = r["train"] + r["val"] + r["test"]
        assert len(set(everything)) == len(everything) == 480 + 180
    # the rows are the samples: the arrays at a row are the generated arrays of that sample
    pool = torch.cat([fixed0["train"].inputs["audio"], fixed0["val"].inputs["audio"], fixed0["test"].inputs["audio"]])
    pool_rows = torch.cat([fixed0[k].meta["rows"] for k in ("train", "val", "test")])
    where = {int(r): i for i, r in enumerate(pool_rows)}
    for name in ("train", "test"):
        idx = torch.tensor([where[r] for r in r1[name]])
        assert torch.equal(s1[name].inputs["audio"], pool[idx])
    # the model is fixed: only which sample is where moves
    def all_visual(splits):
        return torch.sort(torch.cat([splits[k].inputs["visual"].flatten(1) for k in splits]), 0).values

    assert torch.equal(all_visual(s1), all_visual(fixed0))


def test_default_keeps_todays_split_and_hash(tmp_path):
    ad, sp = _splits("fixed", 3)
    raw = ad.load()
    keep, held = stratified_split(raw["train"].labels, 0.1, 0)  # what the runner carved before split_mode
    assert _rows(sp)["val"] == [int(i) for i in held] and _rows(sp)["train"] == [int(i) for i in keep]
    assert _rows(sp)["test"] == list(range(480, 480 + 180))
    base = resolve(_spec("logit", tmp_path))
    assert "split_mode" not in base.config["train"] and "split_mode" not in hashed_train(base.train)
    explicit = resolve(_spec("logit", tmp_path, extra={"train": {"split_mode": "fixed"}}))
    assert explicit.config_hash == base.config_hash and explicit.run_id == base.run_id
    assert "split_mode" not in teacher_fingerprint(base, "audio")["train"]
    assert teacher_path(explicit, "audio") == teacher_path(base, "audio")  # cached teachers keep their files
    per = resolve(_spec("logit", tmp_path, extra=PER_SEED))
    assert per.config["train"]["split_mode"] == "per_seed"
    assert per.config_hash != base.config_hash and per.group_hash != base.group_hash
    assert teacher_path(per, "audio") != teacher_path(base, "audio")


def test_refusals(tmp_path):
    with pytest.raises(ConfigError, match="split_mode must be fixed or per_seed"):
        resolve(_spec("none", tmp_path, extra={"train": {"split_mode": "random"}}))
    with pytest.raises(ConfigError, match="split_seed=2 would be ignored"):
        resolve(_spec("none", tmp_path, extra={"train": {"split_mode": "per_seed", "split_seed": "2"}}))
    ad = build_adapter("synthetic", tiny(PER_SEED))
    with pytest.raises(ConfigError, match="draws the splits from the run's seed"):
        load_splits(ad, build_train_config(ad, tiny(PER_SEED)))  # no seed given
    av = build_adapter("avdigits", {"avdigits": {"images": "sklearn"}})
    assert "one image in train and in test" in av.redraw_problem()
    with pytest.raises(ConfigError, match="cannot draw its splits per seed"):
        load_splits(av, build_train_config(av, {"train": {"split_mode": "per_seed"}}), seed=0)
    assert build_adapter("avdigits", {}).redraw_problem() is None


def test_tuning_trials_get_the_runs_train_and_val_without_test():
    from bench.tune.objective import trial_splits

    r = resolve(RunSpec("synthetic", "audio", "visual", "logit", 2, tiny(PER_SEED), "unused", "cpu"))
    trial = trial_splits(r)
    _, full = _splits("per_seed", 2)
    assert set(trial) == {"train", "val"}
    assert {k: v for k, v in _rows(full).items() if k != "test"} == _rows(trial)


# -- the runs: every method of a seed, and its teacher, on the same samples ---------------------

def _capture(monkeypatch):
    """The sample rows of every split handed to ``fit`` (teachers and students), in call order."""
    import bench.train.run as run_mod
    import bench.train.teachers as teachers_mod

    seen: list[tuple[str, dict[str, list[int]]]] = []

    def wrap(real, who):
        def fit(**kw):
            seen.append((who, _rows(kw["splits"])))
            return real(**kw)
        return fit

    monkeypatch.setattr(run_mod, "fit", wrap(run_mod.fit, "student"))
    monkeypatch.setattr(teachers_mod, "fit", wrap(teachers_mod.fit, "teacher"))
    return seen


def test_every_method_and_its_teacher_see_the_seeds_splits(tmp_path, monkeypatch):
    from bench.records.predictions import split_fingerprints
    from bench.train.run import run

    seen = _capture(monkeypatch)
    recs = {(m, s): run(_spec(m, tmp_path, s, PER_SEED)) for s in (0, 1) for m in ("none", "logit", "dkd")}
    assert all(r["status"] == "ok" for r in recs.values())
    teachers = [rows for who, rows in seen if who == "teacher"]
    students = [rows for who, rows in seen if who == "student"]
    assert len(teachers) == 2 and len(students) == 6  # one teacher per seed, trained once, shared
    for i, s in enumerate((0, 1)):
        _, expected = _splits("per_seed", s)
        assert teachers[i] == _rows(expected)
        for rows in students[3 * i:3 * i + 3]:
            assert rows == _rows(expected)  # none, logit and dkd: identical train/val/test indices
        fps = {json.dumps(recs[(m, s)]["split_fingerprint"], sort_keys=True) for m in ("none", "logit", "dkd")}
        assert fps == {json.dumps(split_fingerprints(expected), sort_keys=True)}
        assert recs[("logit", s)]["splits"] == {"mode": "per_seed", "seed": s, "redrawn": ["train", "test"],
                                               "sizes": {"train": 432, "val": 48, "test": 180}}
    assert recs[("logit", 0)]["split_fingerprint"]["test"] != recs[("logit", 1)]["split_fingerprint"]["test"]
    # the teacher of seed 1 is not the one of seed 0, and it was trained, not reused
    t0, t1 = recs[("logit", 0)]["teacher"], recs[("logit", 1)]["teacher"]
    assert t0["checkpoint"] != t1["checkpoint"] and not t1["cached"]
    assert recs[("dkd", 1)]["teacher"]["cached"] and recs[("dkd", 1)]["teacher"]["checkpoint"] == t1["checkpoint"]


def test_a_fixed_split_teacher_is_not_reused_under_per_seed_splits(tmp_path, monkeypatch):
    from bench.train.run import run

    seen = _capture(monkeypatch)
    fixed = run(_spec("logit", tmp_path, 1))
    per = run(_spec("logit", tmp_path, 1, PER_SEED))
    assert not fixed["teacher"]["cached"] and not per["teacher"]["cached"]
    assert fixed["teacher"]["checkpoint"] != per["teacher"]["checkpoint"]
    teacher_rows = [rows for who, rows in seen if who == "teacher"]
    assert teacher_rows[0] != teacher_rows[1]  # each trained on its own mode's splits
    assert fixed["splits"]["mode"] == "fixed" and per["splits"]["mode"] == "per_seed"
    # at one seed the two modes score other test samples: never paired with each other
    assert fixed["split_fingerprint"]["test"] != per["split_fingerprint"]["test"]
    assert np.isfinite(per["teacher"]["test_metric"])


# -- teachers in every table ------------------------------------------------------------------------

CATS = {"none": "Uni-Modal", "logit": "Logits", "dkd": "Logits"}
TEACHER = {0: 80.0, 1: 82.0, 2: 84.0}  # the audio teacher of seeds 0-2: 82.0 ± 2.0
STUDENT = {"none": (50.0, 51.0, 52.0), "logit": (60.0, 61.0, 62.0), "dkd": (55.0, 57.0, 56.0)}


def _rec(method, seed, value, teacher=None, ds="crema", mod="visual", tmod="audio", extra=None):
    h = f"{method}{ds}{mod}{seed}{extra or ''}"
    return {
        "schema": 1, "run_id": f"{ds}_a2v_{method}_s{seed}_{h[-8:]:0>8}", "status": "ok", "method": method,
        "method_category": CATS[method], "dataset": ds, "task": "classification", "teacher_modality": tmod,
        "student_modality": mod, "direction": "a2v", "seed": seed, "metric": "top1",
        "config": {"method_params": {}, "train": {}, "dataset": {"params": {}}},
        "config_hash": h, "group_hash": f"{method}{ds}{mod}{extra or ''}", "best_metric": value,
        "final_metric": value, "history": [{"epoch": 1, "test_metric": value}],
        "teacher": teacher,
    }


def _teacher(seed, value=None, name=None, source=None):
    t = {"modality": "audio", "test_metric": TEACHER[seed] if value is None else value, "cached": True,
         "checkpoint": f"results/teachers/crema/audio/{name or f'seed{seed}-0123456789ab'}.pt"}
    if source:
        t.update(source=source, checkpoint=None)
    return t


@pytest.fixture
def graded(tmp_path):
    from bench.records.store import write_record

    r = tmp_path / "res"
    for s in (0, 1, 2):
        for m, vals in STUDENT.items():
            write_record(r, _rec(m, s, vals[s], None if m == "none" else _teacher(s)))
    return r


def _table(results, *args):
    from typer.testing import CliRunner

    from bench.cli import app

    out = CliRunner().invoke(app, ["table", "comparison", "-r", str(results), *args])
    assert out.exit_code == 0, out.output
    return out.output


def test_teacher_row_in_markdown_and_latex_with_mean_std_and_no_mark(graded):
    md = _table(graded, "--format", "markdown", "--std")
    lines = md.splitlines()
    row = next(x for x in lines if x.startswith("| _Teacher"))
    assert row == "| _Teacher (modality)_ | _82.0 ± 2.0 (A)_ |"
    assert lines.index(row) == 2  # above the methods, right under the header
    assert "**" not in row and "<u>" not in row and not any(s in row for s in "▲▼≈†◦")
    assert "| **61.0 ± 1.0** |" in md.replace("| Logit ", "|")  # the best is still the best method, not the teacher
    assert "Teacher (modality): the unimodal teacher the KD rows distil" in md and "never ranked" in md
    tex = _table(graded, "--std")
    cells = {line.split("&")[0].strip(): line for line in tex.splitlines() if "&" in line}
    trow = cells[r"\textit{Teacher (modality)}"]
    assert trow.strip() == r"\textit{Teacher (modality)} & \textit{82.0 $\pm$ 2.0 (A)} \\"
    assert r"\textbf" not in trow and r"\underline" not in trow and "^" not in trow
    assert r"\textbf{61.0 $\pm$ 1.0}" in cells["Logit"]
    after = tex.splitlines()[tex.splitlines().index(trow) + 1]
    assert after == r"\midrule"  # set apart from the ranked rows
    assert "Teacher (modality): the unimodal teacher" in tex


def test_teacher_row_gets_no_verdict_and_is_data_in_json(graded):
    import json as js

    vs = _table(graded, "--format", "markdown", "--vs-baseline", "--mark-tied")
    row = next(x for x in vs.splitlines() if x.startswith("| _Teacher"))
    assert not any(s in row for s in "▲▼≈†◦*")
    data = js.loads(_table(graded, "--format", "json"))
    (t,) = data["teachers"]
    assert t["dataset"] == "crema" and t["student_modality"] == "visual" and t["teacher_modality"] == "audio"
    assert t["mean"] == pytest.approx(82.0) and t["std"] == pytest.approx(2.0) and t["seeds"] == [0, 1, 2]
    assert {c["method"] for c in data["cells"]} == {"none", "logit", "dkd"}  # not a cell of the comparison


@pytest.mark.skipif(__import__("shutil").which("pdflatex") is None, reason="needs texlive (installed by .ci/run)")
def test_teacher_row_compiles_with_latex(graded, tmp_path):
    import subprocess

    tex = tmp_path / "cmp.tex"
    _table(graded, "--standalone", "--std", "--vs-baseline", "--out", str(tex))
    p = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:]
    text = subprocess.run(["pdftotext", str(tex.with_suffix(".pdf")), "-"], capture_output=True, text=True).stdout
    assert "Teacher (modality)" in text and "82.0 ± 2.0 (A)" in text


def test_teacher_row_leaves_out_random_teachers_and_names_disagreeing_ones(tmp_path):
    import pandas as pd

    from bench.records.store import to_frame
    from bench.report.tables import add_teachers, build_comparison, to_markdown

    recs = [_rec("logit", s, 60.0 + s, _teacher(s)) for s in (0, 1)]
    recs.append(_rec("dkd", 0, 55.0, _teacher(0, value=10.0, source="random"), extra="rnd"))  # the control
    recs.append(_rec("dkd", 1, 56.0, _teacher(1, value=70.0, name="seed1-ffffffffffff"), extra="lr"))
    df = to_frame(recs)
    comp = build_comparison(df)
    add_teachers(comp, df)
    (t,) = comp.teachers[("crema", "visual")]
    assert t["values"] == [80.0, 82.0] and t["disagree"] == [1]  # 10.0 (random) left out; seed 1: logit's, by name
    assert "at seed(s) 1 the KD rows distilled more than one audio teacher" in to_markdown(comp)
    assert pd.isna(df.loc[2, "teacher_key"]) and df.loc[0, "teacher_key"] == "seed0-0123456789ab.pt"


def test_leaderboard_shows_teachers_outside_the_ranking(graded, tmp_path):
    from bench.records.store import load_records
    from bench.report import leaderboard as L
    from bench.report.leaderboard_page import page_data, render_html

    lb = L.build_leaderboard(load_records(graded, status="ok"))
    (t,) = lb.teachers[("crema", "visual")]
    assert t["mean"] == pytest.approx(82.0) and t["std"] == pytest.approx(2.0) and t["n_seeds"] == 3
    assert [r["method"] for r in lb.rows] == ["logit", "dkd", "none"]  # the teacher is no row of the ranking
    md = L.to_markdown(lb)
    assert "crema/visual: 82.00 ± 2.00 (audio, 3 seeds)" in md and "never ranked" in md
    assert L.to_json(lb)["teachers"][0]["mean"] == pytest.approx(82.0)
    page = render_html(lb, None)
    assert "Teachers (reference, not ranked)" in page and "82.00 ± 2.00" in page
    assert "<i>Teacher (modality)</i>" in page
    data = page_data(lb)
    assert {m["key"] for m in data["methods"]} == {"none", "logit", "dkd"} and data["teachers"][0]["cell"] == "c0"


def test_summary_json_carries_the_teachers(graded, tmp_path, monkeypatch):
    """``bench reproduce offline``'s outputs from hand-made records (the study tables, LaTeX and the
    screenshot are not what is checked here: stubbed)."""
    import bench.report.render as render
    import bench.report.reproduce as R
    from bench.report.reproduce import Benchmark, build_outputs

    real = render.render_table

    def table(results, kind="comparison", **kw):
        if kind != "comparison":
            return render.Rendered(text="")
        return real(results, kind, **kw)

    monkeypatch.setattr(render, "render_table", table)
    monkeypatch.setattr(R, "compile_latex", lambda *a, **k: "stubbed")
    monkeypatch.setattr(R, "screenshot", lambda *a, **k: "stubbed")
    out = tmp_path / "docs"
    summary = build_outputs(graded, out, benchmarks=(Benchmark("crema", "crema"),), every_direction=False,
                            allow_mixed_provenance=True)  # hand-made records carry no code state
    on_disk = json.loads((out / "summary.json").read_text())
    (t,) = on_disk["teachers"]
    assert (t["dataset"], t["student_modality"], t["teacher_modality"]) == ("crema", "visual", "audio")
    assert t["mean"] == pytest.approx(82.0) and t["std"] == pytest.approx(2.0) and t["n_seeds"] == 3
    assert summary["teachers"] == on_disk["teachers"]
    assert "_Teacher (modality)_" in (out / "comparison.md").read_text()
    assert "_Teacher (modality)_" in (out / "comparison_vs_baseline.md").read_text()
    assert "teacher top-1" in (out / "unimodal.md").read_text()
