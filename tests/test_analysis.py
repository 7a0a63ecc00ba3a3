"""Analyses on synthetic checkpoints (figures are real images) and the Gaussian MI estimator."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.report.analysis import gaussian_mi, onehot_minus_one


def test_gaussian_mi_matches_closed_form():
    rng = np.random.default_rng(0)
    p, q = 3, 2
    a = rng.normal(size=(p + q, p + q))
    cov = a @ a.T + 0.5 * np.eye(p + q)
    x = rng.multivariate_normal(np.zeros(p + q), cov, size=200_000)
    truth = 0.5 * (np.linalg.slogdet(cov[:p, :p])[1] + np.linalg.slogdet(cov[p:, p:])[1] - np.linalg.slogdet(cov)[1])
    est = gaussian_mi(x[:, :p], x[:, p:], shrink=False)
    assert est == pytest.approx(truth, rel=0.02)
    # canonical-correlation form of the same quantity
    sx, sy, sxy = cov[:p, :p], cov[p:, p:], cov[:p, p:]
    m = np.linalg.inv(np.linalg.cholesky(sx)) @ sxy @ np.linalg.inv(np.linalg.cholesky(sy)).T
    rho = np.linalg.svd(m, compute_uv=False)
    assert truth == pytest.approx(-0.5 * np.sum(np.log(1 - rho ** 2)))
    # independent variables: ~0
    assert abs(gaussian_mi(rng.normal(size=(50_000, 3)), rng.normal(size=(50_000, 2)), shrink=False)) < 1e-3


def test_label_mi_equals_lda_form():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, size=5000)
    mu = rng.normal(size=(4, 3)) * 2
    x = mu[y] + rng.normal(size=(5000, 3))
    i_onehot = gaussian_mi(x, onehot_minus_one(y, 4), shrink=False)
    xc = x - x.mean(0)
    sw = sum(((x[y == c] - x[y == c].mean(0)).T @ (x[y == c] - x[y == c].mean(0))) for c in range(4)) / len(x)
    lda = 0.5 * (np.linalg.slogdet(xc.T @ xc / len(x))[1] - np.linalg.slogdet(sw)[1])
    assert i_onehot == pytest.approx(lda, rel=1e-9)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    res = tmp_path_factory.mktemp("analysis") / "res"
    r = CliRunner().invoke(app, ["run", "--methods", "none,feat,fdcmkd,logit", "--datasets", "synthetic",
                                 "--epochs", "2", "--teacher-epochs", "3", "--results", str(res), "--save-model",
                                 "--set", "synthetic.n_train=480", "--set", "synthetic.n_test=180",
                                 "--set", "synthetic.width=8"])
    assert r.exit_code == 0, r.output
    return res


SETS = ["--set", "synthetic.n_train=480", "--set", "synthetic.n_test=180", "--set", "synthetic.width=8"]


def _image_ok(path) -> None:
    from PIL import Image

    a = np.asarray(Image.open(path).convert("L"))
    assert a.shape[0] > 100 and a.std() > 5


@pytest.mark.parametrize("kind", ["similarity", "means", "tsne", "cch"])
def test_analyze_commands(trained, tmp_path, kind):
    out = tmp_path / "an"
    r = CliRunner().invoke(app, ["analyze", kind, "-d", "synthetic", "-r", str(trained), "-o", str(out), *SETS])
    assert r.exit_code == 0, r.output
    pngs = list(out.glob("*.png"))
    pdfs = list(out.glob("*.pdf"))
    assert len(pngs) == 1 and len(pdfs) == 1 and pdfs[0].stat().st_size > 1000
    _image_ok(pngs[0])
    rows = list(csv.DictReader(open(next(out.glob("*.csv")))))
    if kind == "similarity":
        v = rows[0]
        assert all(-1 <= float(v[k]) <= 1 for k in ("cos_raw", "cos_low", "cos_high")) and int(v["n_test"]) == 180
    elif kind == "means":
        assert len(rows) == 32  # width 8 -> 4w = 32-d features
    elif kind == "tsne":
        assert {x["method"] for x in rows} == {"none", "feat", "fdcmkd"} and len(rows) == 3 * 2 * 180
    else:
        assert {x["direction"] for x in rows} == {"a2v", "v2a"} and len(rows) == 6
        assert all(x["measured_mean_gain"] != "" and x["verdict"].startswith("KD") for x in rows)


def test_analyze_refuses_without_models(tmp_path):
    r = CliRunner().invoke(app, ["analyze", "similarity", "-r", str(tmp_path), *SETS])
    assert r.exit_code == 2 and "no trained audio model" in " ".join(r.output.split())
