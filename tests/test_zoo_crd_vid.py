"""CRD and VID (#26's method zoo).

The losses and their gradients against oracles written from the reference formulas with explicit
loops (float64, 1e-6 relative at most); CRD's memory rules (the first call sets Z, which then stays;
the momentum update; negatives of other classes only, the positive first) and its resume from an
epoch checkpoint, bit for bit; VID's variances (trained or fixed); each method for one epoch on
tiny synthetic end to end."""

import math

import pytest
import torch

from bench.api.errors import BenchError
from bench.api.method import MethodContext
from bench.api.registry import METHODS
from bench.methods.crd import ContrastMemory, contrast_index, crd_loss, crd_scores, effective_k, score_path
from bench.methods.vid import initial_log_scale, predicted_variance, regressor, vid_loss
from bench.train.run import NullReporter, run

D = torch.float64
CPU = torch.device("cpu")


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def unit(*shape, seed=0):
    x = rnd(*shape, seed=seed)
    return x / x.norm(dim=1, keepdim=True)


def close(a, b):
    assert abs(a.item() - b.item()) <= 1e-6 * abs(b.item()) and b.item() != 0


def close_grads(ga, gb):
    for x, y in zip(ga, gb):
        assert (x - y).abs().max() <= 1e-6 * y.abs().max() and y.abs().max() > 0


# ---------------------------------------------------------------- CRD: oracles
def nce_oracle(v, bank, cidx, z, n_data, temp):
    """Eq. 18 by loops: P_bj = exp(<bank[cidx[b, j]], v_b> / T) / Z, positive j = 0, noise m / N."""
    b_n, k1 = cidx.shape
    m, noise = k1 - 1, (k1 - 1) / n_data
    total = 0.0
    for b in range(b_n):
        for j in range(k1):
            dot = sum(bank[int(cidx[b, j]), d].item() * v[b, d] for d in range(v.shape[1]))
            p = torch.exp(dot / temp) / z
            if j == 0:
                total = total + torch.log(p / (p + noise + 1e-7))
            else:
                total = total + torch.log(noise / (p + noise + 1e-7))
    assert m == k1 - 1
    return -total / b_n


def raw_scores(v, bank, cidx, temp):
    return torch.tensor([[math.exp(sum(bank[int(cidx[b, j]), d].item() * v[b, d].item() for d in range(v.shape[1]))
                                   / temp) for j in range(cidx.shape[1])] for b in range(cidx.shape[0])], dtype=D)


LABELS = torch.tensor([0, 1, 2, 0, 1, 0, 2, 0, 1, 0, 2, 1])  # 12 samples: 5 / 4 / 3


def test_crd_loss_value_and_gradient_against_eq18_by_loops():
    n, dim, temp = len(LABELS), 5, 0.07
    bank_s, bank_t = unit(n, dim, seed=1), unit(n, dim, seed=2)
    idx = torch.tensor([3, 7, 1, 10])
    cidx = contrast_index(idx, LABELS, 6, torch.Generator().manual_seed(0))
    v_s, v_t = unit(4, dim, seed=3), unit(4, dim, seed=4)
    z_s, z_t = 9.5, 13.25
    a = [v_s.clone().requires_grad_(), v_t.clone().requires_grad_()]
    b = [v_s.clone().requires_grad_(), v_t.clone().requires_grad_()]
    got = crd_loss(a[0], a[1], bank_s, bank_t, cidx, z_s, z_t, n, temp)
    # the student anchor meets the teacher bank and the teacher anchor the student bank
    want = nce_oracle(b[0], bank_t, cidx, z_s, n, temp) + nce_oracle(b[1], bank_s, cidx, z_t, n, temp)
    close(got, want)
    close_grads(torch.autograd.grad(got, a), torch.autograd.grad(want, b))


def test_contrast_index_positive_first_other_classes_only_distinct():
    k = effective_k(LABELS, 16384)
    assert k == 12 - 5  # clamped to the smallest class's negatives (class 0 has 7)
    assert effective_k(LABELS, 16384, "reference") == 16384 and effective_k(LABELS, 4) == 4
    idx = torch.tensor([0, 1, 2, 11, 5])
    g = torch.Generator().manual_seed(5)
    c = contrast_index(idx, LABELS, k, g)
    assert c.shape == (5, k + 1) and torch.equal(c[:, 0], idx)
    for row, i in zip(c, idx):
        neg = row[1:]
        assert (LABELS[neg] != LABELS[i]).all() and len(set(neg.tolist())) == k
    # class 0's pool is exactly k: its rows hold the whole pool, in a drawn order
    assert set(c[0, 1:].tolist()) == set(torch.nonzero(LABELS != 0).flatten().tolist())
    assert torch.equal(c, contrast_index(idx, LABELS, k, torch.Generator().manual_seed(5)))  # the seed decides
    assert not torch.equal(c, contrast_index(idx, LABELS, k, g))  # and the generator advances
    # reference mode beyond a pool: all K drawn, with replacement, still from other classes
    r = contrast_index(idx, LABELS, 20, torch.Generator().manual_seed(1))
    assert r.shape == (5, 21) and all((LABELS[row[1:]] != LABELS[i]).all() for row, i in zip(r, idx))
    with pytest.raises(BenchError, match="one class"):
        effective_k(torch.zeros(6, dtype=torch.long), 10)
    with pytest.raises(BenchError, match="one class label per training sample"):
        effective_k(torch.zeros(2, 4, 4, dtype=torch.long), 10)


