"""The files of ``bench analyze gap`` (:mod:`bench.report.gap`): ``gap_<dataset>.csv``, one row per
(student, method, teacher choice) with every value unrounded, and ``gap_<dataset>.md``, the four
tables per student modality, the rules behind the verdicts and the notes."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from bench.report.gap_features import middle_k
from bench.report.output import csv_text
from bench.report.rows import display_name
from bench.report.stats import paired as P
from bench.report.tables import md_escape

HEAD = ["dataset", "student", "direction", "kind", "teacher", "method", "teacher_file", "hs_run", "cch_missing"]
PER_K = ["k_used", "I_TS", "I_SY", "delta"]
TAIL = ["baseline", "gain_n", "gain_seeds", "mean_gain", "gain_ci_low", "gain_ci_high", "gain_p", "gain_p_adj",
        "gain_verdict", "gain_unmatched", "gain_missing", "gap_vs", "gap_n", "gap_seeds", "mean_gap", "gap_ci_low",
        "gap_ci_high", "gap_p", "gap_p_adj", "gap_verdict", "gap_unmatched", "gap_missing", "predicted", "measured",
        "agreement"]
SET_WORDS = {"output": "a fusion teacher's classifier input (its hidden layer, what a KD method reads)",
             "fused": "a fusion teacher's members' pooled vectors, concatenated"}


def columns(ks: tuple[int, ...]) -> list[str]:
    return HEAD + [f"{c}_k{k}" for k in ks for c in PER_K] + TAIL


def _num(v: Any, fmt: str = "{:+.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def _ci(row: dict[str, Any], prefix: str) -> str:
    lo, hi = row.get(f"{prefix}_ci_low"), row.get(f"{prefix}_ci_high")
    return "—" if lo is None else f"[{lo:+.2f}, {hi:+.2f}]"


def _p(v: Any) -> str:
    return "—" if v is None else f"{v:.3g}"


def _missing(row: dict[str, Any], prefix: str) -> str:
    why = row.get(f"{prefix}_missing")
    if not why:
        return ""
    return md_escape(why) if why.startswith("n/a") else f"missing: {md_escape(why)}"  # n/a: not applicable


def _cch_table(student: str, choices: list, cch: dict, ks: tuple[int, ...]) -> list[str]:
    out = ["| teacher choice | kind | H_T (teacher file) | k | I(H_T;H_S) | I(H_S;Y) | Δ | CCH verdict |",
           "|---|---|---|---:|---:|---:|---:|---|"]
    for d, _t, kind in choices:
        c = cch.get((student, d), {})
        if "missing" in c:
            out.append(f"| {md_escape(d)} | {kind} | missing: {md_escape(c['missing'])} | | | | | |")
            continue
        for v in c["rows"]:
            k = f"{v['k']}" + (f" (capped at {v['k_used']})" if v["k_used"] != v["k"] else "")
            verdict = "KD expected to help" if v["delta"] > 0 else "KD not expected to help"
            out.append(f"| {md_escape(d)} | {kind} | {md_escape(c['teacher_file'])} | {k} | {v['i_ts']:.4f} | "
                       f"{v['i_sy']:.4f} | {v['delta']:+.4f} | {verdict} |")
    return out


def gain_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| method | teacher choice | w/o KD of | seeds | mean gain | 95 % CI | p (adj.) | verdict |",
           "|---|---|---|---|---:|---|---:|---|"]
    for r in rows:
        m, d = md_escape(display_name(r["method"])), md_escape(r["direction"])
        if r.get("gain_missing"):
            out.append(f"| {m} | {d} | | | | | | {_missing(r, 'gain')} |")
            continue
        seeds = r["gain_seeds"] + (f" ({md_escape(r['gain_unmatched'])})" if r.get("gain_unmatched") else "")
        out.append(f"| {m} | {d} | {md_escape(r['baseline'])} | {seeds} | {_num(r.get('mean_gain'))} | "
                   f"{_ci(r, 'gain')} | {_p(r.get('gain_p_adj'))} | {r['gain_verdict']} |")
    return out


def gap_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| method | teacher choice | seeds | mean gap | 95 % CI | p (adj.) | verdict |",
           "|---|---|---|---:|---|---:|---|"]
    for r in rows:
        if r["kind"] == "same-modality":
            continue
        m, d = md_escape(display_name(r["method"])), md_escape(r["direction"])
        if r.get("gap_missing"):
            out.append(f"| {m} | {d} | | | | | {_missing(r, 'gap')} |")
            continue
        seeds = r["gap_seeds"] + (f" ({md_escape(r['gap_unmatched'])})" if r.get("gap_unmatched") else "")
        out.append(f"| {m} | {d} | {seeds} | {_num(r.get('mean_gap'))} | {_ci(r, 'gap')} | {_p(r.get('gap_p_adj'))} | "
                   f"{r['gap_verdict']} |")
    return out


def _predict_table(rows: list[dict[str, Any]], ks: tuple[int, ...]) -> list[str]:
    out = [f"| method | teacher choice | Δ at k = {', '.join(map(str, ks))} | predicted | measured (gain verdict) | "
           f"agreement |", "|---|---|---|---|---|---|"]
    for r in rows:
        deltas = ", ".join(_num(r.get(f"delta_k{k}"), "{:+.3f}") for k in ks)
        measured = r["measured"] + (f" ({r['gain_verdict']})" if r.get("gain_verdict") else "")
        out.append(f"| {md_escape(display_name(r['method']))} | {md_escape(r['direction'])} | {deltas} | "
                   f"{r['predicted']} | {measured} | {r['agreement']} |")
    return out


def _order(names: list[str], values: list[float]) -> str:
    """``a (+1.000) = b (+1.000) > c (-0.500)``: highest first, ties joined by ``=``."""
    pairs = sorted(zip(names, values), key=lambda p: (-p[1], p[0]))
    out = ""
    for i, (n, v) in enumerate(pairs):
        out += ("" if i == 0 else " = " if v == pairs[i - 1][1] else " > ") + f"{md_escape(n)} ({v:+.3f})"
    return out


def _rank_table(student: str, rankings: dict) -> list[str]:
    out = ["| method | order by Δ (k = {k}) | order by mean gain | same order | Spearman ρ |", "|---|---|---|---|---:|"]
    k = None
    for (s, m), rk in rankings.items():
        if s != student:
            continue
        k = rk["k"]
        same = "—" if rk["same_order"] is None else ("yes" if rk["same_order"] else "no")
        miss = f" (missing: {', '.join(map(md_escape, rk['missing']))})" if rk["missing"] else ""
        out.append(f"| {md_escape(display_name(m))} | {_order(rk['choices'], rk['delta'])} | "
                   f"{_order(rk['choices'], rk['gain'])}{miss} | {same} | {_num(rk['rho'], '{:+.2f}')} |")
    out[0] = out[0].replace("{k}", str(k))
    return out


def counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many (method, teacher choice) rows agree, disagree, are undecided or have no prediction."""
    out = {"agree": 0, "disagree": 0, "undecided": 0, "no prediction": 0, "missing": 0}
    for r in rows:
        out[r["agreement"]] += 1
    return out


