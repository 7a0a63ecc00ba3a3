"""Backbones of the user's choice (issue #17): the registry, library networks (timm, torchvision,
transformers from a local directory), the user's own teacher, refusals before training, plug-ins
through an entry point, and the run identity of every earlier configuration left as it was.

Everything runs on the CPU without network: library models are built with random weights or
from weights files the tests save themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny
from typer.testing import CliRunner

from bench.api.errors import BenchError
from bench.cli import app
from bench.launch.grid import expand_grid
from bench.models.registry import BackboneChoice, InputSpec, backbone_params, build_backbone
from bench.records.store import load_records
from bench.train.resolve import RunSpec, build_adapter, resolve
from bench.train.run import run
from bench.train.teachers import teacher_path

NARROW = "channels=8,16,32,64;stem_width=8"
"""timm ResNet widths that train in seconds on a CPU (same depth as the named model)."""

# config hashes of the default job (`bench run`: every method, synthetic, both directions, seed 0)
# and its teachers' file names, computed at the commit before backbones could be chosen; DKD's and
# Feat's changed deliberately with their version 2 (#25: DKD's warm-up scales with the schedule,
# Feat distils the reference hint layer's map by default)
DEFAULT_JOB = {
    "a2v_afd": "07c8fc0d94", "a2v_c2kd": "7e4c04138a", "a2v_dist": "3041937b26", "a2v_dkd": "7a32dd5c9f",
    "a2v_dml": "7ff37b4b1c", "a2v_fdcmkd": "1175d97469", "a2v_feat": "2c647c8a6a", "a2v_logit": "90bb5eafd0",
    "a2v_nkd": "af74cc5ce8", "a2v_none": "dca449066f", "a2v_ofd": "efa6e8fc49", "a2v_pkd": "03cb9d167a",
    "a2v_ucmkd": "b95685c777", "v2a_afd": "9abdf18336", "v2a_c2kd": "a5a15eefa8", "v2a_dist": "336765d6e3",
    "v2a_dkd": "5a83c36997", "v2a_dml": "e3cba1e4f0", "v2a_fdcmkd": "65393d638a", "v2a_feat": "9b0510b81b",
    "v2a_logit": "a5da143540", "v2a_nkd": "4d0ea630c3", "v2a_none": "7936a87e6d", "v2a_ofd": "72a412d072",
    "v2a_pkd": "e9974f6d03", "v2a_ucmkd": "102862c977",
}
DEFAULT_TEACHERS = {"audio": "seed0-e6218259acac.pt", "visual": "seed0-dfb90db5df81.pt"}


def _spec(method: str, overrides: dict, results: Path, direction: tuple[str, str] = ("visual", "audio")) -> RunSpec:
    return RunSpec("synthetic", direction[0], direction[1], method, 0, overrides, str(results), "cpu")


def _bert_dir(path: Path, layers: int = 2) -> Path:
    """A tiny BERT-like encoder as a local model directory: config.json only (random init)."""
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64, vocab_size=64,
               max_position_embeddings=32).save_pretrained(path)
    return path


# -- run identity -----------------------------------------------------------------------------

def test_default_job_hashes_and_teacher_files_are_unchanged():
    """Adding the backbone settings changed no earlier run id: the default job's config hashes and
    its teachers' cache files are the ones of the commit before (the new keys are left out of the
    hash at their defaults), also when the defaults are written out explicitly."""
    specs = expand_grid("all", "synthetic", "all", "0")
    got = {}
    for s in specs:
        r = resolve(s)
        key = f"{r.direction}_{r.method_cls.name}"
        if key in DEFAULT_JOB:
            got[key] = r.config_hash
            assert "backbones" not in r.config and "teacher_checkpoint" not in r.config
    assert got == DEFAULT_JOB
    r = resolve(specs[0])
    assert {m: teacher_path(r, m).name for m in ("audio", "visual")} == DEFAULT_TEACHERS
    explicit = {"train": {"teacher_backbone": "default", "student_backbone": "default", "teacher_finetune_epochs": "0"},
                "teacher": {"stem": "small", "blocks": "1,1,1"}}  # the dataset default's own values
    r2 = resolve(RunSpec("synthetic", "audio", "visual", "logit", 0, explicit))
    assert r2.config_hash == DEFAULT_JOB["a2v_logit"] and r2.backbones["teacher"].default


def test_chosen_backbones_enter_the_identity_only_where_they_matter(tmp_path):
    """A chosen network, a changed parameter of the default one and a teacher checkpoint's content
    make new run ids; the teacher-free baseline ('none') keeps its id whatever teacher is set."""
    base = resolve(_spec("logit", {}, tmp_path))
    timm_t = resolve(_spec("logit", {"train": {"teacher_backbone": "timm"}, "teacher": {"model": "resnet34"}}, tmp_path))
    assert timm_t.config["backbones"] == {"teacher": {"name": "timm", "params": {
        "model": "resnet34", "weights": "", "stages": 4, "kwargs": ""}}}
    assert timm_t.config["train"]["teacher_backbone"] == "timm" and "student_backbone" not in timm_t.config["train"]
    deeper = resolve(_spec("logit", {"teacher": {"blocks": "2,2,2"}}, tmp_path))  # the default family, deeper
    assert deeper.config["backbones"]["teacher"]["params"]["blocks"] == [2, 2, 2]
    assert len({base.config_hash, timm_t.config_hash, deeper.config_hash}) == 3
    none = resolve(_spec("none", {"train": {"teacher_backbone": "timm"}, "teacher": {"model": "resnet34"}}, tmp_path))
    assert none.config_hash == DEFAULT_JOB["v2a_none"]
    ck = tmp_path / "t.pt"
    torch.save({"w": torch.zeros(1)}, ck)
    a = resolve(_spec("logit", {"train": {"teacher_checkpoint": str(ck)}}, tmp_path))
    import hashlib

    assert a.config["teacher_checkpoint"] == {"sha256": hashlib.sha256(ck.read_bytes()).hexdigest()}
    assert "teacher_checkpoint" not in a.config["train"]  # the path is not identity, the content is
    torch.save({"w": torch.ones(1)}, ck)
    assert resolve(_spec("logit", {"train": {"teacher_checkpoint": str(ck)}}, tmp_path)).config_hash != a.config_hash


def test_backbone_settings_are_checked_before_anything_runs(tmp_path):
    def err(ov: dict, method: str = "logit") -> str:
        with pytest.raises(BenchError) as e:
            resolve(_spec(method, ov, tmp_path))
        return str(e.value)

    assert "unknown backbone 'nosuch'; valid backbones:" in err({"train": {"teacher_backbone": "nosuch"}})
    assert "timm" in err({"train": {"teacher_backbone": "nosuch"}})
    assert "unknown parameter teacher.depth; valid teacher parameters: kwargs, model, stages, weights" in err(
        {"train": {"teacher_backbone": "timm"}, "teacher": {"depth": "3"}})
    assert ("teacher backbone 'deeplabv3plus' makes segmentation outputs; 'visual' is a classification task"
            in err({"train": {"teacher_backbone": "deeplabv3plus"}}))
    assert "train.teacher_checkpoint=" in err({"train": {"teacher_checkpoint": str(tmp_path / "missing.pt")}})
    assert "teacher_finetune_epochs fine-tunes a given teacher" in err({"train": {"teacher_finetune_epochs": "2"}})
    folder = tmp_path / "vecs"
    folder.mkdir()
    (folder / "meta.json").write_text(json.dumps({"name": "vecs", "modalities": ["vec", "img"], "num_classes": 2}))
    import numpy as np

    for split in ("train", "test"):
        np.savez(folder / f"{split}.npz", vec=np.zeros((8, 5), "float32"), img=np.zeros((8, 1, 8, 8), "float32"),
                 label=np.arange(8) % 2)
    with pytest.raises(BenchError, match=r"teacher backbone 'timm' does not take modality 'vec' \(vector\); "
                                         r"it takes sequence, image, video inputs"):
        resolve(RunSpec(str(folder), "vec", "img", "logit", 0, {"train": {"teacher_backbone": "timm"}}))


# -- library networks -------------------------------------------------------------------------

@pytest.mark.slow
def test_timm_resnet34_teacher_distilled_into_a_resnet18_student(tmp_path):
    """A timm ResNet-34 (3,4,6,3 blocks) teacher on images and a timm ResNet-18 student on 1-D
    sequences (read as 1-channel images) train end to end with a logit and a feature method; the
    record names both networks, the teacher is cached under its own file."""
    ov = tiny({"train": {"teacher_backbone": "timm", "student_backbone": "timm", "teacher_epochs": "2", "epochs": "2"},
               "teacher": {"model": "resnet34", "kwargs": NARROW}, "student": {"model": "resnet18", "kwargs": NARROW},
               "synthetic": {"n_train": "240"}})
    recs = {m: run(_spec(m, ov, tmp_path)) for m in ("logit", "pkd")}
    import timm

    ref34 = timm.create_model("resnet34", num_classes=0, channels=(8, 16, 32, 64), stem_width=8)
    ref18 = timm.create_model("resnet18", num_classes=0, in_chans=1, channels=(8, 16, 32, 64), stem_width=8)
    for rec in recs.values():
        assert rec["status"] == "ok" and 0 < rec["best_metric"] <= 100
        bb = rec["backbones"]
        assert bb["teacher"]["name"] == "timm" and bb["teacher"]["params"]["model"] == "resnet34"
        assert not bb["teacher"]["default"] and not bb["student"]["default"]
        # the networks that trained are the library's: its parameters plus our 6-class linear head
        assert bb["teacher"]["parameters"] == sum(p.numel() for p in ref34.parameters()) + 64 * 6 + 6
        assert bb["student"]["parameters"] == sum(p.numel() for p in ref18.parameters()) + 64 * 6 + 6
        assert len(rec["history"]) == 2 and rec["teacher"]["epochs"] == 2
    assert set(recs["pkd"]["history"][0]["terms"]) == {"ce", "pkd"}
    assert recs["logit"]["teacher"]["checkpoint"] == recs["pkd"]["teacher"]["checkpoint"]  # trained once, shared
    r = resolve(_spec("logit", ov, tmp_path))
    assert Path(recs["logit"]["teacher"]["checkpoint"]).name != DEFAULT_TEACHERS["visual"]
    assert Path(recs["logit"]["teacher"]["checkpoint"]) == teacher_path(r, "visual")


def test_torchvision_backbone_loads_local_weights_and_rejects_foreign_ones(tmp_path):
    """torchvision ResNet-18 from a local state dict: the trunk's weights are the file's, the
    3-channel stem summed for a 1-channel input; a ResNet-34 file is refused naming the first key."""
    import torchvision

    src = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    spec = InputSpec("visual", "image", (1, 16, 16))
    choice = BackboneChoice("student", "torchvision", backbone_params("torchvision", {"weights": str(path)}, "student"),
                            False)
    net = build_backbone(choice, spec, 5)
    assert torch.equal(net.trunk[0].weight, src.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(net.trunk[4][0].conv1.weight, src.layer1[0].conv1.weight)
    out = net(torch.randn(3, 1, 16, 16))
    assert out.logits.shape == (3, 5) and out.feature.shape == (3, 512) and len(out.feature_maps) == 4
    assert [m.shape[1] for m in out.feature_maps] == [64, 128, 256, 512]
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    bad = BackboneChoice("student", "torchvision",
                         backbone_params("torchvision", {"weights": str(tmp_path / "r34.pth")}, "student"), False)
    with pytest.raises(BenchError, match=r"r34.pth does not fit torchvision model ResNet: missing key 'layer1.0.conv1.weight'|"
                                         r"r34.pth does not fit torchvision model ResNet: unexpected key 'layer1.2"):
        build_backbone(bad, spec, 5)
    missing = BackboneChoice("student", "timm", backbone_params("timm", {"weights": str(tmp_path / "none.pth")}, "s"),
                             False)
    with pytest.raises(BenchError, match=r"timm.weights=.*none.pth: no such file. Put the weights there"):
        build_backbone(missing, spec, 5)


def test_hf_encoders_from_local_directories_honour_the_output_contract(tmp_path):
    """ViT on images, AST on spectrograms, wav2vec2 on waveforms and a BERT-like encoder on feature
    sequences (through inputs_embeds), all from config-only local directories: logits, pooled
    vector and stage maps from the hidden states; a model that cannot read a modality says why."""
    from transformers import ASTConfig, ViTConfig, Wav2Vec2Config

    small = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    dirs = {"vit": ViTConfig(**small, image_size=16, patch_size=4, num_channels=3),
            "ast": ASTConfig(**small, num_mel_bins=16, max_length=24, patch_size=4, frequency_stride=4, time_stride=4),
            "w2v": Wav2Vec2Config(**small, conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3),
                                  num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)}
    for name, cfg in dirs.items():
        cfg.save_pretrained(tmp_path / name)
    _bert_dir(tmp_path / "bert")
    cases = [("vit", InputSpec("v", "image", (1, 20, 20))), ("ast", InputSpec("a", "spectrogram", (1, 16, 30))),
             ("w2v", InputSpec("a", "sequence", (1, 400))), ("bert", InputSpec("a", "sequence", (8, 16)))]
    for name, spec in cases:
        params = backbone_params("hf", {"dir": str(tmp_path / name), "stages": "2"}, "teacher")
        net = build_backbone(BackboneChoice("teacher", "hf", params, False), spec, 4)
        out = net(torch.randn(3, *spec.shape))
        assert out.logits.shape == (3, 4) and out.feature.shape == (3, 32), name
        assert len(out.feature_maps) == 2 and all(m.shape[:2] == (3, 32) for m in out.feature_maps), name
        assert out.pre_feature is out.feature and net.stage_channels == [32, 32]
        out.logits.sum().backward()  # trainable end to end
    vit = backbone_params("hf", {"dir": str(tmp_path / "vit")}, "teacher")
    with pytest.raises(BenchError, match=r"hf model ViTModel \(main input 'pixel_values'\) cannot take modality 'a' "
                                         r"\(sequence of shape \(8, 16\)\): it reads images or frame stacks"):
        build_backbone(BackboneChoice("teacher", "hf", vit, False), InputSpec("a", "sequence", (8, 16)), 4)
    nodir = backbone_params("hf", {"dir": str(tmp_path / "absent")}, "teacher")
    with pytest.raises(BenchError, match=r"hf.dir=.*absent: no config.json there; put a Hugging Face model directory"):
        build_backbone(BackboneChoice("teacher", "hf", nodir, False), InputSpec("a", "sequence", (8, 16)), 4)


def test_tiny_transformers_encoder_teaches_on_a_sequence_modality(tmp_path, monkeypatch):
    """A randomly initialised BERT-like encoder built from a local config is the teacher on
    synthetic's audio sequences (8 features x 16 steps) for a default student, offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = _bert_dir(tmp_path / "tiny-bert")
    ov = tiny({"train": {"teacher_backbone": "hf", "teacher_epochs": "2", "epochs": "2"},
               "teacher": {"dir": str(d), "stages": "2"}})
    rec = run(_spec("feat", ov, tmp_path / "res", ("audio", "visual")))
    assert rec["status"] == "ok", rec.get("error")
    t = rec["backbones"]["teacher"]
    assert t["name"] == "hf" and t["params"]["dir"] == str(d) and not t["default"]
    assert rec["backbones"]["student"]["default"] and rec["backbones"]["student"]["name"] == "resnet"
    assert rec["teacher"]["epochs"] == 2 and 0 <= rec["teacher"]["test_metric"] <= 100
    assert set(rec["history"][-1]["terms"]) == {"ce", "feat"}


