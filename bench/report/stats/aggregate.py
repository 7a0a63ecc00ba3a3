"""Aggregates across cells, with their uncertainty (Agarwal et al. 2021, "Deep RL at the edge of
the statistical precipice", written here on numpy/scipy: rliable 1.2 does not run with the arch
and pandas this project installs).

* **Normalised score** of a method in a cell, per seed: its gain over w/o KD at the same seed
  divided by the cell's pooled seed std (the root mean of every method's seed variance in that
  cell). One point means little in a saturated cell whose seeds agree to a sample and a lot in a
  noisy one; in units of the cell's own seed noise they can be averaged.
* **Blocks**: cells that share a dataset are not independent (its two directions use the same
  samples), so by default they form one block, whose per-seed score is the mean of its cells'. A
  user can declare other blocks (:func:`blocks_from_spec`).
* **IQM** (interquartile mean, ``scipy.stats.trim_mean(x, 0.25)``) and mean of the per-seed block
  scores, with a **stratified bootstrap** 95 % percentile interval: each block's seeds are resampled
  with replacement within the block.
* **Probability of improvement** over w/o KD: per cell P(X > Y) + P(X = Y)/2 over all seed pairs
  (the Mann-Whitney form), averaged within a block and then over blocks; the same stratified
  bootstrap (each side's seeds resampled within the cell).
* **Mean rank** interval: seeds resampled within every (method, cell), cell means and ranks
  recomputed: how much of a rank is seed noise.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Sequence

import numpy as np

from bench.api.errors import BenchError
from bench.report.figures import in_default_style

Cell = tuple[str, str]
Values = dict[tuple[str, Cell], dict[Any, float]]
"""(method, cell) -> seed key -> metric value (the matched-seed form of :mod:`.paired`)."""

REPS = 2000
SEED = 0
LEVEL = 0.95
BLOCK_RULES = ("dataset", "cell")


def blocks_from_spec(cells: Sequence[Cell], spec: str | None = "dataset") -> dict[Cell, str]:
    """Which block each cell belongs to. ``dataset`` (default): the cells of one dataset form one
    block; ``cell``: every cell its own block (only if its directions are truly independent);
    ``NAME=ds1,ds2;NAME2=ds3``: the datasets listed together form a block, every other dataset its own."""
    spec = spec or "dataset"
    if spec == "dataset":
        return {c: c[0] for c in cells}
    if spec == "cell":
        return {c: f"{c[0]}/{c[1]}" for c in cells}
    groups: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, eq, members = part.partition("=")
        names = [m.strip() for m in members.split(",") if m.strip()]
        if not eq or not name.strip() or not names:
            raise BenchError(f"--blocks {spec!r}: expected dataset, cell or NAME=dataset,dataset;NAME2=dataset")
        for d in names:
            if d in groups:
                raise BenchError(f"--blocks {spec!r}: dataset {d!r} is in two blocks")
            groups[d] = name.strip()
    return {c: groups.get(c[0], c[0]) for c in cells}


def iqm(x: np.ndarray, axis: int | None = None) -> Any:
    """Interquartile mean: the mean of the middle half (25 % cut from each end), over ``axis``
    (None: every value)."""
    from scipy.stats import trim_mean

    x = np.asarray(x, dtype=float)
    return float(trim_mean(x.ravel(), 0.25)) if axis is None else trim_mean(x, 0.25, axis=axis)


def stratified_bootstrap(strata: Sequence[np.ndarray], stat: Callable[[list[np.ndarray]], np.ndarray], *,
                         reps: int = REPS, seed: int = SEED, level: float = LEVEL) -> tuple[Any, Any, Any]:
    """``stat`` on the data, and its percentile interval over ``reps`` resamples in which every
    stratum is resampled with replacement within itself (its size kept).

    ``stat`` is vectorised: it gets one 2-D array per stratum, a row per replicate, and returns one
    value (or a row of values) per replicate. The draws are ``rng.integers(0, n, (reps, n))`` for
    each stratum in turn from one ``numpy.random.default_rng(seed)``, so a seed gives one answer."""
    rng = np.random.default_rng(seed)
    data = [np.asarray(s, dtype=float) for s in strata]
    point = np.asarray(stat([s[None, :] for s in data]))[0]
    boot = np.asarray(stat([s[rng.integers(0, len(s), (reps, len(s)))] for s in data]), dtype=float)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail], axis=0)
    if np.ndim(point) == 0:
        return float(point), float(lo), float(hi)
    return point, lo, hi


def pooled_std(values: Values, cell: Cell, methods: Sequence[str]) -> float | None:
    """Root mean of the seed variances (ddof 1) of every method with two or more seeds in ``cell``."""
    var = [np.var(list(v.values()), ddof=1) for m in methods if len(v := values.get((m, cell), {})) > 1]
    if not var or float(np.mean(var)) <= 0:
        return None
    return float(np.sqrt(np.mean(var)))


def normalised_runs(values: Values, cells: Sequence[Cell], blocks: dict[Cell, str], methods: Sequence[str],
                    baseline: str) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """Per method and block, the per-seed normalised block scores (see the module text), and notes
    on what could not be scored. A method is scored only where it and w/o KD have every cell of a
    block; a block's seeds are those every one of its cells has."""
    notes: list[str] = []
    scale: dict[Cell, float] = {}
    for c in cells:
        s = pooled_std(values, c, methods)
        if s is None:
            notes.append(f"{c[0]}/{c[1]}: no seed variance to normalise by (fewer than two seeds, or all equal); "
                         f"left out of the normalised scores")
        elif (baseline, c) in values:
            scale[c] = s
    out: dict[str, dict[str, np.ndarray]] = {}
    for m in methods:
        per_block: dict[str, np.ndarray] = {}
        for b in dict.fromkeys(blocks[c] for c in cells):
            bc = [c for c in cells if blocks[c] == b and c in scale]
            if not bc or any((m, c) not in values for c in bc):
                continue
            common = set.intersection(*(set(values[(m, c)]) & set(values[(baseline, c)]) for c in bc))
            if not common:
                continue
            keys = sorted(common, key=lambda k: (k[0], str(k[1])) if isinstance(k, tuple) else (k, ""))
            per_block[b] = np.array([np.mean([(values[(m, c)][k] - values[(baseline, c)][k]) / scale[c] for c in bc])
                                     for k in keys])
        out[m] = per_block
    return out, notes


