"""The static, self-contained HTML leaderboard (no server, no CDN: opens from the file system).

The page embeds the per-cell numbers as JSON and recomputes the summary in the browser when the
reader filters datasets / student modalities (ranks, gains, W/T/L and negative transfer are
functions of the selected cells) or categories (rows). Columns sort on click; the initial sort
can be given in the URL fragment (``index.html#sort=gain&dir=desc``), which the tests use to
drive the same code path from a headless browser. The CD diagram is inlined as a data: URI.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .leaderboard import Leaderboard, reproduce_command, to_json
from .tables import CATEGORY_ORDER


def page_data(lb: Leaderboard) -> dict[str, Any]:
    methods = []
    for r in lb.rows:
        m = r["method"]
        cells = {}
        for c in lb.cells:
            s = lb.stats.get((m, c))
            if s is None:
                continue
            rec = s.records[0]
            cells[f"{c[0]}/{c[1]}"] = {
                "mean": None if s.conflict else s.mean, "std": s.std, "n": s.n, "seeds": sorted(s.seeds),
                "conflict": s.conflict, "verdict": (lb.verdicts.get((m, c)) or {}).get("verdict"),
                "p": (lb.verdicts.get((m, c)) or {}).get("p_adj", (lb.verdicts.get((m, c)) or {}).get("p")),
                "tied_best": m in lb.tied_best.get(c, []), "best": lb.tied_best.get(c, [None])[0] == m,
                "commit": sorted({str(x.get("git_commit")) for x in s.records}),
                "config_hash": sorted({x["config_hash"] for x in s.records}),
                "direction": rec["direction"],
                "command": reproduce_command(rec, s.seeds),
                "method_params": rec.get("config", {}).get("method_params", {}),
                "train": rec.get("config", {}).get("train", {}),
            }
        methods.append({"key": m, "name": r["display"], "category": r["category"], "cells": cells,
                        "source_hash": r.get("source_hash")})
    return {"cells": [{"key": f"{d}/{s}", "dataset": d, "modality": s} for d, s in lb.cells],
            "methods": methods, "baseline": lb.baseline, "metric": lb.metric,
            "categories": [c for c in CATEGORY_ORDER if any(m["category"] == c for m in methods)]
            + sorted({m["category"] for m in methods} - set(CATEGORY_ORDER))}


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
"""

