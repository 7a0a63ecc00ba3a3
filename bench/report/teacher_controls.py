"""The shuffled- and random-teacher controls of the republished grid (#28): who gets them, and what
they show.

A shuffled teacher (``train.teacher_control=shuffled``) hands every training sample the outputs of
another training sample of its class, so it keeps the teacher's class-level knowledge and removes
its per-sample information; a random teacher (``=random``) is the teacher network never trained.
Per method and cell (dataset, student modality) this module reports, against w/o KD, the paired
per-seed gain with the paired teacher, the shuffled teacher and the random teacher; the paired
difference paired minus shuffled teacher (how much of the gain needs the per-sample information);
and the share of the gain that survives the shuffle (shuffled gain / paired gain), given only
where the paired gain is shown > 0, because a ratio of a gain not shown to exist says nothing.

Pairs are matched by seed and split fingerprint and tested as everywhere else
(:mod:`bench.report.stats.paired`: 95 % t-intervals, paired t-test, TOST in the ROPE). Each of the
four comparisons is one family over every (method, cell) row of the table, Holm-corrected on its
own, as :mod:`bench.report.gap` does for its gains and gaps. Records enter as in the comparison
table: ok, paired protocol, cross-modal directions, default method parameters, not tuned.

The constants of the grid part (:data:`CONTROL_METHODS`, :data:`ZOO`, :func:`best_zoo_methods`)
live here, so the outputs can say which zoo methods got the controls without importing the grid's
planner (:mod:`bench.report.offline_grid`, which imports the outputs' module).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.api.errors import BenchError
from bench.report.rows import CONTROL_SUFFIXES, display_name, is_control_row, order_methods
from bench.report.stats import paired as P

CONTROL_METHODS = ("logit", "dkd", "dist", "feat", "c2kd", "fdcmkd", "ucmkd")
"""The methods that always get the shuffled- and random-teacher controls (issue #28's subset)."""

ZOO = ("at", "sp", "pkt", "rkd", "nst", "cc", "kdsvd", "wsld", "ctkd", "mlkd", "reviewkd", "mfh", "mgdfr",
       "crd", "vid", "discomkd")
"""The methods issue #26 added (the zoo), among which the two best of ``main`` get the controls too."""

ZOO_CONTROLS = 2

TEACHER_CONTROLS = ("shuffled", "random")

ZOO_RULE = (f"the {ZOO_CONTROLS} zoo methods with the lowest mean rank in the main part on the sample-paired "
            "benchmarks: per cell (dataset, student modality) each method's mean test metric over seeds, ranked "
            "among every method present (1 = best, ties averaged), ranks averaged over the cells; equal mean ranks "
            "broken by name (bench.report.teacher_controls.best_zoo_methods)")

COMPARISONS = {"paired": "gain with the paired teacher (method - w/o KD)",
               "shuffled": "gain with the shuffled teacher (shuffled control - w/o KD)",
               "random": "gain with the random teacher (random control - w/o KD)",
               "paired_minus_shuffled": "paired minus shuffled teacher (method - shuffled control)"}
"""The four families of the table, each corrected on its own over its (method, cell) rows."""


def sample_paired(benchmarks: tuple) -> list:
    """The benchmarks whose modalities are paired by sample (a shuffled teacher is a control there;
    on a class-paired benchmark such as AV-Digits every teacher is already 'shuffled')."""
    from bench.train.resolve import build_adapter

    return [b for b in benchmarks if getattr(build_adapter(b.dataset, b.overrides), "paired_by", "sample") == "sample"]


def best_zoo_methods(records: list[dict[str, Any]], k: int = ZOO_CONTROLS) -> tuple[list[str], dict[str, float]]:
    """The ``k`` zoo methods with the best (lowest) mean rank over the cells (dataset, student) of
    ``records``: per cell each method's mean test metric over seeds, ranked among every method
    present (1 = best, ties averaged). Returns the names and every zoo method's mean rank."""
    if not records:
        raise BenchError("no records of the main part to choose the zoo's controls from")
    df = pd.DataFrame([{"cell": (r["dataset"], r["student_modality"]), "method": r["method"],
                        "metric": float(r["best_metric"])} for r in records])
    means = df.groupby(["cell", "method"])["metric"].mean().reset_index()
    means["rank"] = means.groupby("cell")["metric"].rank(ascending=False, method="average")
    mean_rank = means.groupby("method")["rank"].mean()
    zoo = {m: float(v) for m, v in mean_rank.items() if m in ZOO}
    if len(zoo) < k:
        raise BenchError(f"the main part has {len(zoo)} zoo method(s) with records; {k} are needed")
    return sorted(zoo, key=lambda m: (zoo[m], m))[:k], zoo


def _frame(records: list[dict[str, Any]], datasets: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The records the analysis reads (module docstring), control rows renamed; notes on the rest."""
    from bench.records.store import to_frame
    from bench.report.kinds import select_frame
    from bench.report.tuning import select_params

    recs = [r for r in records if r.get("status") == "ok" and r.get("dataset") in datasets]
    if not recs:
        return pd.DataFrame(), []
    df = to_frame(recs)
    df = df[df["pairing"] == "paired"]
    df, notes = select_params(df, "default")
    return select_frame(df), notes


def _cell_values(df: pd.DataFrame, key: str, col: tuple[str, str]) -> tuple[dict | None, str | None]:
    """(seed, split fingerprint) -> test metric of one row in one cell, or why there is none."""
    from bench.report.cells import one_per_seed
    from bench.report.tables import seed_values

    sub = df[(df["method"] == key) & (df["dataset"] == col[0]) & (df["student_modality"] == col[1])]
    if sub.empty:
        return None, f"no {display_name(key)} records"
    _, problems = one_per_seed(sub.to_dict("records"))
    if sub["group_hash"].nunique() > 1 or problems:
        return None, f"conflict in {display_name(key)}: " + "; ".join(problems or ["several configurations"])
    return seed_values(sub, "best_metric"), None


def _per_seed(a: dict, b: dict) -> list[dict[str, Any]]:
    """a - b on the matched (seed, fingerprint) keys, one entry per seed."""
    a, b = P.aligned(a, b)
    keys, _, _ = P.match(a, b)
    return [{"seed": k[0], "split_fingerprint": k[1], "gain": a[k] - b[k]} for k in keys]


def _share(row: dict[str, Any], alpha: float) -> None:
    """``share_shuffled`` = shuffled gain / paired gain where the paired gain is shown > 0, else the reason."""
    g, s = row["paired"], row["shuffled"]
    row["share_shuffled"] = None
    if g is None or g["verdict"] == "untested":
        row["share_reason"] = "paired-teacher gain untested"
    elif g["verdict"] != "better":
        row["share_reason"] = (f"paired-teacher gain not shown > 0 (Holm p = {g['p_adj']:.3g} "
                               f"{'>=' if g['p_adj'] >= alpha else '<'} {alpha:g}, verdict {g['verdict']})")
    elif s is None or s["diff"] is None:
        row["share_reason"] = "no shuffled-teacher gain"
    elif [x["seed"] for x in s["per_seed"]] != [x["seed"] for x in g["per_seed"]]:
        row["share_reason"] = "the paired and shuffled gains stand on different seeds"
    else:
        row["share_shuffled"], row["share_reason"] = s["diff"] / g["diff"], None


def teacher_control_gains(records: list[dict[str, Any]], datasets: list[str], *, alpha: float = P.ALPHA,
                          rope: float = P.ROPE, correction: str = P.DEFAULT_CORRECTION) -> dict[str, Any]:
    """Per method and cell of ``datasets`` (the sample-paired benchmarks) that has a teacher-control
    record: the four paired comparisons of :data:`COMPARISONS` (difference, per-seed values,
    95 % interval, p, corrected p, verdict) and the share of the gain that survives the shuffle.
    ``status`` is ``no records`` (with ``why``) when the records hold no teacher control."""
    df, notes = _frame(records, datasets)
    keys = sorted({m for m in (df["method"] if len(df) else []) if is_control_row(m)
                   and any(m.endswith(x) for x in CONTROL_SUFFIXES.values())})  # not tuned ones (left out anyway)
    out: dict[str, Any] = {"datasets": list(datasets), "alpha": alpha, "rope": rope, "correction": correction,
                           "notes": notes, "rows": [], "families": {}}
    if not keys:
        out.update(status="no records", why=f"no shuffled- or random-teacher records on {', '.join(datasets) or 'any'}"
                   " (the grid's teacher_controls part has not run yet)")
        return out
    cats = {r.method: r.method_category for r in df[["method", "method_category"]].drop_duplicates().itertuples()}
    methods = order_methods({next(k[: -len(x)] for x in CONTROL_SUFFIXES.values() if k.endswith(x)) for k in keys}, cats)
    cells = [c for d in datasets for c in sorted({(d, s) for s in df[df["dataset"] == d]["student_modality"]})]
    cells = [c for c in cells if any(_cell_values(df, k, c)[0] for k in keys)]
    pairs: dict[str, dict[int, tuple[dict, dict]]] = {k: {} for k in COMPARISONS}
    for m in methods:
        for col in cells:
            vals = {"none": _cell_values(df, "none", col), "paired": _cell_values(df, m, col),
                    **{c: _cell_values(df, m + CONTROL_SUFFIXES[c], col) for c in TEACHER_CONTROLS}}
            if vals["shuffled"][0] is None and vals["random"][0] is None:
                continue
            i = len(out["rows"])
            out["rows"].append({"method": m, "display": display_name(m), "dataset": col[0], "student_modality": col[1],
                                "missing": {k: why for k, (v, why) in vals.items() if v is None}})
            for name, (a, b) in (("paired", ("paired", "none")), ("shuffled", ("shuffled", "none")),
                                 ("random", ("random", "none")), ("paired_minus_shuffled", ("paired", "shuffled"))):
                if vals[a][0] is not None and vals[b][0] is not None:
                    pairs[name][i] = (vals[a][0], vals[b][0])
    for name, items in pairs.items():
        res = P.compare_family(items, alpha=alpha, rope=rope, correction=correction)
        tested = sum(1 for r in res.values() if r.p is not None)
        out["families"][name] = {"what": COMPARISONS[name], "comparisons": len(items), "tested": tested,
                                 "rule": P.rule_text(f"rows of '{COMPARISONS[name]}'", tested, alpha, rope, correction)}
        for i, row in enumerate(out["rows"]):
            row[name] = dict(res[i].as_dict(), per_seed=_per_seed(*items[i])) if i in res else None
    for row in out["rows"]:
        _share(row, alpha)
    out["status"] = "ok"
    return out


def main_part_records(records: list[dict[str, Any]], datasets: list[str]) -> list[dict[str, Any]]:
    """The published records that stand for the grid's ``main`` part on ``datasets`` (what
    :func:`best_zoo_methods` chose from): cross-modal, paired protocol, no teacher control, not
    tuned, default method parameters, no Control-category method (``--methods all`` has none)."""
    from bench.records.store import teacher_control
    from bench.report.kinds import select_records
    from bench.report.studies import default_params_keep

    recs = [r for r in select_records([r for r in records if r.get("status") == "ok" and r.get("dataset") in datasets])
            if teacher_control(r) == "none" and not (r.get("config") or {}).get("tuned")
            and ((r.get("config") or {}).get("train") or {}).get("pairing", "paired") == "paired"
            and r.get("method_category") != "Control"]
    by: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by.setdefault(r["method"], []).append(r)
    return [r for m, rs in by.items()
            for r, keep in zip(rs, default_params_keep(m, [(r.get("config") or {}).get("method_params", {}) for r in rs]))
            if keep]


def zoo_controls(records: list[dict[str, Any]], datasets: list[str]) -> dict[str, Any]:
    """Which zoo methods the rule picks from the published main-part records, every zoo method's
    mean rank, the rule, and which zoo methods the records show with teacher controls."""
    from bench.records.store import teacher_control

    with_controls = sorted({r["method"] for r in records if r.get("status") == "ok" and r.get("dataset") in datasets
                            and r["method"] in ZOO and teacher_control(r) in TEACHER_CONTROLS})
    out: dict[str, Any] = {"rule": ZOO_RULE, "datasets": list(datasets), "with_control_records": with_controls}
    try:
        picked, ranks = best_zoo_methods(main_part_records(records, datasets))
    except BenchError as e:
        return dict(out, picked=None, mean_rank={}, why=str(e))
    out.update(picked=picked, mean_rank=dict(sorted(ranks.items(), key=lambda kv: (kv[1], kv[0]))),
               agrees=(not with_controls) or sorted(picked) == with_controls)
    return out


def _gain_text(p: dict[str, Any] | None, why: str | None) -> str:
    if p is None:
        return why or "--"
    if p["ci"] is None:
        return "--" if p["diff"] is None else f"{p['diff']:+.2f} (untested, n={p['n']})"
    return f"{p['diff']:+.2f} [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}] {p['verdict']}"


def to_markdown(tc: dict[str, Any], zoo: dict[str, Any] | None = None) -> str:
    """``teacher_controls.md``: what the controls are, the families and their correction, the table."""
    from bench.report.tables import md_escape

    intro = ("Teacher controls on the sample-paired benchmarks (" + md_escape(", ".join(tc["datasets"]) or "none")
             + "). A **shuffled** teacher gives every training sample the teacher outputs of another training sample "
             "of its class (class-level knowledge kept, per-sample information removed); a **random** teacher is the "
             "teacher network never trained. Gains are test top-1 points over w/o KD, paired per seed (and split "
             "fingerprint); *paired - shuffled* is how much of the gain needs the teacher's per-sample information; "
             "*share* = shuffled gain / paired gain, given only where the paired gain is significantly > 0.\n\n")
    if zoo is not None:
        have = ", ".join(display_name(m) for m in zoo["with_control_records"]) or "none"
        rule = (f"the rule picks {', '.join(display_name(m) for m in zoo['picked'])}" if zoo.get("picked")
                else f"the rule picks none here ({zoo.get('why')})")
        intro += md_escape(f"Zoo methods with teacher-control records: {have}; {rule}: {zoo['rule']}.") + "\n\n"
    if tc["status"] != "ok":
        return intro + md_escape(tc["why"]) + ".\n"
    fams = "; ".join(f"{md_escape(f['what'])}: {f['tested']} tested" for f in tc["families"].values())
    intro += (f"Families: each column is one family over its rows, {P.CORRECTION_WORDS[tc['correction']]} on its own "
              f"({fams}); paired t-test on per-seed differences, alpha={tc['alpha']:g}, equivalent = TOST inside the "
              f"ROPE of ±{tc['rope']:g} points; 95 % t-intervals of the mean per-seed difference; verdicts better / "
              f"worse / equivalent / inconclusive (untested: fewer than two matched seeds).\n\n")
    head = ["Method", "cell", "gain, paired teacher", "gain, shuffled teacher", "gain, random teacher",
            "paired - shuffled", "share surviving shuffle"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in tc["rows"]:
        miss = r["missing"]
        share = f"{r['share_shuffled']:.2f}" if r["share_shuffled"] is not None else r["share_reason"]
        cells = [display_name(r["method"]), f"{r['dataset']}/{r['student_modality']}",
                 _gain_text(r["paired"], miss.get("paired") or miss.get("none")),
                 _gain_text(r["shuffled"], miss.get("shuffled") or miss.get("none")),
                 _gain_text(r["random"], miss.get("random") or miss.get("none")),
                 _gain_text(r["paired_minus_shuffled"], miss.get("shuffled") or miss.get("paired")), share]
        lines.append("| " + " | ".join(md_escape(c) for c in cells) + " |")
    return intro + "\n".join(lines) + "\n" + "".join(f"\n- {md_escape(n)}" for n in tc["notes"])


def write_teacher_controls(published: list[dict[str, Any]], benchmarks: tuple, out: Any) -> tuple[dict, dict]:
    """``out/teacher_controls.md`` from the published records, and what ``summary.json`` gets
    (``teacher_controls``, ``zoo_controls``), on the sample-paired benchmarks."""
    datasets = [b.dataset for b in sample_paired(tuple(benchmarks))]
    tc = teacher_control_gains(published, datasets)
    zoo = zoo_controls(published, datasets)
    (out / "teacher_controls.md").write_text(to_markdown(tc, zoo))
    return tc, zoo
