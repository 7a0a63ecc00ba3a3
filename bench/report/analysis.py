"""Cross-modal analyses from trained checkpoints: the figures/tables that motivate FD-CMKD and CCH.

* ``similarity`` (FD-CMKD Table 1): mean per-sample cosine similarity between the two
  modalities' unimodal features on paired test samples, for the raw, low- and high-frequency parts
  (FD-CMKD's one-sided DFT split at ``ratio``, DC kept in the low band as the re-FD-CMKD notebook
  does);
* ``means`` (Fig. 1): per-dimension feature means of both unimodal models;
* ``tsne`` (Fig. 4): a joint t-SNE of the teacher's and the student's features for w/o KD, Feat
  and FD-CMKD students (records made with ``--save-model``);
* ``cch``: the Cross-modal Complementarity Hypothesis criterion, I(H_T; H_S) > I(H_S; Y), with
  Gaussian mutual-information estimates (standardise, PCA to ``k`` fitted on train, Ledoit-Wolf
  covariances, slogdet), reported for several ``k`` next to the measured KD gain.

The unimodal models are the cached teachers under ``results/teachers`` (one per modality and
seed, trained with plain CE on one modality like the w/o KD student, but not that run: a teacher
has its own seed stream, :mod:`bench.train.teachers`' salt 17, and ``train.teacher_epochs``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.api.errors import BenchError
from bench.records.files import load_torch_file
from bench.records.models import load_saved_model
from bench.report.figures import in_default_style
from bench.report.figures import pyplot as _plt
from bench.report.figures import save_figure as _save
from bench.train.loop import load_splits
from bench.train.resolve import build_adapter, build_train_config


def _cov(x: np.ndarray, shrink: bool) -> np.ndarray:
    if shrink:
        from sklearn.covariance import LedoitWolf

        return LedoitWolf().fit(x).covariance_
    xc = x - x.mean(0)
    return xc.T @ xc / x.shape[0]  # maximum likelihood, as in the closed form


def gaussian_mi(x: np.ndarray, y: np.ndarray, shrink: bool = True) -> float:
    """I(X; Y) in nats under a joint Gaussian model: 1/2 (log det S_x + log det S_y - log det S)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if len(x) != len(y):
        raise BenchError(f"gaussian_mi: {len(x)} vs {len(y)} samples (the estimate needs paired samples)")
    j = _cov(np.concatenate([x, y], 1), shrink)
    p = x.shape[1]
    sx, sy = j[:p, :p], j[p:, p:]
    ld = [np.linalg.slogdet(m) for m in (sx, sy, j)]
    if any(s <= 0 for s, _ in ld):
        raise BenchError("gaussian_mi: singular covariance (drop constant or duplicate dimensions, lower k)")
    return 0.5 * (ld[0][1] + ld[1][1] - ld[2][1])


def onehot_minus_one(y: np.ndarray, num_classes: int) -> np.ndarray:
    """One-hot labels without the last column (the full one-hot covariance is singular)."""
    return np.eye(num_classes)[y][:, :-1]


