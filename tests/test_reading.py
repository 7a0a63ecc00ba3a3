"""The reading of the published results (#28 item 4) says what the summary's corrected verdicts say
and nothing more: built from a summary whose verdicts are known, each sentence must name exactly the
methods those verdicts allow, with the summary's numbers, and never call a not-significant result a
tie. That ``reading.md`` is the reading of its own ``summary.json`` is checked on a real build in
tests/test_outputs_bytes.py."""

from __future__ import annotations

import re

from bench.report.reading import reading_markdown


def cmp(diff, lo, hi, p, verdict):
    return {"diff": diff, "ci": [lo, hi], "p_adj": p, "n": 5, "verdict": verdict}


def lb_row(method, display, iqm, iqm_ci, p_imp, p_ci, rank, rank_ci, **counts):
    return {"method": method, "display": display, "iqm": iqm, "iqm_ci": iqm_ci, "p_improve": p_imp,
            "p_improve_ci": p_ci, "mean_rank": rank, "mean_rank_ci": rank_ci,
            **{k: counts.get(k, 0) for k in ("better", "worse", "equivalent", "inconclusive")}}


def summary():
    vs = {"dkd|synthetic|visual": "better", "logit|synthetic|visual": "inconclusive", "feat|synthetic|visual": "worse",
          "dkd|mfeat|fac": "equivalent", "logit|mfeat|fac": "inconclusive", "feat|mfeat|fac": "untested"}
    detail = {"dkd|synthetic|visual": cmp(3.25, 1.5, 5.0, 0.0123, "better"),
              "logit|synthetic|visual": cmp(0.75, -1.0, 2.5, 0.41, "inconclusive"),
              "feat|synthetic|visual": cmp(-4.5, -6.0, -3.0, 0.002, "worse"),
              "dkd|mfeat|fac": cmp(0.05, -0.2, 0.3, 0.9, "equivalent"),
              "logit|mfeat|fac": cmp(0.4, -0.9, 1.7, 0.6, "inconclusive")}
    shuffled_row = {
        "method": "dkd", "display": "DKD", "dataset": "synthetic", "student_modality": "visual",
        "paired": cmp(3.25, 1.5, 5.0, 0.0123, "better"), "shuffled": cmp(1.3, 0.1, 2.5, 0.04, "better"),
        "random": cmp(-0.5, -2.0, 1.0, 0.5, "inconclusive"),
        "paired_minus_shuffled": cmp(1.95, 0.4, 3.5, 0.03, "better"), "share_shuffled": 0.4}
    logit_row = {
        "method": "logit", "display": "Logit", "dataset": "synthetic", "student_modality": "visual",
        "paired": cmp(0.75, -1.0, 2.5, 0.41, "inconclusive"), "shuffled": cmp(0.6, -1.0, 2.2, 0.5, "inconclusive"),
        "random": None, "paired_minus_shuffled": cmp(0.15, -1.0, 1.3, 0.8, "inconclusive"), "share_shuffled": None,
        "share_reason": "paired-teacher gain not shown > 0 (Holm p = 0.41 >= 0.05, verdict inconclusive)"}
    return {
        "provenance": {"records": 120, "commits": ["ab" * 20], "runner_versions": ["2"], "mixed": False, "problems": []},
        "coverage": {"synthetic": {"expected": 30, "done": 30, "missing": []}, "mfeat": {"expected": 30, "done": 30, "missing": []}},
        "vs_baseline": vs, "vs_baseline_detail": detail, "vs_baseline_rule": "RULE-TEXT",
        "displays": {"dkd": "DKD", "logit": "Logit", "feat": "Feat", "none": "w/o KD"},
        "leaderboard": [lb_row("none", "w/o KD", None, None, None, None, 2.5, [2.0, 3.0]),
                        lb_row("dkd", "DKD", 0.8, [0.2, 1.4], 0.7, [0.55, 0.85], 1.5, [1.0, 2.0], better=1, equivalent=1),
                        lb_row("logit", "Logit", 0.1, [-0.4, 0.6], 0.52, [0.4, 0.64], 2.25, [1.5, 3.0], inconclusive=2),
                        lb_row("feat", "Feat", -1.2, [-1.9, -0.5], 0.2, [0.1, 0.3], 3.75, [3.5, 4.0], worse=1)],
        "leaderboard_rule": "LB-RULE",
        "friedman": {"statistic": None, "refused": "Friedman refused: 2 independent block(s)"},
        "teacher_controls": {"status": "ok", "datasets": ["synthetic"], "families": {"paired": {"tested": 2}},
                             "rows": [shuffled_row, logit_row]},
        "zoo_controls": {"picked": ["wsld"], "rule": "ZOO-RULE"},
        "teacher_sets": {"avdigits": {"status": "ok", "correction": "holm", "n_set_tests": 4, "n_gap_tests": 2,
                                      "verdicts": [{"student": "visual", "method": "dkd", "set": "av2v", "verdict": "beats both",
                                                    "text": "set beats both unimodal teachers"},
                                                   {"student": "visual", "method": "logit", "set": "av2v", "verdict": "not shown",
                                                    "text": "not shown to beat both (vs same-modality v2v: inconclusive)"}],
                                      "rows": [{"method": "dkd", "student": "visual", "direction": "a2v", "gap_verdict": "worse",
                                                "mean_gap": -2.5, "gap_ci_low": -4.0, "gap_ci_high": -1.0}]},
                         "mfeat": {"status": "no teacher-set runs", "why": "no KD record of mfeat has a teacher set"}},
        "protocol_gap": [{"dataset": "synthetic", "runs": 30, "mean_gap": 0.87, "max_gap": 3.5, "share_inflated": 0.6}],
        "teachers": [{"dataset": "synthetic", "teacher_modality": "audio", "student_modality": "visual", "mean": 91.25,
                      "std": 0.5, "n_seeds": 5}],
        "unimodal": [{"dataset": "synthetic", "modality": "visual", "mean": 43.4, "std": 0.6}],
    }


