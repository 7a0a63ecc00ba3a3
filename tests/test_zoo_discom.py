"""DisCoM-KD (#26): every term and its gradients against an oracle written from the reference
formulas with explicit loops (float64, 1e-6 relative), the gradient reversal's sign and scale, both
modality-label forms, the method's wiring (heads, peer init, refusals) and one epoch end to end."""

import hashlib
import math
from pathlib import Path

import pytest
import torch

from bench.api.config import build_params
from bench.api.errors import BenchError, ConfigError
from bench.api.method import MethodContext
from bench.api.registry import METHODS
from bench.methods.discomkd import discomkd_terms, grad_reverse, modality_targets
from bench.models.mlp import MLPBackbone

D = torch.float64
B0, B1, P, C = 4, 3, 5, 4  # rows of network 0 and 1 differ so that every mean's denominator is checked


def rnd(*shape, seed, relu=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)
    return x.clamp(min=0) + 0.01 if relu else x


def fixed_inputs():
    parts = {k: [rnd(n, P, seed=10 * i + j, relu=True) for j, n in enumerate((B0, B1))]
             for i, k in enumerate(("inv", "inf", "irr"))}
    parts["logits"] = [rnd(B0, C, seed=40), rnd(B1, C, seed=41)]
    ys = [torch.tensor([0, 3, 1, 2]), torch.tensor([2, 2, 0])]
    heads = {"discr": (rnd(2, P, seed=50), rnd(2, seed=51)), "mod_inf": (rnd(2, P, seed=52), rnd(2, seed=53)),
             "mod_irr": (rnd(2, P, seed=54), rnd(2, seed=55)), "aux": (rnd(C, P, seed=56), rnd(C, seed=57))}
    return parts, ys, heads


# ---------------------------------------------------------------- the oracle (loops, from the formulas)
def o_linear(w, b, x):
    return [[sum(w[c, j] * x[i, j] for j in range(x.shape[1])) + b[c] for c in range(w.shape[0])]
            for i in range(x.shape[0])]


def o_lse(row):
    m = max(v.item() for v in row)
    return m + torch.log(sum(torch.exp(v - m) for v in row))


def o_ce_hard(rows, labels):
    return sum(o_lse(r) - r[int(t)] for r, t in zip(rows, labels)) / len(rows)


def o_ce_soft(rows, targets):
    return sum(sum(-targets[i][c] * (r[c] - o_lse(r)) for c in range(len(r))) for i, r in enumerate(rows)) / len(rows)


def o_cos(a, b):
    total = 0.0
    for i in range(a.shape[0]):
        na = max(math.sqrt(sum(a[i, j].item() ** 2 for j in range(a.shape[1]))), 1e-12)
        nb = max(math.sqrt(sum(b[i, j].item() ** 2 for j in range(b.shape[1]))), 1e-12)
        # the norms enter the gradient too: recompute them as tensors
        na_t = torch.sqrt(sum(a[i, j] ** 2 for j in range(a.shape[1]))) if na > 1e-12 else torch.tensor(1e-12, dtype=D)
        nb_t = torch.sqrt(sum(b[i, j] ** 2 for j in range(b.shape[1]))) if nb > 1e-12 else torch.tensor(1e-12, dtype=D)
        total = total + sum(a[i, j] * b[i, j] for j in range(a.shape[1])) / (na_t * nb_t)
    return total / a.shape[0]


def o_terms(parts, ys, heads, lam=1.0, labels="onehot"):
    inv0, inv1 = parts["inv"]
    inf0, inf1 = parts["inf"]
    irr0, irr1 = parts["irr"]
    y = list(ys[0]) + list(ys[1])
    lin = {k: (lambda x, wb=wb: o_linear(wb[0], wb[1], x)) for k, wb in heads.items()}

    def mod_ce(rows0, rows1):  # rows of the first modality, then of the second
        if labels == "onehot":
            return o_ce_hard(rows0 + rows1, [1] * len(rows0) + [0] * len(rows1))
        return o_ce_soft(rows0 + rows1, [[1.0, 1.0]] * len(rows0) + [[0.0, 0.0]] * len(rows1))

    def rev(x):  # value x, gradient -lam: a reversal written without autograd.Function
        return (1 + lam) * x.detach() - lam * x

    logits = [list(parts["logits"][0]), list(parts["logits"][1])]
    return {
        "cl": o_ce_hard(logits[0] + logits[1], y),
        "adv": mod_ce(lin["discr"](rev(inv0)), lin["discr"](rev(inv1))),
        "mod": mod_ce(lin["mod_inf"](inf0) + lin["mod_irr"](irr0), lin["mod_inf"](inf1) + lin["mod_irr"](irr1)),
        "aux_inf": o_ce_hard(lin["aux"](inf0) + lin["aux"](inf1), y),
        "aux_inv": o_ce_hard(lin["aux"](inv0) + lin["aux"](inv1), y),
        "ortho": (o_cos(torch.cat([inf0, inf1]), torch.cat([irr0, irr1]))
                  + o_cos(torch.cat([inf0, inf1]), torch.cat([inv0, inv1]))),
    }