def pca_fit(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = x.mean(0), x.std(0) + 1e-8
    z = (x - mu) / sd
    _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
    return mu, sd, vt[:k].T


def pca_apply(x: np.ndarray, fit: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    mu, sd, w = fit
    return ((x - mu) / sd) @ w


def _adapter_and_splits(dataset: str, overrides: dict[str, dict[str, str]], seed: int = 0):
    adapter = build_adapter(dataset, overrides)
    train = build_train_config(adapter, overrides)
    return adapter, train, load_splits(adapter, train, seed=seed)  # per-seed splits: the teacher's


def unimodal_model(results: Path, adapter, modality: str, seed: int, device: torch.device):
    """The cached unimodal (teacher) model of ``modality`` that matches this dataset configuration."""
    base = Path(results) / "teachers" / adapter.name / modality
    fp = adapter.fingerprint()
    cands = []
    for p in sorted(base.glob(f"seed{seed}-*.pt")):
        state = load_torch_file(p, "cached teacher", device, required=("model", "info"),
                                remedy="Delete it; the next `bench run` that needs it trains it again")
        if state.get("info", {}).get("fingerprint", {}).get("dataset") == fp:
            cands.append((p.stat().st_mtime, p, state))
    if not cands:
        raise BenchError(f"no trained {modality} model for {adapter.name} (seed {seed}) under {base}: run "
                         f"`bench run --methods none --datasets {adapter.name}` (both directions) first")
    _, path, state = max(cands, key=lambda c: c[0])
    model = adapter.build_model(modality, adapter.num_classes).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return model, path


@torch.no_grad()
def features(model, adapter, split, modality: str, device: torch.device, tap: str = "pre",
             batch_size: int = 256) -> np.ndarray:
    from bench.data import batch_indices

    out = []
    for idx in batch_indices(len(split), batch_size, False, None, False):
        xs, _ = adapter.batch(split, idx, [modality], device, False, None)
        o = model(xs[modality])
        out.append((o.pre_feature if tap == "pre" else o.feature).float().cpu())
    return torch.cat(out).numpy()


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@in_default_style
def similarity(dataset: str, results: Path, out: Path, overrides: dict, seed: int = 0, tap: str = "pre",
               ratio: float = 0.5, device: str = "cpu") -> dict[str, Any]:
    from bench.methods.fdcmkd import decompose

    dev = torch.device(device)
    adapter, _, splits = _adapter_and_splits(dataset, overrides, seed)
    mods = [m.name for m in adapter.modalities]
    feats = {}
    for m in mods[:2]:
        model, _ = unimodal_model(results, adapter, m, seed, dev)
        feats[m] = torch.from_numpy(features(model, adapter, splits["test"], m, dev, tap)).double()
    a, b = (feats[m] for m in mods[:2])
    if a.shape[1] != b.shape[1]:
        raise BenchError(f"similarity needs equal feature sizes; {mods[0]} has {a.shape[1]}, {mods[1]} has {b.shape[1]}")
    la, ha = decompose(a, ratio, remove_dc=False)
    lb, hb = decompose(b, ratio, remove_dc=False)
    cos = torch.nn.functional.cosine_similarity
    vals = {"raw": float(cos(a, b, dim=1).mean()), "low": float(cos(la, lb, dim=1).mean()),
            "high": float(cos(ha, hb, dim=1).mean())}
    rows = [[adapter.name, f"{mods[0]}-{mods[1]}", tap, ratio, len(a), vals["raw"], vals["low"], vals["high"]]]
    csv_path = _write_csv(out / f"similarity_{adapter.name}.csv",
                          ["dataset", "pair", "tap", "ratio", "n_test", "cos_raw", "cos_low", "cos_high"], rows)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.2), dpi=150)
    ax.bar(list(vals), list(vals.values()), color=["#5b6475", "#2e7d32", "#c62828"])
    ax.set_ylabel("mean cosine similarity")
    ax.set_title(f"{adapter.name}: {mods[0]} vs {mods[1]} features (test)", fontsize=9)
    ax.axhline(0, color="black", lw=0.6)
    fig.tight_layout()
    figs = _save(fig, out / f"similarity_{adapter.name}")
    return {"values": vals, "csv": csv_path, "figures": figs}


