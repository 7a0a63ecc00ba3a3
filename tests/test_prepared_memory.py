"""Memory of runs on a prepared cache: what stream placement holds, and placements that cannot fit.

The cache is fabricated with the real writer (:func:`bench.data.cache.build_cache`) in VGGSound-50's
array layout, about 1 GB (mostly 10-s int16 waveforms), so the runner reads it as a prepared
VGGSound cache.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bench.api.errors import BenchError
from bench.data.cache import PrepPlan, SplitPlan, build_cache
from bench.train.placement import host_available_bytes
from bench.train.resolve import RunSpec, build_adapter
from bench.train.run import run

N_TRAIN, N_TEST = 3000, 300


def fabricate_vgg(cache: Path) -> int:
    """A VGGSound-50 cache (frame_cache 16, 2 frames per clip); returns its arrays' bytes."""
    ad = build_adapter("vggsound", {"vggsound": {"cache": str(cache), "frame_cache": "16", "max_frames": "2"}})
    specs = ad.array_specs()
    rng = np.random.default_rng(0)
    wave = rng.integers(-3000, 3000, 160000).astype(np.int16)
    frames = {c: np.full(specs["visual"].shape, 4 * c, np.uint8) for c in range(50)}

    def decode(_split: str, i: int) -> dict[str, np.ndarray]:
        return {"audio": wave, "visual": frames[i % 50], "visual.nframes": np.int16(2), "label": np.int64(i % 50)}

    splits = {s: SplitPlan(list(range(n)), np.arange(n) % 50, specs) for s, n in (("train", N_TRAIN), ("test", N_TEST))}
    build_cache(cache, PrepPlan("vggsound", ad.prep_params(), splits, {}, list(ad.classes), {}), decode)
    return sum(f.stat().st_size for f in cache.glob("*.npy"))


@pytest.fixture(scope="module")
def vgg_cache(tmp_path_factory) -> tuple[Path, int]:
    cache = tmp_path_factory.mktemp("vgg") / "cache"
    return cache, fabricate_vgg(cache)


def _rss_anon() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def _overrides(cache: Path, placement: str) -> dict:
    return {"vggsound": {"cache": str(cache), "frame_cache": "16", "max_frames": "2", "image_size": "16", "width": "4"},
            "train": {"data_placement": placement, "batch_size": "250", "eval_batch_size": "250", "epochs": "1",
                      "val_fraction": "0.1"}}


def test_stream_run_keeps_the_cache_out_of_anonymous_memory(vgg_cache, tmp_path):
    """A stream-placed run (validation carved from train, one epoch, evaluation) grows its
    anonymous memory by far less than the cache: the carve keeps index views of the memory map
    instead of copying every train array (which made VGGSound-50 peak at 21.6 GB)."""
    cache, size = vgg_cache
    assert size > 0.9e9
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_anon())
            time.sleep(0.002)

    base = _rss_anon()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        rec = run(RunSpec("vggsound", "audio", "visual", "none", 0, _overrides(cache, "stream"), str(tmp_path / "res")))
    finally:
        stop.set()
        th.join()
    assert rec["status"] == "ok", rec.get("traceback")
    growth = peak[0] - base
    assert growth < 0.15 * size, f"anonymous memory grew by {growth / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB cache"
    mem = rec["speed"]["memory"]
    assert mem["dataset"] == "vggsound" and mem["placement"] == "stream"
    visual = 16 * 16 * 3 * 2  # the trained modality's bytes per clip (the audio array is not read)
    n_val = round(0.1 * N_TRAIN)
    assert mem["arrays_bytes"]["test"] == N_TEST * (visual + 2 + 8)
    assert mem["arrays_bytes"]["train"] == (N_TRAIN - n_val) * (visual + 2 + 8)
    assert mem["page_cache_bytes"] == (N_TRAIN + N_TEST) * visual
    assert mem["host_bytes"] < mem["host_available_bytes"]


def test_placement_that_cannot_fit_fails_before_training(vgg_cache, tmp_path, monkeypatch):
    """With the available RAM shared by so many runs that a copy of the arrays a run reads cannot
    fit, an explicit pinned (copy) placement fails before any epoch with the numbers and the way
    out; auto falls back to stream; with less still, auto fails too."""
    cache, _size = vgg_cache
    # one reading of MemAvailable for the shares below and the runs' own estimates: it moves as other
    # processes run (and as the cache's dirty pages are written back), and a doubling in between
    # would let the pinned copy fit
    available = host_available_bytes()
    monkeypatch.setattr("bench.train.placement.host_available_bytes", lambda: available)
    frames = (N_TRAIN + N_TEST) * 16 * 16 * 3 * 2  # the visual arrays (the trained modality)
    share = max(2, int(2 * available // frames))  # about half of them per run

    def spec(placement: str, runs: int, res: str) -> RunSpec:
        ov = _overrides(cache, placement)
        ov["train"].update(batch_size="50", eval_batch_size="50")
        return RunSpec("vggsound", "audio", "visual", "none", 0, ov, str(tmp_path / res), runs_per_gpu=runs)

    with pytest.raises(BenchError) as err:
        run(spec("pinned", share, "a"))
    msg = str(err.value)
    assert re.match(r"vggsound: train.data_placement=pinned needs [\d.]+ [MG]iB of host RAM with [\d.]+ [MG]iB "
                    r"available \(per run: \d+ runs share the memory\) \(arrays read: train [\d.]+ MiB, val ", msg), msg
    assert "; use --set train.data_placement=stream (holds " in msg
    assert not list((tmp_path / "a").rglob("*.pt"))  # no checkpoint: it failed before the first epoch
    rec = run(spec("auto", share, "b"))
    assert rec["status"] == "ok" and rec["speed"]["data_placement"] == "stream"
    mem = rec["speed"]["memory"]
    assert mem["per_placement"]["pinned"]["host_bytes"] > mem["host_available_bytes"] >= mem["host_bytes"]
    with pytest.raises(BenchError, match=r"vggsound: train.data_placement=stream \(auto: no placement fits\) needs"):
        run(spec("auto", available // 2**16, "c"))  # 64 KiB per run


def test_carved_views_read_like_copies(vgg_cache, monkeypatch):
    """Subsets of a prepared split are index views that give the rows a copy would, also views
    of views; placing one copies it chunk by chunk into a real tensor."""
    import torch

    from bench.data.prepared import Rows
    from bench.train import placement as speed

    cache, _size = vgg_cache
    sp = build_adapter("vggsound", {"vggsound": {"cache": str(cache)}}).load()["train"]
    idx = torch.tensor([5, 1, N_TRAIN - 1, 7])
    sub = sp.subset(idx)
    assert isinstance(sub.inputs["audio"], Rows) and tuple(sub.inputs["audio"].shape) == (4, 160000)
    assert torch.equal(sub.inputs["visual"][torch.arange(4)], sp.inputs["visual"][idx])
    assert sub.labels.tolist() == (idx % 50).tolist() and len(sub) == 4
    again = sub.subset(torch.tensor([3, 0]))
    assert torch.equal(again.inputs["visual"][:], sp.inputs["visual"][torch.tensor([7, 5])])
    monkeypatch.setattr(speed, "PLACE_CHUNK", 700_000)  # two 320-kB rows per chunk
    placed = speed._move(sub.inputs["audio"], None, False)
    assert isinstance(placed, torch.Tensor) and torch.equal(placed, sp.inputs["audio"][idx])
