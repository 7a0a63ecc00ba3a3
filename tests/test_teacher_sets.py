"""Teacher sets (av2v: a multimodal fusion teacher) and same-modality directions (v2v), issue #27 items 1-2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.api.errors import BenchError, ConfigError
from bench.api.registry import METHODS, select_methods
from bench.data.tsets import batch_inputs, direction_kind, expand_directions
from bench.train.resolve import RunSpec, build_adapter, resolve
from bench.train.run import run
from bench.train.teachers import teacher_fingerprint, teacher_path

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"synthetic": {"n_train": "96", "n_test": "48", "width": "4", "num_classes": "4"},
        "train": {"epochs": "1", "teacher_epochs": "1", "batch_size": "16", "eval_batch_size": "64"}}


def spec(t: str, s: str, m: str, results: Path, extra: dict | None = None, seed: int = 0) -> RunSpec:
    ov = {k: dict(v) for k, v in FAST.items()}
    for k, v in (extra or {}).items():
        ov.setdefault(k, {}).update(v)
    return RunSpec("synthetic", t, s, m, seed, ov, str(results), "cpu")


# -- syntax ---------------------------------------------------------------------------------------

def test_direction_syntax_reads_sets_and_same_modality_and_names_them_as_path_components():
    ad = build_adapter("synthetic", {})
    for text in ("av2v", "a+v2v", "va2v", "audio+visual->visual", "visual+audio:visual", "a.v2v"):
        assert ad.parse_direction(text) == ("audio+visual", "visual"), text
    assert ad.parse_direction("v2v") == ("visual", "visual")
    assert ad.direction_name("audio+visual", "visual") == "av2v"
    assert ad.direction_name("audio+visual", "audio") == "av2a"
    assert ad.direction_name("visual", "visual") == "v2v"
    with pytest.raises(BenchError, match="no modality 'a\\+v'"):  # only the teacher may be a set
        ad.parse_direction("a->a+v")
    with pytest.raises(BenchError, match="a\\+v2v"):
        ad.parse_direction("x2v")
    # the default job does not grow; the groups are asked for by name
    assert expand_directions(ad, "all") == ad.directions() == [("audio", "visual"), ("visual", "audio")]
    assert expand_directions(ad, "same,sets") == [("audio", "audio"), ("visual", "visual"),
                                                   ("audio+visual", "audio"), ("audio+visual", "visual")]
    assert expand_directions(ad, "a2v,av2v,a+v2v") == [("audio", "visual"), ("audio+visual", "visual")]


def test_ambiguous_run_together_codes_need_the_plus_and_canonical_names_read_back():
    class Fake:
        name = "fake"

        def __init__(self, codes):
            from bench.data.adapter import Modality

            self.modalities = [Modality(f"m{i}", c, "vector") for i, c in enumerate(codes)]

        def modality(self, key):
            from bench.data.adapter import DatasetAdapter

            return DatasetAdapter.modality(self, key)  # type: ignore[arg-type]

    from bench.data.tsets import parse_teacher, teacher_code

    fake = Fake(["a", "b", "ab"])
    assert parse_teacher(fake, "ab") == "m2"  # the modality whose code is "ab", never the set {a, b}
    assert parse_teacher(fake, "a+b") == "m0+m1"
    code = teacher_code(fake, "m0+m1")
    assert code == "a.b" and parse_teacher(fake, code) == "m0+m1"
    assert teacher_code(fake, "m0+m2") == "a.ab" and parse_teacher(fake, "a.ab") == "m0+m2"


def test_mfeat_three_views_name_a_multi_view_teacher():
    ad = build_adapter("mfeat", {"mfeat": {"views": "fac,pix,mor"}})
    t, s = ad.parse_direction("facpix2mor")
    assert (t, s) == ("fac+pix", "mor") and ad.direction_name(t, s) == "facpix2mor"
    assert ad.parse_direction("fac+pix2mor") == (t, s)


# -- identity and the teacher cache -----------------------------------------------------------------

def test_fusion_teacher_key_differs_from_every_unimodal_teachers_and_existing_ids_stay(tmp_path):
    rs = resolve(spec("av", "v", "logit", tmp_path))
    ra, rv = resolve(spec("a", "v", "logit", tmp_path)), resolve(spec("v", "a", "logit", tmp_path))
    paths = {teacher_path(rs, "audio+visual"), teacher_path(ra, "audio"), teacher_path(rv, "visual")}
    assert len(paths) == 3
    fp = teacher_fingerprint(rs, "audio+visual")
    assert fp["fusion"]["name"] == "late_fusion" and sorted(fp["fusion"]["members"]) == ["audio", "visual"]
    assert rs.direction == "av2v" and rs.run_id.startswith("synthetic_av2v_logit_s0_")
    assert "teacher_fusion" not in rs.config["train"]  # at its default: no existing hash moves
    other = resolve(spec("av", "v", "logit", tmp_path, {"train": {"teacher_fusion": "late_fusion_linear"}}))
    assert teacher_path(other, "audio+visual") != teacher_path(rs, "audio+visual")
    with pytest.raises(BenchError, match="not a fusion network"):
        resolve(spec("av", "v", "logit", tmp_path, {"train": {"teacher_fusion": "resnet"}}))


def test_same_modality_teacher_is_the_cached_unimodal_one_unless_its_architecture_differs(tmp_path):
    same = resolve(spec("v", "v", "logit", tmp_path))
    cross = resolve(spec("v", "a", "logit", tmp_path))  # v2a distils the same visual teacher
    assert teacher_path(same, "visual") == teacher_path(cross, "visual")
    big = resolve(spec("v", "v", "logit", tmp_path, {"teacher": {"widths": "8,16,32"}}))  # a larger visual teacher
    assert teacher_path(big, "visual") != teacher_path(same, "visual") and big.config_hash != same.config_hash


def test_a_teacher_set_refuses_a_given_teacher_checkpoint(tmp_path):
    ck = tmp_path / "t.pt"
    torch.save({}, ck)
    with pytest.raises(ConfigError, match="teacher set"):
        resolve(spec("av", "v", "logit", tmp_path, {"train": {"teacher_checkpoint": str(ck)}}))


def test_a_set_batch_carries_every_member_input_and_equals_the_plain_batch():
    ad = build_adapter("synthetic", {"synthetic": FAST["synthetic"]})
    tr = ad.load()["train"]
    idx = torch.arange(5)
    xs, y = batch_inputs(ad, tr, idx, ["visual", "audio+visual"], torch.device("cpu"), True, None)
    plain, y2 = ad.batch(tr, idx, ["visual", "audio"], torch.device("cpu"), True, None)
    assert set(xs["audio+visual"]) == {"audio", "visual"} and torch.equal(y, y2)
    assert torch.equal(xs["audio+visual"]["audio"], plain["audio"]) and xs["audio+visual"]["visual"] is xs["visual"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return tmp_path_factory.mktemp("tsets")


def test_fusion_teacher_trains_once_and_is_reused_across_methods(shared):
    a = run(spec("av", "v", "logit", shared))
    b = run(spec("av", "v", "dist", shared))
    assert a["status"] == b["status"] == "ok" and a["direction"] == "av2v"
    assert a["teacher"]["cached"] is False and b["teacher"]["cached"] is True
    assert a["teacher"]["checkpoint"] == b["teacher"]["checkpoint"]
    assert Path(a["teacher"]["checkpoint"]).parent.name == "audio.visual"
    assert a["teacher"]["modality"] == "audio+visual" and a["teacher"]["test_metric"] is not None
    assert a["backbones"]["teacher"]["name"] == "late_fusion"
    assert a["speed"]["teacher_cache"] is True  # synthetic is not augmented: the fused logits are cached


def test_fusion_teacher_is_trained_by_one_of_two_concurrent_processes(tmp_path):
    code = ("import json,sys,torch; torch.set_num_threads(1); sys.path.insert(0, {tests!r}); "
            "from test_teacher_sets import spec; from bench.train.run import run; from pathlib import Path; "
            "r = run(spec('av', 'v', sys.argv[1], Path({res!r}))); "
            "print(json.dumps({{'cached': r['teacher']['cached'], 'ck': r['teacher']['checkpoint']}}))")
    code = code.format(tests=str(Path(__file__).parent), res=str(tmp_path))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code, m], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for m in ("logit", "nkd")]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["cached"] for o in outs) == [False, True]
    assert outs[0]["ck"] == outs[1]["ck"]
    assert len(list((tmp_path / "teachers" / "synthetic" / "audio.visual").glob("*.pt"))) == 1


METHODS.load_builtins()
EVERY = select_methods("all,controls")


@pytest.mark.parametrize("method", EVERY)
def test_every_method_trains_with_the_fusion_teacher_or_refuses_with_a_reason(shared, method):
    try:
        rec = run(spec("av", "v", method, shared))
    except BenchError as exc:
        msg = str(exc)
        assert method in msg and "av2v" in msg and ("stage maps" in msg or "no stage" in msg), msg
        return
    assert rec["status"] == "ok" and len(rec["history"]) == 1


# -- same-modality direction and the reports -----------------------------------------------------------

def test_same_modality_trains_and_stays_out_of_cross_modal_ranks_by_default(shared):
    from bench.report.leaderboard import build_leaderboard
    from bench.report.tables import build_comparison
    from bench.records.store import to_frame

    recs = [run(spec(t, "v", m, shared, seed=sd)) for t in ("a", "v", "av") for m in ("none", "logit") for sd in (0, 1)]
    same = [r for r in recs if r["direction"] == "v2v" and r["method"] == "logit"]
    assert all(r["status"] == "ok" for r in recs) and same[0]["teacher"]["modality"] == "visual"
    assert {direction_kind(r["teacher_modality"], r["student_modality"]) for r in recs} == {
        "cross-modal", "same-modality", "teacher-set"}
    lb = build_leaderboard(recs)
    assert lb.cells == [("synthetic", "visual")]
    assert {lb.stats[("logit", ("synthetic", "visual"))].mean} == {sum(r["best_metric"] for r in recs
                                                                         if r["direction"] == "a2v" and r["method"] == "logit") / 2}
    both = build_leaderboard(recs, kinds=("cross-modal", "same-modality", "teacher-set"))
    assert both.cells == [("synthetic", "visual"), ("synthetic", "visual (v2v)"), ("synthetic", "visual (av2v)")]
    assert [t["teacher_modality"] for t in both.teachers[("synthetic", "visual (v2v)")]] == ["visual"]
    df = to_frame(recs)
    assert build_comparison(df).columns == [("synthetic", "visual")]
    comp = build_comparison(df, kinds=("cross-modal", "same-modality"))
    assert comp.columns == [("synthetic", "visual"), ("synthetic", "visual (v2v)")]
    assert not comp.conflicts
    from bench.report.render import render_leaderboard, render_table

    default = render_table(shared, fmt="csv").text
    every = render_table(shared, fmt="csv", kinds="all").text
    assert "(v2v)" not in default and "visual (v2v)" in every and "visual (av2v)" in every
    assert "(v2v)" not in render_leaderboard([shared], fmt="csv").text
    assert "visual (v2v)" in render_leaderboard([shared], fmt="csv", kinds="same-modality,cross-modal").text
    with pytest.raises(BenchError, match="--kinds"):
        render_table(shared, fmt="csv", kinds="sideways")
