"""The statistics panels of the HTML leaderboard: the legend of every mark, the teachers of every
cell (a reference row outside the ranking), the aggregates with their intervals drawn as error
bars, the per-cell verdict matrix and the performance profile.

Everything is written by Python (names through ``html.escape``); the error bars are SVG images
(data: URIs, as the curves), so the page's Content-Security-Policy needs nothing new and no markup
of the page comes from anything but this module. The panels show every cell: the filters above recompute
the ranks and gains, not these intervals (a bootstrap in the browser would be a second
implementation of the statistics).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from bench.report.stats import paired as P

SYMBOL = {"better": "▲", "worse": "▼", "equivalent": "≈", "inconclusive": "·", "untested": "–"}


def legend(lb: Any) -> str:
    """What every symbol and interval on the page means, with the test, the correction and the ROPE."""
    esc = html.escape
    corr = P.CORRECTION_WORDS[lb.correction]
    fam = lb.families
    items = [
        f"▲ better / ▼ worse than w/o KD: the paired t-test on per-seed differences (matched by seed and split "
        f"fingerprint) rejects at alpha={lb.alpha}, {corr} over the {fam.get('vs_baseline', 0)} comparisons with "
        f"w/o KD on this page.",
        f"≈ equivalent: both one-sided tests of TOST reject inside the ROPE of ±{lb.rope:g} points ({corr} too), "
        f"i.e. the difference is shown to be smaller than the ROPE.",
        "· inconclusive: neither a difference nor an equivalence is shown (not significant is not the same as "
        "equal); – untested: fewer than two matched seeds.",
        f"~best: not significantly below the cell's best (the same test, {corr} over the "
        f"{fam.get('vs_best', 0)} comparisons with the best; the best is the higher unrounded mean, then the name).",
        "Intervals: 95 % t-intervals of the mean per-seed difference (cells); stratified-bootstrap 95 % percentile "
        "intervals (aggregates, 2000 resamples of the seeds within each block).",
    ]
    if getattr(lb, "teachers", None):
        items.append("Teacher (modality), in its own table below the ranking: the unimodal teacher the KD methods "
                     "distil in each cell, test metric mean ± std over the seeds used; a reference, not a method: "
                     "never ranked, marked or tested.")
    return '<div class="stats legend"><b>Legend</b><ul>' + "".join(f"<li>{esc(x)}</li>" for x in items) + "</ul></div>"


def _bar(x: float | None, ci: Any, lo: float, hi: float, ref: float | None, w: int = 220, h: int = 16) -> str:
    """An inline SVG error bar: the point, its interval, and a reference line (0 or 0.5)."""
    if x is None or ci is None or hi <= lo:
        return ""

    def px(v: float) -> float:
        return round(4 + (min(max(v, lo), hi) - lo) / (hi - lo) * (w - 8), 1)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">']
    if ref is not None and lo <= ref <= hi:
        parts.append(f'<line x1="{px(ref)}" x2="{px(ref)}" y1="0" y2="{h}" stroke="#98a2b3" stroke-dasharray="2,2"/>')
    parts.append(f'<line x1="{px(ci[0])}" x2="{px(ci[1])}" y1="{h / 2}" y2="{h / 2}" stroke="#1d2433" stroke-width="1.5"/>')
    for e in ci:
        parts.append(f'<line x1="{px(e)}" x2="{px(e)}" y1="{h / 2 - 4}" y2="{h / 2 + 4}" stroke="#1d2433"/>')
    parts.append(f'<circle cx="{px(x)}" cy="{h / 2}" r="3.2" fill="#1d4ed8"/></svg>')
    from bench.report.curves import svg_data_uri

    return f'<img class="bar" alt="{x:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" src="{svg_data_uri("".join(parts))}">'


def _fmt(x: Any, ci: Any, signed: bool = False) -> str:
    if x is None:
        return "-"
    f = "+.2f" if signed else ".2f"
    return f"{x:{f}}" + ("" if ci is None else f" [{ci[0]:{f}}, {ci[1]:{f}}]")


def aggregates(lb: Any) -> str:
    """Per method: IQM and mean normalised score, P(improvement) and mean rank, each with its interval
    as a number and as an error bar on a scale shared by the column."""
    esc = html.escape
    rows = [r for r in lb.rows if r["method"] != lb.baseline]
    spec = [("iqm", "IQM normalised score", 0.0, True), ("norm_mean", "mean normalised score", 0.0, True),
            ("p_improve", "P(improvement over w/o KD)", 0.5, False), ("mean_rank", "mean rank", None, False)]
    scale = {}
    for key, _, ref, _ in spec:
        ck = "mean_rank_ci" if key == "mean_rank" else f"{key}_ci"
        ends = [e for r in lb.rows if r.get(ck) for e in r[ck]] + ([ref] if ref is not None else [])
        scale[key] = (min(ends), max(ends)) if ends else (0.0, 1.0)
        if key == "p_improve":
            scale[key] = (0.0, 1.0)
    head = "".join(f"<th>{esc(t)}</th>" for _, t, _, _ in spec)
    body = []
    for r in sorted(rows, key=lambda r: (r.get("iqm") is None, -(r.get("iqm") or 0), r["display"])):
        cells = []
        for key, _, ref, signed in spec:
            ck = "mean_rank_ci" if key == "mean_rank" else f"{key}_ci"
            lo, hi = scale[key]
            cells.append(f"<td>{esc(_fmt(r.get(key), r.get(ck), signed))}<br>{_bar(r.get(key), r.get(ck), lo, hi, ref)}</td>")
        body.append(f"<tr><td class='l'>{esc(r['display'])}</td>{''.join(cells)}</tr>")
    note = ("Methods with every cell only (the others are not comparable across the same blocks). "
            "Dashed line: no gain (0) / a coin flip (0.5).")
    return (f'<h2>Aggregates with 95 % intervals</h2><p class="sub">{esc(note)}</p><table class="agg"><thead><tr>'
            f'<th class="l">method</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def teachers(lb: Any) -> str:
    """The teacher of every cell, one reference row apart from the ranked table: the teacher's test
    metric, mean ± std over the seeds used, its modality and seeds (empty without any teacher)."""
    from bench.report.leaderboard import TEACHERS_RULE

    if not getattr(lb, "teachers", None):
        return ""
    esc = html.escape
    head = "".join(f"<th>{esc(f'{d}/{m}')}</th>" for d, m in lb.cells)
    tds = []
    for c in lb.cells:
        parts = []
        for t in lb.teachers.get(c, []):
            mean = f"{t['mean']:.2f}" + (f" ± {t['std']:.2f}" if t["std"] is not None else "")
            parts.append(f"{esc(mean)} <small>{esc(str(t['teacher_modality']))}, seeds "
                         f"{esc(','.join(map(str, t['seeds'])))}</small>")
        tds.append(f"<td>{'<br>'.join(parts) or '--'}</td>")
    return (f'<h2>Teachers (reference, not ranked)</h2><p class="sub">{esc(TEACHERS_RULE)}</p>'
            f'<table class="cells teachers"><thead><tr><th class="l">row</th>{head}</tr></thead><tbody>'
            f"<tr><td class='l'><i>Teacher (modality)</i></td>{''.join(tds)}</tr></tbody></table>")


def verdict_matrix(lb: Any) -> str:
    """Every (method, cell) against w/o KD: the symbol, the mean paired difference and its interval."""
    esc = html.escape
    head = "".join(f"<th>{esc(f'{d}/{m}')}</th>" for d, m in lb.cells)
    body = []
    for r in lb.rows:
        m = r["method"]
        if m == lb.baseline:
            continue
        tds = []
        for c in lb.cells:
            v = lb.verdicts.get((m, c))
            if v is None:
                tds.append("<td>--</td>")
                continue
            word = v["verdict"]
            diff = "" if v["diff"] is None else f"{v['diff']:+.2f}"
            ci = "" if not v.get("ci") else f" [{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}]"
            p = "" if v.get("p_adj") is None else f" p={v['p_adj']:.3g}"
            tds.append(f'<td title="{esc(word)}"><span class="v v-{word}">{SYMBOL[word]}</span> {esc(diff + ci)}'
                       f'<small>{esc(p)}</small></td>')
        body.append(f"<tr><td class='l'>{esc(r['display'])}</td>{''.join(tds)}</tr>")
    return (f'<h2>Against w/o KD, per cell</h2><p class="sub">mean paired difference [95 % interval], corrected p; '
            f'symbols as in the legend</p><table class="cells verdicts"><thead><tr><th class="l">method</th>{head}'
            f'</tr></thead><tbody>{"".join(body)}</tbody></table>')


def profile_img(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    b64 = base64.b64encode(path.read_bytes()).decode()
    return (f'<h2>Performance profile</h2><img class="cd" alt="performance profile: fraction of runs above each '
            f'normalised score" src="data:image/png;base64,{b64}">')


CSS = """
table.agg td{vertical-align:top} img.bar{display:block;margin-top:2px}
.v{font-weight:700} .v-better{color:#067647} .v-worse{color:#b42318} .v-equivalent{color:#1d4ed8}
.v-inconclusive{color:#5b6475} .v-untested{color:#98a2b3} table.verdicts small{color:#5b6475;margin-left:4px}
.legend ul{margin:4px 0 0 18px;padding:0}
"""
