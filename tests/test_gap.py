"""``bench analyze gap`` (#27 item 4) on a tiny synthetic grid: gains and gaps against the records'
best metrics by hand, intervals and verdicts against the stats module called directly, the CCH
values against gaussian_mi on features extracted here, missing cells, and the refusals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bench.api.config import parse_overrides
from bench.api.errors import BenchError
from bench.cli import app
from bench.models.fusion import LateFusion
from bench.report.analysis import gaussian_mi, onehot_minus_one, pca_apply, pca_fit
from bench.report.gap import _agreement, _prediction, _ranking, gap
from bench.report.stats import paired as P
from bench.train.loop import load_splits
from bench.train.resolve import build_adapter, build_train_config

pytestmark = pytest.mark.usefixtures("one_thread")

SETS = ["--set", "synthetic.n_train=200", "--set", "synthetic.n_test=100", "--set", "train.epochs=1",
        "--set", "train.teacher_epochs=1"]
OV = parse_overrides([s for s in SETS if s != "--set"])
DIRS = ("a2v", "av2v", "v2v")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    res = tmp_path_factory.mktemp("gap") / "res"
    base = ["run", "--datasets", "synthetic", "--directions", ",".join(DIRS), "--seeds", "0,1", "--device", "cpu",
            "--results", str(res), *SETS]
    for extra in (["--methods", "none", "--save-model"], ["--methods", "logit"]):
        r = CliRunner().invoke(app, base + extra)
        assert r.exit_code == 0, r.output
    return res


def records(res: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((res / "records").glob("*.json"))]


def metric(res: Path) -> dict:
    return {(r["direction"], r["method"], r["seed"]): r["best_metric"] for r in records(res)}


def seeded(res: Path, direction: str, method: str) -> dict:
    return {(r["seed"], r["split_fingerprint"]["test"]): r["best_metric"] for r in records(res)
            if r["direction"] == direction and r["method"] == method}


def copy_of(grid: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "res"
    shutil.copytree(grid, dest)
    return dest


def by_dir(res: dict) -> dict:
    return {r["direction"]: r for r in res["rows"]}


@pytest.fixture(scope="module")
def result(grid, tmp_path_factory):
    return gap("synthetic", grid, tmp_path_factory.mktemp("out"), OV, seed=0)


def test_gains_and_gaps_are_the_records_differences_by_hand(grid, result):
    v = metric(grid)
    rows = by_dir(result)
    assert set(rows) == set(DIRS) and all(r["student"] == "visual" and r["method"] == "logit" for r in rows.values())
    gain = {d: [v[(d, "logit", s)] - v[(d, "none", s)] for s in (0, 1)] for d in DIRS}
    for d in DIRS:
        assert rows[d]["baseline"] == d  # every direction has its own w/o KD runs
        assert rows[d]["mean_gain"] == pytest.approx(np.mean(gain[d]), abs=1e-12)
        assert rows[d]["gain_seeds"] == "0 1"
    for d in ("a2v", "av2v"):
        assert rows[d]["gap_vs"] == "v2v"
        assert rows[d]["mean_gap"] == pytest.approx(np.mean(np.subtract(gain[d], gain["v2v"])), abs=1e-12)
    assert rows["v2v"].get("mean_gap") is None and rows["v2v"]["gap_vs"] is None
    # w/o KD: separate runs per direction (different config hashes), same result on every seed here
    nones = [r for r in records(grid) if r["method"] == "none"]
    assert len({r["config_hash"] for r in nones}) == 6
    same = all(len({v[(d, "none", s)] for d in DIRS}) == 1 for s in (0, 1))
    note = next(n for n in result["notes"] if n.startswith("w/o KD of visual"))
    assert ("equal best metric on every seed" in note) == same
    # the CSV carries the same unrounded values
    table = {r["direction"]: r for r in csv.DictReader(open(result["csv"]))}
    for d in DIRS:
        assert float(table[d]["mean_gain"]) == pytest.approx(rows[d]["mean_gain"], rel=1e-12)
    assert float(table["a2v"]["mean_gap"]) == pytest.approx(rows["a2v"]["mean_gap"], rel=1e-12)


def test_intervals_and_verdicts_are_the_stats_modules(grid, result):
    rows = by_dir(result)
    gains = P.compare_family({d: (seeded(grid, d, "logit"), seeded(grid, d, "none")) for d in DIRS})
    for d in DIRS:
        r, want = rows[d], gains[d]
        assert (r["gain_ci_low"], r["gain_ci_high"]) == pytest.approx(want.ci, rel=1e-12)
        assert r["gain_p_adj"] == pytest.approx(want.p_adj) and r["gain_verdict"] == want.verdict
    per_seed = {d: {k: seeded(grid, d, "logit")[k] - seeded(grid, d, "none")[k] for k in seeded(grid, d, "none")}
                for d in DIRS}
    gaps = P.compare_family({d: (per_seed[d], per_seed["v2v"]) for d in ("a2v", "av2v")})
    for d in ("a2v", "av2v"):
        r, want = rows[d], gaps[d]
        assert (r["gap_ci_low"], r["gap_ci_high"]) == pytest.approx(want.ci, rel=1e-12)
        assert r["gap_p_adj"] == pytest.approx(want.p_adj) and r["gap_verdict"] == want.verdict
    assert result["info"]["n_gain_tests"] == 3 and result["info"]["n_gap_tests"] == 2
    assert "over the 3 gains shown" in result["markdown"] and "over the 2 gaps shown" in result["markdown"]


def _teacher_file(grid: Path, direction: str) -> Path:
    names = {Path(r["teacher"]["checkpoint"]).name for r in records(grid)
             if r["direction"] == direction and r["method"] == "logit" and r["seed"] == 0}
    assert len(names) == 1
    sub = {"a2v": "audio", "av2v": "audio.visual", "v2v": "visual"}[direction]
    return grid / "teachers" / "synthetic" / sub / names.pop()


def _own_features(grid: Path):
    """H_S and every H_T on the train split of seed 0, extracted here (pre-ReLU pooled features)."""
    ad = build_adapter("synthetic", OV)
    train = load_splits(ad, build_train_config(ad, OV), seed=0)["train"]
    xs, y = ad.batch(train, torch.arange(len(train)), ["audio", "visual"], torch.device("cpu"), False, None)
    nc = ad.num_classes

    def loaded(net, path, key="model"):
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)[key])
        return net.eval()

    run = next(r["run_id"] for r in records(grid)
               if r["direction"] == "v2v" and r["method"] == "none" and r["seed"] == 0)
    with torch.no_grad():
        hs = loaded(ad.build_model("visual", nc), grid / "models" / f"{run}.pt", "student")(xs["visual"]).pre_feature
        a2v = loaded(ad.build_model("audio", nc), _teacher_file(grid, "a2v"))(xs["audio"]).pre_feature
        v2v = loaded(ad.build_model("visual", nc), _teacher_file(grid, "v2v"))(xs["visual"]).pre_feature
        fusion = LateFusion.build_fusion({"audio": ad.build_model("audio", nc), "visual": ad.build_model("visual", nc)},
                                         nc, "classification")
        fusion = loaded(fusion, _teacher_file(grid, "av2v"))
        av2v = fusion(xs).pre_feature
        fused = torch.cat([fusion.nets[m](xs[m]).pre_feature for m in ("audio", "visual")], 1)
    f = lambda t: t.double().numpy()  # noqa: E731
    hts = {"a2v": f(a2v), "av2v": f(av2v), "v2v": f(v2v), "fused": f(fused)}
    return f(hs), hts, onehot_minus_one(y.numpy(), nc), run


def _mi(ht, hs, yoh, k):
    kk = min(k, ht.shape[1], hs.shape[1])
    zt, zs = pca_apply(ht, pca_fit(ht, kk)), pca_apply(hs, pca_fit(hs, kk))
    return gaussian_mi(zt, zs), gaussian_mi(zs, yoh)


def test_cch_per_teacher_choice_is_gaussian_mi_on_features_extracted_here(grid, result, tmp_path):
    hs, ht, yoh, run = _own_features(grid)
    rows = by_dir(result)
    for d in DIRS:
        assert rows[d]["hs_run"] == run and rows[d]["teacher_file"].startswith("teachers/synthetic/")
        for k in (4, 8, 16):
            i_ts, i_sy = _mi(ht[d], hs, yoh, k)
            assert rows[d][f"I_TS_k{k}"] == pytest.approx(i_ts, rel=1e-6)
            assert rows[d][f"I_SY_k{k}"] == pytest.approx(i_sy, rel=1e-6)
            assert rows[d][f"delta_k{k}"] == pytest.approx(i_ts - i_sy, rel=1e-6, abs=1e-9)
    # H_S is one network for all choices: I(H_S;Y) is the same in every row; v2v's H_T is not H_S
    assert len({round(rows[d]["I_SY_k8"], 12) for d in DIRS}) == 1
    assert np.isfinite(rows["v2v"]["I_TS_k16"]) and not np.array_equal(ht["v2v"], hs)
    # the set teacher's fused vector (members' pooled features), as a named option
    fused = by_dir(gap("synthetic", grid, tmp_path, OV, seed=0, set_feature="fused"))["av2v"]
    assert fused["I_TS_k8"] == pytest.approx(_mi(ht["fused"], hs, yoh, 8)[0], rel=1e-6)


def test_prediction_agreement_and_ranking_rules():
    ks = (4, 8, 16)
    assert _prediction([0.1, 0.2, 0.3], ks, "all") == "helps"
    assert _prediction([-0.1, 0.0, -0.3], ks, "all") == "does not help"
    assert _prediction([-0.1, 0.2, 0.3], ks, "all").startswith("no prediction")
    assert _prediction([-0.1, 0.2, -0.3], (16, 4, 8), "middle") == "does not help"  # middle k is 8: -0.3
    assert _prediction(None, ks, "all") == "missing"
    assert [_agreement("helps", v) for v in ("better", "worse", "equivalent", "inconclusive")] == \
        ["agree", "disagree", "disagree", "undecided"]
    assert [_agreement("does not help", v) for v in ("better", "worse", "equivalent", "untested")] == \
        ["disagree", "agree", "agree", "undecided"]
    assert _agreement("no prediction (the ks disagree)", "better") == "no prediction"
    assert _agreement("helps", None) == "missing"
    rows = [{"direction": "a2v", "delta_k8": 0.1, "mean_gain": 1.0}, {"direction": "av2v", "delta_k8": 0.5,
            "mean_gain": 2.0}, {"direction": "v2v", "delta_k8": 3.0, "mean_gain": 3.0}]
    rk = _ranking(rows, ks)
    assert rk["same_order"] is True and rk["rho"] == pytest.approx(1.0)
    rows[0]["mean_gain"] = 5.0
    rk = _ranking(rows, ks)
    assert rk["same_order"] is False and rk["rho"] == pytest.approx(-0.5)


def test_prediction_columns_follow_the_deltas(result):
    for r in result["rows"]:
        deltas = [r[f"delta_k{k}"] for k in (4, 8, 16)]
        assert r["predicted"] == _prediction(deltas, (4, 8, 16), "all")
        assert r["agreement"] == _agreement(r["predicted"], r["gain_verdict"])
    md = result["markdown"]
    for head in ("### CCH per teacher choice", "### Gain over w/o KD", "### Modality gap", "### Does CCH predict"):
        assert head in md


def test_missing_cells_are_reported_and_w_o_kd_pairs_with_the_same_modality_runs(grid, tmp_path):
    res = copy_of(grid, tmp_path)
    for p in (res / "records").glob("*.json"):
        r = json.loads(p.read_text())
        if (r["direction"], r["method"]) in (("av2v", "logit"), ("a2v", "none")):
            p.unlink()
    out = gap("synthetic", res, tmp_path / "out", OV, seed=0)
    rows, v = by_dir(out), metric(res)
    assert rows["av2v"]["gain_missing"] == "no Logit records of av2v"
    assert rows["av2v"]["cch_missing"] == "no KD record of av2v at seed 0 names its teacher"
    assert rows["av2v"]["gap_missing"] == "gain of av2v missing" and rows["av2v"]["predicted"] == "missing"
    assert rows["av2v"]["agreement"] == "missing" and "1 without a gain, of 3" in out["markdown"]
    assert rows["a2v"]["baseline"] == "v2v"  # no w/o KD runs of a2v left: the same-modality direction's
    assert rows["a2v"]["mean_gain"] == pytest.approx(np.mean([v[("a2v", "logit", s)] - v[("v2v", "none", s)]
                                                              for s in (0, 1)]))
    assert "missing: no Logit records of av2v" in out["markdown"]
    table = {r["direction"]: r for r in csv.DictReader(open(out["csv"]))}
    assert table["av2v"]["gain_missing"] == "no Logit records of av2v" and table["av2v"]["mean_gain"] == ""


def test_refusals_name_what_is_missing_and_the_command_that_makes_it(grid, tmp_path):
    res = copy_of(grid, tmp_path)
    with pytest.raises(BenchError, match="classification datasets only"):
        gap("nyudv2", res, tmp_path / "o", {}, seed=0)
    with pytest.raises(BenchError, match="none run with the dataset parameters given"):
        gap("synthetic", res, tmp_path / "o", {"synthetic": {"n_train": "200"}}, seed=0)
    for bad, match in (({"predict": "some"}, "--predict"), ({"set_feature": "x"}, "--set-feature"),
                       ({"correction": "x"}, "--correction"), ({"methods": ["none", "dkd"]}, "no records of 'dkd'")):
        with pytest.raises(BenchError, match=match):
            gap("synthetic", res, tmp_path / "o", OV, seed=0, **bad)
    with pytest.raises(BenchError, match="expected a results folder"):
        gap("synthetic", res / "records" / next(iter(sorted(p.name for p in (res / "records").iterdir()))),
            tmp_path / "o", OV)
    # no saved w/o KD student (H_S)
    for p in (res / "records").glob("*.json"):
        r = json.loads(p.read_text())
        r.pop("model_path", None)
        p.write_text(json.dumps(r))
    with pytest.raises(BenchError) as e:
        gap("synthetic", res, tmp_path / "o", OV, seed=0)
    msg = str(e.value)
    assert "no w/o KD student of visual saved with --save-model at seed 0" in msg
    assert ("`bench run --methods none --datasets synthetic --directions v2v --seeds 0 --save-model --set "
            "synthetic.n_train=200 --set synthetic.n_test=100 --set train.epochs=1 "
            "--set train.teacher_epochs=1`") in msg
    # no same-modality direction
    for p in (res / "records").glob("*_v2v_*.json"):
        p.unlink()
    with pytest.raises(BenchError, match=r"same-modality direction .* run `bench run --methods none,logit --datasets "
                                         r"synthetic --directions all,same,sets --seeds 0,1,2 --save-model --set"):
        gap("synthetic", res, tmp_path / "o", OV, seed=0)


def test_the_command_writes_both_files_and_prints_the_markdown(grid, tmp_path):
    out = tmp_path / "an"
    r = CliRunner().invoke(app, ["analyze", "gap", "-d", "synthetic", "-r", str(grid), "-o", str(out), "--ks", "4,8",
                                 "--predict", "middle", *SETS])
    assert r.exit_code == 0, r.output
    assert "# CCH and the modality gap on synthetic" in r.output and "the sign of Δ at the middle k (4)" in r.output
    header = next(csv.reader(open(out / "gap_synthetic.csv")))
    assert "delta_k4" in header and "delta_k8" in header and "delta_k16" not in header
    assert (out / "gap_synthetic.md").read_text().startswith("# CCH and the modality gap on synthetic")
    bad = CliRunner().invoke(app, ["analyze", "gap", "-d", "synthetic", "-r", str(grid), "--k", "4,x", *SETS])
    assert bad.exit_code != 0 and "--k" in bad.output