@in_default_style
def means(dataset: str, results: Path, out: Path, overrides: dict, seed: int = 0, tap: str = "pre",
          device: str = "cpu") -> dict[str, Any]:
    dev = torch.device(device)
    adapter, _, splits = _adapter_and_splits(dataset, overrides, seed)
    mods = [m.name for m in adapter.modalities][:2]
    mu = {}
    for m in mods:
        model, _ = unimodal_model(results, adapter, m, seed, dev)
        mu[m] = features(model, adapter, splits["test"], m, dev, tap).mean(0)
    d = max(len(v) for v in mu.values())
    rows = [[i] + [float(mu[m][i]) if i < len(mu[m]) else "" for m in mods] for i in range(d)]
    csv_path = _write_csv(out / f"means_{adapter.name}.csv", ["dim"] + [f"mean_{m}" for m in mods], rows)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.0), dpi=150)
    for m, c in zip(mods, ("#1f77b4", "#ff7f0e")):
        ax.plot(np.arange(len(mu[m])), mu[m], lw=0.9, label=f"{m} (mean {mu[m].mean():.3f})", color=c)
    ax.set_xlabel("feature dimension")
    ax.set_ylabel(f"mean {tap}-activation feature")
    ax.set_title(f"{adapter.name}: per-dimension feature means on test", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    figs = _save(fig, out / f"means_{adapter.name}")
    return {"means": {m: mu[m].tolist() for m in mods}, "csv": csv_path, "figures": figs}


@in_default_style
def tsne(dataset: str, direction: str | None, results: Path, out: Path, overrides: dict, seed: int = 0,
         methods: tuple[str, ...] = ("none", "feat", "fdcmkd"), n: int = 400, tap: str = "pre",
         device: str = "cpu") -> dict[str, Any]:
    from sklearn.manifold import TSNE

    from bench.records.store import load_records

    dev = torch.device(device)
    adapter, _, splits = _adapter_and_splits(dataset, overrides, seed)
    t_mod, s_mod = adapter.parse_direction(direction) if direction else adapter.directions()[0]
    direction = adapter.direction_name(t_mod, s_mod)
    teacher, _ = unimodal_model(results, adapter, t_mod, seed, dev)
    test = splits["test"]
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(len(test), size=min(n, len(test)), replace=False))
    sub = test.subset(torch.from_numpy(idx))
    ft = features(teacher, adapter, sub, t_mod, dev, tap)
    labels = sub.labels.numpy()
    recs = {r["method"]: r for r in load_records(results, status="ok")
            if r["dataset"] == adapter.name and r["direction"] == adapter.direction_name(t_mod, s_mod)
            and r["seed"] == seed and r.get("model_path")}
    missing = [m for m in methods if m not in recs]
    if missing:
        raise BenchError(f"tsne: no saved {', '.join(missing)} student(s) for {adapter.name} {direction} seed {seed}; "
                         f"run `bench run --methods {','.join(methods)} --datasets {adapter.name} --directions {direction} --save-model`")
    plt = _plt()
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.5), dpi=150, squeeze=False)
    rows = []
    for ax, m in zip(axes[0], methods):
        student = adapter.build_model(s_mod, adapter.num_classes).to(dev)
        student.load_state_dict(load_saved_model(results, recs[m], dev)["student"])
        student.eval()
        fs = features(student, adapter, sub, s_mod, dev, tap)
        if fs.shape[1] != ft.shape[1]:
            raise BenchError(f"tsne: teacher and student feature sizes differ ({ft.shape[1]} vs {fs.shape[1]})")
        both = np.concatenate([ft, fs])
        emb = TSNE(n_components=2, perplexity=min(30, len(both) // 4), init="pca", random_state=0).fit_transform(both)
        k = len(ft)
        ax.scatter(emb[:k, 0], emb[:k, 1], s=5, c="#1f77b4", label=f"teacher ({t_mod})", alpha=0.7)
        ax.scatter(emb[k:, 0], emb[k:, 1], s=5, c="#ff7f0e", label=f"student ({s_mod})", alpha=0.7)
        from bench.report.tables import display_name

        ax.set_title(display_name(m), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        for i in range(len(both)):
            rows.append([m, t_mod if i < k else s_mod, int(labels[i % k]), float(emb[i, 0]), float(emb[i, 1])])
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{adapter.name} {direction}: t-SNE of teacher and student features (test)", fontsize=9)
    fig.tight_layout()
    figs = _save(fig, out / f"tsne_{adapter.name}_{direction}")
    csv_path = _write_csv(out / f"tsne_{adapter.name}_{direction}.csv", ["method", "modality", "label", "x", "y"], rows)
    return {"csv": csv_path, "figures": figs}


@in_default_style
def cch(dataset: str, results: Path, out: Path, overrides: dict, seed: int = 0, ks: tuple[int, ...] = (4, 8, 16),
        tap: str = "pre", device: str = "cpu") -> dict[str, Any]:
    """CCH verdict per direction and PCA size k, next to the measured KD gain from the records."""
    from bench.records.store import load_records

    dev = torch.device(device)
    adapter, _, splits = _adapter_and_splits(dataset, overrides, seed)
    feats: dict[str, np.ndarray] = {}  # train-split features per modality (the estimate's sample)
    for m in [x.name for x in adapter.modalities]:
        model, _ = unimodal_model(results, adapter, m, seed, dev)
        feats[m] = features(model, adapter, splits["train"], m, dev, tap)
    y = splits["train"].labels.numpy()
    if y.ndim != 1:
        raise BenchError("cch needs image-level labels (classification)")
    yoh = onehot_minus_one(y, adapter.num_classes)
    recs = [r for r in load_records(results, status="ok") if r["dataset"] == adapter.name]
    pcs: dict[tuple[str, int], np.ndarray] = {}

    def reduced(m: str, k: int) -> np.ndarray:
        """PCA-k of a modality's train features (each modality serves both directions: once)."""
        if (m, k) not in pcs:
            pcs[(m, k)] = pca_apply(feats[m], pca_fit(feats[m], k))
        return pcs[(m, k)]

    rows = []
    for t, s in adapter.directions():
        d = adapter.direction_name(t, s)
        base = [r["best_metric"] for r in recs if r["direction"] == d and r["method"] == "none"]
        gains = {}
        for r in recs:
            if r["direction"] == d and r["method"] != "none" and base:
                gains.setdefault(r["method"], []).append(r["best_metric"] - float(np.mean(base)))
        mean_gain = float(np.mean([np.mean(v) for v in gains.values()])) if gains else None
        for k in ks:
            kk = min(k, feats[t].shape[1], feats[s].shape[1])
            zt, zs = reduced(t, kk), reduced(s, kk)
            i_ts = gaussian_mi(zt, zs)
            i_sy = gaussian_mi(zs, yoh)
            delta = i_ts - i_sy
            rows.append([adapter.name, d, t, s, kk, len(y), round(i_ts, 4), round(i_sy, 4), round(delta, 4),
                         "KD expected to help" if delta > 0 else "KD not expected to help",
                         "" if mean_gain is None else round(mean_gain, 3), len(gains)])
    header = ["dataset", "direction", "teacher", "student", "k", "n_train", "I(H_T;H_S)", "I(H_S;Y)", "delta",
              "verdict", "measured_mean_gain", "n_kd_methods"]
    csv_path = _write_csv(out / f"cch_{adapter.name}.csv", header, rows)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.2), dpi=150)
    dirs = list(dict.fromkeys(r[1] for r in rows))
    width = 0.8 / max(len(ks), 1)
    for i, k in enumerate(ks):
        vals = [rows[j * len(ks) + i][8] for j in range(len(dirs))]  # rows: per direction, per k
        ax.bar(np.arange(len(dirs)) + i * width, vals, width, label=f"k={k}")
    ax.axhline(0, color="black", lw=0.6)
    gain_of = {r[1]: r[10] for r in rows}
    ax.set_xticks(np.arange(len(dirs)) + 0.4 - width / 2,
                  [d + ("" if gain_of[d] == "" else f"\nmeasured KD gain {gain_of[d]:+.2f}") for d in dirs])
    ax.set_ylabel("I(H_T;H_S) - I(H_S;Y)  [nats]")
    ax.set_title(f"{adapter.name}: CCH criterion (> 0: KD expected to help)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    figs = _save(fig, out / f"cch_{adapter.name}")
    return {"rows": [dict(zip(header, r)) for r in rows], "csv": csv_path, "figures": figs}
