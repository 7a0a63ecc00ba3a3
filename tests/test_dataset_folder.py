"""Bring-your-own folder datasets: format, encoder choice, validation errors, CLI path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.api.errors import BenchError
from bench.train.resolve import RunSpec, build_adapter
from bench.train.run import run


def make_folder(d: Path, n_train: int = 60, n_test: int = 24, **bad) -> Path:
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"name": "toy", "num_classes": 3, "modalities": ["vec", "seq", "img"], "class_names": ["a", "b", "c"]}
    meta.update(bad.pop("meta", {}))
    (d / "meta.json").write_text(json.dumps(meta))
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % 3
        arrays = {
            "vec": (rng.normal(size=(n, 10)) + y[:, None]).astype(np.float32),
            "seq": (rng.normal(size=(n, 4, 16)) + y[:, None, None]).astype(np.float32),
            "img": np.clip(rng.normal(100, 20, size=(n, 12, 12)) + 40 * y[:, None, None], 0, 255).astype(np.uint8),
            "label": y.astype(np.int64),
        }
        for k, v in bad.get(split, {}).items():
            if v is None:
                arrays.pop(k)
            else:
                arrays[k] = v
        np.savez(d / f"{split}.npz", **arrays)
    return d


def test_folder_runs_and_picks_encoders(tmp_path):
    d = make_folder(tmp_path / "toy", n_train=300)
    ad = build_adapter(str(d), {})
    assert ad.name == "toy"
    kinds = {m.name: m.kind for m in ad.modalities}
    assert kinds == {"vec": "vector", "seq": "sequence", "img": "image"}
    from bench.models import MLPBackbone

    assert isinstance(ad.build_model("vec", 3), MLPBackbone)
    assert ad.build_model("seq", 3).dim == 1 and ad.build_model("img", 3).dim == 2
    ov = {"toy": {"width": "8"}, "train": {"epochs": "3", "teacher_epochs": "3", "batch_size": "16", "lr": "0.05"}}
    for t, s in (("vec", "img"), ("img", "seq")):
        rec = run(RunSpec(str(d), t, s, "logit", 0, ov, str(tmp_path / "res")))
        assert rec["status"] == "ok", rec.get("traceback")
        assert rec["dataset"] == "toy"
    assert rec["best_metric"] > 100 / 3  # learnable: above chance


def test_cli_accepts_folder_path(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    d = make_folder(tmp_path / "toy")
    r = CliRunner().invoke(app, ["run", "--methods", "none", "--datasets", str(d), "--directions", "v2s",
                                 "--epochs", "1", "--teacher-epochs", "1", "--results", str(tmp_path / "res"),
                                 "--set", "toy.width=4"])
    assert r.exit_code == 0, r.output
    recs = list((tmp_path / "res" / "records").glob("toy_v2s_none_*.json"))
    assert len(recs) == 1


@pytest.mark.parametrize("bad,msg", [
    ({"train": {"seq": None}}, "train.npz: key 'seq' missing"),
    ({"test": {"vec": np.zeros((5, 10), np.float32)}}, "test.npz: 'vec' has 5 samples but 'label' has 24"),
    ({"test": {"label": np.full(24, 3)}}, r"test.npz: 'label' values must lie in 0..2, found 3..3"),
    ({"train": {"vec": np.full((60, 10), np.nan, np.float32)}}, r"train.npz: 'vec' contains NaN/inf \(first at sample 0\)"),
    ({"train": {"label": np.zeros(60, np.float32)}}, "'label' must be a 1-D integer array"),
    ({"test": {"img": np.zeros((24, 10, 10), np.uint8)}}, r"test.npz: 'img' has per-sample shape \(10, 10\), train.npz has \(12, 12\)"),
])
def test_validation_errors_name_file_and_key(tmp_path, bad, msg):
    d = make_folder(tmp_path / "toy", **bad)
    with pytest.raises(BenchError, match=msg):
        build_adapter(str(d), {}).load()


def test_meta_errors(tmp_path):
    d = make_folder(tmp_path / "a", meta={"num_classes": "3"})
    with pytest.raises(BenchError, match=r"meta.json: 'num_classes' must be a int"):
        build_adapter(str(d), {})
    d = make_folder(tmp_path / "b", meta={"modalities": ["vec"]})
    with pytest.raises(BenchError, match="at least two distinct names"):
        build_adapter(str(d), {})
    with pytest.raises(BenchError, match="meta.json missing"):
        build_adapter(str(tmp_path / "nope"), {})
