"""FD-CMKD's premise, checked against a dataset's ground truth (``bench analyze premise``).

FD-CMKD assumes that the low-frequency components (DFT over the D entries of the pooled feature)
of a network's feature carry the modality-general knowledge and the high-frequency components the
modality-specific knowledge. On a dataset whose splits carry their latent causes as
``truth.<name>`` side arrays (``synthetic`` does: the shared latent ``z`` and each modality's own
latent ``s_<modality>``) both kinds are known per sample. :func:`premise_probe` fits a linear
(ridge) probe from each band of a trained unimodal model's features to each latent and reports
how much of it the band recovers on the test split.

Two numbers per (band, latent):

* ``r2``: R^2 of the latent itself. Includes the class-mean part, which any good classifier's
  feature encodes;
* ``r2_within``: R^2 of the latent minus its class mean (estimated on train): the per-sample
  knowledge beyond the label (the part of ``s_<teacher>`` that a student of the other modality can never observe).

Controls: ``s_<other>`` (the other modality's private latent: the model never saw it, so its
``r2_within`` must be ~0), the raw input (``input``: what a linear read-out of the modality itself
recovers), and the same DFT split after a random permutation of the feature channels
(``low_perm``/``high_perm``: what the split gives when channel order carries no structure).
The premise predicts: ``low`` recovers ``z`` better than ``high``, and ``high`` recovers
``s_<teacher>`` better than ``low``, beyond the permuted control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.api.errors import BenchError
from bench.methods.fdcmkd import decompose
from bench.report.analysis import features, unimodal_model
from bench.train.loop import load_splits
from bench.train.resolve import build_adapter, build_train_config

BANDS = ("raw", "low", "high", "low_perm", "high_perm", "input")


ALPHAS = tuple(10.0 ** np.arange(-2, 4.5, 0.5))


def ridge_r2(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
             alphas: tuple[float, ...] = ALPHAS) -> float:
    """Test R^2 (pooled over the target's dimensions) of a ridge regression fitted on train.

    Features are z-scored with train statistics (constant columns dropped) and the penalty is
    chosen by leave-one-out on train, so a band with more columns cannot win by over-fitting
    (a latent the features do not carry scores ~0, not below).
    """
    from sklearn.linear_model import RidgeCV

    mu, sd = x_tr.mean(0), x_tr.std(0)
    keep = sd > 1e-8 * max(float(sd.max()), 1e-30)
    a, b = (x_tr[:, keep] - mu[keep]) / sd[keep], (x_te[:, keep] - mu[keep]) / sd[keep]
    pred = RidgeCV(alphas=alphas).fit(a, y_tr).predict(b)
    return float(1.0 - ((y_te - pred) ** 2).sum() / ((y_te - y_te.mean(0)) ** 2).sum())


def _rank(x: np.ndarray) -> int:
    """Numerical rank of the centred matrix: a band of a D-vector spans about D/2 directions."""
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    return int((s > 1e-6 * s[0]).sum()) if s.size and s[0] > 0 else 0


def _bands(x: np.ndarray, ratio: float, perm: np.ndarray) -> dict[str, np.ndarray]:
    """FD-CMKD's split of (N, D) features (DC removed, as with Scale on) and the permuted control."""
    t = torch.from_numpy(x).double()
    low, high = decompose(t, ratio, remove_dc=True)
    plow, phigh = decompose(t[:, perm], ratio, remove_dc=True)
    return {"raw": x, "low": low.numpy(), "high": high.numpy(), "low_perm": plow.numpy(), "high_perm": phigh.numpy()}


def premise_probe(results: str | Path, modality: str = "audio", overrides: dict[str, dict[str, str]] | None = None,
                  seed: int = 0, ratio: float = 0.5, tap: str = "pre", device: str = "cpu",
                  dataset: str = "synthetic") -> list[dict[str, Any]]:
    """Probe the cached unimodal ``modality`` model (a teacher) of ``results`` against the truth.

    ``overrides`` select the dataset configuration (``{"synthetic": {"gap": "0.5"}}``) whose
    teacher was trained (``bench run ... --set synthetic.gap=0.5``). Returns one row per (band,
    latent): ``{"band", "latent", "r2", "r2_within", "dims"}``; ``dims`` is the band's
    numerical rank on train (the directions the probe can use).
    """
    overrides = overrides or {}
    adapter = build_adapter(dataset, overrides)
    modality = adapter.modality(modality).name
    splits = load_splits(adapter, build_train_config(adapter, overrides), seed=seed)  # the teacher's splits
    tr, te = splits["train"], splits["test"]
    names = sorted(k[len("truth."):] for k in tr.aux if k.startswith("truth."))
    if not names:
        raise BenchError(f"dataset {adapter.name!r} carries no ground truth (truth.* side arrays): "
                         f"the premise probe needs the latent causes of every sample (synthetic has them)")
    # the model's own latents first, then the shared ones, then the other modalities' (controls)
    order = {f"s_{modality}": 1}
    latents = sorted(names, key=lambda n: (order.get(n, 0 if not n.startswith("s_") else 2), n))
    dev = torch.device(device)
    model, _ = unimodal_model(Path(results), adapter, modality, seed, dev)
    y = tr.labels.numpy()
    class_means = {lat: np.stack([tr.aux[f"truth.{lat}"].double().numpy()[y == c].mean(0)
                                  for c in range(adapter.num_classes)]) for lat in latents}
    perm = np.random.default_rng(seed).permutation(model.feature_dim)
    xs = {name: _bands(features(model, adapter, sp, modality, dev, tap).astype(np.float64), ratio, perm)
          for name, sp in (("train", tr), ("test", te))}
    for name, sp in (("train", tr), ("test", te)):
        xs[name]["input"] = sp.inputs[modality].reshape(len(sp), -1).double().numpy()
    rows = []
    for band in BANDS:
        a, b = xs["train"][band], xs["test"][band]
        dims = _rank(a)
        for lat in latents:
            y_tr, y_te = (sp.aux[f"truth.{lat}"].double().numpy() for sp in (tr, te))
            w_tr = y_tr - class_means[lat][tr.labels.numpy()]
            w_te = y_te - class_means[lat][te.labels.numpy()]
            rows.append({"band": band, "latent": lat, "r2": ridge_r2(a, y_tr, b, y_te),
                         "r2_within": ridge_r2(a, w_tr, b, w_te), "dims": dims})
    return rows


def premise_markdown(rows: list[dict[str, Any]]) -> str:
    """The probe rows as a Markdown table: bands as rows, ``r2 / r2_within`` per latent."""
    lats = list(dict.fromkeys(r["latent"] for r in rows))
    out = ["| band | dims | " + " | ".join(f"{lat}: R² / within" for lat in lats) + " |",
           "|---|---:|" + "---:|" * len(lats)]
    for band in dict.fromkeys(r["band"] for r in rows):
        cells = {r["latent"]: r for r in rows if r["band"] == band}
        dims = next(iter(cells.values()))["dims"]
        out.append(f"| {band} | {dims} | " + " | ".join(
            f"{cells[lat]['r2']:.2f} / {cells[lat]['r2_within']:.2f}" for lat in lats) + " |")
    return "\n".join(out)


def premise(dataset: str, results: Path, out: Path, overrides: dict[str, dict[str, str]], seed: int = 0,
            ratio: float = 0.5, tap: str = "pre", device: str = "cpu", direction: str | None = None) -> dict[str, Any]:
    """``bench analyze premise``: the probe of the teacher of ``direction`` (default: the first
    direction), written as CSV and Markdown under ``out``."""
    import csv

    from bench.api.names import check_component

    adapter = build_adapter(dataset, overrides)
    t_mod, _s = adapter.parse_direction(direction) if direction else adapter.directions()[0]
    rows = premise_probe(results, t_mod, overrides, seed, ratio, tap, device, dataset)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"premise_{check_component(adapter.name, 'dataset name')}_{t_mod}_seed{seed}"
    with open(out / f"{stem}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    md = premise_markdown(rows)
    (out / f"{stem}.md").write_text(md + "\n")
    return {"rows": rows, "markdown": md, "csv": out / f"{stem}.csv", "figures": [out / f"{stem}.md"]}
