"""Cross-modal wiring: connectors on mismatched maps, gradient routing, and every method end to end."""

import math

import pytest
import torch
from conftest import tiny

from bench.api.method import MethodContext
from bench.api.registry import METHODS
from bench.models import ResNetBackbone
from bench.train.resolve import RunSpec
from bench.train.run import run

ALL = ["none", "logit", "dist", "dml", "nkd", "dkd", "feat", "pkd", "ofd", "afd", "c2kd", "fdcmkd"]


def test_all_twelve_methods_registered_with_categories():
    cats = {m: METHODS.get(m).category for m in ALL}
    assert cats["none"] == "Uni-Modal"
    assert {cats[m] for m in ("logit", "dist", "dml", "nkd", "dkd")} == {"Logits"}
    assert {cats[m] for m in ("feat", "pkd", "ofd", "afd")} == {"Feature"}
    assert {cats[m] for m in ("c2kd", "fdcmkd")} == {"Cross-Modal"}


def _nets():
    torch.manual_seed(0)
    # audio-like teacher: 1-D maps (B, C, L), widths 8/16/32; visual-like student: 2-D maps, widths 4/8/24
    teacher = ResNetBackbone(1, 8, 6, (8, 16, 32), (1, 1, 1), "small")
    student = ResNetBackbone(2, 3, 6, (4, 8, 24), (1, 1, 1), "small")
    xt, xs = torch.randn(6, 8, 32), torch.randn(6, 3, 12, 12)
    return teacher, student, xt, xs


