"""AVE and VGGSound-50 adapters on tiny fixtures in their real layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datafixtures import write_jpg, write_lines, write_wav

from bench.api.errors import BenchError
from bench.train.resolve import RunSpec, build_adapter
from bench.train.run import run

SMALL = {"frame_cache": "24", "image_size": "20", "width": "4"}
TRAIN = {"batch_size": "4", "epochs": "1", "teacher_epochs": "1"}
AVE_CATS = ["Baby cry, infant cry", "Frying (food)", "Race car, auto racing"]
IDX = {"Baby cry, infant cry": 19, "Frying (food)": 10, "Race car, auto racing": 4}


def vid(i: int) -> str:
    return f"-Ab{i:02d}cD_eF{i % 10}"  # 11 chars, leading '-', contains '_'


def make_ave(root: Path) -> None:
    lines = {"train": [], "val": [], "test": []}
    k = 0
    for c, cat in enumerate(AVE_CATS):
        for split, n in (("train", 3), ("val", 1), ("test", 1)):
            for _ in range(n):
                v = vid(k)
                start, end = (2, 7) if k % 2 else (0, 10)
                write_wav(root / "Audios" / f"{v}.wav", 3.0, 300 + 200 * c, sr=44100, seed=k)
                for s in range(start, end + 1, 2):
                    write_jpg(root / "Image-01-FPS-SE" / v / f"{s * 30:05d}.jpg", c, seed=k * 100 + s)
                lines[split].append(f"{cat}&{v}&good&{start}&{end}")
                k += 1
    # a multi-event video: the first train video also holds a second event of another category
    first = lines["train"][0].split("&")[1]
    lines["train"].append(f"{AVE_CATS[1]}&{first}&good&1&2")
    lines["train"].append(f"{AVE_CATS[0]}&{vid(99)}&good&0&0")  # zero-length event: skipped
    write_wav(root / "Audios" / f"{vid(99)}.wav", 1.0, 300)
    write_jpg(root / "Image-01-FPS-SE" / vid(99) / "00000.jpg", 0)
    for split, fname in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        write_lines(root / fname, lines[split])
    write_lines(root / "Annotations.txt", ["Category&VideoID&Quality&StartTime&EndTime"] + sum(lines.values(), []))


def test_ave_prepare_and_train(tmp_path):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_ave(root)
    ov = {"ave": {"root": str(root), "cache": str(cache), **SMALL}, "train": dict(TRAIN)}
    ad = build_adapter("ave", ov)
    m = ad.prepare()
    tr = m["splits"]["train"]
    assert tr["listed"] == 11 and tr["n"] == 10 and tr["skipped"]["zero-length event"]["count"] == 1
    assert m["splits"]["val"]["n"] == 3 and m["splits"]["test"]["n"] == 3
    assert tr["arrays"]["audio"]["shape"] == [257, 1004]
    sp = ad.load()
    assert sorted(set(sp["test"].labels.tolist())) == sorted(IDX.values())
    a = sp["train"].inputs["audio"].float()
    assert abs(float(a[0].mean())) < 0.05 and abs(float(a[0].std()) - 1) < 0.05  # per-clip z-score
    rec = run(RunSpec("ave", "visual", "audio", "logit", 0, ov, str(tmp_path / "res")))
    assert rec["status"] == "ok", rec.get("traceback")
    # AVE has its own validation split: nothing carved from train
    assert rec["history"][0]["val_metric"] is not None
    # reference dedup: one sample per video id in a split
    ov2 = {"ave": {"root": str(root), "cache": str(tmp_path / "c2"), "dedup": "reference",
                   "spec_resize": "numpy_resize", **SMALL}}
    m2 = build_adapter("ave", ov2).prepare()
    assert m2["splits"]["train"]["n"] == 9
    assert m2["splits"]["train"]["arrays"]["audio"]["shape"] == [257, 1024]


def test_ave_two_events_of_one_segment_are_two_samples(tmp_path):
    """A video whose segment holds two events of different categories gives two samples under
    dedup=event; only a row repeating an event exactly is a duplicate; dedup=reference keeps
    one sample per video id (C2KD)."""
    root = tmp_path / "raw"
    make_ave(root)
    lines = (root / "trainSet.txt").read_text().splitlines()
    cat, v, _q, s, e = lines[0].split("&")  # Baby cry, infant cry 0-10
    assert (cat, s, e) == (AVE_CATS[0], "0", "10")
    lines += [f"{AVE_CATS[2]}&{v}&good&{s}&{e}",  # same video and segment, another category
              lines[0]]  # the same event again
    write_lines(root / "trainSet.txt", lines)
    ad = build_adapter("ave", {"ave": {"root": str(root), "cache": str(tmp_path / "c"), **SMALL}})
    tr = ad.prepare()["splits"]["train"]
    assert tr["listed"] == 13 and tr["n"] == 11
    assert tr["skipped"]["duplicate row"] == {"count": 1, "examples": [f"{v}#0 ({cat} 0-10)"]}
    assert tr["skipped"]["zero-length event"]["count"] == 1
    train = ad.load()["train"]
    same = [i for i in range(len(train)) if torch.equal(train.inputs["audio"][i], train.inputs["audio"][0])]
    assert sorted(int(train.labels[i]) for i in same) == sorted([IDX[AVE_CATS[0]], IDX[AVE_CATS[2]]])
    ref = build_adapter("ave", {"ave": {"root": str(root), "cache": str(tmp_path / "r"), "dedup": "reference",
                                        **SMALL}}).prepare()["splits"]["train"]
    assert ref["n"] == 9 and ref["skipped"]["video id already in split (dedup=reference)"]["count"] == 2
    assert ref["skipped"]["duplicate row"]["count"] == 1


@pytest.mark.parametrize("line,msg", [
    ("Banjo&abc&good&2", "expected 5 '&'-separated fields"),
    ("Banjo&abc&good&x&9", "must be integer seconds"),
    ("Banjo&abc&good&8&3", "StartTime <= EndTime"),
    ("Kazoo&abc&good&0&3", "unknown class 'Kazoo'"),
])
def test_ave_bad_lines(tmp_path, line, msg):
    root = tmp_path / "raw"
    make_ave(root)
    write_lines(root / "testSet.txt", [line])
    with pytest.raises(BenchError, match=msg) as e:
        build_adapter("ave", {"ave": {"root": str(root), "cache": str(tmp_path / "c")}}).prepare()
    assert "testSet.txt:1" in str(e.value)


VGG_CLASSES = ["playing tennis", "pigeon, dove cooing", "dog barking"]


def make_vgg(root: Path) -> None:
    k = 0
    for split, n in (("train", 3), ("test", 1)):
        rows = []
        for c, label in enumerate(VGG_CLASSES):
            for i in range(n):
                ytid = f"-q{k:02d}xY_zW9a"
                start = 30 * i
                stem = f"{ytid}_{start:06d}"
                secs = 3.0 if i == 0 else 10.0  # shorter than 5 s: tiled
                write_wav(root / f"{split}-audios" / f"{split}-set" / f"{stem}.wav", secs, 400 + 300 * c, seed=k)
                nf = 3 if (split == "train" and c == 2 and i == 2) else 5  # exactly 3 frames: dropped
                folder = stem if k % 2 else f"{ytid}_{start}"  # both namings (C2KD padded / OGM-GE raw)
                for f in range(nf):
                    write_jpg(root / f"{split}-videos" / f"{split}-set-img" / "Image-01-FPS" / f"{folder}.mp4"
                              / f"{f * 30:05d}.jpg", c, seed=k * 10 + f)
                q = f'"{label}"' if "," in label else label
                rows.append(f"{ytid},{start},{q},{split}")
                k += 1
        write_lines(root / f"{split}_tiny.csv", rows, crlf=True)


def test_vggsound_prepare_and_train(tmp_path):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_vgg(root)
    ov = {"vggsound": {"root": str(root), "cache": str(cache), **SMALL}, "train": {**TRAIN, "val_fraction": "0.25"}}
    ad = build_adapter("vggsound", ov)
    m = ad.prepare()
    tr = m["splits"]["train"]
    assert tr["n"] == 8 and tr["skipped"]["fewer than 4 frames"]["count"] == 1
    assert tr["arrays"]["audio"] == {**tr["arrays"]["audio"], "shape": [160000], "dtype": "int16"}
    sp = ad.load()
    assert sp["test"].labels.tolist() == [1, 10, 30]
    import torch

    x = sp["test"].inputs["audio"][:2]
    spec_eval = ad.prepare_batch("audio", x, False, None)
    assert tuple(spec_eval.shape) == (2, 1, 129, 626)
    assert torch.equal(spec_eval, ad.prepare_batch("audio", x, False, None))  # fixed centre crop
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(ad.prepare_batch("audio", x, True, g), ad.prepare_batch("audio", x, True, g))
    vis = ad.prepare_batch("visual", sp["test"].inputs["visual"][:2], True, g, {"nframes": sp["test"].aux["visual.nframes"][:2]})
    assert tuple(vis.shape) == (2, 3, 3, 20, 20)
    rec = run(RunSpec("vggsound", "audio", "visual", "feat", 0, ov, str(tmp_path / "res")))
    assert rec["status"] == "ok", rec.get("traceback")


def test_vggsound_unknown_class(tmp_path):
    root = tmp_path / "raw"
    make_vgg(root)
    write_lines(root / "test_tiny.csv", ["abc,0,playing kazoo,test"])
    with pytest.raises(BenchError, match=r"test_tiny.csv:1: unknown class 'playing kazoo'"):
        build_adapter("vggsound", {"vggsound": {"root": str(root), "cache": str(tmp_path / "c")}}).prepare()


def test_vggsound_clip_with_two_labels_is_two_samples(tmp_path):
    """The same clip listed with another label is a second sample (C2KD keeps every row); the
    same clip and label again is a duplicate."""
    root = tmp_path / "raw"
    make_vgg(root)
    rows = (root / "train_tiny.csv").read_text().splitlines()
    ytid, start, label, split = rows[0].split(",")  # -q00xY_zW9a,0,playing tennis,train
    write_lines(root / "train_tiny.csv", rows + [f"{ytid},{start},dog barking,{split}", rows[0]], crlf=True)
    ad = build_adapter("vggsound", {"vggsound": {"root": str(root), "cache": str(tmp_path / "c"), **SMALL}})
    tr = ad.prepare()["splits"]["train"]
    assert tr["listed"] == 11 and tr["n"] == 9
    assert tr["skipped"]["duplicate row"] == {"count": 1, "examples": [f"{ytid}_{int(start):06d}"]}
    train = ad.load()["train"]
    same = [i for i in range(len(train)) if torch.equal(train.inputs["audio"][i], train.inputs["audio"][0])]
    assert sorted(int(train.labels[i]) for i in same) == [1, 30]


def test_run_reads_preparation_settings_from_the_cache(tmp_path):
    """A cache prepared with non-default settings runs given only the cache: the settings come
    from its manifest, with the same run identity as when repeated; a conflicting one is an error."""
    from bench.train.resolve import resolve

    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_vgg(root)
    build_adapter("vggsound", {"vggsound": {"root": str(root), "cache": str(cache), "frame_cache": "24",
                                            "max_frames": "4", "min_frames": "3"}}).prepare()
    train = {**TRAIN, "val_fraction": "0.25"}
    only_cache = {"vggsound": {"cache": str(cache), "image_size": "20", "width": "4"}, "train": train}
    repeated = {"vggsound": {**only_cache["vggsound"], "frame_cache": "24", "max_frames": "4", "min_frames": "3"},
                "train": train}
    rec = run(RunSpec("vggsound", "audio", "visual", "none", 0, only_cache, str(tmp_path / "res")))
    assert rec["status"] == "ok", rec.get("traceback")
    params = rec["config"]["dataset"]["params"]
    assert (params["frame_cache"], params["max_frames"], params["min_frames"]) == (24, 4, 3)
    assert rec["config_hash"] == resolve(RunSpec("vggsound", "audio", "visual", "none", 0, repeated)).config_hash
    assert len(rec["history"]) == 1
    for value in ("32", "256"):  # another size, or the default given explicitly
        bad = {"vggsound": {**only_cache["vggsound"], "frame_cache": value}, "train": train}
        with pytest.raises(BenchError, match=rf"vggsound.frame_cache={value} was set, but the cache was prepared "
                                             rf"with frame_cache=24"):
            resolve(RunSpec("vggsound", "audio", "visual", "none", 0, bad))
