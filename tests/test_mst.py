"""MST-Distill (methods/mst.py): its loss terms and routing against oracles written from the
reference formulas (float64, value and gradient), its modules, stages and the runner hook."""

from __future__ import annotations

import math

import pytest
import torch

from bench.api.errors import BenchError
from bench.methods.mst import (
    MaskNet,
    MSTParams,
    Router,
    continue_from,
    load_balancing,
    mask_hidden,
    mst_kd,
    route_topk,
    teacher_taps,
    topk_expert_kd,
)
from bench.train.resolve import RunSpec, resolve
from bench.train.run import run

pytestmark = pytest.mark.usefixtures("one_thread")
D = torch.float64


def softmax_rows(z: list[float], T: float) -> list[float]:
    m = max(v / T for v in z)
    e = [math.exp(v / T - m) for v in z]
    return [x / sum(e) for x in e]


def o_kd(zs, zt, T):
    """tau^2 * mean_b sum_c p_t (log p_t - log p_s) and its analytic gradient T (p_s - p_t) / B."""
    B = len(zs)
    val, grad = 0.0, []
    for a, b in zip(zs, zt):
        ps, pt = softmax_rows(a, T), softmax_rows(b, T)
        val += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
        grad.append([T * (p - q) / B for p, q in zip(ps, pt)])
    return val / B * T * T, grad


def fixed(shape, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=D) * scale)


def close(a, b):
    a, b = torch.as_tensor(a, dtype=D), torch.as_tensor(b, dtype=D)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-12), (a, b)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_term_value_and_gradient(T):
    zs, zt = fixed((5, 7), 0).requires_grad_(), fixed((5, 7), 1).requires_grad_()
    val = mst_kd(zs, zt, T)
    val.backward()
    want, grad = o_kd(zs.tolist(), zt.tolist(), T)
    close(val.item(), want)
    close(zs.grad, grad)


def test_load_balancing_kl_and_cv_value_and_gradient():
    logits = fixed((6, 4), 2, 1.0)
    gate = torch.softmax(logits, 1).detach().requires_grad_()
    val = load_balancing(gate, "kl")
    val.backward()
    B, E = gate.shape
    mean = [sum(gate[b, e].item() for b in range(B)) / B for e in range(E)]
    want = sum((1 / E) * (math.log(1 / E) - math.log(p)) for p in mean) / E  # KLDivLoss(batchmean) on 1-D: / E
    close(val.item(), want)
    close(gate.grad, [[-(1 / E) / E / mean[e] / B for e in range(E)] for _ in range(B)])
    g2 = gate.detach().clone().requires_grad_()
    cv = load_balancing(g2, "cv")
    cv.backward()
    imp = [sum(g2[b, e].item() for b in range(B)) for e in range(E)]
    mu = sum(imp) / E
    sd = math.sqrt(sum((v - mu) ** 2 for v in imp) / (E - 1))
    close(cv.item(), sd / mu)
    # d(sd/mu)/d imp_e = ((imp_e - mu) / ((E-1) sd) - sd / E / mu) / mu, the same for every sample
    d = [((v - mu) / ((E - 1) * sd) - sd / E / mu) / mu for v in imp]
    close(g2.grad, [d for _ in range(B)])


@pytest.mark.parametrize("k", [1, 2])
def test_routing_and_topk_expert_kd_value_and_gradient(k):
    B, C, E, T = 5, 6, 4, 4.0
    experts = [fixed((B, C), 10 + e).requires_grad_() for e in range(E)]
    zs = fixed((B, C), 3).requires_grad_()
    gate = torch.softmax(fixed((B, E), 4, 1.0), 1).requires_grad_()
    val, idx = topk_expert_kd(experts, zs, gate, k, T)
    val.backward()
    rows = gate.tolist()
    want_idx = [sorted(range(E), key=lambda e: -r[e])[:k] for r in rows]
    assert idx.tolist() == want_idx and route_topk(gate, k).tolist() == want_idx
    total, grad = 0.0, [[0.0] * C for _ in range(B)]
    for i in range(k):
        chosen = [experts[want_idx[b][i]][b].tolist() for b in range(B)]
        v, g = o_kd(zs.tolist(), chosen, T)
        total += v / k
        grad = [[a + x / k for a, x in zip(ra, rx)] for ra, rx in zip(grad, g)]
    close(val.item(), total)
    close(zs.grad, grad)
    assert all(e.grad is None for e in experts) and gate.grad is None  # detached targets, unweighted selection