def markdown(rows: list[dict[str, Any]], cch: dict, plan: dict, rankings: dict, notes: list[str],
             info: dict[str, Any]) -> str:
    ks = info["ks"]
    hs = {s: cch.get((s, ch[0][0]), {}).get("hs_run") for s, ch in plan.items()}
    lines = [f"# CCH and the modality gap on {md_escape(info['dataset'])}", "",
             f"CCH from the features of seed {info['seed']} on the train split ({info['n_train']} samples), tap "
             f"`{info['tap']}`: H_S is the saved w/o KD student of each student modality (one network for all of its "
             f"teacher choices), H_T the teacher that a choice's KD records name; for a teacher set, "
             f"{SET_WORDS[info['set_feature']]}. Gaussian MI in nats: standardised, PCA to k fitted on train, "
             f"Ledoit-Wolf covariances; Δ = I(H_T;H_S) − I(H_S;Y) > 0: KD expected to help. Gains and gaps are in "
             f"points of the selected-epoch test metric, paired per seed.", ""]
    for s, choices in plan.items():
        mine = [r for r in rows if r["student"] == s]
        same = next(d for d, _t, k in choices if k == "same-modality")
        lines += [f"## Student {md_escape(s)}", "", f"H_S: the w/o KD student of run {md_escape(hs[s])}.", "",
                  "### CCH per teacher choice", "", *_cch_table(s, choices, cch, ks), "",
                  "### Gain over w/o KD (KD minus w/o KD, paired per seed)", "", *gain_table(mine), "",
                  f"### Modality gap: gain(teacher choice) − gain({md_escape(same)}), paired per seed", "",
                  *gap_table(mine), "", "### Does CCH predict which teachers help?", "",
                  *_predict_table(mine, ks), ""]
        c = counts(mine)
        lines += [f"Agreement: {c['agree']} agree, {c['disagree']} disagree, {c['undecided']} undecided (gain not "
                  f"shown either way), {c['no prediction']} without a prediction, {c['missing']} without a gain, of "
                  f"{len(mine)}.", "",
                  *_rank_table(s, rankings), ""]
    rule = {"all": "helps when Δ > 0 at every k, does not help when Δ ≤ 0 at every k, no prediction otherwise",
            "middle": f"the sign of Δ at the middle k ({middle_k(ks)})"}[info["predict"]]
    lines += ["## Rules", "",
              "- Gains: " + P.rule_text("gains shown", info["n_gain_tests"], info["alpha"], info["rope"],
                                        info["correction"]) + ".",
              "- Gaps: " + P.rule_text("gaps shown", info["n_gap_tests"], info["alpha"], info["rope"],
                                       info["correction"]) + ".",
              f"- Prediction: {rule}. Agreement: predicted helps and gain better; or predicted does not help and gain "
              f"worse or equivalent (CCH: KD does not help or hurts). An inconclusive or untested gain decides "
              f"nothing.",
              "- Ranking: teacher choices ordered by Δ at the middle k and by mean gain; Spearman ρ with three or more "
              "choices.", ""]
    if notes:
        lines += ["## Notes", "", *[f"- {md_escape(n)}" for n in notes], ""]
    return "\n".join(lines)


def write_outputs(out: Path, rows: list[dict[str, Any]], cch: dict, plan: dict, rankings: dict, notes: list[str],
                  info: dict[str, Any]) -> dict[str, Any]:
    from bench.report.output import unwritable

    cols = columns(info["ks"])
    md = markdown(rows, cch, plan, rankings, notes, info)
    csv_path, md_path = out / f"gap_{info['dataset']}.csv", out / f"gap_{info['dataset']}.md"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            for r in rows:
                w.writerow([csv_text(info["dataset"] if c == "dataset" else r.get(c)) if r.get(c) is not None
                            or c == "dataset" else "" for c in cols])
        md_path.write_text(md + "\n")
    except OSError as exc:
        raise unwritable("--out", out, exc) from None
    return {"rows": rows, "rankings": rankings, "notes": notes, "markdown": md, "csv": csv_path,
            "figures": [md_path], "info": info}
