"""The backbone-pair report groups by the networks the records name and compares like with like."""

from __future__ import annotations

from bench.report.backbone_pairs import network, pair_rows, render

SMALL = {"name": "resnet", "default": True, "params": {"widths": [32]}, "parameters": 310_000}
TIMM = {"name": "timm", "default": False, "params": {"model": "resnet34", "weights": "", "stages": 4},
        "parameters": 21_300_000}


def rec(method, seed, value, student, teacher=None, t_metric=60.0):  # type: ignore[no-untyped-def]
    bb = {"student": student, **({"teacher": teacher} if teacher else {})}
    return {"dataset": "avdigits", "direction": "a2v", "method": method, "seed": seed, "best_metric": value,
            "backbones": bb, "teacher": {"test_metric": t_metric} if teacher else None}


def test_rows_group_by_networks_and_method_and_the_test_compares_the_same_method():
    recs = [rec("logit", s, v, SMALL, SMALL, 63.0) for s, v in enumerate([76.0, 77.0, 78.0])]
    recs += [rec("logit", s, v, SMALL, TIMM, 70.0) for s, v in enumerate([80.0, 81.0, 82.0])]
    recs += [rec("none", s, v, SMALL) for s, v in enumerate([70.0, 70.5, 71.0])]
    rows = pair_rows(recs)
    assert len(rows) == 3
    by = {(r["method"], r["teacher"]): r for r in rows}
    chosen = by[("logit", network(TIMM))]
    assert chosen["mean"] == 81.0 and chosen["std"] == 1.0 and chosen["teacher_metric"] == 70.0
    assert network(TIMM) == "timm(model=resnet34, stages=4), 21.30M parameters"  # empty weights not shown
    assert by[("none", "(none: w/o KD)")]["teacher_metric"] is None
    text = render(rows, ["a", "b"])
    assert "| avdigits | a2v | dataset default: resnet, 0.31M parameters | timm(model=resnet34" in text
    tests = [ln for ln in text.splitlines() if ln.startswith("- ")]
    assert len(tests) == 1 and "Logit" in tests[0] and "difference +4.00" in tests[0]  # w/o KD is not paired
    # paired on seeds 0, 1, 2 (every seed exactly 4 points up): the verdict, not "significant"
    assert "over 3 seed(s)" in tests[0] and tests[0].endswith(": better") and "Holm-corrected over the 1" in text


def test_unmatched_seeds_are_named_and_a_noisy_pair_is_inconclusive():
    recs = [rec("logit", s, v, SMALL, SMALL) for s, v in enumerate([76.0, 80.0, 77.0])]
    recs += [rec("logit", s, v, SMALL, TIMM) for s, v in enumerate([79.0, 77.0, 78.5, 90.0])]
    line = [ln for ln in render(pair_rows(recs), ["a"]).splitlines() if ln.startswith("- ")][0]
    assert ": inconclusive (seed(s) 3 of \\[timm(model=resnet34" in line and line.endswith("unmatched)")
    assert "over 3 seed(s)" in line
