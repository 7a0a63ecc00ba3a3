"""The feature-relation methods of the zoo (#26): AT, SP, PKT, RKD, NST, CC, KDSVD.

Each loss and its gradient w.r.t. the student features against an oracle written from the
reference formula with explicit loops over samples, pairs, channels or positions (float64,
1e-6 relative at most), and each method for one epoch on tiny synthetic end to end."""

import math

import pytest
import torch

from bench.api.errors import BenchError
from bench.api.method import MethodContext
from bench.api.registry import METHODS
from bench.methods.at import at_loss
from bench.methods.cc import cc_loss
from bench.methods.kdsvd import kdsvd_loss, to_width
from bench.methods.nst import nst_loss
from bench.methods.pkt import pkt_loss
from bench.methods.rkd import rkd_loss
from bench.methods.sp import sp_loss

D = torch.float64
ZOO = ["at", "sp", "pkt", "rkd", "nst", "cc", "kdsvd"]


def rnd(*shape, seed=0, relu=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)
    return x.clamp(min=0) + 0.05 if relu else x


def check(fn, oracle, s_inputs, t_inputs):
    """fn and oracle agree in value and in the gradient w.r.t. every student tensor (1e-6 relative)."""
    a = [x.clone().requires_grad_() for x in s_inputs]
    b = [x.clone().requires_grad_() for x in s_inputs]
    va, vb = fn(a, t_inputs), oracle(b, t_inputs)
    assert abs(va.item() - vb.item()) <= 1e-6 * abs(vb.item()) and vb.item() != 0
    ga = torch.autograd.grad(va, a)
    gb = torch.autograd.grad(vb, b)
    for x, y in zip(ga, gb):
        assert (x - y).abs().max() <= 1e-6 * y.abs().max() and y.abs().max() > 0
    return va.item()


