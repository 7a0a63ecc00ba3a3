"""The statistical marks of a comparison table, from :mod:`bench.report.stats` (nothing here tests
anything itself): † not shown below the column's best, ▲/▼/≈ against w/o KD, ◦ at chance.

Every comparison is paired on the seeds both cells have (:mod:`bench.report.stats.paired`); a
family is every comparison of its kind that the table shows, corrected together (Holm by
default), and the legend says which test, which correction over how many comparisons, and the
ROPE. Seeds one side lacks are named in the table's notes.
"""

from __future__ import annotations

import pandas as pd

from bench.report.stats import paired as P
from bench.report.tables import BASELINE, CHANCE_MARK, Comparison, display_name, is_control_row


def _unmatched_note(comp: Comparison, results: dict, other: str) -> None:
    for (m, col), r in results.items():
        text = r.unmatched_text(comp.label_of(m), other if other != "best" else "the best")
        if text:
            comp.notes.append(f"{col[0]}/{col[1]}: {text} (not paired, left out of that test)")


def mark_tied(comp: Comparison, alpha: float = P.ALPHA, rope: float = P.ROPE,
              correction: str = P.DEFAULT_CORRECTION) -> None:
    """† on every cell that is not significantly below its column's best: the paired verdict
    against the best is equivalent or inconclusive (not evidence of equality). The reference is the
    highest unrounded mean among the bold cells, then the method name (never the row order); cells
    that carry the best mark themselves, cells with fewer than two matched seeds and teacher-control
    rows (never ranked) are not marked."""
    family = {}
    for col in comp.columns:
        bold = {m: comp.cells[(m, col)].mean for m in comp.methods if comp.marks.get((m, col)) == "best"}
        if not bold:
            continue
        ref = P.best_first(bold)[0]
        for m in comp.methods:
            c = comp.cells[(m, col)]
            if (m != ref and c.mean is not None and not c.conflict and comp.marks.get((m, col)) != "best"
                    and not is_control_row(m)):  # a control is not ranked, so not 'tied with the best' either
                family[(m, col)] = (c.seeds, comp.cells[(ref, col)].seeds)
    results = P.compare_family(family, alpha=alpha, rope=rope, correction=correction)
    for key, r in results.items():
        comp.detail.setdefault(key, {})["vs_best"] = r
        if r.verdict in ("equivalent", "inconclusive", "better"):  # better: on the seeds the two share
            comp.tied.add(key)
    tested = sum(1 for r in results.values() if r.p is not None)
    _unmatched_note(comp, results, "best")
    comp.tied_rule = ("† = not significantly different from the best of its column (the higher unrounded mean, "
                      "then the name), i.e. not shown below it: " + P.rule_text("comparisons with the best", tested,
                                                                                 alpha, rope, correction))


def mark_vs_baseline(comp: Comparison, alpha: float = P.ALPHA, rope: float = P.ROPE,
                     correction: str = P.DEFAULT_CORRECTION) -> None:
    """Per cell, the verdict against w/o KD in that column: better / worse / equivalent /
    inconclusive (untested: fewer than two matched seeds). This is what says whether a method
    helps or hurts; the best/second marks do not."""
    P.check_correction(correction)
    family = {}
    for col in comp.columns:
        base = comp.cells.get((BASELINE, col))
        if base is None or base.mean is None or base.conflict:
            continue
        for m in comp.methods:
            c = comp.cells[(m, col)]
            if m != BASELINE and c.mean is not None and not c.conflict:
                family[(m, col)] = (c.seeds, base.seeds)
    results = P.compare_family(family, alpha=alpha, rope=rope, correction=correction)
    for key, r in results.items():
        comp.vs_baseline[key] = r.verdict
        comp.detail.setdefault(key, {})["vs_baseline"] = r
    tested = sum(1 for r in results.values() if r.p is not None)
    _unmatched_note(comp, results, display_name(BASELINE))
    comp.vs_rule = (f"▲/▼ = significantly better/worse than {display_name(BASELINE)} in that column, ≈ = equivalent "
                    f"to it; unmarked = inconclusive or untested (fewer than two matched seeds): "
                    + P.rule_text("tested cells", tested, alpha, rope, correction))


def chance_level(sub: pd.DataFrame, dataset: str) -> float | None:
    """Chance top-1 (100 / num_classes) of a cell: the records' ``num_classes``, else the registered
    dataset's at default parameters; None when neither tells or the metric is not top-1."""
    if sub.empty or set(sub["metric"].astype(str)) != {"top1"}:
        return None
    k = pd.to_numeric(sub["num_classes"], errors="coerce").dropna() if "num_classes" in sub else []
    try:
        from bench.train.resolve import build_adapter

        return 100.0 / float(k.iloc[0] if len(k) else build_adapter(dataset, {}).num_classes)
    except Exception:  # noqa: BLE001 - not registered here, or its class count needs its files: not flagged
        return None


def mark_chance(comp: Comparison, df: pd.DataFrame) -> None:
    """◦ on every cell whose seed-mean 95 % t-interval contains chance, so a method that learnt
    nothing is said to be at chance instead of just looking like a low rank."""
    levels = {}
    for col in comp.columns:
        levels[col] = chance_level(df[(df["dataset"] == col[0]) & (df["student_modality"] == col[1])], col[0])
        for m in comp.methods:
            c = comp.cells[(m, col)]
            c.chance = bool(c.mean is not None and not c.conflict and P.at_chance(list(c.seeds.values()), levels[col]))
    flagged = sorted({f"{col[0]}/{col[1]} {levels[col]:.1f}" for (m, col), c in comp.cells.items() if c.chance})
    if flagged:
        comp.chance_rule = (f"{CHANCE_MARK} = at chance: the 95 % t-interval of the seed mean contains chance "
                            f"(100/num_classes: {', '.join(flagged)})")