def line(text, start):
    hits = [ln for ln in text.splitlines() if ln.startswith(start)]
    assert len(hits) == 1, (start, hits)
    return hits[0]


def test_verdicts_name_exactly_the_methods_the_corrected_tests_allow():
    text = reading_markdown(summary())
    better = line(text, "- **Better** than w/o KD")
    assert "(1)" in better and "DKD on synthetic visual (+3.25 points, 95 % CI [+1.50, +5.00], corrected p = 0.0123)" in better
    assert "Logit" not in better
    worse = line(text, "- **Worse** than w/o KD")
    assert "Feat on synthetic visual (-4.50 points" in worse and "DKD" not in worse
    # mfeat fac: equivalent, inconclusive and untested only -> no method differs there; synthetic has both
    assert line(text, "- **Columns where no method differs").endswith(": mfeat fac.")
    assert "| synthetic visual | 1 | 1 | 0 | 1 | 0 |" in text and "| mfeat fac | 0 | 0 | 1 | 1 | 1 |" in text
    assert "| **all** | **1** | **1** | **1** | **2** | **1** |" in text
    assert "RULE-TEXT" in text and not re.search(r"\btie", text, re.I)


def test_aggregates_are_quoted_with_their_intervals_and_rank_overlap_said():
    text = reading_markdown(summary())
    assert "| DKD | +0.80 [+0.20, +1.40] | 0.70 [0.55, 0.85] | 1.50 [1.00, 2.00] | 1 / 0 / 1 / 0 |" in text
    assert line(text, "- IQM interval above 0").endswith("above 0 (gains over w/o KD across the cells): DKD; below 0: Feat.")
    assert line(text, "- P(improvement) interval above 0.5").endswith(": DKD.")
    ranks = line(text, "- Best mean rank")
    # DKD [1, 2]: w/o KD [2, 3] and Logit [1.5, 3] reach it, Feat [3.5, 4] does not
    assert "DKD (1.50, [1.00, 2.00])" in ranks and "2 of the other 3 rows" in ranks and ranks.endswith(": w/o KD, Logit.")
    assert "- Friedman refused: 2 independent block(s)." in text


