"""The logit-based zoo (#26): logit standardisation on Logit KD and DKD, WSLD, CTKD, MLKD.

Every loss is checked in float64 against an oracle written from the papers' formulas with explicit
per-sample loops (plain Python floats), and every gradient against central finite differences of
that oracle (closed forms where there is one), to 1e-6 relative at most. Each new method runs one
epoch end to end on tiny ``synthetic``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.api.method import MethodContext
from bench.api.registry import METHODS
from bench.methods.ctkd import ctkd_lambda, ctkd_loss, ctkd_temperature
from bench.methods.dkd import _binary_log_probs, dkd_terms
from bench.methods.logit import logit_loss, standardise_logits
from bench.methods.mlkd import mlkd_terms
from bench.methods.nkd import drop_target
from bench.methods.wsld import wsld_loss
from bench.models import ModelOutput

D = torch.float64
B, C = 5, 7
REL = 1e-6


def rnd(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D) * scale


def fixed():
    return rnd(B, C, seed=1, scale=2.0), rnd(B, C, seed=2, scale=3.0), torch.tensor([0, 3, 6, 2, 3])


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=D).detach(), torch.as_tensor(b, dtype=D).detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# ---------------------------------------------------------------- the oracle: lists of floats, loops
def rows(z):
    return [[float(v) for v in r] for r in z]


def o_softmax(r, tau=1.0):
    m = max(v / tau for v in r)
    e = [math.exp(v / tau - m) for v in r]
    s = sum(e)
    return [v / s for v in e]


def o_standardise(r, form):
    k = len(r)
    mean = sum(r) / k
    var = sum((v - mean) ** 2 for v in r) / (k - 1 if form == "unbiased" else k)
    return [(v - mean) / (math.sqrt(var) + 1e-7) for v in r]


def o_kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def o_kd(zs, zt, tau, std=None):
    tot = 0.0
    for rs, rt in zip(rows(zs), rows(zt)):
        if std:
            rs, rt = o_standardise(rs, std), o_standardise(rt, std)
        tot += o_kl(o_softmax(rt, tau), o_softmax(rs, tau)) * tau * tau
    return tot / len(zs)


def o_dkd(zs, zt, y, tau, alpha, beta, std=None):
    """alpha TCKD + beta NCKD per sample: the binary (target, rest) KL and the KL over the non-targets."""
    tot = 0.0
    for rs, rt, yb in zip(rows(zs), rows(zt), [int(v) for v in y]):
        if std:
            rs, rt = o_standardise(rs, std), o_standardise(rt, std)
        ps, pt = o_softmax(rs, tau), o_softmax(rt, tau)
        tckd = o_kl([pt[yb], 1 - pt[yb]], [ps[yb], 1 - ps[yb]])
        ns = o_softmax([v for j, v in enumerate(rs) if j != yb], tau)
        nt = o_softmax([v for j, v in enumerate(rt) if j != yb], tau)
        tot += (alpha * tckd + beta * o_kl(nt, ns)) * tau * tau
    return tot / len(zs)


def o_wsld_weights(zs, zt, y):
    out = []
    for rs, rt, yb in zip(rows(zs), rows(zt), [int(v) for v in y]):
        ce_s, ce_t = -math.log(o_softmax(rs)[yb]), -math.log(o_softmax(rt)[yb])
        out.append(1 - math.exp(-max(ce_s / (ce_t + 1e-7), 0.0)))
    return out


def o_wsld(zs, zt, y, tau, soft="ce", weights=None):
    w = weights if weights is not None else o_wsld_weights(zs, zt, y)
    tot = 0.0
    for wb, rs, rt in zip(w, rows(zs), rows(zt)):
        ps, pt = o_softmax(rs, tau), o_softmax(rt, tau)
        per = -sum(a * math.log(b) for a, b in zip(pt, ps))
        if soft == "kl":
            per += sum(a * math.log(a) for a in pt)
        tot += wb * per
    return tau * tau * tot / len(zs)


def fd1(f, x: float, h: float = 1e-3) -> float:
    """The five-point central difference f'(x) (error O(h^4) plus rounding / h)."""
    return (f(x - 2 * h) - 8 * f(x - h) + 8 * f(x + h) - f(x + 2 * h)) / (12 * h)


