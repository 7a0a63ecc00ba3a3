"""Paired comparisons within one cell, their multiplicity correction and the four verdicts.

At a given seed every method of a cell sees the same split, student initialisation, batch order
and cached teacher (``bench/train/run.py`` seeds before building the student), so two methods are
compared on their **per-seed differences**, matched by seed (and by split fingerprint once records
carry one). Unmatched seeds are reported with the result, never dropped in silence.

* Interval: the 95 % Student-t interval of the mean per-seed difference. Chosen over a bootstrap
  because with 3-5 seeds a bootstrap over seeds has only a handful of distinct resamples and its
  percentile interval is too narrow; per-sample predictions (where records have them) are used to
  re-score, not to widen this interval.
* Deciding test: the paired t-test (``scipy.stats.ttest_rel``). Exact sign-flip or Wilcoxon tests
  cannot reach p < 0.0625 with 5 seeds, so they could never decide.
* Equivalence: TOST against a region of practical equivalence (ROPE, default +-0.5 points): both
  one-sided t-tests reject, i.e. (uncorrected) the 90 % interval lies inside the ROPE.
* Multiplicity: Holm (``statsmodels.stats.multitest.multipletests``) over the family a table or
  page shows, applied to the difference p-values and, separately, to the TOST p-values.
* Verdict: ``better`` / ``worse`` when the corrected paired test rejects (the sign of the mean
  difference), else ``equivalent`` when the corrected TOST rejects, else ``inconclusive``; fewer
  than two matched seeds: ``untested``. Never "tie": not significant is not the same as equal.

Differences with zero variance (every seed moved by exactly the same amount) make the t statistic
infinite: p is its limit (0 for a non-zero difference, 1 for none) and the interval a point.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Hashable, Iterable

import numpy as np

from bench.api.errors import BenchError

ALPHA = 0.05
ROPE = 0.5
"""Default region of practical equivalence, in metric points (+-)."""
CORRECTIONS = ("holm", "bonferroni", "none")
DEFAULT_CORRECTION = "holm"
VERDICTS = ("better", "worse", "equivalent", "inconclusive", "untested")

SeedKey = tuple[int, Any]
"""(seed, split fingerprint or None): what two runs must share to be paired."""


def check_correction(correction: str, option: str = "--correction") -> str:
    if correction not in CORRECTIONS:
        raise BenchError(f"{option} {correction!r}: expected holm (the default), bonferroni or none")
    return correction


def check_rope(rope: float, option: str = "--rope") -> float:
    if not (isinstance(rope, (int, float)) and math.isfinite(rope) and rope >= 0):
        raise BenchError(f"{option} {rope}: expected a half-width in metric points >= 0 (e.g. 0.5)")
    return float(rope)


def check_alpha(alpha: float, option: str = "--alpha") -> float:
    if not 0 < alpha < 1:
        raise BenchError(f"{option} {alpha}: expected a significance level in (0, 1)")
    return float(alpha)


@dataclass
class Paired:
    """One paired comparison ``a - b`` (metric points)."""

    n: int
    diff: float | None = None
    sd: float | None = None
    ci: tuple[float, float] | None = None
    """95 % t-interval of the mean difference."""
    ci90: tuple[float, float] | None = None
    p: float | None = None
    """Two-sided paired t-test, uncorrected."""
    p_tost: float | None = None
    p_adj: float | None = None
    p_tost_adj: float | None = None
    verdict: str = "untested"
    seeds: list[int] = field(default_factory=list)
    only_a: list[int] = field(default_factory=list)
    only_b: list[int] = field(default_factory=list)
    """Seeds present on one side only (or with different split fingerprints): not paired."""

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("ci", "ci90"):
            d[k] = list(d[k]) if d[k] is not None else None
        return d

    def unmatched_text(self, a: str = "a", b: str = "b") -> str:
        """'' or e.g. 'seed 2 of DKD unmatched' (said wherever the comparison is shown)."""
        parts = [f"seed(s) {', '.join(map(str, s))} of {who} unmatched" for s, who in ((self.only_a, a), (self.only_b, b))
                 if s]
        return "; ".join(parts)


def _fill_unknown(a: dict[SeedKey, float], b: dict[SeedKey, float]) -> dict[SeedKey, float]:
    """``a`` with a record from before split fingerprints (fingerprint None) keyed by the other
    side's fingerprint of the same seed, where that seed has exactly one: such records ran on the
    fixed split of their configuration, so they pair on the seed alone."""
    out = dict(a)
    for (seed, fp), v in a.items():
        if fp is None:
            theirs = {k for k in b if k[0] == seed and k[1] is not None}
            if len(theirs) == 1 and next(iter(theirs)) not in a:
                del out[(seed, fp)]
                out[next(iter(theirs))] = v
    return out


def aligned(a: dict[SeedKey, float], b: dict[SeedKey, float]) -> tuple[dict[SeedKey, float], dict[SeedKey, float]]:
    """Both sides with fingerprint-less records keyed like the other side's (:func:`_fill_unknown`)."""
    return _fill_unknown(a, b), _fill_unknown(b, a)


def match(a: dict[SeedKey, float], b: dict[SeedKey, float]) -> tuple[list[SeedKey], list[int], list[int]]:
    """The seed keys both sides have (sorted), and the seeds only one side has. A seed present on
    both sides with different split fingerprints is unmatched on both: the runs saw different data;
    call it on :func:`aligned` sides so that older records without one pair on the seed."""
    both = sorted(set(a) & set(b), key=lambda k: (k[0], str(k[1])))
    only_a = sorted({k[0] for k in a if k not in b})
    only_b = sorted({k[0] for k in b if k not in a})
    return both, only_a, only_b