def test_router_is_two_linear_layers_without_a_nonlinearity_and_mask_widths_follow_the_reference():
    r = Router(5, 4).double()
    z = fixed((3, 5), 5)
    W = r.fc2.weight @ r.fc1.weight
    b = r.fc2.weight @ r.fc1.bias + r.fc2.bias
    close(r(z), z @ W.T + b)
    assert (r.fc1.out_features, r.fc2.out_features) == (10, 4)
    assert mask_hidden(596, 2, 3) == 297 and mask_hidden(298, 2, 3) == 147 and mask_hidden(4, 2, 3) == 3
    for shape, spatial in (((4, 12), 0), ((4, 12, 9), 1), ((4, 12, 5, 6), 2)):
        mn = MaskNet(12, 3, 2, spatial).double().eval()
        m = mn(fixed(shape, 6))
        assert m.shape == (4, 12) and bool(((m > 0) & (m < 1)).all())


def test_masked_experts_run_the_rest_of_each_teachers_forward():
    from bench.models.fusion import FusionNet
    from bench.models.mlp import MLPBackbone

    torch.manual_seed(0)
    a, v = MLPBackbone(6, 3, (8, 5)).double().eval(), MLPBackbone(4, 3, (7,)).double().eval()
    fusion = FusionNet({"audio": a, "visual": v}, 3).double().eval()
    x = {"audio": fixed((2, 6), 7), "visual": fixed((2, 4), 8)}
    taps = teacher_taps(fusion, x)
    assert [n for n, _ in taps] == ["fused", "hidden"] and taps[0][1].shape == (2, 12) and taps[1][1].shape == (2, 6)
    for name, h in taps:
        close(continue_from(fusion, name, h, torch.ones_like(h)), fusion(x).logits)
    half = continue_from(fusion, "hidden", taps[1][1], torch.full_like(taps[1][1], 0.5))
    close(half, fusion.classifier(0.5 * fusion(x).feature))
    uni = teacher_taps(a, x["audio"])
    assert [n for n, _ in uni] == ["last_map", "feature"]
    for name, h in uni:
        close(continue_from(a, name, h, torch.ones(h.shape[:2], dtype=D)), a(x["audio"]).logits)


def test_stage_lengths_are_relative_to_the_schedule_by_default():
    p = MSTParams()
    assert p.stages(100) == (1, 2) and p.stages(10) == (1, 2) and p.stages(250) == (3, 6)
    assert MSTParams(stage_mode="absolute", stage1_epochs=2, stage2_epochs=3).stages(10) == (2, 5)
    assert MSTParams(stage1_epochs=0).stages(10) == (0, 1)


TINY = {"synthetic": {"n_train": "96", "n_test": "48", "width": "4", "num_classes": "4"},
        "train": {"epochs": "3", "teacher_epochs": "1", "batch_size": "16", "eval_batch_size": "64"},
        "mst": {"stage_mode": "absolute"}}


