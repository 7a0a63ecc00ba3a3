"""``teacher_sets.md`` of the published results (#28): do multimodal teachers beat unimodal ones?

Per benchmark whose records hold a teacher-set direction (AV-Digits ``av2v``, mfeat ``facmor2fac``),
per student modality, from the records' best metrics alone (the grid saves no models, so no CCH):

1. **Gains** over w/o KD per (method, teacher choice) and the **modality gaps**
   gain(choice) - gain(same-modality), exactly as ``bench analyze gap`` measures them
   (:func:`bench.report.gap.gains_and_gaps`): each its own family, Holm-corrected.
2. **Teacher set against each one-modality teacher**: per (method, set), gain(set) - gain(u) paired
   per seed for every one-modality choice u (each cross-modal teacher and the same-modality one),
   all of a benchmark's comparisons one family, Holm-corrected. "Set beats both unimodal teachers"
   only when every one of them is ``better`` after correction; else the verdict says which
   comparison is worse, equivalent, inconclusive or missing.

Why each and not "the best unimodal teacher": choosing it by mean test accuracy and then testing
the set against it alone selects on the test set that the test then reads, and the selection
is not in the family that Holm corrects. Testing against each and asking for all of them is the
stricter claim and needs no selection.

The set-minus-same-modality difference is the set's modality gap (same per-seed numbers); it is
tested again here because its family is another (the question is another).
"""

from __future__ import annotations

from typing import Any

from bench.api.errors import BenchError
from bench.data.tsets import is_set
from bench.report.gap import gains_and_gaps, select_records, set_only
from bench.report.gap_features import overrides_text
from bench.report.gap_render import gain_table, gap_table
from bench.report.rows import display_name
from bench.report.stats import paired as P
from bench.report.tables import md_escape

UNIMODAL = ("cross-modal", "same-modality")

WORDS = {"better": "set better", "worse": "set worse", "equivalent": "equivalent (inside the ROPE)",
         "inconclusive": "inconclusive", "untested": "untested (fewer than two paired seeds)"}