def seed_values(pairs: Iterable[tuple[int, Any, float]]) -> dict[SeedKey, float]:
    """``(seed, fingerprint, value)`` triples -> the mapping :func:`compare` takes."""
    return {(int(s), fp): float(v) for s, fp, v in pairs}


def compare(a: dict[SeedKey, float], b: dict[SeedKey, float], rope: float = ROPE) -> Paired:
    """The uncorrected comparison of ``a`` against ``b`` on their matched seeds (no verdict yet:
    :func:`decide` gives it after the family's correction)."""
    from scipy.stats import t as student_t
    from scipy.stats import ttest_rel

    a, b = aligned(a, b)
    keys, only_a, only_b = match(a, b)
    res = Paired(n=len(keys), seeds=[k[0] for k in keys], only_a=only_a, only_b=only_b)
    if len(keys) < 2:
        if keys:
            res.diff = a[keys[0]] - b[keys[0]]
        return res
    x = np.array([a[k] for k in keys], dtype=float)
    y = np.array([b[k] for k in keys], dtype=float)
    d = x - y
    n, mean = len(d), float(d.mean())
    sd = float(d.std(ddof=1))
    res.diff, res.sd = mean, sd
    if sd <= 1e-12 * max(1.0, abs(mean)):  # every seed moved by the same amount
        res.sd = 0.0
        res.ci = res.ci90 = (mean, mean)
        res.p = 0.0 if abs(mean) > 1e-12 else 1.0
        res.p_tost = 0.0 if abs(mean) < rope else 1.0
        return res
    se = sd / math.sqrt(n)
    t95, t90 = float(student_t.ppf(0.975, n - 1)), float(student_t.ppf(0.95, n - 1))
    res.ci = (mean - t95 * se, mean + t95 * se)
    res.ci90 = (mean - t90 * se, mean + t90 * se)
    res.p = float(ttest_rel(x, y).pvalue)
    # TOST: H0 diff <= -rope (reject when t large) and H0 diff >= +rope (reject when t small)
    p_low = float(student_t.sf((mean + rope) / se, n - 1))
    p_high = float(student_t.cdf((mean - rope) / se, n - 1))
    res.p_tost = max(p_low, p_high)
    return res


def adjust(ps: list[float], correction: str = DEFAULT_CORRECTION, alpha: float = ALPHA) -> list[float]:
    """Family-wise adjusted p-values (statsmodels' multipletests; ``none`` returns them as they are)."""
    check_correction(correction)
    if not ps or correction == "none":
        return [float(p) for p in ps]
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(np.asarray(ps, dtype=float), alpha=alpha, method=correction)[1]]


def decide(results: dict[Hashable, Paired], alpha: float = ALPHA, correction: str = DEFAULT_CORRECTION) -> None:
    """Correct the family ``results`` (in place) and give each tested comparison its verdict."""
    tested = [k for k, r in results.items() if r.p is not None]
    for attr, out in (("p", "p_adj"), ("p_tost", "p_tost_adj")):
        for k, p in zip(tested, adjust([getattr(results[k], attr) for k in tested], correction, alpha)):
            setattr(results[k], out, p)
    for k in tested:
        r = results[k]
        if r.p_adj < alpha:
            r.verdict = "better" if r.diff > 0 else "worse"
        elif r.p_tost_adj < alpha:
            r.verdict = "equivalent"
        else:
            r.verdict = "inconclusive"


def compare_family(items: dict[Hashable, tuple[dict[SeedKey, float], dict[SeedKey, float]]], *,
                   alpha: float = ALPHA, rope: float = ROPE,
                   correction: str = DEFAULT_CORRECTION) -> dict[Hashable, Paired]:
    """Every comparison ``key -> (a, b)`` of one family, corrected together, with verdicts."""
    check_correction(correction)
    check_alpha(alpha)
    check_rope(rope)
    out = {k: compare(a, b, rope) for k, (a, b) in items.items()}
    decide(out, alpha, correction)
    return out


CORRECTION_WORDS = {"holm": "Holm-corrected", "bonferroni": "Bonferroni-corrected", "none": "uncorrected"}


def rule_text(family: str, n: int, alpha: float = ALPHA, rope: float = ROPE, correction: str = DEFAULT_CORRECTION) -> str:
    """How a family's verdicts were reached, in words (every legend that shows verdicts says it)."""
    return (f"paired t-test on per-seed differences matched by seed (scipy.stats.ttest_rel), {CORRECTION_WORDS[correction]} "
            f"over the {n} {family}, alpha={alpha}; equivalent = TOST inside the ROPE of ±{rope:g} points "
            f"(also {CORRECTION_WORDS[correction]}); inconclusive = neither shown; 95 % intervals are t-intervals "
            f"of the mean per-seed difference")


def seed_interval(values: list[float]) -> tuple[float, float] | None:
    """95 % t-interval of the mean over seeds (None with fewer than two)."""
    from scipy.stats import t as student_t

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    half = float(student_t.ppf(0.975, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return float(v.mean()) - half, float(v.mean()) + half


def at_chance(values: list[float], chance: float | None) -> bool:
    """The seed-mean 95 % interval contains chance (``100 / num_classes`` points): the method is not
    shown to have learnt anything, whatever its rank. Fewer than two seeds: the mean equals chance
    within half a point."""
    if chance is None or not values:
        return False
    ci = seed_interval(values)
    if ci is None:
        return abs(float(np.mean(values)) - chance) <= 0.5
    return ci[0] <= chance <= ci[1]


def best_first(means: dict[str, float]) -> list[str]:
    """Rows from best to worst: higher unrounded mean first, then the row key (a method name), so
    the order, and every mark that follows from it, never depends on the order rows came in."""
    return sorted(means, key=lambda m: (-means[m], m))
