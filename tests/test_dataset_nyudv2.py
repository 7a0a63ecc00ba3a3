"""NYU-Depth V2 adapter: the official v7.3 .mat (HDF5), splits.mat / classMapping40.mat, and the
ESANet and SA-Gate folder layouts, all written in their real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api.errors import BenchError
from bench.train.resolve import RunSpec, build_adapter
from bench.train.run import run

N, W, H = 6, 64, 48


def scene(n: int):
    rng = np.random.default_rng(n)
    rgb = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    rgb[0, 0] = (10 * n, 20, 30)
    depth = (1.0 + rng.random((H, W))).astype(np.float32)  # metres
    lab894 = np.zeros((H, W), np.uint16)
    lab894[: H // 2] = 1 + n  # labels 1..6 of the 894
    lab894[H // 2:, : W // 2] = 5
    return rgb, depth, lab894


def mapclass() -> np.ndarray:
    m = (np.arange(894) % 40 + 1).astype(np.uint8)  # label k -> class (k-1) % 40 + 1
    return m


def make_mat(root: Path, v5: bool = False) -> None:
    import h5py
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    ims = np.stack([scene(n)[0] for n in range(N)])  # (N, H, W, 3)
    dep = np.stack([scene(n)[1] for n in range(N)])
    lab = np.stack([scene(n)[2] for n in range(N)])
    path = root / "nyu_depth_v2_labeled.mat"
    if v5:
        savemat(path, {"images": ims})
    else:
        with h5py.File(path, "w", userblock_size=512) as f:  # MATLAB v7.3: HDF5 behind a 512-byte header
            f.create_dataset("images", data=ims.transpose(0, 3, 2, 1))  # MATLAB column-major: (N, 3, W, H)
            f.create_dataset("depths", data=dep.transpose(0, 2, 1))
            f.create_dataset("rawDepths", data=dep.transpose(0, 2, 1) * 0.9)
            f.create_dataset("labels", data=lab.transpose(0, 2, 1))
            f.create_dataset("instances", data=np.zeros((N, W, H), np.uint8))
        with open(path, "r+b") as fh:
            fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    savemat(root / "splits.mat", {"trainNdxs": np.array([[3], [4], [5], [6]], np.uint16),
                                  "testNdxs": np.array([[1], [2]], np.uint16)})
    savemat(root / "classMapping40.mat", {"mapClass": mapclass()[None], "className": np.array(["wall"] * 40, dtype=object)[None]})


def make_sagate(root: Path) -> None:
    from PIL import Image

    for d in ("RGB", "Depth", "Label"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for n in range(N):
        rgb, depth, lab = scene(n)
        Image.fromarray(rgb).save(root / "RGB" / f"{n}.jpg", quality=100)
        np.save(root / "Depth" / f"{n}.npy", depth)
        Image.fromarray(np.where(lab == 0, 0, mapclass()[np.maximum(lab.astype(int) - 1, 0)]).astype(np.uint8)).save(root / "Label" / f"{n}.png")
    (root / "train.txt").write_text("".join(f"RGB/{k}.jpg\tLabel/{k}.png\n" for k in (2, 3, 4, 5)))
    (root / "test.txt").write_text("".join(f"RGB/{k}.jpg\tLabel/{k}.png\n" for k in (0, 1)))


def make_esanet(root: Path) -> None:
    from PIL import Image

    for split, ks in (("train", (3, 4, 5, 6)), ("test", (1, 2))):
        for d in ("rgb", "depth", "depth_raw", "labels_40"):
            (root / split / d).mkdir(parents=True, exist_ok=True)
        for k in ks:
            rgb, depth, lab = scene(k - 1)
            Image.fromarray(rgb).save(root / split / "rgb" / f"{k:04d}.png")
            Image.fromarray((depth * 1000).astype(np.uint16)).save(root / split / "depth" / f"{k:04d}.png")
            Image.fromarray((depth * 900).astype(np.uint16)).save(root / split / "depth_raw" / f"{k:04d}.png")
            Image.fromarray(np.where(lab == 0, 0, mapclass()[np.maximum(lab.astype(int) - 1, 0)]).astype(np.uint8)).save(root / split / "labels_40" / f"{k:04d}.png")
        (root / f"{split}.txt").write_text("".join(f"{k:04d}\n" for k in ks))


def ov(root: Path, cache: Path, **kw) -> dict:
    return {"nyudv2": {"root": str(root), "cache": str(cache), "height": str(H), "crop": "32", "width": "4",
                       "aspp_channels": "8", **kw},
            "train": {"batch_size": "2", "epochs": "1", "teacher_epochs": "1", "val_fraction": "0.25", "eval_batch_size": "2"}}


def test_mat_layout_decodes_like_matlab(tmp_path):
    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_mat(root)
    ad = build_adapter("nyudv2", ov(root, cache))
    m = ad.prepare()
    assert m["info"]["layout"] == "mat" and m["splits"]["train"]["n"] == 4 and m["splits"]["test"]["n"] == 2
    sp = ad.load()
    rgb = sp["test"].inputs["rgb"]
    assert tuple(rgb.shape) == (2, H, W, 3)  # height 48, width 64: the MATLAB axis reversal is undone
    assert rgb[1, 0, 0].tolist() == [10, 20, 30]  # test id 2 = scene 1
    lab = sp["test"].labels[0].numpy()
    # scene 0: top half raw label 1 -> class 1 -> target 0; bottom-left raw 5 -> class 5 -> target 4; rest void
    assert lab[0, 0] == 0 and lab[-1, 0] == 4 and lab[-1, -1] == 255
    d = sp["test"].inputs["depth"][0].numpy().astype(float)
    assert abs(d[5, 7] - 1000 * scene(0)[1][5, 7]) <= 1  # mm


def test_layouts_agree_and_train(tmp_path):
    caches = {}
    for name, maker in (("mat", make_mat), ("sagate", make_sagate), ("esanet", make_esanet)):
        root = tmp_path / name
        maker(root)
        ad = build_adapter("nyudv2", ov(root, tmp_path / f"c_{name}"))
        ad.prepare()
        caches[name] = ad.load()
    for name in ("sagate", "esanet"):
        assert torch.equal(caches[name]["train"].labels, caches["mat"]["train"].labels), name
        dd = (caches[name]["train"].inputs["depth"].float() - caches["mat"]["train"].inputs["depth"].float()).abs()
        assert float(dd.max()) <= 1.0
    assert torch.equal(caches["esanet"]["test"].inputs["rgb"], caches["mat"]["test"].inputs["rgb"])
    root = tmp_path / "mat"
    for method in ("none", "fdcmkd", "dkd", "feat"):
        rec = run(RunSpec("nyudv2", "depth", "rgb", method, 0, ov(root, tmp_path / "c_mat"), str(tmp_path / "res")))
        assert rec["status"] == "ok", rec.get("traceback")
        assert rec["metric"] == "mIoU" and 0 <= rec["best_metric"] <= 100


def test_joint_geometry(tmp_path):
    root = tmp_path / "raw"
    make_mat(root)
    ad = build_adapter("nyudv2", ov(root, tmp_path / "c"))
    ad.prepare()
    sp = ad.load()["train"]
    # make depth a copy of the label map so any geometric mismatch shows
    sp.inputs["depth"] = sp.labels.clone().to(torch.int32)
    ad.params.depth_mode = "refined"
    g = torch.Generator().manual_seed(3)
    xs, y = ad.batch(sp, torch.arange(4), ["depth", "rgb"], torch.device("cpu"), True, g)
    assert tuple(xs["rgb"].shape) == (4, 3, 32, 32) and tuple(y.shape) == (4, 32, 32)
    mean, std = 2841.95, 1417.26
    back = torch.round(xs["depth"][:, 0] * std + mean)
    inside = (y != 255)
    # bilinear (image) and nearest (label) resampling differ only on class boundaries
    agree = (back[inside] == y[inside].float()).float().mean()
    assert inside.any() and float(agree) > 0.9


def test_refused_methods_and_errors(tmp_path):
    root = tmp_path / "raw"
    make_mat(root)
    for method in ("dml", "nkd", "c2kd"):
        rec = None
        with pytest.raises(BenchError, match="does not apply to segmentation"):
            from bench.train.resolve import resolve

            resolve(RunSpec("nyudv2", "depth", "rgb", method, 0, ov(root, tmp_path / "c"), str(tmp_path / "res")))
    from scipy.io import savemat

    savemat(root / "splits.mat", {"trainNdxs": np.array([[3], [9]]), "testNdxs": np.array([[1]])})
    with pytest.raises(BenchError, match="holds image id 9 but the .mat has 6 images"):
        build_adapter("nyudv2", ov(root, tmp_path / "c")).prepare()
    v5 = tmp_path / "v5"
    make_mat(v5, v5=True)
    with pytest.raises(BenchError, match="v7.3/HDF5 expected"):
        build_adapter("nyudv2", ov(v5, tmp_path / "c")).prepare()
    sg = tmp_path / "sg"
    make_sagate(sg)
    from PIL import Image

    Image.fromarray(np.full((H, W), 41, np.uint8)).save(sg / "Label" / "0.png")
    with pytest.raises(BenchError, match=r"Label/0.png: label value 41 outside 0..40"):
        build_adapter("nyudv2", ov(sg, tmp_path / "c")).prepare()
    make_sagate(sg)
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(sg / "Label" / "1.png")
    with pytest.raises(BenchError, match="sizes differ"):
        build_adapter("nyudv2", ov(sg, tmp_path / "c")).prepare()


def test_imagenet_resnet_weights_load(tmp_path):
    import torchvision

    from bench.models import DeepLabV3Plus

    ref = torchvision.models.resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    m = DeepLabV3Plus(3, 40, pretrained=str(tmp_path / "r18.pth"))
    assert torch.equal(m.encoder.stem[0].weight, ref.conv1.weight)
    assert torch.equal(m.encoder.stages[3][0].shortcut[0].weight, ref.layer4[0].downsample[0].weight)


def test_prepare_reports_pixels_per_class(tmp_path):
    """Segmentation labels are maps: the manifest's class histogram counts labelled pixels per
    class (void apart) and ``bench prepare`` prints them (a per-image label would be all void)."""
    import json

    from typer.testing import CliRunner

    from bench.cli import app

    root, cache = tmp_path / "raw", tmp_path / "cache"
    make_mat(root)
    res = CliRunner().invoke(app, ["prepare", "nyudv2", "--root", str(root), "--cache", str(cache),
                                   "--set", f"nyudv2.height={H}"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    m = json.loads((cache / "manifest.json").read_text())
    for split, ids in (("train", (3, 4, 5, 6)), ("test", (1, 2))):
        raw = np.stack([scene(k - 1)[2] for k in ids]).astype(int)  # the fixture's 894-label maps
        cls = np.where(raw == 0, -1, mapclass()[np.maximum(raw - 1, 0)].astype(int) - 1)
        want = np.bincount(cls[cls >= 0], minlength=40).tolist()
        s = m["splits"][split]
        assert s["class_hist"] == want and s["hist_unit"] == "pixels"
        assert s["void_pixels"] == int((cls < 0).sum()) and sum(want) + s["void_pixels"] == len(ids) * H * W
        lab = np.load(cache / f"{split}.label.npy")  # the label maps as cached
        assert np.bincount(lab[lab != 255].ravel(), minlength=40).tolist() == want
    # test id 2 (scene 1) has raw label 2 in its top half -> class 2 -> target 1, "floor"
    assert m["splits"]["test"]["class_hist"][1] == H // 2 * W
    assert "labelled pixels per class" in res.output
    assert "1 floor" in res.output and f"{H // 2 * W:,} (" in res.output


def test_pixel_histogram_survives_an_interrupted_prepare(tmp_path):
    """Rows written before an interruption are counted from the file when preparation resumes."""
    from bench.data.cache import build_cache

    root = tmp_path / "raw"
    make_mat(root)
    ad = build_adapter("nyudv2", ov(root, tmp_path / "c"))
    plan = ad.plan(root)
    calls = []

    def flaky(split, item):
        calls.append(item)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return ad.decode(split, item)

    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "c", plan, flaky, chunk=1)
    resumed = []
    m = build_cache(tmp_path / "c", plan, lambda split, item: resumed.append(item) or ad.decode(split, item), chunk=1)
    assert len(resumed) == 4  # two of the 4 + 2 rows were written before the interruption
    full = build_cache(tmp_path / "full", plan, ad.decode)
    for split in ("train", "test"):
        assert m["splits"][split]["class_hist"] == full["splits"][split]["class_hist"]
        assert m["splits"][split]["void_pixels"] == full["splits"][split]["void_pixels"]
        assert sum(full["splits"][split]["class_hist"]) > 0


def test_duplicate_rows_and_train_test_overlap_are_reported(tmp_path):
    root = tmp_path / "sg"
    make_sagate(root)
    (root / "train.txt").write_text("".join(f"RGB/{k}.jpg\tLabel/{k}.png\n" for k in (2, 3, 4, 5, 3)))
    (root / "test.txt").write_text("".join(f"RGB/{k}.jpg\tLabel/{k}.png\n" for k in (0, 1, 5)))
    m = build_adapter("nyudv2", ov(root, tmp_path / "c")).prepare()
    tr = m["splits"]["train"]
    assert tr["listed"] == 5 and tr["n"] == 4 and tr["skipped"]["duplicate row"] == {"count": 1, "examples": ["RGB/3.jpg"]}
    assert m["info"]["images_in_train_and_test"] == {"count": 1, "examples": ["RGB/5.jpg"]}
