"""Oracle tests for every KD loss: hand cases and independent float64 computations (1e-10)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.methods.afd import AFDAttention, afd_loss, spatial_value
from bench.methods.c2kd import c2kd_loss, kendall_tau_b, nontarget_kl
from bench.methods.dist import dist_loss
from bench.methods.dkd import dkd_loss, dkd_terms, dkd_warmup
from bench.methods.dml import dml_loss
from bench.methods.feat import feat_loss
from bench.methods.logit import logit_loss
from bench.methods.nkd import nkd_loss
from bench.methods.ofd import ofd_loss, ofd_margin, ofd_stage_loss
from bench.methods.pkd import pkd_loss

D = torch.float64


def rnd(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D) * scale


def softmax_np(z, t=1.0):
    e = np.exp(z / t - (z / t).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------- KD
def test_kd_hand_case_and_identity():
    zt = torch.tensor([[math.log(3), 0.0]], dtype=D)
    zs = torch.zeros(1, 2, dtype=D)
    assert logit_loss(zs, zt, tau=1.0).item() == pytest.approx(0.130812, abs=1e-6)
    z = rnd(8, 10)
    assert logit_loss(z, z.clone(), tau=4.0).item() == pytest.approx(0.0, abs=1e-14)


def test_kd_random_value_and_closed_form_gradient():
    zs, zt = rnd(16, 100, seed=1, scale=2).requires_grad_(True), rnd(16, 100, seed=2, scale=3)
    tau = 4.0
    ps, pt = softmax_np(zs.detach().numpy(), tau), softmax_np(zt.numpy(), tau)
    ref = tau**2 * (pt * (np.log(pt) - np.log(ps))).sum(1).mean()
    val = logit_loss(zs, zt, tau=tau)
    assert val.item() == pytest.approx(ref, rel=1e-12)
    val.backward()
    np.testing.assert_allclose(zs.grad.numpy(), tau / 16 * (ps - pt), atol=1e-14)


# ---------------------------------------------------------------- DIST
def test_dist_hand_case():
    zs = torch.tensor([[1, 0, 0], [0, 1, 0]], dtype=D)
    zt = torch.tensor([[2, 0, 0], [0, 0, 2]], dtype=D)
    # probabilities are not one-hot: check the correlation values directly on the softmax
    ys, yt = F.softmax(zs, 1), F.softmax(zt, 1)

    def rho(u, v):
        u, v = u - u.mean(), v - v.mean()
        return float((u * v).sum() / (u.norm() * v.norm() + 1e-8))

    inter = 1 - (rho(ys[0], yt[0]) + rho(ys[1], yt[1])) / 2
    intra = 1 - sum(rho(ys[:, c], yt[:, c]) for c in range(3)) / 3
    assert inter == pytest.approx(0.75, abs=1e-7) and intra == pytest.approx(2 / 3, abs=1e-7)
    assert dist_loss(zs, zt, tau=1.0).item() == pytest.approx(1.416667, abs=1e-6)


def test_dist_random_value_tau_squared_and_invariances():
    zs, zt = rnd(16, 10, seed=3), rnd(16, 10, seed=4)
    ys, yt = softmax_np(zs.numpy(), 4.0), softmax_np(zt.numpy(), 4.0)

    def rho(u, v, ax):
        u = u - u.mean(ax, keepdims=True)
        v = v - v.mean(ax, keepdims=True)
        return (u * v).sum(ax) / (np.linalg.norm(u, axis=ax) * np.linalg.norm(v, axis=ax) + 1e-8)

    ref = 16 * (1 - rho(ys, yt, 1).mean()) + 16 * (1 - rho(ys, yt, 0).mean())
    assert dist_loss(zs, zt, tau=4.0).item() == pytest.approx(ref, rel=1e-10)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    assert dist_loss(zs[perm], zt[perm], tau=4.0).item() == pytest.approx(ref, rel=1e-10)
    cperm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    assert dist_loss(zs[:, cperm], zt[:, cperm], tau=4.0).item() == pytest.approx(ref, rel=1e-10)
    # ~0 up to the eps added to the norm product (relative 1e-8 / ||u||^2 ~ 1e-6 for probabilities)
    assert dist_loss(zs, zs.clone(), tau=1.0).item() == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------- DML
def test_dml_value_gradients_and_swap():
    z1 = rnd(16, 100, seed=5).requires_grad_(True)
    z2 = rnd(16, 100, seed=6).requires_grad_(True)
    p1, p2 = softmax_np(z1.detach().numpy()), softmax_np(z2.detach().numpy())
    l1 = dml_loss(z1, [z2], lambda_=1.0)
    assert l1.item() == pytest.approx((p2 * (np.log(p2) - np.log(p1))).sum(1).mean(), rel=1e-12)
    l1.backward()
    np.testing.assert_allclose(z1.grad.numpy(), (p1 - p2) / 16, atol=1e-14)
    assert z2.grad is None  # stop-gradient into the peer
    l2 = dml_loss(z2, [z1], lambda_=1.0)
    assert l2.item() == pytest.approx((p1 * (np.log(p1) - np.log(p2))).sum(1).mean(), rel=1e-12)
    z3 = rnd(16, 100, seed=7)
    both = dml_loss(z1, [z2, z3], lambda_=2.0)
    assert both.item() == pytest.approx((dml_loss(z1, [z2]) + dml_loss(z1, [z3])).item(), rel=1e-12)  # 2/(K-1)=1


# ---------------------------------------------------------------- NKD
def test_nkd_hand_case_and_not_zero_at_equality():
    zt = torch.tensor([[math.log(2), 0.0, 0.0]], dtype=D)
    zs = torch.zeros(1, 3, dtype=D)
    y = torch.tensor([0])
    assert nkd_loss(zs, zt, y, temp=1.0, gamma=1.0).item() == pytest.approx(1.242453, abs=1e-6)
    z = rnd(8, 10, seed=8)
    yy = torch.arange(8) % 10
    assert nkd_loss(z, z.clone(), yy).item() > 0.5  # a cross-entropy, not a KL


def test_nkd_equals_mask_and_renormalise_and_soft_labels():
    zs, zt = rnd(16, 10, seed=9), rnd(16, 10, seed=10)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(0))
    temp, gamma = 3.0, 3.5
    ps, pt = F.softmax(zs, 1), F.softmax(zt, 1)
    lt = -(pt.gather(1, y[:, None]) * ps.gather(1, y[:, None]).log()).mean()
    mask = F.one_hot(y, 10).bool()
    qs = F.softmax(zs / temp, 1).masked_fill(mask, 0)
    qt = F.softmax(zt / temp, 1).masked_fill(mask, 0)
    qs, qt = qs / qs.sum(1, keepdim=True), qt / qt.sum(1, keepdim=True)
    lnt = -gamma * temp**2 * (qt * torch.where(mask, torch.zeros_like(qs), qs.clamp_min(1e-300).log())).sum(1).mean()
    assert nkd_loss(zs, zt, y, temp=temp, gamma=gamma).item() == pytest.approx((lt + lnt).item(), rel=1e-10)
    soft = F.one_hot(y, 10).to(D) * 0.7 + 0.03
    assert nkd_loss(zs, zt, soft, temp=temp, gamma=gamma).item() == pytest.approx((lt + lnt).item(), rel=1e-12)


def test_nkd_two_classes_nontarget_is_zero():
    zs, zt = rnd(6, 2, seed=11), rnd(6, 2, seed=12)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    lt = -(F.softmax(zt, 1).gather(1, y[:, None]) * F.log_softmax(zs, 1).gather(1, y[:, None])).mean()
    assert nkd_loss(zs, zt, y).item() == pytest.approx(lt.item(), rel=1e-12)


# ---------------------------------------------------------------- DKD
def test_dkd_hand_case():
    zt = torch.tensor([[math.log(2), 0.0, 0.0]], dtype=D)
    zs = torch.zeros(1, 3, dtype=D)
    y = torch.tensor([0])
    tckd, nckd = dkd_terms(zs, zt, y, tau=1.0)
    assert tckd.item() == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), abs=1e-12)
    assert tckd.item() == pytest.approx(0.0588915, abs=1e-7)
    assert nckd.item() == pytest.approx(0.0, abs=1e-15)
    assert logit_loss(zs, zt, tau=1.0).item() == pytest.approx(0.0588915, abs=1e-7)


def test_dkd_decomposition_identity_and_reference_mask_trick():
    zs, zt = rnd(16, 100, seed=13, scale=2), rnd(16, 100, seed=14, scale=3)
    y = torch.randint(0, 100, (16,), generator=torch.Generator().manual_seed(1))
    tau = 4.0
    # per sample: tau^2 KL = TCKD_b + (1 - p^t_y) NCKD_b
    for b in range(16):
        sb, tb, yb = zs[b:b + 1], zt[b:b + 1], y[b:b + 1]
        tckd, nckd = dkd_terms(sb, tb, yb, tau=tau)
        pty = F.softmax(tb / tau, 1)[0, yb[0]]
        assert logit_loss(sb, tb, tau=tau).item() == pytest.approx((tckd + (1 - pty) * nckd).item(), rel=1e-12)
    # mdistiller's formulation: gt/other masks and the "-1000" trick
    ps, pt = F.softmax(zs / tau, 1), F.softmax(zt / tau, 1)
    gt = F.one_hot(y, 100).bool()
    bs = torch.stack([ps[gt], ps.masked_fill(gt, 0).sum(1)], 1)
    bt = torch.stack([pt[gt], pt.masked_fill(gt, 0).sum(1)], 1)
    tckd_ref = (bt * (bt.log() - bs.log())).sum(1).mean() * tau**2
    lt = F.log_softmax(zt / tau - 1000.0 * gt, 1)
    ls = F.log_softmax(zs / tau - 1000.0 * gt, 1)
    nckd_ref = (lt.exp() * (lt - ls)).sum(1).mean() * tau**2
    tckd, nckd = dkd_terms(zs, zt, y, tau=tau)
    assert tckd.item() == pytest.approx(tckd_ref.item(), rel=1e-10)
    assert nckd.item() == pytest.approx(nckd_ref.item(), rel=1e-10)
    assert dkd_loss(zs, zt, y, alpha=1.0, beta=8.0, tau=tau).item() == pytest.approx((tckd_ref + 8 * nckd_ref).item(), rel=1e-10)


def test_dkd_warmup_two_classes_and_confident_student():
    assert [dkd_warmup(e, 20) for e in (1, 10, 20, 240)] == [0.05, 0.5, 1.0, 1.0]
    zs, zt = rnd(8, 2, seed=15), rnd(8, 2, seed=16)
    y = torch.tensor([0, 1] * 4)
    assert dkd_terms(zs, zt, y, tau=4.0)[1].item() == 0.0
    conf = torch.tensor([[200.0, 0.0, 0.0]], dtype=torch.float32)
    out = dkd_loss(conf, torch.zeros(1, 3), torch.tensor([1]), tau=1.0)
    assert torch.isfinite(out)  # log-sum-exp TCKD stays finite where the reference gives inf


def test_dkd_warmup_scales_with_the_schedule_by_default():
    """Issue #25: W = ceil(20/240 x epochs) by default, so the KD weight reaches 1 within a 10-epoch
    schedule (it used to end at 0.5); warmup_mode=absolute is mdistiller's 20-epoch ramp exactly."""
    from bench.api.method import MethodContext
    from bench.methods.dkd import DKD, DKDParams

    rel, ab = DKDParams(), DKDParams(warmup_mode="absolute")
    assert {e: rel.warmup_epochs(e) for e in (10, 12, 15, 30, 240)} == {10: 1, 12: 1, 15: 2, 30: 3, 240: 20}
    assert [dkd_warmup(e, rel.warmup_epochs(10)) for e in range(1, 11)] == [1.0] * 10
    assert [dkd_warmup(e, rel.warmup_epochs(15)) for e in (1, 2, 15)] == [0.5, 1.0, 1.0]
    assert [dkd_warmup(e, ab.warmup_epochs(10)) for e in range(1, 11)] == [e / 20 for e in range(1, 11)]
    assert [dkd_warmup(e, ab.warmup_epochs(240)) for e in (1, 10, 20, 240)] == [0.05, 0.5, 1.0, 1.0]
    zs, zt, y = rnd(8, 5, seed=30), rnd(8, 5, seed=31), torch.arange(8) % 5
    ctx = MethodContext(5, 10, "classification", "audio", "visual", torch.device("cpu"))
    m, ref = DKD(rel, ctx), DKD(ab, ctx)
    full = dkd_loss(zs, zt, y)  # no warm-up factor
    for e in (1, 5, 10):
        assert (m.loss(_out(zs), _out(zt), y, e)["nckd"] + m.loss(_out(zs), _out(zt), y, e)["tckd"]).item() == \
            pytest.approx(full.item(), rel=1e-12)
        ramped = ref.loss(_out(zs), _out(zt), y, e)
        assert (ramped["nckd"] + ramped["tckd"]).item() == pytest.approx(full.item() * e / 20, rel=1e-12)
    assert m.report() == {"warmup_mode": "relative", "warmup_epochs": 1, "warmup_factor": [1.0] * 10}
    assert ref.report()["warmup_epochs"] == 20 and ref.report()["warmup_factor"][-1] == 0.5
    with pytest.raises(ValueError, match="warmup_mode"):
        DKDParams(warmup_mode="ratio").validate()


