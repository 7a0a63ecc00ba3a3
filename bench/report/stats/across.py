"""Tests across independent blocks (Demsar 2006, "Statistical comparisons of classifiers over
multiple data sets", JMLR 7).

* Friedman's statistic from the average ranks, ``chi2_F = 12N/(k(k+1)) [sum R_j^2 - k(k+1)^2/4]``
  (no tie correction, as in Demsar's eq.), and the Iman-Davenport
  ``F_F = (N-1) chi2_F / (N(k-1) - chi2_F)`` with (k-1, (k-1)(N-1)) degrees of freedom, which
  Demsar recommends over the chi-square approximation.
* Post-hoc against the control (w/o KD): Wilcoxon signed-rank on the block scores, Holm-corrected;
  all pairs: Nemenyi, ``CD = q_alpha / sqrt(2) * sqrt(k(k+1) / (6N))``.
* None of these is run below :data:`MIN_BLOCKS` independent blocks: Demsar's tables and the
  chi-square/F approximations assume "N > 10" data sets, and a Wilcoxon test over 5 blocks cannot
  reach p < 0.0625. The output then says why the test is refused; the aggregates with intervals
  (:mod:`.aggregate`) still report.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from bench.report.stats.aggregate import rank_matrix

MIN_BLOCKS = 10
"""Fewest independent blocks for Friedman / Iman-Davenport / Wilcoxon / Nemenyi (Demsar 2006)."""


def friedman_from_ranks(avg_ranks: Sequence[float], n: int) -> dict[str, float]:
    """Friedman chi2_F and the Iman-Davenport F_F with their p-values, from average ranks over n blocks."""
    from scipy.stats import chi2, f

    r = np.asarray(avg_ranks, dtype=float)
    k = len(r)
    chi = 12.0 * n / (k * (k + 1)) * (float(np.sum(r ** 2)) - k * (k + 1) ** 2 / 4.0)
    chi = max(chi, 0.0)
    df1, df2 = k - 1, (k - 1) * (n - 1)
    denom = n * (k - 1) - chi
    ff = math.inf if denom <= 1e-12 else (n - 1) * chi / denom
    return {"chi2": chi, "p_chi2": float(chi2.sf(chi, df1)), "F": ff, "df1": df1, "df2": df2,
            "p": 0.0 if math.isinf(ff) else float(f.sf(ff, df1, df2))}


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    from scipy.stats import studentized_range

    return float(studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2) * math.sqrt(k * (k + 1) / (6.0 * n))


def wilcoxon_vs_control(mat: np.ndarray, methods: Sequence[str], control: str, alpha: float = 0.05,
                        correction: str = "holm") -> dict[str, dict[str, float]]:
    """Each method against the control over the blocks (rows of ``mat``): two-sided Wilcoxon
    signed-rank p, corrected over the k-1 comparisons."""
    from scipy.stats import wilcoxon

    from bench.report.stats.paired import adjust

    j = list(methods).index(control)
    others = [m for m in methods if m != control]
    ps, diffs = [], []
    for m in others:
        d = mat[:, list(methods).index(m)] - mat[:, j]
        diffs.append(float(np.median(d)))
        ps.append(1.0 if np.allclose(d, 0) else float(wilcoxon(d).pvalue))
    adj = adjust(ps, correction, alpha)
    return {m: {"p": p, "p_adj": a, "median_diff": md, "significant": a < alpha}
            for m, p, a, md in zip(others, ps, adj, diffs)}


def refusal(n_blocks: int, k: int, min_blocks: int = MIN_BLOCKS) -> str | None:
    """Why the across-block tests are not run, or None when they may be."""
    if k < 3:
        return f"needs >= 3 methods covering every cell, have {k}"
    if n_blocks < min_blocks:
        return (f"{n_blocks} independent block(s) (cells sharing a dataset form one block), fewer than the "
                f"{min_blocks} that the Friedman/Iman-Davenport approximations and the post-hoc tests need "
                f"(Demsar 2006); the aggregates with bootstrap intervals report instead")
    return None


def across_blocks(mat: np.ndarray, methods: Sequence[str], block_names: Sequence[str], control: str | None,
                  alpha: float = 0.05, min_blocks: int = MIN_BLOCKS) -> dict[str, Any]:
    """Friedman + Iman-Davenport, Wilcoxon-Holm against the control and the Nemenyi CD on the
    blocks x methods matrix of block scores (higher is better), or the reason they are refused."""
    n, k = mat.shape if mat.size else (len(block_names), len(methods))
    out: dict[str, Any] = {"methods": list(methods), "blocks": list(block_names), "n_blocks": n, "k": k,
                           "min_blocks": min_blocks, "statistic": None}
    why = refusal(n, k, min_blocks)
    if why:
        out["refused"] = "Friedman/Iman-Davenport, post-hoc and CD refused: " + why
        return out
    ranks = rank_matrix(mat)
    avg = ranks.mean(axis=0)
    fr = friedman_from_ranks(avg, n)
    out.update({"statistic": fr["chi2"], "pvalue": fr["p"], "chi2": fr["chi2"], "p_chi2": fr["p_chi2"],
                "F": fr["F"], "df": [fr["df1"], fr["df2"]], "avg_ranks": {m: float(r) for m, r in zip(methods, avg)},
                "cd": nemenyi_cd(k, n, alpha), "matrix": mat.tolist()})
    if control in methods:
        out["vs_control"] = wilcoxon_vs_control(mat, methods, control, alpha)
    try:
        import scikit_posthocs as sp

        out["nemenyi_p"] = [[float(x) for x in row] for row in np.asarray(sp.posthoc_nemenyi_friedman(mat))]
    except Exception as exc:  # noqa: BLE001 - report, do not crash the leaderboard
        out["nemenyi_error"] = str(exc)
    return out


def leave_one_out(means: dict[tuple[str, tuple[str, str]], float], methods: Sequence[str],
                  cells: Sequence[tuple[str, str]], blocks: dict[tuple[str, str], str],
                  labels: dict[str, str] | None = None, top: int = 3) -> dict[str, Any]:
    """The top places by mean rank over ``cells`` with each block left out in turn (the methods
    must have every cell), and in how many of them first place stays as on all cells."""
    labels = labels or {}
    names = list(dict.fromkeys(blocks[c] for c in cells))

    def order(use: list[tuple[str, str]]) -> list[str]:
        if not use:
            return []
        r = rank_matrix(np.array([[means[(m, c)] for m in methods] for c in use])).mean(axis=0)
        return [m for _, m in sorted(zip(r, methods), key=lambda t: (round(float(t[0]), 9), t[1]))]

    full = order(list(cells))
    rows = []
    for b in names:
        o = order([c for c in cells if blocks[c] != b])
        rows.append({"left_out": b, "top": o[:top]})
    same = sum(1 for r in rows if r["top"][:1] == full[:1])
    out = {"full": full[:top], "rows": rows, "first_kept": same, "n": len(rows)}
    if len(names) < 2 or not full:
        out["text"] = "Leave-one-benchmark-out: needs two or more blocks and a ranked method."
        return out
    parts = "; ".join(f"without {r['left_out']}: " + ", ".join(labels.get(m, m) for m in r["top"]) for r in rows)
    out["text"] = (f"Leave-one-benchmark-out (mean rank over the remaining cells; top {top}): all blocks: "
                   f"{', '.join(labels.get(m, m) for m in full[:top])}; {parts}. First place unchanged in {same} of "
                   f"{len(rows)}.")
    return out
