"""CREMA-D adapter on a tiny fixture in the real OGM-GE layout (wav + 1-fps jpgs + split csvs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from datafixtures import write_jpg, write_lines, write_wav

from bench.api.errors import BenchError
from bench.train.resolve import RunSpec, build_adapter
from bench.train.run import run

CODES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
SMALL = {"frame_cache": "24", "image_size": "20", "width": "4"}
TRAIN = {"batch_size": "4", "epochs": "1", "teacher_epochs": "1", "val_fraction": "0.25"}


def make_crema(root: Path, per_class_train: int = 3) -> dict[str, list[str]]:
    sentences = ["DFA", "IEO", "TIE", "IOM", "IWW"]
    rows: dict[str, list[str]] = {"train": [], "test": []}
    k = 0
    for c, code in enumerate(CODES):
        for i in range(per_class_train + 1):
            clip = f"{1001 + i}_{sentences[i]}_{code}_XX"
            split = "test" if i == per_class_train else "train"
            seconds = 0.6 if (c == 0 and i == 0) else 1.5  # one clip shorter than 1 s: tiling
            write_wav(root / "AudioWAV" / f"{clip}.wav", seconds, 300 + 150 * c, seed=k)
            for f in (0, 30, 60)[: 2 + (i % 2)]:
                write_jpg(root / "Image-01-FPS" / clip / f"{f:05d}.jpg", c, seed=k * 10 + f)
            rows[split].append(f"{clip},{code}")
            k += 1
    write_lines(root / "train.csv", rows["train"], crlf=True)
    write_lines(root / "test.csv", rows["test"], bom=True)
    return rows


def overrides(root: Path, cache: Path, **extra: str) -> dict:
    return {"crema": {"root": str(root), "cache": str(cache), **SMALL, **extra}, "train": dict(TRAIN)}


def test_prepare_train_and_check(tmp_path):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    rows = make_crema(root)
    # a listed clip whose wav is missing and one without frames: skipped and counted
    write_lines(root / "train.csv", rows["train"] + ["1090_ITS_ANG_XX,ANG", "1091_ITS_SAD_XX,SAD"])
    write_wav(root / "AudioWAV" / "1091_ITS_SAD_XX.wav", 1.0, 500)
    (root / "Image-01-FPS" / "1091_ITS_SAD_XX").mkdir(parents=True)
    ad = build_adapter("crema", overrides(root, cache))
    m = ad.prepare()
    tr = m["splits"]["train"]
    assert tr["listed"] == 20 and tr["n"] == 18
    assert tr["skipped"]["missing audio"]["count"] == 1 and tr["skipped"]["missing frames"]["count"] == 1
    assert tr["class_hist"] == [3] * 6 and m["splits"]["test"]["class_hist"] == [1] * 6
    assert m["splits"]["train"]["arrays"]["audio"]["shape"] == [257, 188]
    assert m["splits"]["train"]["arrays"]["audio"]["dtype"] == "float16"
    splits = ad.load()
    a = splits["train"].inputs["audio"]
    assert tuple(a.shape) == (18, 257, 188) and np.isfinite(a.float().numpy()).all()
    v = splits["train"].inputs["visual"]
    assert tuple(v.shape) == (18, 3, 24, 24, 3) and str(v.dtype) == "torch.uint8"
    assert sorted(set(splits["train"].aux["visual.nframes"].tolist())) == [2, 3]
    # class colours survive decoding: the cached frame's mean colour is the class colour
    from datafixtures import class_colour

    lab = int(splits["train"].labels[0])
    assert np.abs(v[0, 0].float().mean((0, 1)).numpy() - class_colour(lab)).max() < 6
    # labels follow the C2KD dictionary, not file order
    assert splits["test"].labels.tolist() == [0, 1, 2, 3, 4, 5]
    from bench.data.cache import check_cache

    assert check_cache(cache, "crema") == []
    # one epoch of FD-CMKD a2v through the runner
    rec = run(RunSpec("crema", "audio", "visual", "fdcmkd", 0, overrides(root, cache), str(tmp_path / "res")))
    assert rec["status"] == "ok", rec.get("traceback")
    assert len(rec["history"]) == 1 and 0 <= rec["best_metric"] <= 100
    assert rec["config"]["dataset"]["cache"] == m["content_hash"]
    assert "root" not in rec["config"]["dataset"]["params"]


def test_check_detects_corruption(tmp_path):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_crema(root, 1)
    build_adapter("crema", overrides(root, cache)).prepare()
    f = cache / "train.visual.npy"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    from bench.data.cache import check_cache

    problems = check_cache(cache, "crema")
    assert len(problems) == 1 and "train.visual.npy" in problems[0] and "sha256" in problems[0]


def test_prepare_resumes_after_interrupt(tmp_path):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_crema(root, 3)
    ad = build_adapter("crema", overrides(root, cache))
    calls = {"n": 0}
    orig = ad.decode

    def flaky(split, item):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return orig(split, item)

    ad.decode = flaky
    import bench.data.cache as bc

    with pytest.raises(KeyboardInterrupt):
        bc.build_cache(ad.cache_path, ad.plan(root), ad.decode, chunk=4)
    prog = json.loads((cache / ".progress.json").read_text())
    assert prog["rows"] == {"train": 8}
    with pytest.raises(BenchError, match="interrupted"):
        ad.load()
    decoded = []
    ad.decode = lambda split, item: decoded.append(item.key) or orig(split, item)
    m = bc.build_cache(ad.cache_path, ad.plan(root), ad.decode, chunk=4)
    assert len(decoded) == 18 - 8 + 6  # resumed at row 8 of train, then all of test
    fresh = tmp_path / "fresh"
    ad2 = build_adapter("crema", overrides(root, fresh))
    m2 = ad2.prepare()
    assert m2["content_hash"] == m["content_hash"]  # resumed cache == uninterrupted cache


def test_stereo_44k_resampled_and_empty_wav(tmp_path):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    rows = make_crema(root, 1)
    clip = rows["train"][0].split(",")[0]
    write_wav(root / "AudioWAV" / f"{clip}.wav", 1.0, 440, sr=44100, channels=2)
    clip2 = rows["train"][1].split(",")[0]
    write_wav(root / "AudioWAV" / f"{clip2}.wav", 0.0, 440)
    ad = build_adapter("crema", overrides(root, cache))
    with pytest.warns(UserWarning, match="no audio samples"):
        m = ad.prepare()
    assert m["info"]["clips_with_empty_audio"] == 1
    a = ad.load()["train"].inputs["audio"].float()
    # 440 Hz at 22,050 Hz with n_fft 512: the peak bin is round(440 * 512 / 22050) = 10
    assert int(a[0, :, 40:140].mean(1).argmax()) == 10
    assert float(a[1].max()) == pytest.approx(np.log(1e-7), abs=0.02)  # silence (fp16 cache)


@pytest.mark.parametrize("line,msg", [
    ("1001_DFA_NEU_XX,XYZ", "unknown emotion code 'XYZ'"),
    ("1001_DFA_NEU_XX,NEU,extra", "expected 2 comma-separated fields"),
    ("1001_DFA_NEU_XX,ANG", "has emotion NEU in its name but is labelled ANG"),
    ("notaclip,NEU", "not a CREMA-D clip name"),
])
def test_bad_split_lines(tmp_path, line, msg):
    root = tmp_path / "raw"
    rows = make_crema(root, 1)
    write_lines(root / "train.csv", rows["train"] + [line])
    ad = build_adapter("crema", overrides(root, tmp_path / "c"))
    with pytest.raises(BenchError, match=msg) as e:
        ad.prepare()
    assert "train.csv:7" in str(e.value)


def test_missing_inputs_errors(tmp_path):
    root = tmp_path / "raw"
    make_crema(root, 1)
    (root / "test.csv").unlink()
    with pytest.raises(BenchError, match="test.csv not found"):
        build_adapter("crema", overrides(root, tmp_path / "c")).prepare()
    with pytest.raises(BenchError, match="no prepared cache"):
        build_adapter("crema", overrides(root, tmp_path / "nothing")).load()
    make_crema(root, 1)
    bad = root / "Image-01-FPS" / "1001_DFA_HAP_XX" / "00000.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(BenchError, match="00000.jpg: unreadable image"):
        build_adapter("crema", overrides(root, tmp_path / "c")).prepare()


def test_cache_refuses_other_prep_params(tmp_path):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_crema(root, 1)
    build_adapter("crema", overrides(root, cache)).prepare()
    with pytest.raises(BenchError, match="crema.frame_cache=32 was set, but the cache was prepared with frame_cache=24"):
        build_adapter("crema", overrides(root, cache, frame_cache="32")).load()
    # train-time parameters do not need a new cache
    assert len(build_adapter("crema", overrides(root, cache, image_size="16")).load()["train"]) == 6


def test_cli_prepare_check_and_list(tmp_path):
    from typer.testing import CliRunner

    from bench.cli import app

    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_crema(root, 1)
    cli = CliRunner()
    r = cli.invoke(app, ["prepare", "crema", "--root", str(root), "--cache", str(cache), "--set", "crema.frame_cache=24"])
    assert r.exit_code == 0, r.output
    assert "crema prepared into" in r.output and "train" in r.output
    r = cli.invoke(app, ["prepare", "crema", "--cache", str(cache), "--set", "crema.frame_cache=24", "--check"])
    assert r.exit_code == 0 and "ok" in r.output
    (cache / "test.audio.npy").unlink()
    r = cli.invoke(app, ["prepare", "crema", "--cache", str(cache), "--set", "crema.frame_cache=24", "--check"])
    assert r.exit_code == 1 and "test.audio.npy: missing" in r.output
    r = cli.invoke(app, ["prepare", "synthetic"])
    assert r.exit_code == 2 and "nothing to prepare" in r.output
    r = cli.invoke(app, ["list", "datasets"])
    assert r.exit_code == 0
    for name in ("crema", "ave", "vggsound", "crisismmd", "nyudv2", "avdigits", "folder", "synthetic"):
        assert name in r.output


def write_flv(path: Path, c: int, seconds: float = 2.5, fps: int = 30) -> None:
    """A real FLV (Sorenson H.263, as CREMA-D's VideoFlash) of a class-coloured 64x48 clip."""
    import av
    from datafixtures import class_colour

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="flv") as out:
        st = out.add_stream("flv", rate=fps)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.zeros((48, 64, 3), np.uint8) + class_colour(c).astype(np.uint8)
            img[: 2 + i // 10, :4] = 255  # changes over time
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


def test_frames_extracted_from_flv_videos(tmp_path):
    pytest.importorskip("av")
    from bench.data.vision import extract_frames_1fps

    root, cache = tmp_path / "raw", tmp_path / "cache"
    rows = make_crema(root, 1)
    clip = rows["train"][0].split(",")[0]
    shutil.rmtree(root / "Image-01-FPS" / clip)
    write_flv(root / "VideoFlash" / f"{clip}.flv", 0)
    got = extract_frames_1fps(root / "VideoFlash" / f"{clip}.flv", tmp_path / "x")
    assert [p.name for p in got] == ["00000.jpg", "00030.jpg", "00060.jpg"]  # OGM-GE: indices 0, fps, 2*fps
    m = build_adapter("crema", overrides(root, cache)).prepare()
    assert m["splits"]["train"]["n"] == 6 and (root / "Image-01-FPS" / clip / "00060.jpg").exists()
    with pytest.raises(BenchError, match="unreadable video"):
        (tmp_path / "bad.flv").write_bytes(b"nope")
        extract_frames_1fps(tmp_path / "bad.flv", tmp_path / "y")