def _out(z):
    from bench.models import ModelOutput

    return ModelOutput(z, z, z, [], [])


# ---------------------------------------------------------------- Feat
def test_feat_identity_regressor_is_plain_mse():
    from bench.methods._connectors import ConvBNReg

    reg = ConvBNReg(4, 4, relu=False).double().eval()
    reg.bn.running_var.fill_(1.0 - reg.bn.eps)  # BN in eval: (x - 0) / sqrt(var + eps) = x, an identity
    with torch.no_grad():
        reg.conv.weight.copy_(torch.eye(4, dtype=D)[:, :, None, None])
        reg.conv.bias.zero_()
    fs, ft = rnd(2, 4, 5, 5, seed=17), rnd(2, 4, 5, 5, seed=18)
    assert feat_loss(reg(fs), ft).item() == pytest.approx(((fs - ft) ** 2).mean().item(), rel=1e-10)
    with pytest.raises(ValueError):
        feat_loss(fs, ft[:, :2])


# ---------------------------------------------------------------- PKD
def test_pkd_affine_invariance_negation_and_pearson_form():
    ft = rnd(4, 8, 5, 5, seed=19)
    a = torch.rand(1, 8, 1, 1, dtype=D, generator=torch.Generator().manual_seed(2)) + 0.5
    assert pkd_loss(a * ft + 3.0, ft).item() == pytest.approx(0.0, abs=1e-12)
    ft2 = rnd(1, 1, 10, 10, seed=20)
    assert pkd_loss(-ft2, ft2).item() == pytest.approx(1.98, rel=1e-5)  # 2(M-1)/M, M=100
    fs = rnd(4, 8, 7, 7, seed=21)
    ft = rnd(4, 8, 14, 14, seed=22)
    up = F.interpolate(fs, size=(14, 14), mode="bilinear", align_corners=False)
    m = 4 * 14 * 14
    r = torch.stack([torch.corrcoef(torch.stack([up[:, c].flatten(), ft[:, c].flatten()]))[0, 1] for c in range(8)])
    assert pkd_loss(fs, ft).item() == pytest.approx(((m - 1) / m * (1 - r)).mean().item(), rel=1e-5)