def fd_grad(f, z, h=1e-3):
    """:func:`fd1` of the scalar f at every entry of z."""
    g = torch.zeros_like(z)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in z.shape]):
        i = tuple(int(v) for v in idx)

        def along(x, i=i):
            zz = z.clone()
            zz[i] = x
            return f(zz)

        g[i] = fd1(along, float(z[i]), h)
    return g


def mo(z):
    """A ModelOutput holding only logits (the logit methods read nothing else)."""
    return ModelOutput(z, z.new_zeros(z.shape[0], 1), z.new_zeros(z.shape[0], 1))


def autograd(fn, zs, *rest):
    zs = zs.clone().requires_grad_(True)
    out = fn(zs, *rest)
    out.backward()
    return out.detach(), zs.grad


# ---------------------------------------------------------------- logit standardisation
@pytest.mark.parametrize("form", ["unbiased", "population"])
def test_standardise_matches_the_per_row_z_score(form):
    z = rnd(B, C, seed=3, scale=4.0)
    want = torch.tensor([o_standardise(r, form) for r in rows(z)], dtype=D)
    assert rel_err(standardise_logits(z, form), want) <= 1e-12
    unb, pop = standardise_logits(z, "unbiased"), standardise_logits(z, "population")
    assert rel_err(pop, unb * math.sqrt(C / (C - 1))) <= 1e-6  # the two differ by sqrt(K/(K-1)) (up to the eps)
    with pytest.raises(ValueError):
        standardise_logits(z, "sample")


@pytest.mark.parametrize("form", ["unbiased", "population"])
def test_logit_kd_with_standardisation_value_and_gradient(form):
    zs, zt, _ = fixed()
    for tau in (2.0, 4.0):
        val, g = autograd(lambda z: logit_loss(z, zt, tau=tau, std=form), zs)
        assert rel_err(val, o_kd(zs, zt, tau, form)) <= REL
        assert rel_err(g, fd_grad(lambda z: o_kd(z, zt, tau, form), zs)) <= REL
    # the standardised loss ignores the scale and the shift of either side's logits
    assert rel_err(logit_loss(3 * zs + 1, zt - 2, tau=2.0, std=form), logit_loss(zs, zt, tau=2.0, std=form)) <= 1e-6


@pytest.mark.parametrize("form", ["unbiased", "population"])
def test_dkd_with_standardisation_value_and_gradient(form):
    zs, zt, y = fixed()
    alpha, beta, tau = 9.0, 72.0, 4.0
    val, g = autograd(lambda z: (lambda a, b: alpha * a + beta * b)(*dkd_terms(z, zt, y, tau=tau, std=form)), zs)
    assert rel_err(val, o_dkd(zs, zt, y, tau, alpha, beta, form)) <= REL
    assert rel_err(g, fd_grad(lambda z: o_dkd(z, zt, y, tau, alpha, beta, form), zs)) <= REL
    # without the switch the same oracle holds on the raw logits
    tckd, nckd = dkd_terms(zs, zt, y, tau=tau)
    assert rel_err(alpha * tckd + beta * nckd, o_dkd(zs, zt, y, tau, alpha, beta)) <= REL


def _ctx(epochs=10):
    return MethodContext(C, epochs, "classification", "audio", "visual", torch.device("cpu"))


