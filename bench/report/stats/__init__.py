"""The statistics behind every verdict the harness prints (tables, leaderboard, its page, tuning and
backbone comparisons all call these; nothing else computes a test).

* :mod:`.paired`: within a cell, methods compared on per-seed differences matched by seed (and
  split fingerprint), 95 % t-interval, paired t-test, Holm over the family shown, TOST against a
  ROPE, and the verdict better / worse / equivalent / inconclusive; the row order of marks.
* :mod:`.aggregate`: normalised scores per cell and block, IQM and mean with stratified-bootstrap
  intervals, probability of improvement, mean-rank intervals, the performance profile.
* :mod:`.across`: Friedman with the Iman-Davenport F, Wilcoxon-Holm against the control and the
  Nemenyi CD across independent blocks, refused below a stated minimum; leave-one-benchmark-out.
"""

from bench.report.stats.across import MIN_BLOCKS, across_blocks, friedman_from_ranks, leave_one_out, nemenyi_cd
from bench.report.stats.aggregate import (
    blocks_from_spec,
    iqm,
    mean_rank_interval,
    normalised_runs,
    probability_of_improvement,
    score_interval,
    stratified_bootstrap,
)
from bench.report.stats.paired import (
    ALPHA,
    CORRECTIONS,
    DEFAULT_CORRECTION,
    ROPE,
    Paired,
    adjust,
    at_chance,
    best_first,
    check_correction,
    check_rope,
    compare,
    compare_family,
    rule_text,
    seed_interval,
)

__all__ = ["ALPHA", "CORRECTIONS", "DEFAULT_CORRECTION", "MIN_BLOCKS", "ROPE", "Paired", "across_blocks", "adjust",
           "at_chance", "best_first", "blocks_from_spec", "check_correction", "check_rope", "compare_family",
           "friedman_from_ranks", "iqm", "leave_one_out", "mean_rank_interval", "nemenyi_cd", "normalised_runs",
           "compare", "probability_of_improvement", "rule_text", "score_interval", "seed_interval",
           "stratified_bootstrap"]