JS = r"""
const D = JSON.parse(document.getElementById('lb-data').textContent);
let sortKey = 'rank', sortDir = 'asc';
function selected(name){return Array.from(document.querySelectorAll('input[name='+name+']:checked')).map(e=>e.value);}
function rankData(vals){ // average ranks, 1 = largest
  const idx = vals.map((v,i)=>i).sort((a,b)=>vals[b]-vals[a]); const r = new Array(vals.length);
  for(let i=0;i<idx.length;){let j=i; while(j+1<idx.length && vals[idx[j+1]]===vals[idx[i]]) j++;
    for(let k=i;k<=j;k++) r[idx[k]]=(i+j)/2+1; i=j+1;} return r;}
function compute(){
  const ds = selected('ds'), mods = selected('mod'), cats = selected('cat');
  const cells = D.cells.filter(c=>ds.includes(c.dataset) && mods.includes(c.modality)).map(c=>c.key);
  const ranks = {};
  for(const c of cells){
    const present = D.methods.filter(m=>m.cells[c] && m.cells[c].mean!==null);
    const r = rankData(present.map(m=>m.cells[c].mean));
    present.forEach((m,i)=>{(ranks[m.key] ||= []).push(r[i]);});
  }
  const base = D.methods.find(m=>m.key===D.baseline);
  const rows = [];
  for(const m of D.methods){
    if(!cats.includes(m.category)) continue;
    const pres = cells.filter(c=>m.cells[c] && m.cells[c].mean!==null);
    const gains = pres.filter(c=>base && base.cells[c] && base.cells[c].mean!==null).map(c=>m.cells[c].mean-base.cells[c].mean);
    const v = pres.map(c=>m.cells[c].verdict);
    const isBase = m.key===D.baseline;
    rows.push({m, rank: ranks[m.key] ? ranks[m.key].reduce((a,b)=>a+b,0)/ranks[m.key].length : null,
      gain: (!isBase && gains.length) ? gains.reduce((a,b)=>a+b,0)/gains.length : null,
      wins: v.filter(x=>x==='win').length, ties: v.filter(x=>x==='tie').length, losses: v.filter(x=>x==='loss').length,
      untested: v.filter(x=>x==='untested').length, neg: isBase ? null : gains.filter(g=>g<0).length,
      cov: pres.length, grid: cells.length, isBase});
  }
  return rows;
}
function val(r,k){ if(k==='method') return r.m.name.toLowerCase(); if(k==='category') return r.m.category;
  if(k==='wtl') return r.isBase ? null : r.wins - r.losses; if(k==='coverage') return r.grid ? r.cov/r.grid : 0; return r[k]; }
function render(){
  const rows = compute();
  rows.sort((a,b)=>{const x=val(a,sortKey), y=val(b,sortKey);
    if(x===null && y===null) return 0; if(x===null) return 1; if(y===null) return -1;
    const c = x<y?-1:x>y?1:0; return sortDir==='asc'?c:-c;});
  const tb = document.querySelector('#board tbody'); tb.innerHTML='';
  for(const r of rows){
    const tr = document.createElement('tr'); tr.dataset.method = r.m.key;
    const g = r.gain===null ? '-' : (r.gain>=0?'+':'')+r.gain.toFixed(2);
    tr.innerHTML = `<td>${r.rank===null?'-':r.rank.toFixed(2)}</td><td class="l"><a href="#m-${encodeURIComponent(r.m.key)}">${r.m.name}</a></td>`+
      `<td class="l"><span class="cat">${r.m.category}</span></td><td class="${r.gain===null?'':(r.gain<0?'neg':'pos')}">${g}</td>`+
      `<td>${r.isBase?'-':r.wins+'/'+r.ties+'/'+r.losses+(r.untested?' <small>(+'+r.untested+' untested)</small>':'')}</td>`+
      `<td>${r.neg===null?'-':r.neg}</td><td>${r.cov}/${r.grid}</td>`;
    tb.appendChild(tr);
  }
  document.querySelectorAll('#board th').forEach(th=>{th.classList.remove('sorted-asc','sorted-desc');
    if(th.dataset.key===sortKey) th.classList.add('sorted-'+sortDir);});
  document.getElementById('board').dataset.sort = sortKey+':'+sortDir;
}
function sortBy(k, dir){ if(dir) sortDir=dir; else sortDir = (sortKey===k && sortDir==='asc') ? 'desc' : (k==='rank'||k==='method'||k==='category'?'asc':'desc'); sortKey=k; render(); }
document.querySelectorAll('#board th').forEach(th=>th.addEventListener('click',()=>sortBy(th.dataset.key)));
document.querySelectorAll('.filters input').forEach(i=>i.addEventListener('change',render));
const h = new URLSearchParams(location.hash.slice(1));
if(h.get('sort')) { sortKey = h.get('sort'); sortDir = h.get('dir') || 'asc'; }
render();
"""