def test_switch_off_leaves_logit_and_dkd_losses_bit_identical():
    """Off (the default, or set explicitly) is the formula as it was before the switch existed."""
    zs, zt, y = fixed()
    s, t = mo(zs), mo(zt)
    for tau in (1.0, 4.0):
        lt, ls = F.log_softmax(zt / tau, 1), F.log_softmax(zs / tau, 1)
        before = (lt.exp() * (lt - ls)).sum(1).mean() * tau**2
        assert torch.equal(logit_loss(zs, zt, tau=tau), before)
        assert torch.equal(logit_loss(zs, zt, tau=tau, std=None), before)
    lb_s, lb_t = _binary_log_probs(zs, y, 4.0), _binary_log_probs(zt, y, 4.0)
    tckd0 = (lb_t.exp() * (lb_t - lb_s)).sum(1).mean() * 16.0
    ln_s, ln_t = F.log_softmax(drop_target(zs, y) / 4.0, 1), F.log_softmax(drop_target(zt, y) / 4.0, 1)
    nckd0 = (ln_t.exp() * (ln_t - ln_s)).sum(1).mean() * 16.0
    tckd, nckd = dkd_terms(zs, zt, y, tau=4.0)
    assert torch.equal(tckd, tckd0) and torch.equal(nckd, nckd0)
    for name in ("logit", "dkd"):
        cls = METHODS.get(name)
        default = cls(cls.Params(), _ctx()).loss(s, t, y, epoch=3)
        explicit = cls(cls.Params(logit_std=False, logit_std_form="population"), _ctx()).loss(s, t, y, epoch=3)
        on = cls(cls.Params(logit_std=True), _ctx()).loss(s, t, y, epoch=3)
        assert all(torch.equal(default[k], explicit[k]) for k in default), name
        assert any(not torch.equal(default[k], on[k]) for k in default), name
        assert "logit_std" not in (cls(cls.Params(), _ctx()).report() or {})
        pop = cls(cls.Params(logit_std=True, logit_std_form="population"), _ctx())
        assert pop.report()["logit_std"] == "population"
    assert torch.equal(METHODS.get("logit")(METHODS.get("logit").Params(), _ctx()).loss(s, t, y, 3)["kd"], 0.9 * before)


def test_switch_keeps_the_default_config_hashes_and_enters_the_identity_when_on():
    from bench.train.resolve import RunSpec, resolve

    # the default job's hashes (tests/test_backbones.py DEFAULT_JOB) from before the switch existed
    pinned = {"logit": "90bb5eafd0", "dkd": "7a32dd5c9f"}
    for name, h in pinned.items():
        base = resolve(RunSpec("synthetic", "audio", "visual", name, 0, {}))
        same = resolve(RunSpec("synthetic", "audio", "visual", name, 0,
                               {name: {"logit_std": "false", "logit_std_form": "unbiased"}}))
        on = resolve(RunSpec("synthetic", "audio", "visual", name, 0, {name: {"logit_std": "true"}}))
        pop = resolve(RunSpec("synthetic", "audio", "visual", name, 0,
                              {name: {"logit_std": "true", "logit_std_form": "population"}}))
        assert base.config_hash == same.config_hash == h and "logit_std" not in base.config["method_params"]
        assert on.config["method_params"]["logit_std"] is True and on.config_hash != h
        assert pop.config["method_params"]["logit_std_form"] == "population"
        assert len({h, on.config_hash, pop.config_hash}) == 3
    from bench.api.errors import ConfigError

    with pytest.raises(ConfigError, match="logit_std_form"):
        resolve(RunSpec("synthetic", "audio", "visual", "dkd", 0, {"dkd": {"logit_std_form": "sample"}}))


def test_recommended_weights_are_documented_not_applied():
    """The repository's weights with the switch are in the help text; the defaults stay the reference's."""
    lp, dp = METHODS.get("logit").Params(logit_std=True), METHODS.get("dkd").Params(logit_std=True)
    assert (lp.tau, lp.kd_weight, lp.ce_weight) == (4.0, 0.9, 0.1)
    assert (dp.alpha, dp.beta) == (1.0, 8.0)
    import bench.methods.dkd as dkd_mod
    import bench.methods.logit as logit_mod

    assert "logit.tau=2" in logit_mod.__doc__ and "logit.kd_weight=9" in logit_mod.__doc__
    assert "dkd.alpha=9" in dkd_mod.__doc__ and "dkd.beta=72" in dkd_mod.__doc__


# ---------------------------------------------------------------- WSLD
@pytest.mark.parametrize("soft", ["ce", "kl"])
def test_wsld_value_and_gradient(soft):
    zs, zt, y = fixed()
    tau = 2.0
    val, g = autograd(lambda z: wsld_loss(z, zt, y, tau=tau, soft=soft), zs)
    assert rel_err(val, o_wsld(zs, zt, y, tau, soft)) <= REL
    w = o_wsld_weights(zs, zt, y)  # the weights are detached: held at their value
    assert rel_err(g, fd_grad(lambda z: o_wsld(z, zt, y, tau, soft, weights=w), zs)) <= REL
    closed = torch.stack([tau / B * wb * (torch.softmax(zs[b] / tau, 0) - torch.softmax(zt[b] / tau, 0))
                          for b, wb in enumerate(w)])
    assert rel_err(g, closed) <= 1e-10