# ---------------------------------------------------------------- OFD
def test_ofd_margins_closed_form():
    g = torch.tensor([1.0, 2.0, 1.0, 1.0, 0.5], dtype=D)
    b = torch.tensor([0.0, 0.0, 1.0, -2.0, 2.0], dtype=D)
    expected = [-0.797885, -1.595769, -0.525135, -2.055248, -1.5]
    np.testing.assert_allclose(ofd_margin(g, b).numpy(), expected, atol=1e-6)
    x = torch.randn(2_000_000, generator=torch.Generator().manual_seed(3), dtype=D) + 1.0
    assert ofd_margin(torch.tensor([1.0], dtype=D), torch.tensor([1.0], dtype=D)).item() == pytest.approx(x[x < 0].mean().item(), abs=1e-3)


def test_ofd_mask_cases_and_stage_weights():
    m = torch.tensor([-1.0], dtype=D)
    t = torch.full((1, 1, 2, 2), -0.5, dtype=D)
    assert ofd_stage_loss(torch.full_like(t, -0.8), t, m).item() == 0.0  # s <= t <= 0
    tpos = torch.full((1, 1, 2, 2), 0.5, dtype=D)
    assert ofd_stage_loss(torch.zeros_like(tpos), tpos, m).item() == pytest.approx(4 * 0.25)  # full L2
    tlow = torch.full((1, 1, 2, 2), -3.0, dtype=D)
    assert ofd_stage_loss(torch.zeros_like(tlow), tlow, m).item() == pytest.approx(4 * 1.0)  # (s - margin)^2
    # the original "max with margin + partial L2" form vs mdistiller's three-case mask form
    s_, t_ = rnd(3, 4, 5, 5, seed=23), rnd(3, 4, 5, 5, seed=24)
    marg = torch.tensor([-0.3, -0.8, -1.2, -0.1], dtype=D)
    mm = marg.view(1, 4, 1, 1)
    three = ((s_ - t_) ** 2 * ((s_ > t_) & (t_ > mm)) + (s_ - t_) ** 2 * (t_ > 0)
             + (s_ - mm) ** 2 * ((s_ > mm) & (t_ <= mm))).sum() / 3
    # (t > 0) and (s > t > margin) overlap: count those once, as the original's union mask does
    overlap = ((s_ - t_) ** 2 * ((s_ > t_) & (t_ > 0))).sum() / 3
    assert ofd_stage_loss(s_, t_, marg).item() == pytest.approx((three - overlap).item(), rel=1e-12)
    one = torch.zeros(1, 1, 1, 1, dtype=D)
    unit = torch.ones(1, 1, 1, 1, dtype=D)
    z = torch.tensor([-10.0], dtype=D)
    assert ofd_loss([unit] * 3, [one] * 3, [z] * 3).item() == pytest.approx(1.75)