def score_interval(per_block: dict[str, np.ndarray], how: str = "iqm", **boot: Any) -> tuple[float, float, float]:
    """IQM (or mean) of a method's per-seed block scores with its stratified-bootstrap interval."""
    def stat(parts: list[np.ndarray]) -> np.ndarray:
        flat = np.concatenate(parts, axis=1)
        return iqm(flat, axis=1) if how == "iqm" else flat.mean(axis=1)

    return stratified_bootstrap(list(per_block.values()), stat, **boot)


def prob_greater(x: np.ndarray, y: np.ndarray) -> Any:
    """P(X > Y) + P(X = Y) / 2 over every pair of an x and a y (rows of 2-D inputs: one per replicate)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim == 1:
        return float(prob_greater(x[None, :], y[None, :])[0])
    gt = x[:, :, None] > y[:, None, :]
    eq = x[:, :, None] == y[:, None, :]
    return (gt + 0.5 * eq).mean(axis=(1, 2))


def probability_of_improvement(values: Values, cells: Sequence[Cell], blocks: dict[Cell, str], method: str,
                               baseline: str, **boot: Any) -> tuple[float, float, float] | None:
    """P(method > w/o KD) averaged within blocks then over blocks, with its interval; None when no
    cell has both with seeds."""
    use = [c for c in cells if (method, c) in values and (baseline, c) in values]
    if not use:
        return None
    names = list(dict.fromkeys(blocks[c] for c in use))
    strata = [a for c in use for a in (list(values[(method, c)].values()), list(values[(baseline, c)].values()))]

    def stat(parts: list[np.ndarray]) -> np.ndarray:
        per: dict[str, list[np.ndarray]] = {b: [] for b in names}
        for i, c in enumerate(use):
            per[blocks[c]].append(prob_greater(parts[2 * i], parts[2 * i + 1]))
        return np.mean([np.mean(v, axis=0) for v in per.values()], axis=0)

    return stratified_bootstrap(strata, stat, **boot)


def rank_matrix(means: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (methods): rank 1 = highest, ties share the average rank."""
    from scipy.stats import rankdata

    return rankdata(-np.atleast_2d(np.asarray(means, dtype=float)), method="average", axis=-1)


def mean_rank_interval(values: Values, cells: Sequence[Cell], methods: Sequence[str],
                       **boot: Any) -> dict[str, tuple[float, float]]:
    """Per method, the bootstrap interval of its mean rank over ``cells`` (every method must have
    every cell: the common-cells rule), seeds resampled within each (method, cell)."""
    if not cells or len(methods) < 2:
        return {}
    keys = [(m, c) for c in cells for m in methods]
    strata = [list(values[k].values()) for k in keys]
    k = len(methods)

    def stat(parts: list[np.ndarray]) -> np.ndarray:
        means = np.stack([p.mean(axis=1) for p in parts], axis=1).reshape(-1, len(cells), k)
        return rank_matrix(means).mean(axis=1)

    _, lo, hi = stratified_bootstrap(strata, stat, **boot)
    return {m: (float(lo[i]), float(hi[i])) for i, m in enumerate(methods)}


@in_default_style
def performance_profile(per_method: dict[str, dict[str, np.ndarray]], labels: dict[Hashable, str], out_base,
                        title: str = "") -> list:
    """Score distributions (Agarwal et al. 2021): for each threshold tau the fraction of runs whose
    normalised score exceeds tau (each block weighted equally), one line per method, as PNG + PDF."""
    from bench.report.figures import pyplot, save_figure

    have = {m: b for m, b in per_method.items() if b}
    if not have:
        return []
    allv = np.concatenate([v for b in have.values() for v in b.values()])
    lo, hi = float(allv.min()), float(allv.max())
    pad = max(0.5, 0.05 * (hi - lo))
    taus = np.linspace(lo - pad, hi + pad, 400)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=150)
    styles = ["-", "--", "-.", ":"]
    for i, (m, blocks) in enumerate(have.items()):
        frac = np.mean([[(v > t).mean() for t in taus] for v in blocks.values()], axis=0)
        ax.plot(taus, frac, styles[(i // 10) % 4], lw=1.4, label=str(labels.get(m, m)).replace("$", r"\$"))
    ax.axvline(0, color="#888", lw=0.8)
    ax.set_xlabel("normalised score tau (gain over w/o KD at the same seed / the cell's pooled seed std)", fontsize=8)
    ax.set_ylabel("fraction of runs with score > tau", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.tick_params(labelsize=7)
    ax.set_title(title or "Performance profile (runs = seeds x blocks, blocks weighted equally)", fontsize=8)
    ax.legend(fontsize=6.5, ncol=2, frameon=False, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, out_base)