def test_mst_refuses_a_one_teacher_direction_with_the_reason(tmp_path):
    for t in ("audio", "visual"):
        with pytest.raises(BenchError, match="needs a teacher-set direction"):
            resolve(RunSpec("synthetic", t, "visual", "mst", 0, TINY, str(tmp_path), "cpu"))
    with pytest.raises(BenchError, match="teacher_control=shuffled"):
        resolve(RunSpec("synthetic", "av", "visual", "mst", 0, {**TINY, "train": {"teacher_control": "shuffled"}},
                        str(tmp_path), "cpu"))
    from bench.launch.grid import expand_grid

    assert not [s for s in expand_grid("all", "synthetic", "all", "0") if s.method == "mst"]
    assert {s.teacher_modality for s in expand_grid("all", "synthetic", "sets", "0") if s.method == "mst"} == {
        "audio+visual"}
    # named next to other methods on a grid with a teacher set: it runs there, the rest run everywhere
    grid = expand_grid("none,mst", "synthetic", "a2v,av2v,v2v", "0")
    assert sorted((s.method, s.teacher_modality) for s in grid) == [
        ("mst", "audio+visual"), ("none", "audio"), ("none", "audio+visual"), ("none", "visual")]
    with pytest.raises(BenchError, match="needs a teacher-set direction"):  # named where it can run nowhere
        expand_grid("none,mst", "synthetic", "a2v", "0")


def test_mst_runs_its_three_stages_with_the_fusion_and_the_cross_modal_teacher(tmp_path):
    rec = run(RunSpec("synthetic", "audio+visual", "visual", "mst", 0, TINY, str(tmp_path), "cpu"))
    assert rec["status"] == "ok" and [sorted(h["terms"]) for h in rec["history"]] == [
        ["ce", "kd_unmasked"], ["ce", "kd_unmasked"], ["ce", "kd_topk", "lb"]]
    mix = rec["teacher"]["mixture"]
    assert list(mix) == ["audio"] and mix["audio"]["modality"] == "audio"
    assert rec["teacher"]["modality"] == "audio+visual"
    rep = rec["extra"]["method"]
    assert rep["experts"] == ["multimodal:fused", "multimodal:hidden", "audio:last_map", "audio:feature"]
    assert (rep["stage1_last_epoch"], rep["stage2_last_epoch"]) == (1, 2) and sum(rep["routing_share"]) == pytest.approx(1)
    # the cross-modal teacher is the cached unimodal a2v teacher: an a2v run reuses it
    cross = run(RunSpec("synthetic", "audio", "visual", "logit", 0, TINY, str(tmp_path), "cpu"))
    assert cross["teacher"]["cached"] is True and cross["teacher"]["checkpoint"] == mix["audio"]["checkpoint"]


def test_stage_two_trains_only_the_masks():
    from bench.api.method import MethodContext
    from bench.methods.mst import MSTDistill
    from bench.models.fusion import FusionNet
    from bench.models.mlp import MLPBackbone

    torch.manual_seed(1)
    a, v = MLPBackbone(6, 3, (8, 5)), MLPBackbone(4, 3, (7,))
    fusion = FusionNet({"audio": a, "visual": MLPBackbone(4, 3, (7,))}, 3).eval()
    ctx = MethodContext(3, 10, "classification", "audio+visual", "visual", torch.device("cpu"))
    m = MSTDistill(MSTParams(stage_mode="absolute"), ctx)
    x = {"audio": torch.randn(8, 6), "visual": torch.randn(8, 4)}
    m.attach_teachers({"audio": a.eval()}, {"audio": a(x["audio"])})
    m.setup(v, fusion, v(x["visual"]), fusion(x))
    m.inputs = {**x, "audio+visual": x}
    before = {k: p.detach().clone() for k, p in [*fusion.named_parameters(), *a.named_parameters()]}
    masks = {k: p.detach().clone() for k, p in m.modules["masks"].named_parameters()}
    y = torch.randint(0, 3, (8,))
    s = v(x["visual"])
    terms = m.loss(s, fusion(x), y, epoch=2)  # stage 2
    assert sorted(terms) == ["ce", "kd_unmasked"]
    after = dict([*fusion.named_parameters(), *a.named_parameters()])
    assert all(torch.equal(before[k], after[k]) for k in before)
    moved = [k for k, p in m.modules["masks"].named_parameters() if not torch.equal(masks[k], p)]
    assert moved and all(k.split(".")[0] in m.experts for k in moved)
    assert {id(p) for p in m.extra_parameters()} == {id(p) for p in m.modules["router"].parameters()}