def test_memory_sets_z_once_then_freezes_it_and_updates_by_momentum():
    n, dim, temp, mom = len(LABELS), 4, 0.07, 0.5
    mem = ContrastMemory(n, dim, temp, mom, torch.Generator().manual_seed(0), dtype=D)
    s = 1 / math.sqrt(dim / 3)
    assert mem.bank_s.abs().max() <= s and mem.bank_t.abs().max() <= s and (mem.z == -1).all()
    idx = torch.tensor([2, 9, 4])
    cidx = contrast_index(idx, LABELS, 5, torch.Generator().manual_seed(2))
    v_s, v_t = unit(3, dim, seed=7), unit(3, dim, seed=8)
    bs0, bt0 = mem.bank_s.clone(), mem.bank_t.clone()
    a = [v_s.clone().requires_grad_(), v_t.clone().requires_grad_()]
    l_s, l_t = mem(a[0], a[1], idx, cidx)
    z_s = raw_scores(v_s, bt0, cidx, temp).mean().item() * n  # mean over the B x (K+1) scores, times N
    z_t = raw_scores(v_t, bs0, cidx, temp).mean().item() * n
    assert mem.z[0].item() == pytest.approx(z_s, rel=1e-12) and mem.z[1].item() == pytest.approx(z_t, rel=1e-12)
    b = [v_s.clone().requires_grad_(), v_t.clone().requires_grad_()]
    want = nce_oracle(b[0], bt0, cidx, z_s, n, temp) + nce_oracle(b[1], bs0, cidx, z_t, n, temp)
    close(l_s + l_t, want)  # Z is a constant: no gradient flows through it
    close_grads(torch.autograd.grad(l_s + l_t, a), torch.autograd.grad(want, b))
    for bank, before, v in ((mem.bank_s, bs0, v_s), (mem.bank_t, bt0, v_t)):
        for r, i in enumerate(idx.tolist()):
            mix = [mom * before[i, d].item() + (1 - mom) * v[r, d].item() for d in range(dim)]
            norm = math.sqrt(sum(x * x for x in mix))
            assert bank[i].tolist() == pytest.approx([x / norm for x in mix], rel=1e-12)
        others = [i for i in range(n) if i not in idx.tolist()]
        assert torch.equal(bank[others], before[others])
    # a second call with other embeddings keeps Z as it was and scores against the updated banks
    z_before = mem.z.clone()
    bs1, bt1 = mem.bank_s.clone(), mem.bank_t.clone()
    w_s, w_t = unit(3, dim, seed=9), unit(3, dim, seed=10)
    l2 = sum(mem(w_s, w_t, idx, cidx))
    assert torch.equal(mem.z, z_before)
    close(l2, nce_oracle(w_s, bt1, cidx, z_before[0].item(), n, temp)
          + nce_oracle(w_t, bs1, cidx, z_before[1].item(), n, temp))