def test_wsld_ce_and_kl_differ_by_the_weighted_teacher_entropy_and_weights_are_bounded():
    zs, zt, y = fixed()
    w = torch.tensor(o_wsld_weights(zs, zt, y), dtype=D)
    pt = torch.softmax(zt / 2.0, 1)
    ent = -(pt * pt.log()).sum(1)
    diff = wsld_loss(zs, zt, y, tau=2.0) - wsld_loss(zs, zt, y, tau=2.0, soft="kl")
    assert rel_err(diff, 4.0 * (w * ent).mean()) <= 1e-10
    assert bool(((w > 0) & (w < 1)).all())
    # a student far better than the teacher on the label gets a small weight, a worse one a large weight
    good = wsld_loss(zt * 0 + 20 * F.one_hot(y, C).to(D), zt, y)
    assert float(good) < float(wsld_loss(-20 * F.one_hot(y, C).to(D), zt, y))


def test_wsld_reference_teacher_mode_runs_the_teacher_in_train_mode():
    cls = METHODS.get("wsld")
    assert cls(cls.Params(), _ctx()).teacher_train_mode is False
    assert cls(cls.Params(teacher_mode="reference"), _ctx()).teacher_train_mode is True


# ---------------------------------------------------------------- CTKD
def o_lambda(epoch, loops, hi=0.0, lo=-1.0):
    i = min(epoch, loops)
    return lo + (hi - lo) * 0.5 * (1 + math.cos(math.pi * i / loops))


def o_T(t, t_start=1.0, t_range=20.0):
    return t_start + t_range / (1 + math.exp(-t))


def test_ctkd_schedule_relative_by_default_and_absolute_as_the_reference():
    want = [o_lambda(e, 10) for e in range(1, 13)]
    assert [ctkd_lambda(e, 10) for e in range(1, 13)] == pytest.approx(want, abs=1e-15)
    assert ctkd_lambda(1, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)) - 1) and ctkd_lambda(10, 10) == -1.0
    cls = METHODS.get("ctkd")
    rel, ab = cls(cls.Params(), _ctx(10)), cls(cls.Params(lambda_mode="absolute"), _ctx(10))
    assert rel.report()["lambda_epochs"] == 1 and rel.report()["lambda"] == [-1.0] * 10
    assert ab.report()["lambda_epochs"] == 10 and ab.report()["lambda"][-1] == -1.0
    assert ab.report()["lambda"][0] == pytest.approx(o_lambda(1, 10))
    assert cls(cls.Params(), _ctx(60)).report()["lambda_epochs"] == 3  # ceil(10/240 x 60)
    assert rel.report()["final_temperature"] == pytest.approx(o_T(1.0))  # ~15.62 at t = 1


@pytest.mark.parametrize("std", [None, "unbiased"])
def test_ctkd_value_and_gradients_wrt_logits_and_temperature(std):
    zs, zt, _ = fixed()
    t0, lam = 0.3, o_lambda(3, 10)

    def oracle(z, t):
        return o_kd(z, zt, o_T(t), std)

    t = torch.tensor([t0], dtype=D, requires_grad=True)
    z = zs.clone().requires_grad_(True)
    T = ctkd_temperature(t, lam)
    assert float(T.detach()) == pytest.approx(o_T(t0), rel=1e-14)
    val = ctkd_loss(z, zt, T, std=std)
    val.backward()
    assert rel_err(val.detach(), oracle(zs, t0)) <= REL
    assert rel_err(z.grad, fd_grad(lambda zz: oracle(zz, t0), zs)) <= REL
    dt_forward = fd1(lambda tt: oracle(zs, tt), t0)
    assert dt_forward != 0
    assert rel_err(t.grad, torch.tensor([lam * dt_forward], dtype=D)) <= REL  # the GRL multiplies by lambda


def test_ctkd_temperature_is_optimised_with_the_student_and_ascends_the_kd_loss():
    cls = METHODS.get("ctkd")
    m = cls(cls.Params(lambda_mode="absolute"), _ctx(20))
    (p,) = m.extra_parameters()
    assert p is m.modules["temp"].t and float(p.detach()) == 1.0 and p.requires_grad
    zs, zt, y = fixed()
    terms = m.loss(mo(zs), mo(zt), y, epoch=15)
    sum(terms.values()).backward()
    # lambda = -1: the gradient on t is minus d(loss)/dt, so an SGD step raises the KD loss through T
    with torch.no_grad():
        before = float(terms["kd"].detach())
        assert float(p.grad) < 0  # d(kd)/dt > 0 here: reversed, the step goes up
        p -= 5.0 * p.grad
        after = float(m.loss(mo(zs), mo(zt), y, epoch=15)["kd"])
    assert after > before
    assert "temp" in m.state_dict()["modules"] or any("temp" in k for k in m.state_dict()["modules"])