# ---------------------------------------------------------------- AFD
def test_afd_single_layer_closed_form_and_zero():
    fs, ft = rnd(4, 3, 6, 6, seed=25), rnd(4, 5, 6, 6, seed=26)
    vs, vt = spatial_value(fs), spatial_value(ft)
    alpha = torch.ones(4, 1, 1, dtype=D)
    cos = (vs * vt).sum(1)
    assert afd_loss(alpha, [vs[:, None]], [vt]).item() == pytest.approx(((2 - 2 * cos) / 36).mean().item(), rel=1e-12)
    assert afd_loss(alpha, [vt[:, None]], [vt]).item() == pytest.approx(0.0, abs=1e-15)
    att = AFDAttention([3], [5], 16).double()
    a = att([fs], [ft])
    assert torch.allclose(a, torch.ones(4, 1, 1, dtype=D))  # S = T = 1: attention is trivially 1


def test_afd_attention_shapes_softmax_and_permutation():
    s_maps = [rnd(4, 4, 16, 16, seed=27), rnd(4, 8, 8, 8, seed=28), rnd(4, 8, 8, 8, seed=29)]
    t_maps = [rnd(4, 6, 8, 8, seed=30), rnd(4, 12, 4, 4, seed=31)]
    torch.manual_seed(0)
    att = AFDAttention([4, 8, 8], [6, 12], 16).double().train()
    a = att(s_maps, t_maps)
    assert a.shape == (4, 2, 3) and torch.allclose(a.sum(-1), torch.ones(4, 2, dtype=D))
    # permuting the student layers together with P_s and the key MLPs permutes alpha's last axis
    perm = [2, 0, 1]
    att2 = AFDAttention([8, 4, 8], [6, 12], 16).double().train()
    att2.query.load_state_dict(att.query.state_dict())
    att2.bilinear.load_state_dict(att.bilinear.state_dict())
    with torch.no_grad():
        att2.p_t.copy_(att.p_t)
        for new, old in enumerate(perm):
            att2.key[new].load_state_dict(att.key[old].state_dict())
        att2.p_s.copy_(att.p_s[perm])
    a2 = att2([s_maps[i] for i in perm], t_maps)
    assert torch.allclose(a2, a[:, :, perm], atol=1e-12)