def impl_terms(parts, ys, heads, lam=1.0, labels="onehot"):
    def head(k):
        w, b = heads[k]
        return lambda x: x @ w.T + b

    return discomkd_terms(parts["inv"], parts["inf"], parts["irr"], parts["logits"], ys, discr=head("discr"),
                          mod_inf=head("mod_inf"), mod_irr=head("mod_irr"), aux=head("aux"), grl_lambda=lam,
                          modality_labels=labels)


def leaves(parts, heads):
    p = {k: [t.clone().requires_grad_() for t in v] for k, v in parts.items()}
    h = {k: tuple(t.clone().requires_grad_() for t in v) for k, v in heads.items()}
    flat = [t for v in p.values() for t in v] + [t for v in h.values() for t in v]
    return p, h, flat


WEIGHTS = {"cl": 1.0, "adv": 0.7, "mod": 1.3, "aux_inf": 0.9, "aux_inv": 1.1, "ortho": 1.7}  # distinct: no term hides


@pytest.mark.parametrize("labels", ["onehot", "reference"])
@pytest.mark.parametrize("lam", [1.0, 0.3])
def test_every_term_and_its_gradients_match_the_oracle(labels, lam):
    parts, ys, heads = fixed_inputs()
    pa, ha, fa = leaves(parts, heads)
    pb, hb, fb = leaves(parts, heads)
    got, want = impl_terms(pa, ys, ha, lam, labels), o_terms(pb, ys, hb, lam, labels)
    assert set(got) == set(want) == set(WEIGHTS)
    for k in WEIGHTS:
        assert abs(got[k].item() - want[k].item()) <= 1e-6 * abs(want[k].item()), (k, got[k].item(), want[k].item())
        assert want[k].item() != 0
    ga = torch.autograd.grad(sum(WEIGHTS[k] * got[k] for k in WEIGHTS), fa)
    gb = torch.autograd.grad(sum(WEIGHTS[k] * want[k] for k in WEIGHTS), fb)
    for x, y in zip(ga, gb):
        assert (x - y).abs().max() <= 1e-6 * y.abs().max() and y.abs().max() > 0


def test_each_term_alone_has_the_oracles_gradient():
    parts, ys, heads = fixed_inputs()
    for k in WEIGHTS:
        pa, ha, fa = leaves(parts, heads)
        pb, hb, fb = leaves(parts, heads)
        ga = torch.autograd.grad(impl_terms(pa, ys, ha)[k], fa, allow_unused=True)
        gb = torch.autograd.grad(o_terms(pb, ys, hb)[k], fb, allow_unused=True)
        for x, y in zip(ga, gb):
            assert (x is None) == (y is None), k
            if y is not None:
                assert (x - y).abs().max() <= 1e-6 * max(y.abs().max().item(), 1e-300), k


@pytest.mark.parametrize("lam", [1.0, 0.25, 0.0])
def test_gradient_reversal_flips_and_scales_only_the_features_gradient(lam):
    parts, ys, heads = fixed_inputs()
    pa, ha, _ = leaves(parts, heads)
    adv = impl_terms(pa, ys, ha, lam)["adv"]
    g_inv = torch.autograd.grad(adv, pa["inv"] + list(ha["discr"]))
    # the same CE without the reversal layer
    inv = [t.clone().requires_grad_() for t in parts["inv"]]
    w, b = (t.clone().requires_grad_() for t in heads["discr"])
    plain = torch.nn.functional.cross_entropy(torch.cat(inv) @ w.T + b, torch.tensor([1] * B0 + [0] * B1))
    assert adv.item() == pytest.approx(plain.item(), rel=1e-12)  # identity forward
    g_plain = torch.autograd.grad(plain, inv + [w, b])
    for got, ref in zip(g_inv[:2], g_plain[:2]):
        assert torch.allclose(got, -lam * ref, rtol=1e-12, atol=1e-15)  # the networks: reversed and scaled
    for got, ref in zip(g_inv[2:], g_plain[2:]):
        assert torch.allclose(got, ref, rtol=1e-12, atol=0)  # the discriminator: its plain gradient
    x = torch.randn(3, 2, dtype=D, requires_grad=True)
    (grad_reverse(x, lam) * torch.arange(6, dtype=D).view(3, 2)).sum().backward()
    assert torch.equal(x.grad, -lam * torch.arange(6, dtype=D).view(3, 2))