def block_mean(x, grid):
    """(B, C, H, W) averaged over equal blocks down to grid (sizes divisible), by loops."""
    b, c, h, w = x.shape
    gh, gw = grid
    out = [[[[x[n, k, i * (h // gh):(i + 1) * (h // gh), j * (w // gw):(j + 1) * (w // gw)].mean()
              for j in range(gw)] for i in range(gh)] for k in range(c)] for n in range(b)]
    return torch.stack([torch.stack([torch.stack([torch.stack(r) for r in ch]) for ch in s]) for s in out])


# ---------------------------------------------------------------- AT
def at_oracle(fs, ft, p=2.0):
    total = 0.0
    for s, t in zip(fs, ft):
        s4 = s if s.dim() == 4 else s[..., None]
        t4 = t if t.dim() == 4 else t[..., None]
        grid = (min(s4.shape[2], t4.shape[2]), min(s4.shape[3], t4.shape[3]))
        s4, t4 = block_mean(s4, grid), block_mean(t4, grid)
        n, pos = s4.shape[0], grid[0] * grid[1]
        for b in range(n):
            qa = [sum(s4[b, c].flatten()[q] ** p for c in range(s4.shape[1])) / s4.shape[1] for q in range(pos)]
            qt = [sum(t4[b, c].flatten()[q] ** p for c in range(t4.shape[1])) / t4.shape[1] for q in range(pos)]
            norm_s, norm_t = sum(v ** 2 for v in qa) ** 0.5, math.sqrt(sum(v.item() ** 2 for v in qt))
            for q in range(pos):
                total = total + (qa[q] / norm_s - qt[q] / norm_t) ** 2 / (n * pos)
    return total


def test_at_value_and_gradient_on_a_1d_teacher_and_a_2d_student():
    # stage 1: student 2-D (3, 8, 6) vs teacher 1-D (5, 4): grid (4, 1); stage 2: student (2, 4, 4) vs teacher (6, 8)
    fs = [rnd(3, 3, 8, 6, seed=1, relu=True), rnd(3, 2, 4, 4, seed=2, relu=True)]
    ft = [rnd(3, 5, 4, seed=3, relu=True), rnd(3, 6, 8, seed=4, relu=True)]
    check(lambda s, t: at_loss(s, t, 2.0), at_oracle, fs, ft)
    check(lambda s, t: at_loss(s, t, 3.0), lambda s, t: at_oracle(s, t, 3.0), fs, ft)
    same = [rnd(2, 3, 4, 4, seed=5, relu=True)]
    assert at_loss(same, [same[0] * 7.0]).item() == pytest.approx(0.0, abs=1e-15)  # scale-free per sample


# ---------------------------------------------------------------- SP
def sp_oracle(fs, ft):
    s, t = fs[0].reshape(fs[0].shape[0], -1), ft[0].reshape(ft[0].shape[0], -1)
    n = s.shape[0]
    total = 0.0
    for i in range(n):
        gs = [torch.dot(s[i], s[j]) for j in range(n)]
        gt = [torch.dot(t[i], t[j]).item() for j in range(n)]
        ns, nt = sum(g ** 2 for g in gs) ** 0.5, math.sqrt(sum(g ** 2 for g in gt))
        for j in range(n):
            total = total + (gt[j] / nt - gs[j] / ns) ** 2
    return total / (n * n)


def test_sp_value_and_gradient_across_map_shapes():
    fs, ft = [rnd(5, 4, 3, 3, seed=6)], [rnd(5, 7, 9, seed=7)]  # a 2-D student map, a 1-D teacher map
    check(lambda s, t: sp_loss(s[0], t[0]), sp_oracle, fs, ft)
    with pytest.raises(ValueError, match="batch sizes"):
        sp_loss(rnd(4, 3), rnd(5, 3))


# ---------------------------------------------------------------- PKT
def pkt_oracle(fs, ft, eps=1e-7, per_sample=False):
    s, t = fs[0], ft[0]
    n = s.shape[0]

    def cond(f, i):
        fi = f[i] / (f[i].dot(f[i]) ** 0.5 + eps)
        row = [(fi.dot(f[j] / (f[j].dot(f[j]) ** 0.5 + eps)) + 1) / 2 for j in range(n)]
        z = sum(row)
        return [r / z for r in row]

    total = 0.0
    for i in range(n):
        ps, pt = cond(s, i), cond(t, i)
        for j in range(n):
            total = total + pt[j] * torch.log((pt[j] + eps) / (ps[j] + eps))
    return total / (n if per_sample else n * n)


def test_pkt_value_and_gradient_and_paper_reduction():
    fs, ft = [rnd(6, 5, seed=8)], [rnd(6, 9, seed=9)]  # different feature sizes: no projector
    v = check(lambda s, t: pkt_loss(s[0], t[0]), pkt_oracle, fs, ft)
    w = check(lambda s, t: pkt_loss(s[0], t[0], reduction="batchmean"),
              lambda s, t: pkt_oracle(s, t, per_sample=True), fs, ft)
    assert w == pytest.approx(6 * v, rel=1e-12)


# ---------------------------------------------------------------- RKD
def huber(d):
    return 0.5 * d ** 2 if abs(d.item()) < 1 else abs(d) - 0.5


def rkd_oracle(fs, ft, dw=25.0, aw=50.0):
    s, t = fs[0], ft[0]
    n = s.shape[0]

    def dists(f):
        return [[((f[i] - f[j]).pow(2).sum()) ** 0.5 if i != j else None for j in range(n)] for i in range(n)]

    ds, dt = dists(s), dists(t)
    ms = sum(ds[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    mt = sum(dt[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    dist = sum(huber(ds[i][j] / ms - dt[i][j] / mt) for i in range(n) for j in range(n) if i != j) / (n * n)

    def unit(f, i, j):
        v = f[j] - f[i]
        return v / v.norm() if i != j else None

    ang = 0.0
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if i in (j, k):
                    continue  # a zero vector on both sides: contributes 0 but counts in the mean
                a_s = unit(s, i, j).dot(unit(s, i, k))
                a_t = unit(t, i, j).dot(unit(t, i, k))
                ang = ang + huber(a_s - a_t)
    return dw * dist + aw * ang / n ** 3


def test_rkd_value_and_gradient():
    fs, ft = [rnd(5, 4, seed=10)], [rnd(5, 7, seed=11) * 3]
    check(lambda s, t: rkd_loss(s[0], t[0]), rkd_oracle, fs, ft)
    check(lambda s, t: rkd_loss(s[0], t[0], distance_weight=1.0, angle_weight=0.0),
          lambda s, t: rkd_oracle(s, t, 1.0, 0.0), [rnd(5, 4, seed=12) * 4], ft)  # Huber's linear branch
    f = rnd(5, 4, seed=13)
    assert rkd_loss(f, f * 5.0).item() == pytest.approx(0.0, abs=1e-12)  # scale-invariant relations


# ---------------------------------------------------------------- NST
def nst_oracle(fs, ft):
    total = 0.0
    for s, t in zip(fs, ft):
        s4 = s if s.dim() == 4 else s[..., None]
        t4 = t if t.dim() == 4 else t[..., None]
        grid = (min(s4.shape[2], t4.shape[2]), min(s4.shape[3], t4.shape[3]))
        s4, t4 = block_mean(s4, grid), block_mean(t4, grid)
        n, cs, ct = s4.shape[0], s4.shape[1], t4.shape[1]
        for b in range(n):
            sv = [s4[b, c].flatten() / s4[b, c].flatten().norm() for c in range(cs)]
            tv = [t4[b, c].flatten() / t4[b, c].flatten().norm() for c in range(ct)]
            tt = sum(tv[i].dot(tv[j]) ** 2 for i in range(ct) for j in range(ct)) / (ct * ct)
            ss = sum(sv[i].dot(sv[j]) ** 2 for i in range(cs) for j in range(cs)) / (cs * cs)
            st = sum(sv[i].dot(tv[j]) ** 2 for i in range(cs) for j in range(ct)) / (cs * ct)
            total = total + (tt + ss - 2 * st) / n
    return total


def test_nst_value_and_gradient_with_different_channel_counts():
    fs = [rnd(2, 3, 8, 4, seed=14, relu=True), rnd(2, 5, 2, 2, seed=15, relu=True)]
    ft = [rnd(2, 6, 4, seed=16, relu=True), rnd(2, 4, 2, 2, seed=17, relu=True)]
    v = check(nst_loss, nst_oracle, fs, ft)
    assert v > 0  # an MMD^2
    same = [rnd(2, 3, 4, 4, seed=18, relu=True)]
    assert nst_loss(same, [same[0].clone()]).item() == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- CC
def cc_code_oracle(es, et):
    s, t = es[0], et[0]
    return sum(sum(abs(s[i, d] - t[i, d]) * abs(s[i + 1, d] - t[i + 1, d]) for d in range(s.shape[1]))
               for i in range(s.shape[0] - 1)) / (s.shape[0] - 1)


def cc_paper_oracle(es, et, gamma=0.4, order=2):
    s, t = es[0], et[0]
    n = s.shape[0]

    def corr(f, i, j):
        x = f[i].dot(f[j]) / (f[i].norm() * f[j].norm())
        return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * x ** p for p in range(order + 1))

    return sum((corr(t, i, j) - corr(s, i, j)) ** 2 for i in range(n) for j in range(n)) / (n * n)


def test_cc_both_forms_value_and_gradient_and_the_code_form_depends_on_batch_order():
    es, et = [rnd(6, 5, seed=19)], [rnd(6, 5, seed=20)]
    check(lambda s, t: cc_loss(s[0], t[0]), cc_code_oracle, es, et)
    check(lambda s, t: cc_loss(s[0], t[0], "paper"), cc_paper_oracle, es, et)
    # the teacher embedding is trained too: its gradient matches the oracle's as well
    et_a, et_b = et[0].clone().requires_grad_(), et[0].clone().requires_grad_()
    ga = torch.autograd.grad(cc_loss(es[0], et_a), et_a)[0]
    gb = torch.autograd.grad(cc_code_oracle(es, [et_b]), et_b)[0]
    assert (ga - gb).abs().max() <= 1e-6 * gb.abs().max()
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert cc_loss(es[0][perm], et[0][perm]).item() != pytest.approx(cc_loss(es[0], et[0]).item(), rel=1e-3)
    assert cc_loss(es[0][perm], et[0][perm], "paper").item() == pytest.approx(cc_loss(es[0], et[0], "paper").item(),
                                                                             rel=1e-12)
    # the paper's Taylor expansion tends to the Gaussian RBF exp(-gamma |e_i - e_j|^2) of unit vectors
    from bench.methods.cc import cc_correlation

    u = torch.nn.functional.normalize(es[0], dim=1)
    rbf = torch.exp(-0.4 * torch.cdist(u, u) ** 2)
    assert torch.allclose(cc_correlation(es[0], 0.4, order=20), rbf, atol=1e-12)


# ---------------------------------------------------------------- KDSVD
def right_vectors(m, n):
    """Leading right singular vectors of one (rows, W) matrix as eigenvectors of m^T m, and the
    singular values, largest first (an independent route to the SVD)."""
    evals, evecs = torch.linalg.eigh(m.t() @ m)
    order = torch.argsort(evals, descending=True)[:n]
    return evals[order].clamp(min=0).sqrt(), evecs[:, order]


def kdsvd_oracle(fs, ft, k=1):
    total, prev = 0.0, None
    n = fs[0].shape[0]
    for s, t in zip(fs, ft):
        per_sample = []
        for b in range(n):
            ms = s[b].reshape(-1, s.shape[-1])
            mt = t[b].reshape(-1, t.shape[-1])
            sv_t, vt = right_vectors(mt, k)
            # the teacher's signs are the SVD's own (arbitrary, as in the reference): take them from it
            ref = torch.linalg.svd(mt, full_matrices=False)[2][:k].t()
            vt = vt * torch.sign((vt * ref).sum(0))
            sv_t = sv_t / sv_t.norm()
            _, vs = right_vectors(ms, k + 3)
            cols = []
            for j in range(vt.shape[1]):
                cos = [vs[:, i].dot(vt[:, j]) for i in range(vs.shape[1])]
                best = max(range(len(cos)), key=lambda i: abs(cos[i].item()))
                cols.append(vs[:, best] * torch.sign(cos[best]).item() * sv_t[j])
            per_sample.append((torch.stack(cols, 1), vt * sv_t))
        if prev is not None:
            for b in range(n):
                (vs, vt), (vsb, vtb) = per_sample[b], prev[b]
                for a in range(vs.shape[0]):
                    for c in range(vsb.shape[0]):
                        for j in range(vs.shape[1]):
                            rs = torch.exp(-(vs[a, j] - vsb[c, j]) ** 2 / 8)
                            rt = torch.exp(-(vt[a, j] - vtb[c, j]) ** 2 / 8)
                            total = total + (rs - rt) ** 2 / n
        prev = per_sample
    return total


def test_kdsvd_value_and_gradient_against_eigenvectors():
    # widths already common per stage (5, 4, 6); rows C*H differ between the networks
    fs = [rnd(2, 3, 4, 5, seed=21), rnd(2, 4, 3, 4, seed=22), rnd(2, 2, 5, 6, seed=23)]
    ft = [rnd(2, 6, 2, 5, seed=24), rnd(2, 5, 1, 4, seed=25), rnd(2, 3, 4, 6, seed=26)]
    check(lambda s, t: kdsvd_loss(s, t, 1), kdsvd_oracle, fs, ft)
    check(lambda s, t: kdsvd_loss(s, t, 2), lambda s, t: kdsvd_oracle(s, t, 2), fs, ft)
    with pytest.raises(ValueError, match="at least 2"):
        kdsvd_loss(fs[:1], ft[:1])


def test_kdsvd_reads_a_sequence_as_the_width_and_pools_the_width_only():
    seq = rnd(2, 4, 12, seed=27)  # (B, C, L): the SVD runs along L
    img = rnd(2, 3, 5, 8, seed=28)
    assert to_width(seq, 6).shape == (2, 4, 1, 6) and to_width(img, 6).shape == (2, 3, 5, 6)
    assert torch.allclose(to_width(seq, 6)[0, 0, 0], seq[0, 0].reshape(6, 2).mean(1))


# ---------------------------------------------------------------- wiring and end to end
def _nets():
    from bench.models import ResNetBackbone

    torch.manual_seed(0)
    teacher = ResNetBackbone(1, 8, 6, (8, 16, 32), (1, 1, 1), "small")  # 1-D maps (B, C, L)
    student = ResNetBackbone(2, 3, 6, (4, 8, 24), (1, 1, 1), "small")  # 2-D maps
    return teacher, student, torch.randn(6, 8, 32), torch.randn(6, 3, 12, 12)


def test_setup_pairs_cache_fields_and_refusals():
    from bench.models.mlp import MLPBackbone

    teacher, student, xt, xs = _nets()
    ctx = MethodContext(6, 10, "classification", "audio", "visual", torch.device("cpu"))
    with torch.no_grad():
        so, to = student.eval()(xs), teacher.eval()(xt)
    expect = {"at": {"feature_maps[0]", "feature_maps[1]", "feature_maps[2]"}, "sp": {"feature_maps[2]"},
              "pkt": {"feature"}, "rkd": {"feature"}, "cc": {"feature"},
              "nst": {"feature_maps[0]", "feature_maps[1]", "feature_maps[2]"},
              "kdsvd": {"feature_maps[0]", "feature_maps[1]", "feature_maps[2]"}}
    for name in ZOO:
        cls = METHODS.get(name)
        assert cls.category == "Feature" and cls.search_space and cls.dense_ok
        m = cls(cls.Params(), ctx)
        m.setup(student, teacher, so, to)
        assert m.teacher_cache_fields() == expect[name], name
    at = METHODS.get("at")(METHODS.get("at").Params(), ctx)
    at.setup(student, teacher, so, to)
    assert at.report()["grids"] == [[12, 1], [6, 1], [3, 1]]  # time against image height
    kd = METHODS.get("kdsvd")(METHODS.get("kdsvd").Params(), ctx)
    kd.setup(student, teacher, so, to)
    assert kd.widths == [12, 6, 3]  # the sequence axis against the image width
    cc = METHODS.get("cc")(METHODS.get("cc").Params(), ctx)
    cc.setup(student, teacher, so, to)
    assert cc.modules["embed_s"].weight.shape == (128, 24) and cc.modules["embed_t"].weight.shape == (128, 32)
    torch.manual_seed(0)
    mlp = MLPBackbone(20, 6, (16, 12))
    mo = mlp.eval()(torch.randn(6, 20))
    for name in ("at", "nst", "kdsvd"):
        cls = METHODS.get(name)
        with pytest.raises(BenchError, match="no spatial"):
            cls(cls.Params(), ctx).setup(mlp, teacher, mo, to)
    for name in ("sp", "pkt", "rkd", "cc"):  # batch relations: vectors are fine
        cls = METHODS.get(name)
        cls(cls.Params(), ctx).setup(mlp, teacher, mo, to)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One results folder for the module, so the teacher trains once and is then read from its cache."""
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.parametrize("name", ZOO)
def test_one_epoch_end_to_end(results, tiny_overrides, name):
    from bench.train.resolve import RunSpec
    from bench.train.run import run

    tiny_overrides["train"]["epochs"] = "1"
    rec = run(RunSpec("synthetic", "audio", "visual", name, 0, tiny_overrides, str(results), "cpu"))
    assert rec["status"] == "ok" and math.isfinite(rec["best_metric"]), rec.get("error")
    assert rec["method_category"] == "Feature"
    terms = rec["history"][-1]["terms"]
    kd_terms = {k: v for k, v in terms.items() if k != "ce"}
    assert kd_terms and all(math.isfinite(v) and v != 0 for v in terms.values()), terms


@pytest.mark.parametrize("name", ZOO)
def test_gradients_reach_the_student_and_the_connectors_but_not_the_teacher(name):
    teacher, student, xt, xs = _nets()
    cls = METHODS.get(name)
    method = cls(cls.Params(), MethodContext(6, 10, "classification", "audio", "visual", torch.device("cpu")))
    with torch.no_grad():
        method.setup(student.eval(), teacher.eval(), student(xs), teacher(xt))
    terms = method.loss(student.train()(xs), teacher(xt).detach(), torch.arange(6), epoch=1)
    kd = sum(v for k, v in terms.items() if k != "ce")
    kd.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in method.extra_parameters())  # CC's two embeddings


def test_dense_outputs_run(tmp_path):
    """Segmentation (the tiny NYU-Depth V2 fixture, depth -> RGB, DeepLab maps): every relation
    method trains one epoch and records finite terms (B = 2, so RKD's angle term has no
    non-degenerate triplet and may be 0)."""
    from test_dataset_nyudv2 import make_mat, ov

    from bench.train.resolve import RunSpec, build_adapter
    from bench.train.run import run

    root = tmp_path / "raw"
    make_mat(root)
    build_adapter("nyudv2", ov(root, tmp_path / "c")).prepare()
    for name in ZOO:
        rec = run(RunSpec("nyudv2", "depth", "rgb", name, 0, ov(root, tmp_path / "c"), str(tmp_path / "res")))
        assert rec["status"] == "ok", (name, rec.get("traceback"))
        assert rec["metric"] == "mIoU" and all(math.isfinite(v) for v in rec["history"][-1]["terms"].values()), name


def test_kdsvd_gradient_stays_finite_on_an_all_zero_map():
    """A dead (all-zero) student map has repeated singular values, where the SVD's backward is NaN;
    the reference would pass that NaN to the student, this one sets it to 0."""
    dead = torch.zeros(2, 3, 4, 5, dtype=D, requires_grad=True)
    live = rnd(2, 3, 4, 5, seed=29).requires_grad_()
    with pytest.raises(AssertionError):  # the plain SVD's gradient there is not finite
        _, _, vh = torch.linalg.svd(dead.reshape(2, 12, 5), full_matrices=False)
        assert torch.isfinite(torch.autograd.grad(vh[:, 0].sum(), dead)[0]).all()
    loss = kdsvd_loss([dead, live], [rnd(2, 3, 4, 5, seed=30), rnd(2, 3, 4, 5, seed=31)])
    g_dead, g_live = torch.autograd.grad(loss, [dead, live])
    assert torch.isfinite(loss) and torch.isfinite(g_dead).all() and torch.isfinite(g_live).all()


@pytest.mark.parametrize("name", ZOO)
def test_teacher_cache_holds_what_the_loss_reads(results, name):
    """teacher_cache_fields is complete: with the teacher's outputs cached the run's terms and
    metrics equal those of a run that recomputes them (a missing field would fail or differ)."""
    from bench.train.resolve import RunSpec
    from bench.train.run import run

    small = {"synthetic": {"n_train": "240", "n_test": "60", "width": "8"}}
    traces = {}
    for cache in ("on", "off"):
        ov = {**small, "train": {"epochs": "1", "teacher_epochs": "1", "teacher_cache": cache}}
        rec = run(RunSpec("synthetic", "audio", "visual", name, 0, ov, str(results / "cache")), force=True)
        assert rec["status"] == "ok", rec.get("traceback")
        assert rec["speed"]["teacher_cache"] is (cache == "on"), rec["speed"]
        traces[cache] = [(h["terms"], h["val_metric"], h["test_metric"]) for h in rec["history"]]
    assert traces["on"] == traces["off"]