# ---------------------------------------------------------------- MLKD
def o_median(v):
    v = sorted(v)
    pos = (len(v) - 1) * 0.5
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def o_mlkd(zs_w, zt_w, zs_s, zt_s, tau, taus, mask="reference", std=None):
    """kd, cc, bc of the module doc, with loops: the instance KL per sample, the C x C and B x B Grams."""
    pw = [o_softmax(r) for r in rows(zt_w)]
    conf = [max(r) for r in pw]
    m = [1.0 if c <= o_median(conf) else 0.0 for c in conf]
    ccls = [sum(r[j] for r in pw) for j in range(len(pw[0]))]
    cm = [1.0 if c <= o_median(ccls) else 0.0 for c in ccls]
    nb, nc = len(pw), len(pw[0])
    all_t = [tau, *taus]

    def per_sample(zs, zt, T):
        out = []
        for rs, rt in zip(rows(zs), rows(zt)):
            if std:
                rs, rt = o_standardise(rs, std), o_standardise(rt, std)
            out.append(o_kl(o_softmax(rt, T), o_softmax(rs, T)) * T * T)
        return out

    kd = 0.0
    for T in all_t:
        per = per_sample(zs_w, zt_w, T)
        if mask == "per_sample":
            kd += sum(a * b for a, b in zip(per, m)) / nb
        else:
            kd += sum(per) / nb * sum(m) / nb
    for i, T in enumerate(all_t):
        kd += sum(per_sample(zs_s, zt_s, T) if i < 3 else per_sample(zs_w, zt_w, T)) / nb
    cc = bc = 0.0
    for T in all_t:
        ps, pt = [o_softmax(r, T) for r in rows(zs_w)], [o_softmax(r, T) for r in rows(zt_w)]
        d = 0.0
        for i in range(nc):
            for j in range(nc):
                d += (sum(pt[b][i] * pt[b][j] for b in range(nb)) - sum(ps[b][i] * ps[b][j] for b in range(nb))) ** 2
        cc += d / nc * sum(cm) / nc
        d = 0.0
        for a in range(nb):
            for b in range(nb):
                d += (sum(pt[a][c] * pt[b][c] for c in range(nc)) - sum(ps[a][c] * ps[b][c] for c in range(nc))) ** 2
        bc += d / nb * sum(m) / nb
    return {"kd": kd, "cc": cc, "bc": bc}


@pytest.mark.parametrize("mask,std", [("reference", None), ("per_sample", None), ("reference", "unbiased")])
def test_mlkd_value_and_gradient_one_and_two_views(mask, std):
    zs, zt, _ = fixed()
    zs, zt = torch.cat([zs, rnd(1, C, seed=7)]), torch.cat([zt, rnd(1, C, seed=8)])  # B = 6: the median interpolates
    zs2, zt2 = rnd(6, C, seed=9, scale=2.0), rnd(6, C, seed=10, scale=3.0)
    taus = (3.0, 5.0, 2.0, 6.0)
    for strong in ((None, (zs2, zt2)) if mask == "reference" and std is None else (None,)):  # two views once
        ss, st = strong if strong else (zs, zt)
        want = o_mlkd(zs, zt, ss, st, 4.0, taus, mask, std)
        cache: dict = {}

        def o(z, key):  # one oracle evaluation per perturbed entry serves the three terms
            k = tuple(z.reshape(-1).tolist())
            if k not in cache:
                cache[k] = o_mlkd(z, zt, z if strong is None else ss, st, 4.0, taus, mask, std)
            return cache[k][key]

        for key in ("kd", "cc", "bc"):
            def f(z, key=key):
                return mlkd_terms(z, zt, None if strong is None else ss, None if strong is None else st,
                                  tau=4.0, taus=taus, mask=mask, std=std)[key]

            val, g = autograd(f, zs)
            assert rel_err(val, want[key]) <= REL, key
            assert rel_err(g, fd_grad(lambda z, key=key: o(z, key), zs)) <= REL, key


