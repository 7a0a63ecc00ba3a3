"""The leaderboard's statistics, from :mod:`bench.report.stats` (the leaderboard only arranges them):

* per cell, each method against w/o KD and against the cell's best: paired on matched seeds,
  Holm over every such comparison the leaderboard shows, verdict better / worse / equivalent /
  inconclusive (:mod:`bench.report.stats.paired`);
* per method across cells: IQM and mean of the normalised scores and the probability of
  improvement over w/o KD with stratified-bootstrap intervals, and the interval of its mean rank
  (:mod:`bench.report.stats.aggregate`);
* across independent blocks (cells sharing a dataset are one block unless declared otherwise):
  Friedman + Iman-Davenport, Wilcoxon-Holm against w/o KD and the Nemenyi CD, or why they are
  refused; leave-one-benchmark-out (:mod:`bench.report.stats.across`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from bench.report.stats import across as A
from bench.report.stats import aggregate as G
from bench.report.stats import paired as P

NORMALISED = ("normalised score = gain over w/o KD at the same seed / the cell's pooled seed std (root mean of "
              "every method's seed variance there); a block's score is the mean of its cells'")


def cell_verdicts(lb: Any, ok: Callable, rope: float) -> None:
    """``lb.verdicts`` (against w/o KD) and ``lb.tied_best`` (the best, then every method not shown
    below it), each family Holm-corrected (``lb.correction``) over all it holds."""
    vs, best = {}, {}
    for c in lb.cells:
        present = {m: s.mean for m in lb.methods if (s := ok(m, c))}
        if not present:
            continue
        ref = P.best_first(present)[0]
        lb.tied_best[c] = [ref]
        for m in present:
            if m != ref:
                best[(m, c)] = (ok(m, c).keyed, ok(ref, c).keyed)
            if m != lb.baseline and ok(lb.baseline, c):
                vs[(m, c)] = (ok(m, c).keyed, ok(lb.baseline, c).keyed)
    for key, r in P.compare_family(vs, alpha=lb.alpha, rope=rope, correction=lb.correction).items():
        lb.verdicts[key] = r.as_dict()
        if r.only_a or r.only_b:
            lb.notes.append(f"{key[1][0]}/{key[1][1]}: {r.unmatched_text(lb.method_label(key[0]), 'w/o KD')} "
                            f"(not paired, left out of that test)")
    near = P.compare_family(best, alpha=lb.alpha, rope=rope, correction=lb.correction)
    for c in lb.tied_best:
        lb.tied_best[c] += [m for m in lb.methods if (m, c) in near and near[(m, c)].verdict != "worse"
                            and near[(m, c)].p is not None]
    lb.best_detail = {k: r.as_dict() for k, r in near.items()}
    lb.families = {"vs_baseline": sum(1 for v in lb.verdicts.values() if v["p"] is not None),
                   "vs_best": sum(1 for r in near.values() if r.p is not None)}


def aggregates(lb: Any, ok: Callable, blocks_spec: str | None, min_blocks: int) -> None:
    """``lb.blocks``, each summary row's aggregates with intervals, ``lb.friedman`` and ``lb.loo``."""
    full = [m for m in lb.methods if all(ok(m, c) for c in lb.cells)]
    lb.blocks = G.blocks_from_spec(lb.cells, blocks_spec)
    values = {(m, c): s.keyed for m in lb.methods for c in lb.cells if (s := ok(m, c))}
    runs, notes = G.normalised_runs(values, lb.cells, lb.blocks, full, lb.baseline)
    lb.notes += notes
    lb.profile_runs = {m: runs[m] for m in full if m != lb.baseline and runs.get(m)}
    n_blocks = len(set(lb.blocks.values()))
    ranked = [m for m in lb.methods if m not in lb.unranked]
    whole_rank = [m for m in ranked if all((m, c) in values for c in lb.rank_used)]
    rank_ci = G.mean_rank_interval(values, lb.rank_used, ranked) if whole_rank == ranked else {}
    for row in lb.rows:
        m = row["method"]
        row["mean_rank_ci"] = rank_ci.get(m) if row["mean_rank"] is not None else None
        b = runs.get(m) or {}
        whole = m in full and len(b) == n_blocks and m != lb.baseline
        for name, how in (("iqm", "iqm"), ("norm_mean", "mean")):
            pt, lo, hi = G.score_interval(b, how) if whole else (None, None, None)
            row[name], row[f"{name}_ci"] = pt, (None if pt is None else (lo, hi))
        poi = G.probability_of_improvement(values, lb.cells, lb.blocks, m, lb.baseline) if whole else None
        row["p_improve"], row["p_improve_ci"] = (poi[0], (poi[1], poi[2])) if poi else (None, None)
    names = list(dict.fromkeys(lb.blocks[c] for c in lb.cells))
    mat = np.array([[np.mean([ok(m, c).mean for c in lb.cells if lb.blocks[c] == b]) for m in full] for b in names])
    f = A.across_blocks(mat, full, names, lb.baseline, lb.alpha, min_blocks)
    f.update({"excluded": [m for m in lb.methods if m not in full], "n_cells": len(lb.cells)})
    lb.friedman = f
    means = {(m, c): ok(m, c).mean for m in full for c in lb.cells}
    lb.loo = A.leave_one_out(means, full, lb.cells, lb.blocks, {m: lb.method_label(m) for m in full})


def statement(lb: Any) -> str:
    """The per-cell tests, the aggregates and the across-block tests in words."""
    fam = getattr(lb, "families", {})
    s = (f"Per cell: {P.rule_text('comparisons with ' + 'w/o KD', fam.get('vs_baseline', 0), lb.alpha, lb.rope, lb.correction)}. "
         f"B/E/I/W = better/equivalent/inconclusive/worse than w/o KD (not significant is not the same as equal); "
         f"'~best' = not significantly below the cell's best (the same test, {P.CORRECTION_WORDS[lb.correction]} over "
         f"the {fam.get('vs_best', 0)} comparisons with the best; the best is the higher unrounded mean, then the name); "
         f"negative transfer = mean below w/o KD. ")
    nb = len(set(getattr(lb, "blocks", {}).values()))
    s += (f"Across cells: {NORMALISED}; IQM (interquartile mean) and mean of the normalised scores and "
          f"P(improvement) over w/o KD (P(X > Y) + P(X = Y)/2 over seed pairs, averaged in a block then over blocks) "
          f"with stratified-bootstrap 95 % intervals ({G.REPS} resamples of the seeds within each block/cell, seed "
          f"{G.SEED}), shown for the methods with every cell; mean-rank intervals resample the seeds within each "
          f"(method, cell). Blocks: {nb} ({', '.join(dict.fromkeys(getattr(lb, 'blocks', {}).values()))}). ")
    f = lb.friedman
    if f.get("statistic") is not None:
        s += (f"Friedman chi2_F={f['chi2']:.3f}, Iman-Davenport F={f['F']:.3f} (df {f['df'][0]}, {f['df'][1]}), "
              f"p={f['pvalue']:.3g} over N={f['n_blocks']} blocks x k={f['k']} methods; Wilcoxon signed-rank against "
              f"w/o KD, Holm-corrected; Nemenyi CD={f['cd']:.3f} at alpha={lb.alpha}. ")
    else:
        s += f"{f.get('refused', 'Friedman test not run')}. "
    loo = getattr(lb, "loo", None)
    return s + (loo["text"] if loo else "")
