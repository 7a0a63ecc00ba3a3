"""bench.report.stats against hand computations, statsmodels and Demsar (2006)'s worked example."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from bench.api.errors import BenchError
from bench.report.stats import across, aggregate, paired


def sv(d: dict[int, float], fp=None) -> dict:
    return {(s, fp): float(v) for s, v in d.items()}


def test_paired_test_and_interval_on_a_hand_computed_example():
    # per-seed differences 2, 3, 1, 3 (seed 4 only on one side: reported, not used)
    a = sv({0: 52, 1: 55, 2: 51, 3: 54, 4: 70})
    b = sv({0: 50, 1: 52, 2: 50, 3: 51})
    r = paired.compare(a, b)
    # by hand: mean 2.25, sd sqrt(2.75/3) = 0.957427, se 0.478714, t = 4.70008 with 3 df,
    # t_0.975(3) = 3.182446 (tables): 95 % interval 2.25 -+ 1.523487
    assert (r.n, r.seeds, r.only_a, r.only_b) == (4, [0, 1, 2, 3], [4], [])
    assert r.diff == pytest.approx(2.25) and r.sd == pytest.approx(0.957427, abs=1e-6)
    assert r.ci == pytest.approx((0.726513, 3.773487), abs=1e-5)
    from scipy.stats import t as student_t

    assert r.p == pytest.approx(2 * student_t.sf(2.25 / (0.9574271 / 2), 3), rel=1e-6)
    assert r.p == pytest.approx(0.018229, abs=2e-5)
    assert "seed(s) 4 of DKD unmatched" in r.unmatched_text("DKD", "w/o KD")


def test_a_seed_with_another_split_fingerprint_is_not_paired():
    a = {(0, "f0"): 60.0, (1, "f1"): 61.0, (2, "f2"): 62.0}
    b = {(0, "f0"): 50.0, (1, "XX"): 51.0, (2, "f2"): 52.5}
    r = paired.compare(a, b)
    assert r.seeds == [0, 2] and r.only_a == [1] and r.only_b == [1]


def test_holm_equals_statsmodels_and_the_hand_computation():
    from statsmodels.stats.multitest import multipletests

    ps = [0.01, 0.04, 0.03, 0.005]
    # by hand: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.04, 0.06) = 0.06
    assert paired.adjust(ps, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(3)
    many = list(rng.uniform(0, 0.2, 17))
    assert paired.adjust(many, "holm") == pytest.approx(list(multipletests(many, method="holm")[1]))
    assert paired.adjust(many, "none") == pytest.approx(many)
    with pytest.raises(BenchError, match="--correction 'sidak'"):
        paired.adjust(many, "sidak")


def test_tost_equals_statsmodels():
    from statsmodels.stats.weightstats import ttost_paired

    x = np.array([70.1, 70.6, 69.9, 70.4, 70.2])
    y = np.array([70.0, 70.3, 70.1, 70.2, 70.0])
    r = paired.compare(sv(dict(enumerate(x))), sv(dict(enumerate(y))), rope=0.5)
    assert r.p_tost == pytest.approx(ttost_paired(x, y, -0.5, 0.5)[0], rel=1e-9)
    lo, hi = r.ci90
    assert -0.5 < lo and hi < 0.5  # uncorrected TOST rejects <=> the 90 % interval is inside the ROPE


def test_verdicts_wide_is_inconclusive_narrow_inside_the_rope_is_equivalent():
    base = {0: 70.0, 1: 71.0, 2: 72.0, 3: 73.0, 4: 74.0}
    fam = {
        "wide": (sv({0: 75.0, 1: 68.0, 2: 76.0, 3: 70.0, 4: 74.5}), sv(base)),   # diffs 5 -3 4 -3 0.5
        "narrow": (sv({0: 70.1, 1: 70.9, 2: 72.1, 3: 72.9, 4: 74.05}), sv(base)),  # within +-0.1
        "up": (sv({s: v + 3 + 0.1 * s for s, v in base.items()}), sv(base)),
        "down": (sv({s: v - 4 + 0.2 * (s % 2) for s, v in base.items()}), sv(base)),
        "one": (sv({0: 90.0}), sv(base)),
    }
    out = paired.compare_family(fam, rope=0.5)
    assert {k: r.verdict for k, r in out.items()} == {
        "wide": "inconclusive", "narrow": "equivalent", "up": "better", "down": "worse", "one": "untested"}
    assert out["wide"].ci[0] < 0 < out["wide"].ci[1] and out["wide"].ci[1] - out["wide"].ci[0] > 5
    assert out["one"].p is None and out["one"].only_b == [1, 2, 3, 4]
    # the ROPE is the user's: at +-0.05 the narrow one is no longer shown equivalent
    assert paired.compare_family(fam, rope=0.05)["narrow"].verdict == "inconclusive"
    assert "tie" not in set(paired.VERDICTS)
    with pytest.raises(BenchError, match="--rope -1"):
        paired.compare_family(fam, rope=-1)


def test_holm_over_the_family_can_take_a_verdict_away():
    base = sv({0: 50.0, 1: 50.4, 2: 49.8})
    small = sv({0: 51.0, 1: 51.2, 2: 51.1})  # diffs 1.0 0.8 1.3: p = 0.019 alone
    alone = paired.compare_family({"x": (small, base)}, correction="holm")["x"]
    assert alone.verdict == "better" and alone.p == pytest.approx(0.0192, abs=5e-4)
    noisy = {f"n{i}": (sv({0: 50.0 + i, 1: 49.0, 2: 52.0}), base) for i in range(5)}
    fam = paired.compare_family({"x": (small, base), **noisy}, correction="holm")
    assert fam["x"].p == alone.p and fam["x"].p_adj > 0.05 and fam["x"].verdict == "inconclusive"


def test_constant_differences_are_the_t_tests_limit():
    r = paired.compare(sv({0: 61.0, 1: 62.0, 2: 63.0}), sv({0: 51.0, 1: 52.0, 2: 53.0}))
    assert (r.p, r.ci, r.sd) == (0.0, (10.0, 10.0), 0.0)
    same = paired.compare_family({"s": (sv({0: 98.5, 1: 98.5}), sv({0: 98.5, 1: 98.5}))})["s"]
    assert same.p == 1.0 and same.verdict == "equivalent"


def test_best_first_and_at_chance():
    assert paired.best_first({"b": 98.5, "a": 98.5, "c": 98.75, "d": 10.0}) == ["c", "a", "b", "d"]
    assert paired.at_chance([9.0, 11.5, 10.2], 10.0) and not paired.at_chance([30.0, 31.0, 29.0], 10.0)
    assert not paired.at_chance([9.0, 11.0], None)


def test_iqm_by_hand():
    assert aggregate.iqm(np.array([1, 2, 3, 4, 5, 6, 7, 100])) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert aggregate.iqm(np.array([[0, 10], [1, 9], [2, 8], [3, 7]])) == pytest.approx(np.mean([2, 3, 7, 8]))


SCORES = [np.array([0.0, 1.0, 4.0]), np.array([2.0, 2.5, 9.0])]  # two blocks x three seeds


def test_stratified_bootstrap_equals_the_worked_example():
    """The resampling by hand (each block's seeds drawn with replacement within the block, in block
    order from one generator), and the exact bootstrap distribution: all 3^3 x 3^3 = 729 equally
    likely resamples enumerated."""
    stat = lambda parts: aggregate.iqm(np.concatenate(parts, axis=1), axis=1)  # noqa: E731
    point, lo, hi = aggregate.stratified_bootstrap(SCORES, stat, reps=4000, seed=7)
    assert point == pytest.approx(np.mean([1.0, 2.0, 2.5, 4.0]))  # IQM of 0, 1, 2, 2.5, 4, 9 (trim 1 each side)
    rng = np.random.default_rng(7)
    draws = [rng.integers(0, 3, (4000, 3)) for _ in SCORES]  # block by block, a row per replicate
    by_hand = []
    for r in range(4000):
        parts = [s[d[r]] for s, d in zip(SCORES, draws)]
        flat = np.sort(np.concatenate(parts))
        by_hand.append(flat[1:-1].mean())  # 6 values: int(0.25 * 6) = 1 cut from each end
    assert (lo, hi) == pytest.approx(tuple(np.percentile(by_hand, [2.5, 97.5])))
    exact = [np.sort(np.concatenate([SCORES[0][list(i)], SCORES[1][list(j)]]))[1:-1].mean()
             for i in itertools.product(range(3), repeat=3) for j in itertools.product(range(3), repeat=3)]
    e_lo, e_hi = np.percentile(exact, [2.5, 97.5])
    assert abs(lo - e_lo) <= 0.15 and abs(hi - e_hi) <= 0.15
    assert aggregate.stratified_bootstrap(SCORES, stat, reps=4000, seed=7) == (point, lo, hi)  # seeded


def cellvals(per: dict[str, list[float]]) -> dict:
    return {m: {(s, None): v for s, v in enumerate(vals)} for m, vals in per.items()}


def test_normalised_scores_blocks_and_probability_of_improvement():
    # dataset D: two cells (one block), dataset E: one cell
    cells = [("D", "audio"), ("D", "visual"), ("E", "visual")]
    raw = {("D", "audio"): {"none": [50, 52, 54], "m": [53, 54, 57]},     # var 4 and 4.333 -> pooled 2.0817
           ("D", "visual"): {"none": [70, 70, 73], "m": [71, 72, 73]},    # var 3 and 1 -> pooled sqrt 2
           ("E", "visual"): {"none": [10, 20, 30], "m": [10, 20, 30]}}
    values = {(m, c): v for c, per in raw.items() for m, v in cellvals(per).items()}
    blocks = aggregate.blocks_from_spec(cells)
    assert blocks == {cells[0]: "D", cells[1]: "D", cells[2]: "E"}
    runs, notes = aggregate.normalised_runs(values, cells, blocks, ["none", "m"], "none")
    s_a, s_v = math.sqrt((4 + 13 / 3) / 2), math.sqrt(2.0)
    want = [np.mean([3 / s_a, 1 / s_v]), np.mean([2 / s_a, 2 / s_v]), np.mean([3 / s_a, 0 / s_v])]
    assert runs["m"]["D"] == pytest.approx(want) and runs["m"]["E"] == pytest.approx([0, 0, 0])
    assert runs["none"]["D"] == pytest.approx([0, 0, 0]) and notes == []
    # P(m > none) by hand, x > y counts 1 and x = y counts 1/2 over the 9 seed pairs:
    pa = (2 + 2.5 + 3) / 9  # D/audio 53 54 57 vs 50 52 54: 53 > 50,52; 54 > 50,52 and = 54; 57 > all
    pv = (2 + 2 + 2.5) / 9  # D/visual 71 72 73 vs 70 70 73: each > 70,70; 73 = 73
    pe = 0.5                             # identical samples: (x > y) + (x == y)/2 averages to 1/2
    point, lo, hi = aggregate.probability_of_improvement(values, cells, blocks, "m", "none", reps=500)
    assert point == pytest.approx(np.mean([np.mean([pa, pv]), pe]))
    assert lo <= point <= hi
    assert aggregate.prob_greater(np.array([1, 2, 3]), np.array([2, 2, 2])) == pytest.approx(0.5)


def test_blocks_can_be_declared():
    cells = [("a", "x"), ("a", "y"), ("b", "x"), ("c", "x")]
    assert set(aggregate.blocks_from_spec(cells, "cell").values()) == {"a/x", "a/y", "b/x", "c/x"}
    assert aggregate.blocks_from_spec(cells, "AB=a,b") == {cells[0]: "AB", cells[1]: "AB", cells[2]: "AB",
                                                           cells[3]: "c"}
    for bad in ("AB", "=a", "X=a;Y=a"):
        with pytest.raises(BenchError, match="--blocks"):
            aggregate.blocks_from_spec(cells, bad)


def test_mean_rank_interval_covers_the_mean_rank():
    cells = [("D", "x"), ("E", "x")]
    raw = {cells[0]: {"a": [80, 81, 82], "b": [70, 71, 72], "c": [75, 76, 60]},
           cells[1]: {"a": [60, 61, 62], "b": [50, 52, 51], "c": [55, 56, 57]}}
    values = {(m, c): v for c, per in raw.items() for m, v in cellvals(per).items()}
    ci = aggregate.mean_rank_interval(values, cells, ["a", "b", "c"], reps=300)
    assert ci["a"] == (1.0, 1.0) and ci["b"][1] == 3.0 and ci["c"][0] < ci["c"][1]


def test_iman_davenport_on_demsars_worked_example():
    """Demsar (2006), section 3.2.2 / Table 6: four C4.5 variants on 14 data sets, average ranks
    3.143, 2.000, 2.893, 1.964 give chi2_F = 9.28 and F_F = 3.69 (critical F(3, 39) = 2.85 at 0.05);
    the Nemenyi CD for k = 4 (q_0.05 = 2.569) and N = 14 is 1.25."""
    fr = across.friedman_from_ranks([3.143, 2.000, 2.893, 1.964], 14)
    assert round(fr["chi2"], 2) == 9.28 and round(fr["F"], 2) == 3.69
    assert (fr["df1"], fr["df2"]) == (3, 39) and fr["p"] < 0.05
    from scipy.stats import f

    assert f.ppf(0.95, 3, 39) == pytest.approx(2.85, abs=0.005)
    assert round(across.nemenyi_cd(4, 14), 2) == 1.25


def test_across_block_tests_are_refused_below_the_minimum_and_run_at_it():
    rng = np.random.default_rng(0)
    methods = ["none", "a", "b", "c"]
    for n, refused in ((2, True), (9, True), (10, False)):
        mat = rng.normal(size=(n, 4)) + np.array([0, 1, 2, 0.5])
        out = across.across_blocks(mat, methods, [f"B{i}" for i in range(n)], control="none")
        if refused:
            assert out["statistic"] is None and f"{n} independent block(s)" in out["refused"]
            assert "Demsar 2006" in out["refused"] and "refused" in out["refused"]
        else:
            ranks = aggregate.rank_matrix(mat).mean(axis=0)
            assert out["F"] == pytest.approx(across.friedman_from_ranks(ranks, n)["F"])
            assert set(out["vs_control"]) == {"a", "b", "c"} and out["cd"] == pytest.approx(across.nemenyi_cd(4, n))
            from scipy.stats import wilcoxon

            ps = [wilcoxon(mat[:, i] - mat[:, 0]).pvalue for i in (1, 2, 3)]
            assert [out["vs_control"][m]["p_adj"] for m in "abc"] == pytest.approx(paired.adjust(ps, "holm"))
    assert "needs >= 3 methods" in across.across_blocks(np.zeros((12, 2)), ["a", "b"], list("x" * 12), None)["refused"]


def test_leave_one_benchmark_out_names_the_top_places():
    cells = [("D", "x"), ("D", "y"), ("E", "x"), ("F", "x")]
    means = {}
    for c, order in zip(cells, (["a", "b", "c"], ["a", "b", "c"], ["b", "a", "c"], ["b", "c", "a"])):
        for rank, m in enumerate(order):
            means[(m, c)] = 90.0 - rank
    blocks = aggregate.blocks_from_spec(cells)
    out = across.leave_one_out(means, ["a", "b", "c"], cells, blocks)
    # all: a 1,1,2,3 -> 1.75 ; b 2,2,1,1 -> 1.5 ; c 3,3,3,2 -> 2.75
    assert out["full"] == ["b", "a", "c"]
    assert [r["top"][0] for r in out["rows"]] == ["b", "a", "a"] and out["first_kept"] == 1
    assert "First place unchanged in 1 of 3" in out["text"]


def test_an_older_record_without_a_fingerprint_pairs_on_its_seed():
    """Records from before split fingerprints ran on their configuration's fixed split: they pair
    with a new record of the same seed; two known, different fingerprints still do not."""
    from bench.report.stats.paired import compare

    old = {(0, None): 50.0, (1, None): 52.0, (2, None): 51.0}
    new = {(0, "f0"): 55.0, (1, "f0"): 58.0, (2, "f0"): 56.0}
    res = compare(new, old)
    assert res.n == 3 and res.seeds == [0, 1, 2] and not res.only_a and not res.only_b
    assert res.diff == pytest.approx(16.0 / 3)
    other = compare(new, {(0, "zz"): 50.0, (1, "zz"): 52.0, (2, "zz"): 51.0})
    assert other.n == 0 and other.only_a == [0, 1, 2] and other.only_b == [0, 1, 2]