def test_the_reference_labels_ignore_the_second_modality_and_push_the_first_to_uniform():
    parts, ys, heads = fixed_inputs()
    ref = impl_terms(parts, ys, heads, labels="reference")
    moved = dict(parts, inv=[parts["inv"][0], parts["inv"][1] * 3 + 1], inf=[parts["inf"][0], parts["inf"][1] + 2],
                 irr=[parts["irr"][0], parts["irr"][1] * 0.5])
    again = impl_terms(moved, ys, heads, labels="reference")
    for k in ("adv", "mod"):  # [0, 0] targets: the peer's rows contribute nothing
        assert again[k].item() == pytest.approx(ref[k].item(), rel=1e-12)
    assert impl_terms(moved, ys, heads)["adv"].item() != pytest.approx(ref["adv"].item(), rel=1e-3)  # one-hot: they do
    # [1, 1] targets: -(log p0 + log p1) per first-modality row, minimal (2 log 2) at the uniform prediction
    zero = {k: (torch.zeros_like(w), torch.zeros_like(b)) for k, (w, b) in heads.items()}
    u = impl_terms(parts, ys, zero, labels="reference")
    assert u["adv"].item() == pytest.approx(2 * math.log(2) * B0 / (B0 + B1), rel=1e-12)
    assert u["mod"].item() == pytest.approx(2 * math.log(2) * 2 * B0 / (2 * B0 + 2 * B1), rel=1e-12)
    like = torch.zeros(1, dtype=D)
    assert modality_targets((2, 1), "onehot", like).tolist() == [1, 1, 0]
    assert modality_targets((1, 2), "reference", like).tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    with pytest.raises(ValueError, match="modality_labels must be one of"):
        modality_targets((1, 1), "soft", like)
    with pytest.raises(ValueError, match="inf has \\[4, 2\\] rows per network"):
        impl_terms(dict(parts, inf=[parts["inf"][0], parts["inf"][1][:2]]), ys, heads)


# ---------------------------------------------------------------- the method's wiring
def _method(**params):
    cls = METHODS.get("discomkd")
    torch.manual_seed(0)
    student, peer = MLPBackbone(10, 6, (16, 12)), MLPBackbone(7, 6, (16, 20))  # feature sizes 12 and 20
    xs, xt = torch.randn(8, 10), torch.randn(8, 7)
    m = cls(cls.Params(**params), MethodContext(6, 10, "classification", "audio", "visual", torch.device("cpu")))
    return m, student, peer, xs, xt


def test_heads_parts_gradients_and_peer_init():
    m, student, peer, xs, xt = _method(proj_dim=4)
    before = {k: v.clone() for k, v in peer.state_dict().items()}
    with torch.no_grad():
        m.setup(student, peer, student.eval()(xs), peer.eval()(xt))
    assert not all(torch.equal(before[k], v) for k, v in peer.state_dict().items())  # scratch: re-initialised
    assert m.dims == {"student": 12, "peer": 20} and m.modules["inv_peer"].fc.in_features == 20
    s, t = student.train()(xs), peer.train()(xt)
    for role, out in (("student", s), ("peer", t)):
        parts = m.parts(out, role)
        assert [tuple(p.shape) for p in parts] == [(8, 4)] * 3 and all((p >= 0).all() for p in parts)  # ReLU heads
    terms = m.loss(s, t, torch.arange(8) % 6, epoch=1)
    assert set(terms) == {"cl", "adv", "mod", "aux_inf", "aux_inv", "ortho"}
    assert 0 <= terms["ortho"].item() <= 2  # cosines of non-negative vectors lie in [0, 1]
    sum(terms.values()).backward()
    for net in (student, peer):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert all(p.grad is not None for p in m.extra_parameters())
    m2, student2, peer2, xs2, xt2 = _method(peer_init="pretrained", adv_weight=0.0, ortho_weight=2.0)
    before = {k: v.clone() for k, v in peer2.state_dict().items()}
    with torch.no_grad():
        m2.setup(student2, peer2, student2.eval()(xs2), peer2.eval()(xt2))
    assert all(torch.equal(before[k], v) for k, v in peer2.state_dict().items())  # pretrained: kept
    w = m2.loss(student2.train()(xs2), peer2.train()(xt2), torch.arange(8) % 6, epoch=1)
    assert w["adv"].item() == 0 and w["ortho"].item() > 0
    assert m2.report()["peer_init"] == "pretrained" and m.report()["modality_labels"] == "onehot"