def test_a_surviving_share_only_where_the_gain_was_shown():
    text = reading_markdown(summary())
    dkd = line(text, "| DKD | synthetic visual |")
    assert dkd.endswith("| 40% |") and "+1.95 [+0.40, +3.50] better" in dkd
    logit = line(text, "| Logit | synthetic visual |")
    # the reason is Markdown-escaped (shown as "> 0"), and the share column has no percentage
    assert "n/a (paired-teacher gain not shown &gt; 0" in logit and "%" not in logit.split("|")[-2]
    assert line(text, "- The paired teacher beats its shuffled control").endswith("in 1 of 2 rows: DKD on synthetic visual.")
    assert "keeps 40% with the shuffled teacher" in line(text, "- A gain over w/o KD is shown")
    assert "wsld" in text


def test_teacher_sets_and_the_modality_gap():
    text = reading_markdown(summary())
    sets = line(text, "- **avdigits**")
    assert "in 1 of 2 (student, method, set) cases: DKD -> visual." in sets and "over 4 tests" in sets
    assert "  - Logit -> visual from av2v: not shown to beat both (vs same-modality v2v: inconclusive)." in text
    assert "1 worse" in text and "DKD -> visual from a2v: -2.50 [-4.00, -1.00] worse" in text
    assert "- mfeat: not shown (no KD record of mfeat has a teacher set)." in text


def test_protocol_and_teachers():
    text = reading_markdown(summary())
    assert "- synthetic: 0.87 points on average (at most 3.50), 60% of 30 runs inflated." in text
    assert "| synthetic | audio -> visual | 91.25 ± 0.50 | 5 | 43.40 ± 0.60 |" in text


def test_missing_parts_are_said_not_invented():
    s = summary()
    assert "Incomplete" not in reading_markdown(s)
    s["coverage"]["avdigits"] = {"expected": 30, "done": 12, "missing": ["avdigits a2v dkd s3"]}
    assert line(reading_markdown(s), "- **Incomplete").endswith("below:** avdigits (its runs so far are in "
                                                                 "`comparison_incomplete_<dataset>.md`).")
    s["teacher_controls"] = {"status": "no records", "why": "no shuffled- or random-teacher records on synthetic"}
    s["vs_baseline"] = {k: "inconclusive" for k in s["vs_baseline"]}
    text = reading_markdown(s)
    assert "Not shown: no shuffled- or random-teacher records on synthetic." in text
    assert "- No method is better than w/o KD in any column after the correction." in text
    assert line(text, "- **Columns where no method differs").endswith(": synthetic visual, mfeat fac.")


def test_names_from_plug_ins_reach_the_page_as_text_not_markup():
    """A display name, or a dataset's text, with HTML, a link or emphasis stays text on the page."""
    s = summary()
    evil = "<script>alert(1)</script>[x](http://e)*b*_i_|"
    s["displays"]["dkd"] = evil
    s["leaderboard"][1]["display"] = evil
    s["teacher_controls"]["rows"][0]["display"] = evil
    s["teacher_sets"]["mfeat"]["why"] = "<img src=x onerror=alert(1)>"
    text = reading_markdown(s)
    assert "<script>" not in text and "<img" not in text and "[x](" not in text and "*b*" not in text
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;\\[x\\](http://e)\\*b\\*\\_i\\_\\|"
    assert line(text, "- **Better** than w/o KD").count(escaped) == 1
    assert line(text, "| " + escaped + " | +0.80")
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