def test_mlkd_reference_mask_only_rescales_and_the_method_runs_one_view():
    zs, zt, y = fixed()
    ref = mlkd_terms(zs, zt, mask="reference")
    cls = METHODS.get("mlkd")
    m = cls(cls.Params(), _ctx())
    terms = m.loss(mo(zs), mo(zt), y, epoch=1)
    assert rel_err(terms["kd"], 0.9 * ref["kd"]) <= 1e-12 and rel_err(terms["bc"], 0.9 * ref["bc"]) <= 1e-12
    assert rel_err(terms["ce"], 0.2 * F.cross_entropy(zs, y)) <= 1e-12  # the CE of both (identical) views
    assert m.report()["views"] == 1 and "weak view" in m.report()["strong_view"]
    assert cls.dense_ok is False and "Gram" in cls.dense_reason


# ---------------------------------------------------------------- dense logits and the wiring
@pytest.mark.parametrize("name", ["wsld", "ctkd"])
def test_dense_logits_are_pixelwise_with_the_void_label_ignored(name):
    cls = METHODS.get(name)
    ctx = MethodContext(C, 10, "segmentation", "audio", "visual", torch.device("cpu"), ignore_index=255)
    zs, zt = rnd(2, C, 3, 4, seed=5), rnd(2, C, 3, 4, seed=6)
    y = (torch.arange(24).reshape(2, 3, 4) % C)
    y[0, 0, 0] = 255
    dense = cls(cls.Params(), ctx).loss(mo(zs), mo(zt), y, epoch=2)
    keep = y.reshape(-1) != 255
    flat_s = zs.permute(0, 2, 3, 1).reshape(-1, C)[keep]
    flat_t = zt.permute(0, 2, 3, 1).reshape(-1, C)[keep]
    flat_ctx = MethodContext(C, 10, "classification", "audio", "visual", torch.device("cpu"))
    flat = cls(cls.Params(), flat_ctx).loss(mo(flat_s), mo(flat_t), y.reshape(-1)[keep], 2)
    for k in dense:
        if k != "ce":
            assert rel_err(dense[k], flat[k]) <= 1e-12, (name, k)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One results folder for the end-to-end runs: the teacher is trained once and shared."""
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.parametrize("name", ["wsld", "ctkd", "mlkd"])
def test_one_epoch_end_to_end(name, results, tiny_overrides):
    from bench.train.resolve import RunSpec
    from bench.train.run import run

    tiny_overrides["train"]["epochs"] = "1"
    rec = run(RunSpec("synthetic", "audio", "visual", name, 0, tiny_overrides, str(results), "cpu"))
    assert rec["status"] == "ok" and math.isfinite(rec["best_metric"])
    assert rec["method_category"] == "Logits" and rec["config"]["method"] == name
    terms = rec["history"][-1]["terms"]
    names = {"wsld": {"ce", "wsl"}, "ctkd": {"ce", "kd"}, "mlkd": {"ce", "kd", "cc", "bc"}}[name]
    assert set(terms) == names and all(math.isfinite(v) for v in terms.values())
    extra = rec["extra"]["method"]
    if name == "mlkd":
        assert extra["views"] == 1 and extra["mask"] == "reference"
    elif name == "ctkd":
        assert extra["lambda_mode"] == "relative" and extra["lambda"] == [-1.0] and 1 < extra["final_temperature"] < 21
    else:
        assert extra["teacher_mode"] == "eval" and extra["soft"] == "ce"


def test_wsld_reference_teacher_mode_end_to_end(results, tiny_overrides):
    """The code's train-mode teacher: the runner keeps it in train mode, so its outputs are never cached."""
    from bench.train.resolve import RunSpec
    from bench.train.run import run

    tiny_overrides["train"]["epochs"] = "1"
    tiny_overrides["wsld"] = {"teacher_mode": "reference"}
    rec = run(RunSpec("synthetic", "audio", "visual", "wsld", 0, tiny_overrides, str(results), "cpu"))
    assert rec["status"] == "ok" and rec["extra"]["method"]["teacher_mode"] == "reference"
    assert rec["config"]["method_params"]["teacher_mode"] == "reference"
    assert rec["speed"]["teacher_cache"] is False
