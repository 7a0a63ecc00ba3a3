"""The embedded ``synthetic`` dataset: determinism, shapes, the ground truth it keeps, the gap knob
(measured with the exact Bayes rules) and the FD-CMKD premise probe on a tiny trained teacher."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch
from conftest import tiny

from bench.api.config import build_params
from bench.api.errors import BenchError, ConfigError
from bench.datasets.synthetic import SyntheticParams, bayes_accuracies, generate
from bench.train.loop import load_splits
from bench.train.resolve import RunSpec, build_adapter, build_train_config
from bench.train.run import run

SMALL = {"n_train": 120, "n_test": 3000}


def test_same_data_seed_gives_the_same_arrays():
    a, b = generate(SyntheticParams(**SMALL)), generate(SyntheticParams(**SMALL))
    c = generate(SyntheticParams(**SMALL, data_seed=1))
    for split in ("train", "test"):
        assert a[split].keys() == b[split].keys()
        for k in a[split]:
            assert np.array_equal(a[split][k], b[split][k]), (split, k)
    assert not np.array_equal(a["test"]["visual"], c["test"]["visual"])


def test_shapes_scales_and_truth_arrays():
    ad = build_adapter("synthetic", {"synthetic": {"n_train": "240", "n_test": "60"}})
    sp = ad.load()
    assert len(sp["train"]) == 240 and len(sp["test"]) == 60
    assert tuple(sp["test"].inputs["audio"].shape) == (60, 8, 16)
    assert tuple(sp["test"].inputs["visual"].shape) == (60, 3, 8, 8)
    assert {k: tuple(v.shape) for k, v in sp["test"].aux.items()} == {
        "truth.z": (60, 8), "truth.s_audio": (60, 8), "truth.s_visual": (60, 8)}
    # balanced labels; audio ~10x the amplitude of visual (feature-scale mismatch)
    assert torch.bincount(sp["train"].labels).tolist() == [40] * 6
    ratio = sp["train"].inputs["audio"].std() / sp["train"].inputs["visual"].std()
    assert 5 < float(ratio) < 20
    # the truth never reaches a network: only "<modality>.*" side arrays are handed to prepare_batch
    idx = torch.arange(5)
    assert sp["train"].aux_for("audio", idx) == {} and sp["train"].aux_for("visual", idx) == {}
    out = ad.build_model("audio", 6)(sp["test"].inputs["audio"][:4])
    assert tuple(out.pre_feature.shape) == (4, 64)


def test_truth_stays_aligned_with_the_carved_validation_split():
    ov = {"synthetic": {"n_train": "240", "n_test": "60"}}
    ad = build_adapter("synthetic", ov)
    splits = load_splits(ad, build_train_config(ad, ov))
    raw = generate(ad.params)["train"]
    for name in ("train", "val"):
        sp = splits[name]
        rows = [int(np.flatnonzero((raw["audio"] == a.numpy()).all(axis=(1, 2)))[0]) for a in sp.inputs["audio"]]
        assert np.array_equal(raw["z"][rows], sp.aux["truth.z"].numpy())
        assert np.array_equal(raw["s_visual"][rows], sp.aux["truth.s_visual"].numpy())
        assert np.array_equal(raw["label"][rows], sp.labels.numpy())


def _bayes(gap: float) -> dict[str, float]:
    p = SyntheticParams(**SMALL, gap=gap)
    return bayes_accuracies(p, generate(p)["test"])


def test_gap_moves_class_information_from_shared_to_specific():
    """Measured with the exact Bayes rules on 3000 test samples: at gap 0 the shared latent holds
    all of a modality's class information and the private one none (chance = 16.7 %); at gap 1 the
    reverse; in between the shares move monotonically while the total stays the same."""
    b = {g: _bayes(g) for g in (0.0, 0.25, 0.5, 0.75, 1.0)}
    assert b[0.0]["s_audio"] < 20 and b[0.0]["s_visual"] < 20 and b[0.0]["z"] > 85
    assert b[1.0]["z"] < 20 and b[1.0]["s_audio"] > 85 and b[1.0]["s_visual"] > 85
    z = [b[g]["z"] for g in sorted(b)]
    sa = [b[g]["s_audio"] for g in sorted(b)]
    assert all(x > y + 3 for x, y in pairwise(z)) and all(x < y - 3 for x, y in pairwise(sa))
    joint = [b[g]["z+s_audio"] for g in b]
    assert max(joint) - min(joint) < 3
    # symmetric design: gap g and 1 - g give the shared and a private latent the same information
    assert abs(b[0.25]["z"] - b[0.75]["s_audio"]) < 3


def test_audio_is_the_strong_modality():
    b = _bayes(0.5)
    assert b["audio"] > 85 and b["visual"] < b["audio"] - 10
    assert b["visual"] > 50  # but far above chance: the student has room to grow


@pytest.mark.parametrize("key, value, pattern", [
    ("gap", "1.5", r"synthetic: gap must be in \[0, 1\]"),
    ("shared_dim", "4", "shared_dim and specific_dim must be >= num_classes - 1 = 5"),
])
def test_invalid_parameters_are_config_errors(key, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_params(SyntheticParams, {key: value}, "synthetic")


def test_premise_probe_on_a_tiny_teacher(tmp_path):
    """A 4-epoch audio teacher (width 8: 32-d feature): the probe reads the latents back with the
    ground truth; the control latent (visual's private one, never seen by audio) gives R^2 ~ 0
    beyond its class mean, the raw input gives the ceiling, and the DFT bands have the ranks of
    FD-CMKD's split (bins 1..8 -> 16 directions, bins 9..16 -> 15 with Nyquist)."""
    from bench.report.premise import premise_markdown, premise_probe

    ov = tiny({"train": {"epochs": "1"}})
    rec = run(RunSpec("synthetic", "audio", "visual", "logit", 0, ov, str(tmp_path), "cpu"))
    assert rec["status"] == "ok"
    rows = premise_probe(tmp_path, "audio", overrides={"synthetic": ov["synthetic"]})
    cell = {(r["band"], r["latent"]): r for r in rows}
    assert len(rows) == 6 * 3
    assert {b: cell[(b, "z")]["dims"] for b in ("raw", "low", "high")} == {"raw": 32, "low": 16, "high": 15}
    assert abs(cell[("raw", "s_visual")]["r2_within"]) < 0.05
    assert abs(cell[("input", "s_visual")]["r2_within"]) < 0.05
    assert cell[("input", "z")]["r2_within"] > 0.5 and cell[("input", "s_audio")]["r2_within"] > 0.5
    assert cell[("raw", "z")]["r2"] > 0.1  # the teacher's feature encodes the class-bearing latent
    assert cell[("input", "z")]["r2"] > cell[("raw", "z")]["r2"]
    md = premise_markdown(rows)
    assert md.splitlines()[0].startswith("| band | dims | z: R² / within | s_audio")
    with pytest.raises(BenchError, match="no trained visual model"):
        premise_probe(tmp_path, "visual", overrides={"synthetic": ov["synthetic"]})
    from typer.testing import CliRunner

    from bench.cli import app

    args = [f"--set=synthetic.{k}={v}" for k, v in ov["synthetic"].items()]
    r = CliRunner().invoke(app, ["analyze", "premise", "-d", "synthetic", "--direction", "a2v", "-r", str(tmp_path),
                                 "-o", str(tmp_path / "an"), *args])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "an" / "premise_synthetic_audio_seed0.csv").exists() and "z: R² / within" in r.output
    from test_dataset_folder import make_folder

    folder = make_folder(tmp_path / "toy")
    r = CliRunner().invoke(app, ["analyze", "premise", "-d", str(folder), "-r", str(tmp_path), "-o", str(tmp_path / "an")])
    assert r.exit_code == 2 and "carries no ground truth" in " ".join(r.output.split())
