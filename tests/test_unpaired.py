"""The unpaired protocol and the ucmkd method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import tiny

from bench.methods.ucmkd import (
    cosine_cost,
    feature_alignment,
    label_alignment,
    label_alignment_reference,
    sinkhorn_cost,
)
from bench.train.resolve import RunSpec
from bench.train.run import run
from bench.train.step import class_index, repair_by_class


def np_sinkhorn(c: np.ndarray, eps: float, iters: int) -> float:
    """Plain (non-log) Sinkhorn, written independently: u = a / (K v), v = b / (K^T u)."""
    n, m = c.shape
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    k = np.exp(-c / eps)
    u, v = np.ones(n), np.ones(m)
    for _ in range(iters):
        u = a / (k @ v)
        v = b / (k.T @ u)
    p = u[:, None] * k * v[None, :]
    return float((p * c).sum())


def test_sinkhorn_matches_plain_numpy():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    c = cosine_cost(zs, zt)
    assert float(sinkhorn_cost(c, 0.5, 500)) == pytest.approx(np_sinkhorn(c.numpy(), 0.5, 500), rel=1e-9)
    # cost matrix: 1 - cos, clamped at 0, in [0, 2]
    ref = 1 - (zs / zs.norm(dim=1, keepdim=True)) @ (zt / zt.norm(dim=1, keepdim=True)).T
    assert torch.allclose(c, ref.clamp_min(0))


def test_feature_alignment_is_a_distribution_loss():
    g = torch.Generator().manual_seed(1)
    zs, zt = torch.randn(8, 16, generator=g, dtype=torch.float64), torch.randn(8, 16, generator=g, dtype=torch.float64)
    fa = feature_alignment(zs, zt)
    # unpaired by construction: reordering the teacher batch changes nothing
    assert float(feature_alignment(zs, zt[torch.randperm(8, generator=g)])) == pytest.approx(float(fa), rel=1e-10)
    # identical distributions are cheaper than different ones; small eps -> close to exact matching (0)
    assert float(feature_alignment(zs, zs.clone(), eps=0.01, iters=500)) < 0.05 < float(fa)
    # gradient reaches the student only
    zs.requires_grad_(True)
    zt.requires_grad_(True)
    feature_alignment(zs, zt).backward()
    assert zs.grad is not None and zt.grad is None
    # class-conditional: transport only within classes = weighted sum of per-class OT costs
    y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    cc = feature_alignment(zs.detach(), zt, y_s=y, y_t=y)
    manual = 3 / 8 * sinkhorn_cost(cosine_cost(zs[:3].detach(), zt[:3])) + 5 / 8 * sinkhorn_cost(cosine_cost(zs[3:].detach(), zt[3:]))
    assert float(cc.detach()) == pytest.approx(float(manual.detach()), rel=1e-10)


def test_label_alignment_is_teacher_head_ce():
    head = nn.Linear(4, 3)
    z = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 1, 0])
    assert float(label_alignment(z, head, y)) == pytest.approx(float(nn.functional.cross_entropy(head(z), y)))


def test_label_alignment_reference_form_value_and_gradient():
    """``la_form=reference`` = per sample CE_S - kappa_y * CE_T, kappa = softmax(h_T(z_s)) without
    gradient (UnpairedCMKD's ``sumall`` term), checked in float64 against the formula written out."""
    torch.manual_seed(0)
    head = nn.Linear(4, 3).double()
    logits = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    got = label_alignment_reference(logits, z, head, y)
    g_logits, g_z = torch.autograd.grad(got, (logits, z))

    logits2 = logits.detach().clone().requires_grad_(True)
    z2 = z.detach().clone().requires_grad_(True)
    rows = torch.arange(6)
    ce_s = -torch.log_softmax(logits2, 1)[rows, y]
    q = torch.softmax(head(z2), 1)
    ce_t = -torch.log(q[rows, y])
    kappa_y = q[rows, y].detach()
    want = (ce_s - kappa_y * ce_t).mean()
    w_logits, w_z = torch.autograd.grad(want, (logits2, z2))
    assert float(got) == pytest.approx(float(want), rel=1e-12)
    assert torch.allclose(g_logits, w_logits, rtol=1e-12, atol=1e-14)
    assert torch.allclose(g_z, w_z, rtol=1e-12, atol=1e-14)
    # the sign the docstring states: the term pushes the head's probability of the true class down
    step = z.detach() - 0.1 * g_z
    assert (torch.softmax(head(step), 1)[rows, y] < q[rows, y].detach()).float().mean() > 0.5
    # and it differs from the default form
    assert float(got) != pytest.approx(float(label_alignment(z, head, y)))


def test_la_form_is_recorded_and_runs(tmp_path):
    rec = run(RunSpec("synthetic", "audio", "visual", "ucmkd", 0, tiny({"ucmkd": {"la_form": "reference"},
                                                                          "train": {"epochs": "1"}}), str(tmp_path)))
    assert rec["status"] == "ok" and rec["config"]["method_params"]["la_form"] == "reference"
    default = run(RunSpec("synthetic", "audio", "visual", "ucmkd", 0, tiny({"train": {"epochs": "1"}}), str(tmp_path)))
    assert default["config"]["method_params"]["la_form"] == "head_ce" and default["run_id"] != rec["run_id"]
    assert default["history"][0]["terms"]["la"] != rec["history"][0]["terms"]["la"]


def test_repairing_keeps_labels_and_breaks_pairs():
    labels = torch.arange(600) % 6
    by = class_index(labels)
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(0, 600, 7)
    t = repair_by_class(labels, idx, by, g)
    assert torch.equal(labels[t], labels[idx])  # same class
    assert (t != idx).float().mean() > 0.9  # different samples
    assert not torch.equal(t, repair_by_class(labels, idx, by, g))  # redrawn every step


def test_unpaired_protocol_runs_and_is_recorded(tmp_path):
    ov = tiny({"train": {"pairing": "unpaired", "epochs": "2"}})
    recs = {}
    for m in ("ucmkd", "logit"):
        recs[m] = run(RunSpec("synthetic", "audio", "visual", m, 0, ov, str(tmp_path)))
        assert recs[m]["status"] == "ok", recs[m].get("traceback")
        assert recs[m]["config"]["train"]["pairing"] == "unpaired"
        assert {"ce", "fa", "la"} <= set(recs["ucmkd"]["history"][0]["terms"])
    paired = run(RunSpec("synthetic", "audio", "visual", "logit", 0, tiny({"train": {"epochs": "2"}}), str(tmp_path)))
    assert paired["run_id"] != recs["logit"]["run_id"]  # the protocol is part of the run's identity
    assert paired["history"] != recs["logit"]["history"]