# ---------------------------------------------------------------- C2KD
def test_kendall_tau_b_matches_scipy_with_ties():
    from scipy.stats import kendalltau

    a = torch.tensor([[1.0, 2, 3, 4, 5, 6], [3, 1, 2, 2, 5, 0], [1, 1, 1, 2, 2, 3], [0, 0, 0, 0, 0, 0]], dtype=D)
    b = torch.tensor([[2.0, 1, 4, 3, 6, 5], [1, 1, 2, 3, 5, 0], [3, 2, 1, 1, 0, 0], [1, 2, 3, 4, 5, 6]], dtype=D)
    got = kendall_tau_b(a, b)
    for i in range(3):
        assert got[i].item() == pytest.approx(kendalltau(a[i].numpy(), b[i].numpy()).statistic, abs=1e-12)
    assert torch.isnan(got[3])


def test_c2kd_terms_selection_and_gradients():
    n, c = 8, 6
    z_s, z_t = rnd(n, c, seed=32).requires_grad_(True), rnd(n, c, seed=33).requires_grad_(True)
    u_s, u_t = rnd(n, c, seed=34).requires_grad_(True), rnd(n, c, seed=35).requires_grad_(True)
    y = torch.arange(n) % c
    terms = c2kd_loss(z_s, z_t, u_s, u_t, y, krc=0.0)
    tau = kendall_tau_b(u_t.detach(), u_s.detach())
    sel = (tau > 0).double()
    keep = 1 - F.one_hot(y, c).double()
    ps = F.softmax(u_s.detach() * keep, 1)
    log_pt = F.log_softmax(u_t.detach() * keep, 1)
    ref = ((ps * (ps.log() - log_pt)).sum(1) * sel).sum() / n  # divides by N, not by the selected count
    assert terms["t_nt"].item() == pytest.approx(ref.item(), rel=1e-12)
    assert 0 < sel.sum() < n  # the selection actually drops samples here
    pz = F.softmax(z_t.detach(), 1)
    assert terms["t_proxy_from_net"].item() == pytest.approx(
        (pz * (pz.log() - F.log_softmax(u_t.detach(), 1))).sum(1).mean().item(), rel=1e-12)
    sum(terms.values()).backward()
    for tensor in (z_s, z_t, u_s, u_t):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0  # teacher side is trained too
    none_sel = nontarget_kl(u_s, u_t, y, torch.zeros(n, dtype=torch.bool))
    assert none_sel.item() == 0.0
