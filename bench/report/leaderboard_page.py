"""The static, self-contained HTML leaderboard (no server, no CDN: opens from the file system).

The page embeds the per-cell numbers as JSON and recomputes the summary in the browser when the
reader filters datasets / student modalities (ranks, gains, verdict counts and negative transfer are
functions of the selected cells) or categories (rows; ranks are among the methods shown), under
the same rank rule as the Python side (``--rank-cells``; a switch on the page). Columns sort on click; the initial sort
can be given in the URL fragment (``index.html#sort=gain&dir=desc``), which the tests use to
drive the same code path from a headless browser. The CD diagram is inlined as a data: URI. The
statistics panels (the teachers of every cell, a reference row apart from the ranked table; legend,
aggregates with error bars, verdict matrix, performance profile) are
:mod:`bench.report.leaderboard_panels`'s.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import leaderboard_panels as panels
from bench.report.leaderboard import RANK_RULES, Leaderboard, reproduce_command, to_json
from bench.report.tables import CATEGORY_ORDER


def page_data(lb: Leaderboard) -> dict[str, Any]:
    """Everything the page's script needs. Cells and detail anchors are keyed by position, not by
    name, so no dataset, modality or method name can collide with another or reach an id."""
    keys = {c: f"c{i}" for i, c in enumerate(lb.cells)}
    methods = []
    for i, r in enumerate(lb.rows):
        m = r["method"]
        cells = {}
        for c in lb.cells:
            s = lb.stats.get((m, c))
            if s is None:
                continue
            rec = s.records[0]
            v = lb.verdicts.get((m, c)) or {}
            cells[keys[c]] = {
                "mean": None if s.conflict else s.mean, "std": s.std, "n": s.n, "seeds": sorted(s.seeds),
                "conflict": s.conflict, "verdict": v.get("verdict"), "p": v.get("p_adj", v.get("p")),
                "diff": v.get("diff"), "ci": v.get("ci"),
                "tied_best": m in lb.tied_best.get(c, []), "best": lb.tied_best.get(c, [None])[0] == m,
                "commit": sorted({str(x.get("git_commit")) for x in s.records}),
                "config_hash": sorted({str(x["config_hash"]) for x in s.records}),
                "direction": rec["direction"],
                "command": reproduce_command(rec, s.seeds),
                "method_params": rec.get("config", {}).get("method_params", {}),
                "train": rec.get("config", {}).get("train", {}),
            }
        methods.append({"key": m, "anchor": f"m-{i}", "name": r["display"], "category": r["category"],
                        "cells": cells, "source_hash": r.get("source_hash")})
    cats = [m["category"] for m in methods]
    return {"cells": [{"key": keys[(d, s)], "label": f"{d}/{s}", "dataset": d, "modality": s} for d, s in lb.cells],
            "methods": methods, "baseline": lb.baseline, "metric": lb.metric,
            "rank_rule": lb.rank_rule, "rank_rules": dict(RANK_RULES),
            "teachers": [{"cell": keys[c], **t} for c in lb.cells for t in lb.teachers.get(c, [])],
            "categories": [c for c in CATEGORY_ORDER if c in cats] + sorted(set(cats) - set(CATEGORY_ORDER))}


def _finite(x: Any) -> Any:
    """JSON has no NaN/Infinity (JSON.parse would reject the whole blob): they become null."""
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def script_json(data: Any) -> str:
    """JSON that is inert inside ``<script type="application/json">``: no ``<`` (so neither
    ``</script>`` nor ``<!--`` can end or bend the element), no ``>``/``&``, and every non-ASCII
    character (U+2028/2029 included) as a \\u escape; ``JSON.parse`` reads it back unchanged."""
    text = json.dumps(_finite(data), ensure_ascii=True, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def csp_hash(source: str) -> str:
    """The CSP source expression that allows exactly this inline ``<script>``/``<style>`` text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode("utf-8")).digest()).decode() + "'"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2433;max-width:1200px}