def render_html(lb: Leaderboard, cd_png: Path | None, title: str = "cmkd-bench leaderboard") -> str:
    data = page_data(lb)
    esc = html.escape
    img = ""
    if cd_png is not None and cd_png.exists():
        b64 = base64.b64encode(cd_png.read_bytes()).decode()
        img = f'<h2>Critical difference diagram</h2><img class="cd" alt="CD diagram" src="data:image/png;base64,{b64}">'
    elif lb.friedman.get("refused"):
        img = f'<p class="stats">{esc(lb.friedman["refused"])}</p>'

    def boxes(name: str, values: list[str]) -> str:
        return "".join(f'<label><input type="checkbox" name="{name}" value="{esc(v)}" checked> {esc(v)}</label> ' for v in values)

    datasets = list(dict.fromkeys(c["dataset"] for c in data["cells"]))
    mods = list(dict.fromkeys(c["modality"] for c in data["cells"]))
    heads = [("rank", "Mean rank"), ("method", "Method"), ("category", "Category"), ("gain", "Gain vs w/o KD"),
             ("wtl", "W/T/L vs w/o KD"), ("neg", "Neg. transfer"), ("coverage", "Coverage")]
    th = "".join(f'<th data-key="{k}" class="{"l" if k in ("method", "category") else ""}">{esc(t)}</th>' for k, t in heads)
    details = []
    for m in data["methods"]:
        rows = []
        for c in data["cells"]:
            x = m["cells"].get(c["key"])
            if x is None:
                rows.append(f"<tr><td class='l'>{esc(c['key'])}</td><td colspan=5 class='l'>missing</td></tr>")
                continue
            mean = "conflict" if x["conflict"] else f"{x['mean']:.2f}" + (f" ± {x['std']:.2f}" if x["std"] is not None else "")
            mark = " (best)" if x["best"] else (" (tied with best)" if x["tied_best"] else "")
            rows.append(f"<tr><td class='l'>{esc(c['key'])} ({esc(x['direction'])})</td><td>{esc(mean)}{mark}</td>"
                        f"<td>{esc(','.join(map(str, x['seeds'])))}</td><td>{esc(str(x['verdict'] or '-'))}</td>"
                        f"<td class='l'>{esc(', '.join(c_[:10] for c_ in x['commit']))}</td>"
                        f"<td class='l'><code>{esc(x['command'])}</code></td></tr>")
        any_cell = next(iter(m["cells"].values()), None)
        hp = esc(json.dumps(any_cell["method_params"], sort_keys=True)) if any_cell else "{}"
        details.append(
            f'<details id="m-{esc(m["key"])}"><summary>{esc(m["name"])} <span class="cat">{esc(m["category"])}</span>'
            + (f' <small>source {esc(m["source_hash"])}</small>' if m.get("source_hash") else "")
            + f'</summary><p>hyper-parameters: <code>{hp}</code></p><table class="cells"><tr><th class="l">cell</th>'
            f'<th>{esc(data["metric"])} (mean ± std)</th><th>seeds</th><th>vs w/o KD</th><th class="l">commit</th>'
            f'<th class="l">reproduce</th></tr>{"".join(rows)}</table></details>')
    blob = json.dumps(data, default=float).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head>
<body>
<h1>{esc(title)}</h1>
<div class="sub">{len(data['methods'])} methods over {len(data['cells'])} (dataset, student modality) cells; metric: {esc(data['metric'])}. Click a column to sort; untick to filter.</div>
<div class="filters">
<fieldset><legend>Datasets</legend>{boxes('ds', datasets)}</fieldset>
<fieldset><legend>Student modality</legend>{boxes('mod', mods)}</fieldset>
<fieldset><legend>Category</legend>{boxes('cat', data['categories'])}</fieldset>
</div>
<table id="board"><thead><tr>{th}</tr></thead><tbody></tbody></table>
<div class="stats">{esc(lb.stats_statement())}{''.join('<br>' + esc(n) for n in lb.notes)}</div>
{img}
<h2>Per-method detail</h2>
{''.join(details)}
<script id="lb-data" type="application/json">{blob}</script>
<script>{JS}</script>
</body></html>
"""


def write_site(lb: Leaderboard, out: Path) -> Path:
    """``out/index.html`` (+ ``cd_diagram.png/pdf`` and ``leaderboard.json`` beside it)."""
    from .leaderboard import cd_diagram
    from .utils import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    paths = cd_diagram(lb, out / "cd_diagram")
    page = render_html(lb, paths[0] if paths else None)
    atomic_write_bytes(out / "index.html", page.encode("utf-8"))
    atomic_write_bytes(out / "leaderboard.json", json.dumps(to_json(lb), indent=2, default=float).encode())
    return out / "index.html"