@pytest.mark.parametrize("name", ALL[1:])
def test_connectors_and_gradient_routing(name):
    teacher, student, xt, xs = _nets()
    cls = METHODS.get(name)
    ctx = MethodContext(6, 10, "classification", "audio", "visual", torch.device("cpu"))
    method = cls(cls.Params(), ctx)
    teacher.eval(), student.eval()
    with torch.no_grad():
        method.setup(student, teacher, student(xs), teacher(xt))
    student.train()
    teacher.train(cls.teacher_trainable or cls.teacher_train_mode)
    t_out = teacher(xt) if cls.teacher_trainable else teacher(xt).detach()
    s_out = student(xs)
    y = torch.arange(6) % 6
    terms = method.loss(s_out, t_out, y, epoch=3)
    total = sum(terms.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    t_grads = [p.grad for p in teacher.parameters() if p.grad is not None]
    if cls.teacher_trainable:  # DML's peer and C2KD's teacher are updated
        assert t_grads and any(g.abs().sum() > 0 for g in t_grads)
    else:
        assert not t_grads
    for p in method.extra_parameters():
        assert p.grad is not None, f"{name}: connector parameter without gradient"


def test_connector_shapes_for_mismatched_maps():
    teacher, student, xt, xs = _nets()
    ctx = MethodContext(6, 10, "classification", "audio", "visual", torch.device("cpu"))
    with torch.no_grad():
        so, to = student.eval()(xs), teacher.eval()(xt)
    # teacher maps: (6,8,32,1)->(6,16,16,1)->(6,32,8,1); student: (6,4,12,12)->(6,8,6,6)->(6,24,3,3)
    feat = METHODS.get("feat")(METHODS.get("feat").Params(mode="map"), ctx)
    feat.setup(student, teacher, so, to)
    fs, ft = feat.regress(so, to)
    assert fs.shape == ft.shape == (6, 16, 6, 1)  # common grid = (min 16,6), (min 1,6); channels -> teacher's
    vec = METHODS.get("feat")(METHODS.get("feat").Params(mode="vector"), ctx)
    vec.setup(student, teacher, so, to)
    fs, ft = vec.regress(so, to)
    assert fs.shape == ft.shape == (6, 32)
    pkd = METHODS.get("pkd")(METHODS.get("pkd").Params(stages="all"), ctx)
    pkd.setup(student, teacher, so, to)
    assert [ad.out_channels for ad in pkd.modules["adapters"]] == [8, 16, 32]
    ofd = METHODS.get("ofd")(METHODS.get("ofd").Params(), ctx)
    ofd.setup(student, teacher, so, to)
    assert [c.conv.weight.shape[:2] for c in ofd.modules["connectors"]] == [(8, 4), (16, 8), (32, 24)]
    assert all(m.shape == (c,) and (m < 0).all() for m, c in zip(ofd.margins, (8, 16, 32)))
    afd = METHODS.get("afd")(METHODS.get("afd").Params(qk_dim=16), ctx)
    afd.setup(student, teacher, so, to)
    assert afd.t_sizes == [(32, 1), (16, 1), (8, 1)]
    fd = METHODS.get("fdcmkd")(METHODS.get("fdcmkd").Params(), ctx)
    fd.setup(student, teacher, so, to)
    assert fd.modules["proj"].weight.shape == (32, 24)  # student D=24 -> teacher D=32
    assert fd.modules["phi_low"].weight.shape == (6, 32)


def test_fdcmkd_ablation_switches_change_the_terms():
    teacher, student, xt, xs = _nets()
    ctx = MethodContext(6, 10, "classification", "audio", "visual", torch.device("cpu"))
    cls = METHODS.get("fdcmkd")
    y = torch.arange(6)
    cases = {
        (False, False, False, False): {"ce", "feat"},
        (True, False, False, False): {"ce", "ce_low", "ce_high", "low", "high"},
        (False, True, False, False): {"ce", "align", "feat"},
        (True, True, True, True): {"ce", "ce_low", "ce_high", "align", "low", "high"},
    }
    for (f, a, s, l), expected in cases.items():
        m = cls(cls.Params(freq=f, align=a, scale=s, log=l), ctx)
        with torch.no_grad():
            m.setup(student.eval(), teacher.eval(), student(xs), teacher(xt))
        terms = m.loss(student(xs), teacher(xt).detach(), y, 1)
        assert set(terms) == expected, (f, a, s, l)


def test_dkd_warmup_applied_in_method():
    teacher, student, xt, xs = _nets()
    ctx = MethodContext(6, 10, "classification", "audio", "visual", torch.device("cpu"))
    cls = METHODS.get("dkd")
    m = cls(cls.Params(warmup=10, warmup_mode="absolute"), ctx)
    s_out, t_out = student(xs), teacher(xt).detach()
    y = torch.arange(6)
    e1, e10 = m.loss(s_out, t_out, y, 1), m.loss(s_out, t_out, y, 10)
    assert e1["nckd"].item() == pytest.approx(e10["nckd"].item() / 10, rel=1e-6)


def test_feat_default_is_the_reference_hint_layer_map_else_vectors():
    """Issue #25: mode=auto distils mdistiller's hint layer (the second stage's map, i.e. stage -2 of
    three) where both networks have stage maps, and the pooled vectors where one has none (an MLP),
    saying which in its report (the record's extra.method)."""
    from bench.models.mlp import MLPBackbone

    teacher, student, xt, xs = _nets()
    ctx = MethodContext(6, 10, "classification", "audio", "visual", torch.device("cpu"))
    cls = METHODS.get("feat")
    with torch.no_grad():
        so, to = student.eval()(xs), teacher.eval()(xt)
    auto, ref = cls(cls.Params(), ctx), cls(cls.Params(mode="map", stage=-2), ctx)
    auto.setup(student, teacher, so, to)
    ref.setup(student, teacher, so, to)
    assert auto.report()["mode"] == "map" and auto.report()["stage"] == 1
    assert auto.regress(so, to)[0].shape == ref.regress(so, to)[0].shape == (6, 16, 6, 1)
    assert auto.teacher_cache_fields() == {"feature_maps[1]"}
    torch.manual_seed(0)
    mlp = MLPBackbone(20, 6, (16, 12))
    mo = mlp.eval()(torch.randn(6, 20))
    vec = cls(cls.Params(), ctx)
    vec.setup(mlp, teacher, mo, to)
    assert vec.report()["mode"] == "vector" and "student network has no spatial stage map" in vec.report()["why"]
    assert vec.regress(mo, to)[0].shape == (6, 32) and vec.teacher_cache_fields() == {"feature"}


@pytest.mark.parametrize("direction", [("audio", "visual"), ("visual", "audio")])
def test_every_method_runs_end_to_end_in_both_directions(tmp_path, direction):
    for name in ALL:
        rec = run(RunSpec("synthetic", *direction, name, 0, tiny({"train": {"epochs": "2"}}), str(tmp_path), "cpu"))
        assert rec["status"] == "ok" and math.isfinite(rec["best_metric"]), name
        assert rec["config"]["method"] == name and rec["method_category"] == METHODS.get(name).category
        if name in ("dml", "c2kd"):
            assert "teacher_final_test_metric" in rec["extra"]