def _unimodal_choices(adapter: Any, student: str, choices: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """Every one-modality teacher of ``student`` the grid should have, (direction, kind): the recorded
    ones, and the dataset's cross-modal and same-modality directions into it even when unrecorded
    (a missing one makes the verdict say so rather than silently narrowing the claim)."""
    want = [(adapter.direction_name(t, s), "cross-modal") for t, s in adapter.directions() if s == student]
    want.append((adapter.direction_name(student, student), "same-modality"))
    have = [(d, k) for d, _t, k in choices if k in UNIMODAL]
    return have + [w for w in want if w not in have]


def verdict(parts: list[tuple[str, str, str]]) -> tuple[str, str]:
    """(key, sentence) from the set's comparisons ``(direction, kind, verdict or 'missing')``: key
    ``beats both`` (every comparison better after correction), ``worse`` (some comparison worse),
    ``n/a`` (no comparison possible) or ``not shown``."""
    if not parts or all(v == "n/a" for _d, _k, v in parts):
        return "n/a", "n/a: no one-modality teacher to compare with"
    if all(v == "better" for _d, _k, v in parts):
        return "beats both", ("set beats both unimodal teachers" if len(parts) == 2
                              else f"set beats all {len(parts)} unimodal teachers")
    detail = "; ".join(f"vs {k} {d}: {WORDS.get(v, v)}" for d, k, v in parts)
    worse = [d for d, _k, v in parts if v == "worse"]
    if worse:
        return "worse", f"set worse than {', '.join(worse)} ({detail})"
    return "not shown", f"not shown to beat both ({detail})"


def compare_sets(measured: dict[str, Any], adapter: Any, *, alpha: float = P.ALPHA, rope: float = P.ROPE,
                 correction: str = P.DEFAULT_CORRECTION) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The set-against-each-unimodal-teacher comparisons of one benchmark (one family), the verdict
    per (student, method, set), and the number of tests in the family."""
    per_seed, rows = measured["per_seed"], measured["rows"]
    gain_row = {(r["student"], r["method"], r["direction"]): r for r in rows}
    items, out = {}, []
    for s, choices in measured["plan"].items():
        unis = _unimodal_choices(adapter, s, choices)
        for m in dict.fromkeys(r["method"] for r in rows if r["student"] == s):
            for d, _t, _k in (c for c in choices if c[2] == "teacher-set"):
                for u, kind in unis:
                    row: dict[str, Any] = {"student": s, "method": m, "set": d, "vs": u, "vs_kind": kind}
                    a, b = per_seed.get((s, m, d)), per_seed.get((s, m, u))
                    if set_only(m):
                        row["missing"] = f"n/a: {display_name(m)} distils from a teacher set only"
                    elif a is None or b is None:
                        lack = d if a is None else u
                        why = (gain_row.get((s, m, lack)) or {}).get("gain_missing") or f"no records of {lack}"
                        row["missing"] = f"gain on {lack} missing ({why})"
                    else:
                        items[(s, m, d, u)] = (a, b)
                    out.append(row)
    res = P.compare_family(items, alpha=alpha, rope=rope, correction=correction)
    for row in out:
        r = res.get((row["student"], row["method"], row["set"], row["vs"]))
        if r is None:
            continue
        a, b = P.aligned(*items[(row["student"], row["method"], row["set"], row["vs"])])
        keys, _, _ = P.match(a, b)
        row.update({"n": r.n, "seeds": r.seeds, "per_seed": {str(k[0]): a[k] - b[k] for k in keys},
                    "mean_diff": r.diff, "ci_low": r.ci[0] if r.ci else None, "ci_high": r.ci[1] if r.ci else None,
                    "p": r.p, "p_adj": r.p_adj, "p_tost_adj": r.p_tost_adj, "verdict": r.verdict,
                    "unmatched": r.unmatched_text(row["set"], row["vs"])})
    verdicts = []
    for key in dict.fromkeys((r["student"], r["method"], r["set"]) for r in out):
        mine = [r for r in out if (r["student"], r["method"], r["set"]) == key]
        parts = [(r["vs"], r["vs_kind"], r.get("verdict") or ("n/a" if r["missing"].startswith("n/a") else "missing"))
                 for r in mine]
        k, text = verdict(parts)
        verdicts.append({"student": key[0], "method": key[1], "set": key[2], "verdict": k, "text": text})
    return out, verdicts, sum(1 for r in res.values() if r.p is not None)


def section(records: list[dict[str, Any]], benchmark: Any, *, alpha: float = P.ALPHA, rope: float = P.ROPE,
            correction: str = P.DEFAULT_CORRECTION) -> dict[str, Any]:
    """One benchmark's numbers (JSON-ready); ``status`` says ``ok``, ``no teacher-set runs`` or
    ``no records`` (with ``why``)."""
    from bench.train.resolve import build_adapter

    adapter = build_adapter(benchmark.dataset, benchmark.overrides)
    head = {"benchmark": benchmark.name, "dataset": adapter.name, "overrides": benchmark.overrides}
    remedy = f"bench run --datasets {adapter.name} --directions all,same,sets{overrides_text(benchmark.overrides)}"
    try:
        df, _, notes = select_records(records, adapter, overrides_text(benchmark.overrides), remedy,
                                      where="the published records")
    except BenchError as e:
        return {**head, "status": "no records", "why": str(e)}
    on_sets = df[[is_set(t) for t in df["teacher_modality"]]]
    methods = sorted(set(on_sets["method"]) - {"none"})
    if not methods:
        return {**head, "status": "no teacher-set runs", "why": f"no KD record of {adapter.name} has a teacher set"}
    m = gains_and_gaps(df, adapter, need="teacher-set", methods=methods, alpha=alpha, rope=rope, correction=correction)
    cmp_rows, verdicts, n_set = compare_sets(m, adapter, alpha=alpha, rope=rope, correction=correction)
    return {**head, "status": "ok", "choices": {s: [list(c) for c in ch] for s, ch in m["plan"].items()},
            "rows": m["rows"], "set_vs_unimodal": cmp_rows, "verdicts": verdicts, "n_gain_tests": m["n_gain_tests"],
            "n_gap_tests": m["n_gap_tests"], "n_set_tests": n_set, "alpha": alpha, "rope": rope,
            "correction": correction, "notes": notes + m["notes"]}


def _num(v: Any) -> str:
    return "—" if v is None else f"{v:+.2f}"


def _set_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| method | teacher set | minus | kind | seeds | mean difference | 95 % CI | p (adj.) | verdict |",
           "|---|---|---|---|---|---:|---|---:|---|"]
    for r in rows:
        cells = [md_escape(display_name(r["method"])), md_escape(r["set"]), md_escape(r["vs"]), r["vs_kind"]]
        if r.get("missing"):
            why = md_escape(r["missing"])
            out.append("| " + " | ".join(cells) + f" | | | | | {why if why.startswith('n/a') else 'missing: ' + why} |")
            continue
        seeds = " ".join(map(str, r["seeds"])) + (f" ({md_escape(r['unmatched'])})" if r["unmatched"] else "")
        ci = "—" if r["ci_low"] is None else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        p = "—" if r["p_adj"] is None else f"{r['p_adj']:.3g}"
        out.append("| " + " | ".join(cells) + f" | {seeds} | {_num(r['mean_diff'])} | {ci} | {p} | {r['verdict']} |")
    return out


INTRO = ("Does a multimodal teacher (a teacher set: one fusion network over every modality, `av2v`, "
         "`facmor2fac`) help a student more than a one-modality teacher (the other modality, `a2v`, or the "
         "student's own, `v2v`)? Every number is a difference of the selected-epoch test metric (points), paired "
         "per seed: every run uses per-seed splits, so a seed fixes the split, the initialisation and the batch "
         "order alike, and two runs pair on (seed, split fingerprint). The gain is KD minus the w/o KD run of the "
         "same direction; the modality gap a choice's gain minus the same-modality gain. The teacher set is "
         "compared with **each** one-modality teacher, not with the one of best test accuracy: choosing that one "
         "on the test set and then testing against it alone would select on the data the test reads. 'Set beats "
         "both unimodal teachers' needs both differences significantly above 0 after correction. Gains, gaps and "
         "the set comparisons are three families per benchmark, each Holm-corrected. CCH is not computed: the "
         "grid saved no model files (no `--save-model`), and its mutual informations need the networks' features "
         "(`bench analyze gap` on a grid run with `--save-model`). MST-Distill distils from a teacher set only: "
         "its gain is shown, its gap and set comparison are n/a.")


def markdown(sections: list[dict[str, Any]]) -> str:
    lines = ["# Teacher sets against one-modality teachers", "", INTRO, ""]
    ok = [s for s in sections if s["status"] == "ok"]
    if not ok:
        lines += ["**No teacher-set runs in the published records**: nothing to compare yet (the grid's "
                  "`teacher_sets` part makes them).", ""]
    for sec in sections:
        title = f"## {md_escape(sec['benchmark'])} (`{md_escape(sec['dataset'])}`)"
        if sec["status"] != "ok":
            lines += [title, "", f"{sec['status'].capitalize()}: {md_escape(sec['why'])}.", ""]
            continue
        lines += [title, ""]
        for s, choices in sec["choices"].items():
            mine = [r for r in sec["rows"] if r["student"] == s]
            same = next((r["gap_vs"] for r in mine if r.get("gap_vs")), "same-modality")
            lines += [f"### Student {md_escape(s)}", "",
                      "Teacher choices: " + ", ".join(f"{md_escape(d)} ({k})" for d, _t, k in choices) + ".", "",
                      "Gain over w/o KD (KD minus w/o KD, paired per seed):", "", *gain_table(mine), "",
                      f"Modality gap: gain(teacher choice) − gain({md_escape(same)}):", "",
                      *gap_table(mine), "",
                      "Teacher set minus each one-modality teacher (difference of gains, paired per seed):", "",
                      *_set_table([r for r in sec["set_vs_unimodal"] if r["student"] == s]), "",
                      "| method | teacher set | verdict |", "|---|---|---|",
                      *[f"| {md_escape(display_name(v['method']))} | {md_escape(v['set'])} | {md_escape(v['text'])} |"
                        for v in sec["verdicts"] if v["student"] == s], ""]
        a, r, c = sec["alpha"], sec["rope"], sec["correction"]
        lines += ["Rules:", "",
                  "- Gains: " + P.rule_text("gains shown", sec["n_gain_tests"], a, r, c) + ".",
                  "- Gaps: " + P.rule_text("gaps shown", sec["n_gap_tests"], a, r, c) + ".",
                  "- Set against each one-modality teacher: " + P.rule_text("set comparisons shown",
                                                                            sec["n_set_tests"], a, r, c) + ".", ""]
        if sec["notes"]:
            lines += ["Notes:", "", *[f"- {md_escape(n)}" for n in sec["notes"]], ""]
    return "\n".join(lines)


def teacher_sets(records: list[dict[str, Any]], benchmarks: tuple, **kw: Any) -> tuple[str, dict[str, Any]]:
    """``teacher_sets.md`` and ``summary["teacher_sets"]`` (per dataset, every number) from the
    published records; writes nothing."""
    sections = [section(records, b, **kw) for b in benchmarks]
    return markdown(sections), {s["dataset"]: s for s in sections}