h1{font-size:22px;margin:0 0 4px} .sub{color:#5b6475;font-size:13px;margin-bottom:16px}
.filters{display:flex;gap:28px;flex-wrap:wrap;margin:12px 0;font-size:13px}
.filters fieldset{border:1px solid #d5d9e2;border-radius:6px;padding:6px 10px}
table{border-collapse:collapse;width:100%;font-size:14px}
th,td{padding:6px 10px;border-bottom:1px solid #e4e7ee;text-align:right}
th{background:#f3f5f9;cursor:pointer;user-select:none;white-space:nowrap}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.l,th.l{text-align:left} tr:hover td{background:#fafbfd}
.neg{color:#b42318} .pos{color:#067647}
.cat{font-size:11px;padding:1px 6px;border-radius:8px;background:#eef1f7;color:#3b4458}
details{margin:6px 0;font-size:13px} summary{cursor:pointer;font-weight:600}
code{background:#f3f5f9;padding:2px 4px;border-radius:4px;font-size:12px;word-break:break-all}
.stats{font-size:12px;color:#3b4458;background:#f8f9fc;border:1px solid #e4e7ee;border-radius:6px;padding:8px 10px;margin:12px 0}
img.cd{max-width:100%;border:1px solid #e4e7ee;border-radius:6px}
table.cells td,table.cells th{font-size:12px;padding:3px 6px}
.curves{display:flex;flex-wrap:wrap;gap:10px 18px;margin:8px 0 4px}
.curves figure{margin:0} .curves figcaption{font-size:12px;color:#3b4458;margin-bottom:2px}
.curves img{border:1px solid #e4e7ee;border-radius:4px;margin-right:4px}
""" + panels.CSS


JS = r"""
'use strict';
// Every name from the records reaches the page as text (textContent), never as markup.
const D = JSON.parse(document.getElementById('lb-data').textContent);
const KEYS = ['rank', 'ranked_on', 'method', 'category', 'gain', 'wtl', 'neg', 'coverage'];
let sortKey = 'rank', sortDir = 'asc';
function selected(name){return Array.from(document.querySelectorAll('input[name="'+name+'"]:checked')).map(e=>e.value);}
function el(tag, text, cls){const e = document.createElement(tag); if(text !== null && text !== undefined) e.textContent = String(text);
  if(cls) e.className = cls; return e;}
function rankData(vals){ // average ranks, 1 = largest
  const idx = vals.map((v,i)=>i).sort((a,b)=>vals[b]-vals[a]); const r = new Array(vals.length);
  for(let i=0;i<idx.length;){let j=i; while(j+1<idx.length && vals[idx[j+1]]===vals[idx[i]]) j++;
    for(let k=i;k<=j;k++) r[idx[k]]=(i+j)/2+1; i=j+1;} return r;}
function usable(m, c){return !!(m.cells[c] && m.cells[c].mean !== null);}
function label(c){return D.cells.find(x=>x.key===c).label;}
function compute(){ // the rule of bench.report.leaderboard.rank_cells_rule, on the selected cells and shown methods
  const ds = selected('ds'), mods = selected('mod'), cats = selected('cat');
  const rule = selected('rule')[0] || D.rank_rule;
  const cells = D.cells.filter(c=>ds.includes(c.dataset) && mods.includes(c.modality)).map(c=>c.key);
  const shown = D.methods.filter(m=>cats.includes(m.category));
  const ranked = rule === 'complete' ? (cells.length ? shown.filter(m=>cells.every(c=>usable(m, c))) : [])
                                     : shown.filter(m=>cells.some(c=>usable(m, c)));
  const unranked = shown.filter(m=>!ranked.includes(m));
  let used = (rule === 'complete' && !ranked.length) ? [] : cells, leftOut = [];
  if(rule === 'common'){
    used = ranked.length ? cells.filter(c=>ranked.every(m=>usable(m, c))) : [];
    leftOut = cells.filter(c=>!used.includes(c)).map(c=>[c, ranked.filter(m=>!usable(m, c))]);
  }
  const ranks = {};
  for(const c of used){
    const present = ranked.filter(m=>usable(m, c));
    const r = rankData(present.map(m=>m.cells[c].mean));
    present.forEach((m,i)=>{(ranks[m.key] ||= []).push(r[i]);});
  }
  const base = D.methods.find(m=>m.key===D.baseline);
  const rows = [];
  for(const m of shown){
    const pres = cells.filter(c=>usable(m, c));
    const gains = pres.filter(c=>base && usable(base, c)).map(c=>m.cells[c].mean-base.cells[c].mean);
    const v = pres.map(c=>m.cells[c].verdict);
    const isBase = m.key===D.baseline, rk = ranks[m.key];
    rows.push({m, rank: rk ? rk.reduce((a,b)=>a+b,0)/rk.length : null, rankCells: rk ? rk.length : 0,
      gain: (!isBase && gains.length) ? gains.reduce((a,b)=>a+b,0)/gains.length : null,
      better: v.filter(x=>x==='better').length, equivalent: v.filter(x=>x==='equivalent').length,
      inconclusive: v.filter(x=>x==='inconclusive').length, worse: v.filter(x=>x==='worse').length,
      untested: v.filter(x=>x==='untested').length, neg: isBase ? null : gains.filter(g=>g<0).length,
      cov: pres.length, grid: cells.length, isBase});
  }
  let s;
  if(!ranked.length) s = rule === 'complete' ? 'No method has all '+cells.length+' cells, so none is ranked; rank on common cells.'
                                             : 'No method has a usable cell, so nothing is ranked.';
  else {
    if(rule === 'own') s = 'Each method is ranked on its own cells (see coverage)';
    else if(rule === 'complete') s = 'Ranked on all '+cells.length+' cells: the methods that have every one';
    else if(!used.length) s = 'No cell of the '+cells.length+' is covered by every ranked method, so no method is ranked; '+
      'narrow the methods (category filter) or rank on own cells';
    else { s = 'Ranked on '+used.length+' of '+cells.length+' cells (those every ranked method has)';
      if(leftOut.length) s += '; left out of the ranking: '+leftOut.map(([c, ms])=>label(c)+' (missing: '+ms.map(m=>m.name).join(', ')+')').join(', '); }
    if(unranked.length) s += '; not ranked ('+(rule === 'complete' ? 'lacks a cell' : 'no usable cell')+'): '+unranked.map(m=>m.name).join(', ');
    s += '.';
  }
  return {rows, rule, detail: s};
}
function val(r,k){ if(k==='method') return r.m.name.toLowerCase(); if(k==='category') return r.m.category;
  if(k==='ranked_on') return r.rank===null ? null : r.rankCells;
  if(k==='wtl') return r.isBase ? null : r.better - r.worse; if(k==='coverage') return r.grid ? r.cov/r.grid : 0; return r[k]; }
function render(){
  const out = compute(), rows = out.rows;
  rows.sort((a,b)=>{const x=val(a,sortKey), y=val(b,sortKey);
    if(x===null && y===null) return 0; if(x===null) return 1; if(y===null) return -1;
    const c = x<y?-1:x>y?1:0; return sortDir==='asc'?c:-c;});
  const tb = document.querySelector('#board tbody'); tb.replaceChildren();
  for(const r of rows){
    const tr = document.createElement('tr'); tr.dataset.method = r.m.key;
    const td = (text, cls)=>tr.appendChild(el('td', text, cls));
    td(r.rank===null ? '-' : r.rank.toFixed(2));
    td(r.rank===null ? '-' : r.rankCells+'/'+r.grid);
    const a = el('a', r.m.name); a.href = '#'+r.m.anchor; td(null, 'l').appendChild(a);
    td(null, 'l').appendChild(el('span', r.m.category, 'cat'));
    td(r.gain===null ? '-' : (r.gain>=0?'+':'')+r.gain.toFixed(2), r.gain===null ? '' : (r.gain<0 ? 'neg' : 'pos'));
    const w = td(r.isBase ? '-' : r.better+'/'+r.equivalent+'/'+r.inconclusive+'/'+r.worse);
    if(!r.isBase && r.untested) w.appendChild(el('small', ' (+'+r.untested+' untested)'));
    td(r.neg===null ? '-' : r.neg); td(r.cov+'/'+r.grid);
    tb.appendChild(tr);
  }
  document.querySelectorAll('#board th').forEach(th=>{th.classList.remove('sorted-asc','sorted-desc');
    if(th.dataset.key===sortKey) th.classList.add('sorted-'+sortDir);});
  const board = document.getElementById('board');
  board.dataset.sort = sortKey+':'+sortDir; board.dataset.rule = out.rule;
  document.getElementById('rank-rule').textContent = D.rank_rules[out.rule]+' '+out.detail;
}
function sortBy(k, dir){ if(dir) sortDir=dir; else sortDir = (sortKey===k && sortDir==='asc') ? 'desc' : (k==='rank'||k==='method'||k==='category'?'asc':'desc'); sortKey=k; render(); }
document.querySelectorAll('#board th').forEach(th=>th.addEventListener('click',()=>sortBy(th.dataset.key)));
document.querySelectorAll('.filters input').forEach(i=>i.addEventListener('change',render));
const h = new URLSearchParams(location.hash.slice(1));
if(KEYS.includes(h.get('sort'))) { sortKey = h.get('sort'); sortDir = h.get('dir')==='desc' ? 'desc' : 'asc'; }
if(['common','complete','own'].includes(h.get('rule'))) document.querySelector('input[name="rule"][value="'+h.get('rule')+'"]').checked = true;
for(const [name, key] of [['ds','dataset'],['mod','modality'],['cat','category']]) {
  const off = h.getAll('no'+key); // e.g. #nodataset=B: start with a filter unticked (tests drive this)
  document.querySelectorAll('input[name="'+name+'"]').forEach(i=>{ if(off.includes(i.value)) i.checked = false; });
}
const o = document.getElementById(h.get('open') || ''); // #open=m-0: that method's detail, opened (tests, links)
if(o && o.tagName === 'DETAILS'){ o.open = true; o.scrollIntoView(); }
render();
"""


def render_html(lb: Leaderboard, cd_png: Path | None, title: str = "cmkd-bench leaderboard",
                profile_png: Path | None = None) -> str:
    """The page. Names from the records are escaped where Python writes them (``html.escape``,
    quotes included) and set as text where the script writes them; the data blob cannot end its
    element; a Content-Security-Policy allows nothing but this inline script and style (by hash)
    and data: images, so even a missed escape could not run script or load anything."""
    data = page_data(lb)
    esc = html.escape
    img = ""
    if cd_png is not None and cd_png.exists():
        b64 = base64.b64encode(cd_png.read_bytes()).decode()
        img = f'<h2>Critical difference diagram</h2><img class="cd" alt="CD diagram" src="data:image/png;base64,{b64}">'
    # a refused Friedman/CD part is already stated (with its reason) in the statistics box

    def boxes(name: str, values: list[str]) -> str:
        return "".join(f'<label><input type="checkbox" name="{name}" value="{esc(v)}" checked> {esc(v)}</label> ' for v in values)

    def radio(value: str, text: str) -> str:
        on = " checked" if lb.rank_rule == value else ""
        return f'<label><input type="radio" name="rule" value="{value}"{on}> {esc(text)}</label> '

    datasets = list(dict.fromkeys(c["dataset"] for c in data["cells"]))
    mods = list(dict.fromkeys(c["modality"] for c in data["cells"]))
    heads = [("rank", "Mean rank"), ("ranked_on", "Ranked on"), ("method", "Method"), ("category", "Category"),
             ("gain", "Gain vs w/o KD"), ("wtl", "B/E/I/W vs w/o KD"), ("neg", "Neg. transfer"), ("coverage", "Coverage")]
    th = "".join(f'<th data-key="{k}" class="{"l" if k in ("method", "category") else ""}">{esc(t)}</th>' for k, t in heads)
    details = []
    for m in data["methods"]:
        rows = []
        for c in data["cells"]:
            x = m["cells"].get(c["key"])
            if x is None:
                rows.append(f"<tr><td class='l'>{esc(c['label'])}</td><td colspan=5 class='l'>missing</td></tr>")
                continue
            mean = "conflict" if x["conflict"] else f"{x['mean']:.2f}" + (f" ± {x['std']:.2f}" if x["std"] is not None else "")
            mark = " (best)" if x["best"] else (" (~best)" if x["tied_best"] else "")
            vs = str(x["verdict"] or "-") + ("" if x["diff"] is None else f" {x['diff']:+.2f}") + (
                "" if not x["ci"] else f" [{x['ci'][0]:+.2f}, {x['ci'][1]:+.2f}]")
            rows.append(f"<tr><td class='l'>{esc(c['label'])} ({esc(str(x['direction']))})</td><td>{esc(mean)}{mark}</td>"
                        f"<td>{esc(','.join(map(str, x['seeds'])))}</td><td>{esc(vs)}</td>"
                        f"<td class='l'>{esc(', '.join(c_[:10] for c_ in x['commit']))}</td>"
                        f"<td class='l'><code>{esc(x['command'])}</code></td></tr>")
        any_cell = next(iter(m["cells"].values()), None)
        hp = esc(json.dumps(any_cell["method_params"], sort_keys=True, default=str)) if any_cell else "{}"
        details.append(
            f'<details id="{m["anchor"]}"><summary>{esc(m["name"])} <span class="cat">{esc(m["category"])}</span>'
            + (f' <small>source {esc(str(m["source_hash"]))}</small>' if m.get("source_hash") else "")
            + f'</summary><p>hyper-parameters: <code>{hp}</code></p><table class="cells"><tr><th class="l">cell</th>'
            f'<th>{esc(data["metric"])} (mean ± std)</th><th>seeds</th><th>vs w/o KD</th><th class="l">commit</th>'
            f'<th class="l">reproduce</th></tr>{"".join(rows)}</table>{_curves_html(lb, m["key"], esc)}</details>')
    csp = (f"default-src 'none'; script-src {csp_hash(JS)}; style-src {csp_hash(CSS)}; img-src data:; "
           f"base-uri 'none'; form-action 'none'")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<title>{esc(title)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<div class="sub">{len(data['methods'])} methods over {len(data['cells'])} (dataset, student modality) cells; metric: {esc(data['metric'])}. Click a column to sort; untick to filter.</div>
<div class="filters">
<fieldset><legend>Datasets</legend>{boxes('ds', datasets)}</fieldset>
<fieldset><legend>Student modality</legend>{boxes('mod', mods)}</fieldset>
<fieldset><legend>Category</legend>{boxes('cat', data['categories'])}</fieldset>
<fieldset><legend>Rank on</legend>{radio('common', 'cells every method has')}{radio('complete', 'methods with every cell')}{radio('own', "each method's own cells")}</fieldset>
</div>
<table id="board"><thead><tr>{th}</tr></thead><tbody></tbody></table>
<p class="stats" id="rank-rule">{esc(RANK_RULES[lb.rank_rule] + ' ' + lb.rank_detail())}</p>
{panels.teachers(lb)}
{panels.legend(lb)}
<div class="stats">{esc(lb.stats_statement(rank=False))}{''.join('<br>' + esc(n) for n in lb.notes)}</div>
{panels.aggregates(lb)}
{panels.profile_img(profile_png)}
{panels.verdict_matrix(lb)}
{img}
<h2>Per-method detail</h2>
{''.join(details)}
<script id="lb-data" type="application/json">{script_json(data)}</script>
<script>{JS}</script>
</body></html>
"""


def _curves_html(lb: Leaderboard, method: str, esc) -> str:  # type: ignore[no-untyped-def]
    """Per cell of ``method``: its training curves from the records' histories (mean ± std over
    seeds, with w/o KD and the teacher for reference), as data: SVG images (no script, CSP-safe)."""
    from bench.report.curves import cell_svgs, svg_data_uri

    blocks = []
    for c in lb.cells:
        s = lb.stats.get((method, c))
        if s is None or s.conflict or not any(r.get("history") for r in s.records):
            continue
        base = lb.stats.get((lb.baseline, c))
        ref = base.records if (base is not None and not base.conflict and method != lb.baseline) else None
        label = f"{c[0]}/{c[1]} ({s.records[0].get('direction')})"
        imgs = "".join(f'<img alt="{esc(title + ", " + label)}" src="{svg_data_uri(svg)}">'
                       for title, svg in cell_svgs(s.records, ref, lb.metric, lb.method_label(lb.baseline)))
        blocks.append(f"<figure><figcaption>{esc(label)}</figcaption>{imgs}</figure>")
    if not blocks:
        return ""
    return f'<p>Training curves (from the records, mean ± std over seeds):</p><div class="curves">{"".join(blocks)}</div>'


def write_site(lb: Leaderboard, out: Path) -> Path:
    """``out/index.html`` (+ ``cd_diagram.png/pdf``, ``profile.png/pdf`` and ``leaderboard.json`` beside it)."""
    from bench.records.files import atomic_write_bytes
    from bench.report.leaderboard import cd_diagram

    from bench.report.stats.aggregate import performance_profile

    out.mkdir(parents=True, exist_ok=True)
    paths = cd_diagram(lb, out / "cd_diagram")
    prof = performance_profile(lb.profile_runs, {m: lb.method_label(m) for m in lb.methods}, out / "profile")
    page = render_html(lb, paths[0] if paths else None, profile_png=prof[0] if prof else None)
    atomic_write_bytes(out / "index.html", page.encode("utf-8"))
    atomic_write_bytes(out / "leaderboard.json", json.dumps(_finite(to_json(lb)), indent=2, default=str).encode())
    return out / "index.html"