# ---------------------------------------------------------------- VID: oracle
def block_mean(x, grid):
    b, c, h, w = x.shape
    gh, gw = grid
    return torch.stack([torch.stack([torch.stack([torch.stack([
        x[n, k, i * (h // gh):(i + 1) * (h // gh), j * (w // gw):(j + 1) * (w // gw)].mean()
        for j in range(gw)]) for i in range(gh)]) for k in range(c)]) for n in range(b)])


def vid_oracle(fs, ft, regs, scales, eps=1e-5):
    """Per position: mu = W3 relu(W2 relu(W1 x)) by sums; the code's var = log(1 + exp(a)) + eps."""
    total = 0.0
    for s, t, reg, a in zip(fs, ft, regs, scales):
        s4 = s.reshape(*s.shape, *([1] * (4 - s.dim())))
        t4 = t.reshape(*t.shape, *([1] * (4 - t.dim()))).detach()
        grid = (min(s4.shape[2], t4.shape[2]), min(s4.shape[3], t4.shape[3]))
        s4, t4 = block_mean(s4, grid), block_mean(t4, grid)
        w1, w2, w3 = (reg[i].weight.detach()[:, :, 0, 0] for i in (0, 2, 4))
        var = [torch.log(1 + torch.exp(a[c])) + eps for c in range(len(a))]
        terms, count = 0.0, 0
        for n in range(s4.shape[0]):
            for i in range(grid[0]):
                for j in range(grid[1]):
                    x = [s4[n, c, i, j] for c in range(s4.shape[1])]
                    h1 = [torch.relu(sum(w1[o, c] * x[c] for c in range(len(x)))) for o in range(w1.shape[0])]
                    h2 = [torch.relu(sum(w2[o, c] * h1[c] for c in range(len(h1)))) for o in range(w2.shape[0])]
                    for o in range(w3.shape[0]):
                        mu = sum(w3[o, c] * h2[c] for c in range(len(h2)))
                        terms = terms + 0.5 * ((mu - t4[n, o, i, j]) ** 2 / var[o] + torch.log(var[o]))
                        count += 1
        total = total + terms / count
    return total


def test_vid_value_and_gradient_on_a_1d_teacher_a_2d_student_and_vectors():
    torch.manual_seed(0)
    # stage 1: student 2-D (3, 4, 6) vs teacher 1-D (5, 2) -> grid (2, 1); stage 2: (B, 4) vs (B, 3) vectors
    fs, ft = [rnd(2, 3, 4, 6, seed=1), rnd(2, 4, seed=2)], [rnd(2, 5, 2, seed=3), rnd(2, 3, seed=4)]
    regs = [regressor(3, 5).double(), regressor(4, 3).double()]
    a_init = initial_log_scale(5.0, 1e-5)
    scales = [torch.full((5,), a_init, dtype=D) + 0.3 * rnd(5, seed=5), torch.full((3,), a_init, dtype=D)]
    a = [x.clone().requires_grad_() for x in fs + scales]
    b = [x.clone().requires_grad_() for x in fs + scales]
    got = vid_loss(a[:2], ft, regs, a[2:])
    want = vid_oracle(b[:2], ft, regs, b[2:])
    close(got, want)
    close_grads(torch.autograd.grad(got, a), torch.autograd.grad(want, b))  # features and log-variances
    assert predicted_variance(torch.tensor([a_init], dtype=D), 1e-5).item() == pytest.approx(5.0, rel=1e-12)


def _probes():
    from bench.models import ResNetBackbone
    from bench.models.mlp import MLPBackbone

    torch.manual_seed(0)
    teacher = ResNetBackbone(1, 8, 6, (8, 16, 32), (1, 1, 1), "small")  # 1-D maps (B, C, L)
    student = MLPBackbone(20, 6, (16, 12))  # stage vectors
    with torch.no_grad():
        return student, teacher, student.eval()(torch.randn(6, 20)), teacher.eval()(torch.randn(6, 8, 32))


def test_vid_variances_train_by_default_and_stay_fixed_in_reference_mode():
    student, teacher, so, to = _probes()
    ctx = MethodContext(6, 10, "classification", "audio", "visual", CPU)
    cls = METHODS.get("vid")
    assert cls.dense_ok and cls.category == "Feature" and cls.search_space
    trained = cls(cls.Params(), ctx)
    trained.setup(student, teacher, so, to)  # MLP stage vectors are accepted (a 1x1 conv is a Linear)
    assert trained.pairs == [(0, 1), (1, 2)] and trained.teacher_cache_fields() == {"feature_maps[1]", "feature_maps[2]"}
    assert [r[0].weight.shape for r in trained.modules["regressors"]] == [(16, 16, 1, 1), (32, 12, 1, 1)]
    scales = trained.modules["log_scales"].values()
    ids = {id(p) for p in trained.extra_parameters()}
    assert all(id(a) in ids for a in scales)
    fixed = cls(cls.Params(variance="reference"), ctx)
    fixed.setup(student, teacher, so, to)
    ids = {id(p) for p in fixed.extra_parameters()}
    assert not any(id(a) in ids for a in fixed.modules["log_scales"].values())
    assert set(fixed.modules.state_dict()) == set(trained.modules.state_dict())  # same checkpoint layout
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    for m in (trained, fixed):
        opt = torch.optim.SGD(m.extra_parameters(), lr=0.5)
        before = [a.detach().clone() for a in m.modules["log_scales"].values()]
        m.loss(so, to, y, 1)["vid"].backward()
        opt.step()
        moved = [not torch.equal(a, b) for a, b in zip(m.modules["log_scales"].values(), before)]
        assert all(moved) if m is trained else not any(moved)
    assert fixed.report()["mean_predicted_variance"] == pytest.approx([5.0, 5.0], rel=1e-6)
    with pytest.raises(ValueError, match="variance must be one of"):
        cls.Params(variance="learned").validate()


def test_crd_refuses_dense_tasks_and_a_loss_without_indices():
    student, teacher, so, to = _probes()
    cls = METHODS.get("crd")
    assert not cls.dense_ok and "other classes" in cls.dense_reason and cls.wants_sample_indices
    m = cls(cls.Params(), MethodContext(6, 10, "classification", "audio", "visual", CPU))
    m.setup(student, teacher, so, to)
    assert m.teacher_cache_fields() == {"feature"}
    assert m.modules["embed_s"].linear.weight.shape == (128, 12) and m.modules["embed_t"].linear.weight.shape == (128, 32)
    with pytest.raises(BenchError, match="sample_indices"):
        m.loss(so, to, torch.arange(6), 1)
    # an index-less method is untouched by the mechanism
    assert not any(METHODS.get(n).wants_sample_indices for n in METHODS.names() if n != "crd")


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("crdvid")


def _spec(results, name, epochs="1", sub=""):
    from conftest import tiny

    from bench.train.resolve import RunSpec

    ov = tiny()
    ov["train"]["epochs"] = epochs
    return RunSpec("synthetic", "audio", "visual", name, 0, ov, str(results / sub) if sub else str(results), "cpu")


@pytest.mark.parametrize("name", ["crd", "vid"])
def test_one_epoch_end_to_end(results, name):
    rec = run(_spec(results, name))
    assert rec["status"] == "ok" and math.isfinite(rec["best_metric"]), rec.get("error")
    assert set(rec["history"][0]["terms"]) == {"ce", name} and rec["method_category"] == "Feature"
    info = rec["extra"]["method"]
    if name == "crd":
        n = info["n_data"]
        assert 0 < info["k"] < n and info["k_requested"] == 16384 and all(z > 0 for z in info["z"])
    else:
        assert info["variance"] == "trained" and len(info["mean_predicted_variance"]) == len(info["pairs"])


class _StopAfter(NullReporter):
    def __init__(self, n):
        self.n = n

    def epoch(self, run_id, phase, epoch, info):
        if phase == "student" and epoch == self.n:
            raise KeyboardInterrupt


def test_crd_resumes_bit_identically_with_its_bank_z_and_generator(results):
    from bench.records.files import load_torch_file
    from bench.train.resolve import resolve

    full = run(_spec(results, "crd", "3", "full"))
    cut = _spec(results, "crd", "3", "cut")
    with pytest.raises(KeyboardInterrupt):
        run(cut, _StopAfter(2))
    state = load_torch_file(results / "cut" / "checkpoints" / f"{resolve(cut).run_id}.pt", "checkpoint")["method"]
    assert {"memory.bank_s", "memory.bank_t", "memory.z"} <= set(state["modules"])
    assert state["generator"] is not None and (state["modules"]["memory.z"] > 0).all()
    resumed = run(cut)
    assert resumed["resumed_from_epoch"] == 2
    assert [r["train_loss"] for r in resumed["history"]] == [r["train_loss"] for r in full["history"]]
    assert [r["test_metric"] for r in resumed["history"]] == [r["test_metric"] for r in full["history"]]
    assert resumed["extra"]["method"] == full["extra"]["method"]


def test_crd_scores_whole_bank_and_gathered_rows_agree_in_value_and_gradient(monkeypatch):
    """The two score paths (the whole bank scored, then picked; the rows gathered, then scored) are
    one function: values and gradients agree in float64, and the path follows the shapes only."""
    import bench.methods.crd as crd_mod

    g = torch.Generator().manual_seed(5)
    n, d, b = 40, 8, 6
    labels = torch.arange(n) % 4
    bank_s, bank_t = torch.randn(n, d, generator=g, dtype=D), torch.randn(n, d, generator=g, dtype=D)
    idx = torch.randperm(n, generator=g)[:b]
    cidx = contrast_index(idx, labels, 29, g)
    assert score_path(b, 30, n) == "bank" and score_path(b, 3, n) == "gather"
    got = {}
    for path in ("bank", "gather"):
        monkeypatch.setattr(crd_mod, "score_path", lambda *_a, _p=path: _p)
        v_s = torch.randn(b, d, generator=torch.Generator().manual_seed(9), dtype=D).requires_grad_()
        v_t = torch.randn(b, d, generator=torch.Generator().manual_seed(10), dtype=D).requires_grad_()
        p_s, p_t = crd_scores(v_s, v_t, bank_s, bank_t, cidx, 0.5)
        (p_s.log().sum() * 0.3 + p_t.sum()).backward()
        got[path] = (p_s.detach(), p_t.detach(), v_s.grad, v_t.grad)
    v_s0 = torch.randn(b, d, generator=torch.Generator().manual_seed(9), dtype=D)
    direct = torch.exp(torch.einsum("bkd,bd->bk", bank_t[cidx], v_s0) / 0.5)
    torch.testing.assert_close(got["bank"][0], direct, rtol=1e-12, atol=0)  # the formula, element by element
    for a, c in zip(got["bank"], got["gather"]):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-300)
