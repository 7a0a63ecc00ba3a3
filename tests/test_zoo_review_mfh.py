"""ReviewKD, MFH and MGDFR (#26).

Values and gradients against oracles written from the reference formulas with explicit loops
(float64, 1e-6 relative at most): ReviewKD's ABF + HCL on maps of different grids and channels,
MFH's permutation salience on a hand-built teacher whose salient channels are known and its
ranking, the KD terms of MFH and MGDFR, MGDFR's alpha schedule against the reference's loop;
then each method one epoch end to end on tiny synthetic (ReviewKD also on the dense NYU fixture)."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from bench.api.method import relative_epochs
from bench.api.registry import METHODS
from bench.methods.mfh import (
    channel_salience,
    draw_permutations,
    least_salient,
    mfh_kd_loss,
    min_max,
    permutation_salience,
    remove_channels,
)
from bench.methods.mgdfr import mgdfr_alpha, mgdfr_loss
from bench.methods.reviewkd import ABF, hcl_loss, reviewkd_loss, reviewkd_warmup
from bench.models import ModelOutput

D = torch.float64


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def close(a, b):
    a, b = float(a.detach()), float(b.detach())
    assert abs(a - b) <= 1e-6 * abs(b) and b != 0, (a, b)


def grads_close(ga, gb):
    for x, y in zip(ga, gb):
        assert (x - y).abs().max() <= 1e-6 * y.abs().max() and y.abs().max() > 0


# ---------------------------------------------------------------- ReviewKD oracle
def o_resize(x, size):
    """Per axis: repeat (integer factor) where the target grows, block mean where it shrinks."""
    for axis, n in ((2, size[0]), (3, size[1])):
        m = x.shape[axis]
        if n > m:
            x = x.repeat_interleave(n // m, dim=axis)
        elif n < m:
            f = m // n
            parts = [x.narrow(axis, i * f, f).mean(dim=axis, keepdim=True) for i in range(n)]
            x = torch.cat(parts, dim=axis)
    return x


def o_bn(x, bn):
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)


def o_conv3(x, w):
    b, c, h, wd = x.shape
    p = torch.zeros(b, c, h + 2, wd + 2, dtype=x.dtype)
    p[:, :, 1:-1, 1:-1] = x
    out = 0
    for i in range(3):
        for j in range(3):
            out = out + torch.einsum("oc,bchw->bohw", w[:, :, i, j], p[:, :, i:i + h, j:j + wd])
    return out


def o_abf(abf, x, residual, out_size):
    x = o_bn(torch.einsum("oc,bchw->bohw", abf.conv1[0].weight[:, :, 0, 0], x), abf.conv1[1])
    if abf.att is not None:
        r = o_resize(residual, x.shape[-2:])
        z = torch.einsum("oc,bchw->bohw", abf.att[0].weight[:, :, 0, 0], torch.cat([x, r], 1))
        z = torch.sigmoid(z + abf.att[0].bias.view(1, -1, 1, 1))
        x = x * z[:, 0:1] + r * z[:, 1:2]
    x = o_resize(x, out_size)
    return o_bn(o_conv3(x, abf.conv2[0].weight), abf.conv2[1]), x


def o_mse(a, b):
    return ((a - b) ** 2).sum() / a.numel()


def o_hcl(fs, ft):
    total = 0
    for s, t in zip(fs, ft):
        h, w = s.shape[-2:]
        loss, weights = o_mse(s, t), [1.0]
        for lv in (4, 2, 1):
            if lv < max(h, w):
                size = (min(lv, h), min(lv, w))
                weights.append(weights[-1] / 2)
                loss = loss + weights[-1] * o_mse(o_resize(s, size), o_resize(t, size))
        total = total + loss / sum(weights)
    return total


def test_reviewkd_abf_and_hcl_match_the_oracle_with_gradients():
    """Three student levels (4x4, 2x2, pooled) reviewed onto teacher grids (8x2, 4x1, 1x1) with
    other channel counts: values and gradients w.r.t. every student map and ABF weight."""
    torch.manual_seed(0)
    c_s, c_t, grids = [4, 6, 5], [3, 2, 7], [(8, 2), (4, 1), (1, 1)]
    abfs = nn.ModuleList(ABF(c, 5, ct, fuse=k < 2) for k, (c, ct) in enumerate(zip(c_s, c_t))).double().train()
    for m in abfs.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = rnd(m.num_features, seed=m.num_features) * 0.3 + 1
            m.bias.data = rnd(m.num_features, seed=m.num_features + 50) * 0.2
    f_s = [rnd(3, 4, 4, 4, seed=1), rnd(3, 6, 2, 2, seed=2), rnd(3, 5, seed=3)]
    f_t = [rnd(3, 3, 8, 2, seed=4), rnd(3, 2, 4, 1, seed=5), rnd(3, 7, seed=6)]
    a = [x.clone().requires_grad_() for x in f_s]
    b = [x.clone().requires_grad_() for x in f_s]
    va = reviewkd_loss(abfs, a, f_t)
    outs, res = [None] * 3, None
    for k in (2, 1, 0):
        x = b[k] if b[k].dim() == 4 else b[k][:, :, None, None]
        outs[k], res = o_abf(abfs[k], x, res, grids[k])
    vb = o_hcl(outs, [t if t.dim() == 4 else t[:, :, None, None] for t in f_t])
    close(va, vb)
    params = list(abfs.parameters())
    grads_close(torch.autograd.grad(va, a + params, allow_unused=False),
                torch.autograd.grad(vb, b + params, allow_unused=False))


def test_hcl_on_square_maps_is_mdistillers_formula():
    """8x8 maps: (MSE + MSE4/2 + MSE2/4 + MSE1/8) / (1 + 1/2 + 1/4 + 1/8); 1x1 maps: MSE alone."""
    s, t = rnd(2, 3, 8, 8, seed=7).requires_grad_(), rnd(2, 3, 8, 8, seed=8)
    p, q = rnd(2, 4, seed=9).requires_grad_(), rnd(2, 4, seed=10)
    got = hcl_loss([s, p], [t, q])
    want = ((o_mse(s, t) + o_mse(o_resize(s, (4, 4)), o_resize(t, (4, 4))) / 2
             + o_mse(o_resize(s, (2, 2)), o_resize(t, (2, 2))) / 4 + o_mse(o_resize(s, (1, 1)), o_resize(t, (1, 1))) / 8)
            / 1.875 + o_mse(p, q))
    close(got, want)
    grads_close(torch.autograd.grad(got, [s, p]), torch.autograd.grad(want, [s, p]))


def test_reviewkd_warmup_is_relative_by_default_and_absolute_on_request():
    cls = METHODS.get("reviewkd")
    p = cls.Params()
    assert p.warmup_epochs(240) == 20 and p.warmup_epochs(10) == 1 and p.warmup_epochs(30) == 3
    assert cls.Params(warmup_mode="absolute").warmup_epochs(10) == 20
    assert [reviewkd_warmup(e, 3) for e in (1, 2, 3, 4)] == [1 / 3, 2 / 3, 1.0, 1.0]
    with pytest.raises(ValueError, match="resize"):
        cls.Params(resize="bilinear").validate()


# ---------------------------------------------------------------- MFH salience and ranking
def o_salience(f, z_ref, head, perms):
    r_n, d_n, b = perms.shape
    out = torch.zeros(r_n, d_n, dtype=f.dtype)
    for r in range(r_n):
        for d in range(d_n):
            g = f.clone()
            for i in range(b):
                g[i, d] = f[perms[r, d, i], d]
            z = head(g)
            out[r, d] = sum(((z[i, c] - z_ref[i, c]) ** 2) for i in range(b) for c in range(z.shape[1])) / z.numel()
    return out


def known_head():
    """A teacher head on 6 channels whose channels 0 and 3 are read with zero weight (never salient)
    and channel 5 with a large one (the most salient)."""
    head = nn.Linear(6, 3).double()
    with torch.no_grad():
        head.weight.copy_(rnd(3, 6, seed=11))
        head.weight[:, [0, 3]] = 0
        head.weight[:, 5] *= 10
    return head


def test_permutation_salience_matches_the_oracle_and_finds_the_known_channels():
    head = known_head()
    f = rnd(5, 6, seed=12)
    perms = draw_permutations(3, 6, 5, torch.Generator().manual_seed(0))
    assert all(sorted(p.tolist()) == list(range(5)) for p in perms.reshape(-1, 5))
    with torch.no_grad():
        z_ref = head(f)  # a reference network that agrees with the unpermuted teacher
        got = permutation_salience(f, z_ref, head, perms, chunk_elems=40)  # several channel chunks
        want = o_salience(f, z_ref, head, perms)
    assert (got - want).abs().max() <= 1e-6 * want.abs().max()
    mean = min_max(got.mean(0))
    assert mean[0] == 0 and mean[3] == 0 and mean[5] == 1 and (mean[[1, 2, 4]] > 0).all()
    assert set(least_salient(mean, 1 / 3).tolist()) == {0, 3}  # int(1/3 x 6) = 2 removed
    assert least_salient(mean, 0.75).tolist()[:2] in ([0, 3], [3, 0]) and len(least_salient(mean, 0.75)) == 4


class _Net(nn.Module):
    """A 'network' whose feature is its input and whose logits are ``head(feature)``."""

    def __init__(self, head):
        super().__init__()
        self.classifier = head

    def forward(self, x):
        return ModelOutput(self.classifier(x), x, x)


class _Adapter:
    def batch(self, split, idx, mods, device, train, gen):
        return {m: split[m][idx] for m in mods}, None


class _Split(dict):
    def __len__(self):
        return len(self["t"])


def test_channel_salience_over_batches_and_the_last_batch_quirk():
    """On the training split (7 samples in batches of 3, 3, 1: the 1-sample batch is skipped): the
    mean over batches by default, the last counted batch alone with the RAVDESS quirk; both drawn
    from the seed exactly as the oracle draws them."""
    head = known_head()
    x = rnd(7, 6, seed=13)
    split = _Split(t=x, s=x)
    data = SimpleNamespace(adapter=_Adapter(), train_split=split, seed=3, teacher_modality="t", student_modality="s",
                           device=torch.device("cpu"))
    teacher = _Net(head)
    ref = _Net(copy_head(head))  # agrees with the teacher: only permutations move the distance
    got_all = channel_salience(data, teacher, ref, repeats=2, batch_size=3, every_batch=True, salt=5)
    got_last = channel_salience(data, teacher, ref, repeats=2, batch_size=3, every_batch=False, salt=5)
    gen = torch.Generator().manual_seed((3 * 1_000_003 + 5 * 104_729) % (2**62))
    order = torch.randperm(7, generator=gen)
    per_batch = []
    with torch.no_grad():
        for idx in (order[0:3], order[3:6]):
            f = x[idx]
            per_batch.append(o_salience(f, head(f), head, draw_permutations(2, 6, 3, gen)).mean(0))
    want_all, want_last = (per_batch[0] + per_batch[1]) / 2, per_batch[1]
    assert (got_all - want_all).abs().max() <= 1e-6 * want_all.abs().max()
    assert (got_last - want_last).abs().max() <= 1e-6 * want_last.abs().max()
    assert got_all[0] == 0 and got_all[3] == 0 and int(got_all.argmax()) == 5


def copy_head(head):
    h = nn.Linear(6, 3).double()
    h.load_state_dict(head.state_dict())
    return h


def test_removed_channels_are_set_to_their_batch_mean_or_zero():
    f = rnd(4, 5, seed=14)
    removed = torch.tensor([1, 4])
    g = remove_channels(f, removed, "mean")
    for d in range(5):
        for i in range(4):
            want = sum(f[k, d] for k in range(4)) / 4 if d in (1, 4) else f[i, d]
            assert abs(g[i, d] - want) <= 1e-12
    z = remove_channels(f, removed, "zero")
    assert (z[:, [1, 4]] == 0).all() and torch.equal(z[:, [0, 2, 3]], f[:, [0, 2, 3]])


def test_the_vggsound_channel_rule_is_the_reference_option():
    """channels=reference removes the upper half of the indices whatever their salience."""
    m = METHODS.get("mfh")
    obj = m.__new__(m)
    obj.dim = 8
    obj.rank(torch.arange(8.0).flip(0), 0.75, "reference")  # channel 7 least salient, 0 most
    assert obj.removed.tolist() == [4, 5, 6, 7]
    obj.rank(torch.arange(8.0).flip(0), 0.75, "salience")
    assert sorted(obj.removed.tolist()) == [2, 3, 4, 5, 6, 7]


# ---------------------------------------------------------------- KD terms
def o_kl_sum(z_s, z_t, tau):
    total = 0
    for i in range(z_s.shape[0]):
        ps = torch.softmax(z_s[i] / tau, 0)
        pt = torch.softmax(z_t[i] / tau, 0)
        total = total + sum(pt[c] * (torch.log(pt[c]) - torch.log(ps[c])) for c in range(z_s.shape[1]))
    return total


@pytest.mark.parametrize("reduction,tau", [("mean", 1.0), ("batchmean", 1.0), ("mean", 2.0)])
def test_mfh_kd_matches_kldivloss_conventions(reduction, tau):
    z_s, z_t = rnd(4, 5, seed=15), rnd(4, 5, seed=16)
    a, b = z_s.clone().requires_grad_(), z_s.clone().requires_grad_()
    got = mfh_kd_loss(a, z_t, tau, reduction)
    want = o_kl_sum(b, z_t, tau) / (20 if reduction == "mean" else 4) * tau**2
    close(got, want)
    grads_close(torch.autograd.grad(got, [a]), torch.autograd.grad(want, [b]))
    if reduction == "mean" and tau == 1.0:  # the code: nn.KLDivLoss(reduction="mean")(log_softmax, softmax)
        ref = nn.KLDivLoss(reduction="mean")(torch.log_softmax(z_s, 1), torch.softmax(z_t, 1))
        close(got, ref)


def test_mgdfr_loss_matches_the_oracle():
    z_s, z_t, y = rnd(4, 5, seed=17), rnd(4, 5, seed=18), torch.tensor([0, 3, 1, 4])
    a, b = z_s.clone().requires_grad_(), z_s.clone().requires_grad_()
    ce, kd = mgdfr_loss(a, z_t, y, alpha=0.25, tau=4.0)
    got = ce + kd
    o_ce = -sum(torch.log_softmax(b[i], 0)[y[i]] for i in range(4)) / 4
    want = 0.75 * o_ce + 0.25 * o_kl_sum(b, z_t, 4.0) / 4 * 16
    close(got, want)
    grads_close(torch.autograd.grad(got, [a]), torch.autograd.grad(want, [b]))


def test_mgdfr_alpha_schedule_is_the_reference_loop_rescaled():
    alpha, seen = 0.5, []  # main-MGDFR.py: the epoch runs, then alpha *= 0.5 if (epoch + 1) % 30 == 0
    for epoch0 in range(100):
        seen.append(alpha)
        alpha *= 0.5 if (epoch0 + 1) % 30 == 0 else 1.0
    assert [mgdfr_alpha(e, 0.5, 30) for e in range(1, 101)] == seen
    p = METHODS.get("mgdfr").Params()
    assert p.halving_period(100) == 30 and p.halving_period(10) == 3 and p.co_training_epochs(10) == 10
    assert [mgdfr_alpha(e, 0.5, p.halving_period(10)) for e in range(1, 11)] == [0.5] * 3 + [0.25] * 3 + [0.125] * 3 + [0.0625]
    absolute = METHODS.get("mgdfr").Params(epochs_mode="absolute")
    assert absolute.halving_period(10) == 30 and absolute.co_training_epochs(10) == 100
    assert relative_epochs(30, 100, 10) == 3


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("review-mfh")


@pytest.mark.parametrize("name", ["reviewkd", "mfh", "mgdfr"])
def test_one_epoch_end_to_end(results, tiny_overrides, name):
    from bench.train.resolve import RunSpec
    from bench.train.run import run

    tiny_overrides["train"]["epochs"] = "1"
    rec = run(RunSpec("synthetic", "audio", "visual", name, 0, tiny_overrides, str(results), "cpu"))
    assert rec["status"] == "ok" and math.isfinite(rec["best_metric"]), rec.get("error")
    terms = rec["history"][-1]["terms"]
    kd = {"reviewkd": "hcl", "mfh": "kd", "mgdfr": "kd"}[name]
    assert math.isfinite(terms[kd]) and terms[kd] > 0, terms
    info = rec["extra"]["method"]
    if name == "reviewkd":
        assert info["pairs"][-1] == ["pooled", "pooled"] and info["warmup_epochs"] == 1
        assert rec["speed"]["teacher_cache"] in (True, False)
    else:
        assert info["prepared"] is True and len(info["removed_channels"]) == int(0.75 * len(info["salience"]))
        assert min(info["salience"]) == 0 and max(info["salience"]) == 1
    if name == "mfh":  # the unmasked head on the cached teacher scores as the teacher did on validation
        import torch

        teacher = torch.load(next(results.glob("teachers/synthetic/audio/*.pt")), weights_only=True)
        assert info["teacher_val_top1"] == pytest.approx(teacher["info"]["val_metric"])
        assert 0 <= info["masked_teacher_val_top1"] <= 100
    if name == "mgdfr":  # the co-trained teacher is this run's alone: never from or into the output cache
        assert rec["speed"]["teacher_cache"] is False and "co-training" in rec["speed"]["teacher_cache_reason"]
        assert info["co_training_epochs"] == 1 and info["alpha"] == [0.5]


def test_mgdfr_is_deterministic_from_the_seed_and_leaves_the_teacher_file_alone(tmp_path):
    """Two MGDFR runs of one seed rank the same channels and train alike (co-training, salience and
    KD all reseeded from the seed); the cached teacher file is byte-identical afterwards (the
    co-training changed only the run's copy). MFH's salience is the same code."""
    from bench.train.resolve import RunSpec
    from bench.train.run import run

    ov = {"synthetic": {"n_train": "160", "n_test": "60", "width": "8"},
          "train": {"epochs": "1", "teacher_epochs": "1", "batch_size": "32"}}
    spec = RunSpec("synthetic", "audio", "visual", "mgdfr", 0, ov, str(tmp_path), "cpu")
    a = run(spec)
    files = sorted((tmp_path / "teachers").rglob("*.pt"))
    before = {p: p.read_bytes() for p in files}
    b = run(spec, force=True)
    assert a["extra"]["method"]["removed_channels"] == b["extra"]["method"]["removed_channels"]
    assert a["extra"]["method"]["salience"] == b["extra"]["method"]["salience"]
    assert a["history"][0]["terms"] == b["history"][0]["terms"]
    assert files and {p: p.read_bytes() for p in files} == before


def test_mfh_and_mgdfr_refuse_dense_tasks_and_reviewkd_trains_on_one(tmp_path):
    from test_dataset_nyudv2 import make_mat, ov

    from bench.api.errors import BenchError
    from bench.train.resolve import RunSpec, build_adapter, resolve
    from bench.train.run import run

    root = tmp_path / "raw"
    make_mat(root)
    build_adapter("nyudv2", ov(root, tmp_path / "c")).prepare()
    for name in ("mfh", "mgdfr"):
        with pytest.raises(BenchError, match="pooled feature"):
            resolve(RunSpec("nyudv2", "depth", "rgb", name, 0, ov(root, tmp_path / "c"), str(tmp_path / "res")))
    rec = run(RunSpec("nyudv2", "depth", "rgb", "reviewkd", 0, ov(root, tmp_path / "c"), str(tmp_path / "res")))
    assert rec["status"] == "ok", rec.get("traceback")
    assert rec["metric"] == "mIoU" and math.isfinite(rec["history"][-1]["terms"]["hcl"])


def test_a_teacher_whose_logits_are_not_its_classifier_of_its_feature_is_refused():
    from bench.api.errors import BenchError
    from bench.api.method import MethodContext

    head = known_head()
    t = _Net(head)
    probe = ModelOutput(rnd(2, 3, seed=19), rnd(2, 6, seed=20), rnd(2, 6, seed=20))
    cls = METHODS.get("mfh")
    m = cls(cls.Params(), MethodContext(3, 10, "classification", "t", "s", torch.device("cpu")))
    with pytest.raises(BenchError, match="classifier"):
        m.setup(t, t, probe, probe)