# -- the user's own teacher ------------------------------------------------------------------

def test_teacher_checkpoint_reused_frozen_finetuned_and_mismatched(tmp_path):
    """A teacher trained by one run, given to another with --teacher-checkpoint: the same teacher
    metrics and, with the same student seed, the same student; nothing trains the teacher again.
    Fine-tuning it trains from the file; files that do not fit are refused naming the first key."""
    ov = tiny({"train": {"teacher_epochs": "2", "epochs": "2"}})
    first = run(_spec("logit", ov, tmp_path / "a", ("audio", "visual")))
    ck = Path(first["teacher"]["checkpoint"])
    res = CliRunner().invoke(app, ["run", "--methods", "logit", "--datasets", "synthetic", "--directions", "a2v",
                                   "--teacher-checkpoint", str(ck), "-r", str(tmp_path / "b"), "--device", "cpu",
                                   *sum((["--set", f"{s}.{k}={v}"] for s, kv in ov.items() for k, v in kv.items()), [])])
    assert res.exit_code == 0, res.output
    (second,) = load_records(tmp_path / "b")
    import hashlib

    sha = hashlib.sha256(ck.read_bytes()).hexdigest()
    t = second["teacher"]
    assert t["source"] == "checkpoint" and t["sha256"] == sha and t["checkpoint"] == str(ck.resolve())
    assert t["test_metric"] == first["teacher"]["test_metric"] and t["val_metric"] == first["teacher"]["val_metric"]
    assert t["epochs"] == 0 and not (tmp_path / "b" / "teachers").exists()  # used as it is
    assert second["config"]["teacher_checkpoint"] == {"sha256": sha} and second["run_id"] != first["run_id"]
    assert [h["test_metric"] for h in second["history"]] == [h["test_metric"] for h in first["history"]]
    # fine-tuned for one epoch: trained from the file, cached under its own name
    ft = run(_spec("logit", tiny({"train": {"teacher_checkpoint": str(ck), "teacher_finetune_epochs": "1",
                                            "epochs": "1"}}), tmp_path / "c", ("audio", "visual")))
    assert ft["teacher"]["epochs"] == 1 and ft["teacher"]["finetuned_from_sha256"] == sha and not ft["teacher"]["cached"]
    assert Path(ft["teacher"]["checkpoint"]).parent == tmp_path / "c" / "teachers" / "synthetic" / "audio"
    # a teacher of another width: shape mismatch at the first key, with file and backbone named
    state = torch.load(ck, weights_only=False)["model"]
    wide = run(_spec("logit", tiny({"train": {"epochs": "1", "teacher_epochs": "1"}, "synthetic": {"width": "16"}}),
                     tmp_path / "w", ("audio", "visual")))
    for name, bad, why in [
        ("wide.pt", {"model": torch.load(wide["teacher"]["checkpoint"], weights_only=False)["model"]},
         "shape mismatch at 'stem.0.weight': the file has (16, 8, 3), the backbone (8, 8, 3)"),
        ("missing.pt", {k: v for k, v in state.items() if k != "stem.1.bias"}, "missing key 'stem.1.bias'"),
        ("extra.pt", {**state, "head.weight": torch.zeros(2)}, "unexpected key 'head.weight'"),
    ]:
        torch.save(bad, tmp_path / name)
        rec = CliRunner().invoke(app, ["run", "--methods", "logit", "--datasets", "synthetic", "--directions", "a2v",
                                       "--teacher-checkpoint", str(tmp_path / name), "-r", str(tmp_path / "bad"),
                                       "--device", "cpu", "--set", "synthetic.n_train=480", "--set",
                                       "synthetic.n_test=180", "--set", "synthetic.width=8"])
        assert rec.exit_code == 2 and "does not fit the teacher backbone" in rec.output  # one line, no traceback
        err = next(r for r in load_records(tmp_path / "bad") if r["config"]["teacher_checkpoint"]["sha256"]
                   == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
        assert err["status"] == "failed"
        assert err["error"] == (f"BenchError: teacher checkpoint {tmp_path / name} does not fit the teacher backbone "
                                f"resnet(widths=8,16,32, blocks=1,1,1, stem=small, dim=1, in_channels=8, frames=0, "
                                f"weights=) on audio: {why}")


# -- refusals before training ------------------------------------------------------------------

def test_a_method_that_cannot_connect_the_pair_refuses_before_training(tmp_path):
    """C2KD reads the second-to-last stage map of both networks: with a one-stage MLP student it
    refuses with the reason before any teacher epoch, and records nothing as ok."""
    ov = tiny({"train": {"student_backbone": "mlp"}, "student": {"widths": "32"}})
    with pytest.raises(BenchError) as e:
        run(_spec("c2kd", ov, tmp_path))
    assert str(e.value) == ("method 'c2kd' cannot distil teacher resnet(widths=8,16,32, blocks=1,1,1, stem=small, dim=2, "
                            "in_channels=3, frames=0, weights=) on visual (3 stage maps, channels [8, 16, 32]) into "
                            "student mlp(widths=32, in_features=0) on audio (1 stage map, channels [32]): "
                            "c2kd.proxy_stage=-2 reads stage map -2, but the student network has 1 stage map "
                            "(valid: -1..0)")
    (rec,) = load_records(tmp_path)
    assert rec["status"] == "failed" and "history" not in rec
    assert not (tmp_path / "teachers").exists()  # the teacher never trained
    ok = run(_spec("logit", tiny({"train": {"student_backbone": "mlp", "epochs": "1", "teacher_epochs": "1"},
                                  "student": {"widths": "32"}}), tmp_path))
    assert ok["status"] == "ok"  # a logit method connects any pair


# -- plug-ins, listing, speed ------------------------------------------------------------------

PLUGIN = '''
from dataclasses import dataclass
import math
import torch.nn as nn
from bench.api import BackboneFactory, MLPBackbone, hp, register_backbone


@register_backbone("{name}")
class TinyMLP(BackboneFactory):
    description = "one hidden layer over the flattened input"

    @dataclass
    class Params:
        hidden: int = hp(24, "hidden units", ge=1)

    @classmethod
    def build(cls, p, spec, num_classes):
        return MLPBackbone(math.prod(spec.shape), num_classes, (p.hidden,))
'''


def test_backbone_plugin_from_an_entry_point_and_a_file(tmp_path):
    """A backbone registered through the cmkd_bench.backbones entry point of an installed package
    is listed with its source and trains as a student; one from --plugin FILE too."""
    site = tmp_path / "site"
    (site / "mybbpkg").mkdir(parents=True)
    (site / "mybbpkg" / "__init__.py").write_text(PLUGIN.format(name="tinymlp"))
    dist = site / "mybbpkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mybbpkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cmkd_bench.backbones]\ntinymlp = mybbpkg\n")
    plug = tmp_path / "my_backbone.py"
    plug.write_text(PLUGIN.format(name="filemlp"))
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "250"}
    bench = [sys.executable, "-m", "bench.cli"]
    r = subprocess.run(bench + ["list", "backbones", "--plugin", str(plug)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "tinymlp" in ln)
    assert "entry-point:mybbpkg" in line and "hidden=24 (>= 1)" in line
    assert "plugin:" in next(ln for ln in r.stdout.splitlines() if "filemlp" in ln)
    common = ["--datasets", "synthetic", "--directions", "v2a", "--methods", "logit", "--epochs", "1",
              "--teacher-epochs", "1", "--results", str(tmp_path / "res"), "--set", "synthetic.n_train=480",
              "--set", "synthetic.n_test=180", "--set", "synthetic.width=8", "--device", "cpu"]
    r = subprocess.run(bench + ["run", "--plugin", str(plug), "--set", "train.student_backbone=tinymlp",
                                "--set", "student.hidden=12", "--set", "train.teacher_backbone=filemlp"] + common,
                       env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (rec,) = load_records(tmp_path / "res")
    assert rec["backbones"]["student"] == {"name": "tinymlp", "params": {"hidden": 12}, "default": False,
                                           "source": "entry-point:mybbpkg", "parameters": 128 * 12 + 12 + 24 + 12 * 6 + 6}
    assert rec["backbones"]["teacher"]["source"] == f"plugin:{plug.resolve()}"


def test_bench_list_backbones_shows_libraries_parameters_and_dataset_defaults():
    res = subprocess.run([sys.executable, "-m", "bench.cli", "list", "backbones"], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "400"})
    assert res.returncode == 0, res.stderr
    rows = {ln.split("│")[1].strip(): ln for ln in res.stdout.splitlines() if ln.count("│") > 3}
    assert {"timm", "torchvision", "hf", "resnet", "mlp", "mobilenetv2", "bert", "deeplabv3plus"} <= set(rows)
    import timm

    assert f"timm {timm.__version__}" in rows["timm"] and "model=resnet18" in rows["timm"]
    assert "builtin" in rows["resnet"] and "blocks=(2, 2, 2, 2) (>= 1)" in rows["resnet"]
    defaults = [ln for ln in res.stdout.splitlines() if "avdigits" in ln and "audio" in ln]
    assert defaults and "resnet(dim=1, in_channels=13, widths=32,64,128, blocks=1,1,1, stem=small)" in defaults[0]


def test_default_networks_are_built_exactly_as_before():
    """The adapters' networks, now declared as registered defaults, are the constructors they
    called before (same architecture, same initial weights under the same seed)."""
    from bench.models import DeepLabV3Plus, MLPBackbone, ResNetBackbone

    cases = [
        ("synthetic", {}, "audio", lambda: ResNetBackbone(1, 8, 6, (16, 32, 64), (1, 1, 1), "small")),
        ("synthetic", {}, "visual", lambda: ResNetBackbone(2, 3, 6, (16, 32, 64), (1, 1, 1), "small")),
        ("avdigits", {}, "audio", lambda: ResNetBackbone(1, 13, 10, (32, 64, 128), (1, 1, 1), "small")),
        ("mfeat", {}, "fac", lambda: MLPBackbone(216, 10, (128, 64))),
        ("vggsound", {"width": "8"}, "visual", lambda: ResNetBackbone(2, 3, 50, (8, 16, 32, 64), (2, 2, 2, 2),
                                                                      "imagenet", frames=3)),
        ("crema", {"width": "8"}, "audio", lambda: ResNetBackbone(2, 1, 6, (8, 16, 32, 64), (2, 2, 2, 2), "imagenet")),
        ("nyudv2", {"width": "8", "aspp_channels": "16"}, "rgb", lambda: DeepLabV3Plus(3, 40, 8, 16)),
    ]
    for name, params, modality, old in cases:
        ad = build_adapter(name, {name: params})
        torch.manual_seed(3)
        new_net = ad.build_model(modality, ad.num_classes)
        torch.manual_seed(3)
        old_net = old()
        assert repr(new_net) == repr(old_net), name
        a, b = new_net.state_dict(), old_net.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_bench_speed_times_the_chosen_teacher_for_the_estimate():
    """bench speed builds the chosen networks and, for the grid estimate, times the chosen teacher's
    own training step; a teacher given as a checkpoint costs no teacher hours."""
    from bench.train.benchmark import run_speed

    ov = {"train": {"teacher_backbone": "timm"}, "teacher": {"model": "resnet34", "kwargs": NARROW}}
    kw = dict(batch_size=8, steps=1, warmup=0, modes="on", workers=0, epochs=2, seeds=1, peak_tflops=None,
              device="cpu")
    out = run_speed("logit", "avdigits", "v2a", overrides=ov, **kw)
    rows = {r.get("role", "run"): r for r in out["results"]}
    assert rows["run"]["backbones"]["teacher"].startswith("timm(model=resnet34")
    assert rows["teacher"]["method"] == "teacher" and rows["teacher"]["backbones"]["student"].startswith("timm(")
    est = out["grid_estimate"]["on"]
    per_epoch = 2400 * 0.9 / rows["teacher"]["modes"]["on"]["samples_per_s"]
    assert est["runs"] == 1 and est["teacher_hours"] >= per_epoch * 15 / 3600 > 0
    given = run_speed("logit", "avdigits", "v2a", overrides={**ov, "train": {**ov["train"], "teacher_checkpoint": "x.pt"}},
                      **kw)
    assert given["grid_estimate"]["on"]["teacher_hours"] == 0.0 and len(given["results"]) == 1