def test_refusals_name_the_field():
    cls = METHODS.get("discomkd")
    assert cls.teacher_trainable and not cls.dense_ok and "image-level" in cls.dense_reason
    with pytest.raises(ConfigError, match="modality_labels must be 'onehot' or 'reference', got 'soft'"):
        build_params(cls.Params, {"modality_labels": "soft"}, "discomkd")
    with pytest.raises(ConfigError, match="peer_init must be 'scratch' or 'pretrained'"):
        build_params(cls.Params, {"peer_init": "cached"}, "discomkd")
    with pytest.raises(ConfigError, match="discomkd.proj_dim"):
        build_params(cls.Params, {"proj_dim": "0"}, "discomkd")
    m, student, _, xs, _ = _method()
    with pytest.raises(BenchError, match="no teacher network"):
        m.setup(student, None, student(xs), None)


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_one_epoch_end_to_end_trains_the_peer_and_leaves_the_cached_teacher_alone(tmp_path, tiny_overrides,
                                                                                    monkeypatch):
    from bench.methods.discomkd import DisCoMKD
    from bench.train.resolve import RunSpec
    from bench.train.run import run

    seen = {}
    setup = DisCoMKD.setup

    def spy(self, student, teacher, s_probe, t_probe):
        setup(self, student, teacher, s_probe, t_probe)
        seen.update(peer=teacher, start={k: v.clone() for k, v in teacher.state_dict().items()})

    monkeypatch.setattr(DisCoMKD, "setup", spy)
    tiny_overrides["train"]["epochs"] = "1"
    recs = {}
    for labels, init, pairing in (("onehot", "scratch", "paired"), ("reference", "pretrained", "unpaired")):
        ov = dict(tiny_overrides, discomkd={"modality_labels": labels, "peer_init": init},
                  train=dict(tiny_overrides["train"], pairing=pairing))  # unpaired: the peer sees same-class others
        recs[init] = rec = run(RunSpec("synthetic", "audio", "visual", "discomkd", 0, ov, str(tmp_path), "cpu"))
        assert rec["status"] == "ok" and math.isfinite(rec["best_metric"]), rec.get("error")
        assert rec["method_category"] == "Cross-Modal" and rec["config"]["teacher_modality"] == "audio"
        terms = rec["history"][-1]["terms"]
        assert set(terms) == {"cl", "adv", "mod", "aux_inf", "aux_inv", "ortho"}
        assert all(math.isfinite(v) and v != 0 for v in terms.values()), terms
        assert rec["extra"]["method"]["modality_labels"] == labels and rec["extra"]["method"]["peer_init"] == init
        assert rec["config"]["method_params"]["modality_labels"] == labels
        assert rec["config"]["train"]["pairing"] == pairing
        assert "teacher_final_test_metric" in rec["extra"]
        assert rec["speed"]["teacher_cache"] is False and "trained with the student" in rec["speed"]["teacher_cache_reason"]
        cached = torch.load(rec["teacher"]["checkpoint"], map_location="cpu", weights_only=False)["model"]
        now = seen["peer"].state_dict()
        assert any(not torch.equal(seen["start"][k], v) for k, v in now.items())  # the peer trained
        starts_from_cache = all(torch.equal(seen["start"][k], cached[k]) for k in cached)
        assert starts_from_cache == (init == "pretrained")
        assert any(not torch.equal(now[k], cached[k]) for k in cached)  # the file is not what the peer became
        if init == "scratch":
            file_sha = _sha(rec["teacher"]["checkpoint"])
    assert recs["pretrained"]["teacher"]["cached"] is True  # the second run read the file the first left
    assert _sha(recs["pretrained"]["teacher"]["checkpoint"]) == file_sha  # and neither run rewrote it
