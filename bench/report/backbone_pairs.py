"""Backbone pairs side by side: the same dataset, direction and methods trained with different
teacher/student networks (``scripts/backbone-comparison.sh``), read back from the records'
``backbones`` fields, so the table says which networks produced which numbers.

``python -m bench.report.backbone_pairs RESULTS [RESULTS ...] OUT.md``"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from bench.records.store import load_records, split_fingerprint
from bench.report.stats import paired as P
from bench.report.tables import display_name, md_escape


def network(entry: dict[str, Any]) -> str:
    """``timm(model=resnet34) 21.3M`` / ``resnet(default) 0.11M``: the name, what was chosen, the size."""
    if entry.get("default"):
        what = "dataset default: " + entry["name"]
    else:
        shown = {k: v for k, v in entry.get("params", {}).items() if v not in ("", 0, None)}
        what = entry["name"] + (f"({', '.join(f'{k}={v}' for k, v in shown.items())})" if shown else "")
    n = entry.get("parameters")
    return what + (f", {n / 1e6:.2f}M parameters" if n else "")


def pair_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, direction, teacher network, student network, method): mean ± std over
    seeds of the validation-selected test metric, and the teacher's."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for r in records:
        bb = r.get("backbones") or {}
        teacher = network(bb["teacher"]) if "teacher" in bb else "(none: w/o KD)"
        key = (r["dataset"], r["direction"], network(bb["student"]), teacher, r["method"])
        groups.setdefault(key, []).append(r)
    rows = []
    for (dataset, direction, student, teacher, method), recs in sorted(groups.items()):
        vals = [float(r["best_metric"]) for r in recs]
        keyed = {(int(r["seed"]), split_fingerprint(r)): float(r["best_metric"]) for r in recs}
        t_metrics = [float(r["teacher"]["test_metric"]) for r in recs if r.get("teacher")]
        rows.append({"dataset": dataset, "direction": direction, "student": student, "teacher": teacher,
                     "method": method, "seeds": sorted(int(r["seed"]) for r in recs), "values": vals, "keyed": keyed,
                     "mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     "teacher_metric": statistics.mean(t_metrics) if t_metrics else None})
    return rows


def render(rows: list[dict[str, Any]], sources: list[str], rope: float = P.ROPE) -> str:
    lines = ["# Backbone pairs", "",
             f"Records from {', '.join(f'`{s}`' for s in sources)}; test top-1 (%) at the validation-selected "
             "epoch, mean ± std over seeds; the teacher's test top-1 at its own validation-selected epoch. "
             "Networks as the records name them (`record['backbones']`).", "",
             "| dataset | direction | student network | teacher network | method | seeds | student top-1 "
             "| teacher top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = f"{r['teacher_metric']:.2f}" if r["teacher_metric"] is not None else "-"
        cells = (r["dataset"], r["direction"], r["student"], r["teacher"], display_name(r["method"]))
        lines.append("| " + " | ".join(md_escape(c) for c in cells) + f" | {','.join(map(str, r['seeds']))} | "
                     f"{r['mean']:.2f} ± {r['std']:.2f} | {t} |")
    by_method: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_method.setdefault((r["dataset"], r["direction"], r["method"]), []).append(r)
    family = {(key, i, j): (rs[j]["keyed"], rs[i]["keyed"]) for key, rs in sorted(by_method.items())
              for i in range(len(rs)) for j in range(i + 1, len(rs))}
    results = P.compare_family(family, rope=rope)
    tested = sum(1 for r in results.values() if r.p is not None)
    lines += ["", "Same method, different networks (teacher -> student), second minus first: "
              + md_escape(P.rule_text("comparisons below", tested, rope=rope)) + ":", ""]
    for ((dataset, direction, method), i, j), res in results.items():
        a, b = by_method[(dataset, direction, method)][i], by_method[(dataset, direction, method)][j]
        ci = "" if res.ci is None else f" [{res.ci[0]:+.2f}, {res.ci[1]:+.2f}]"
        p = "" if res.p is None else f", p = {res.p:.3g}, corrected p = {res.p_adj:.3g}"
        unmatched = res.unmatched_text(pair(b), pair(a))
        lines.append(md_escape(f"- {dataset} {direction} {display_name(method)}: {pair(a)} {a['mean']:.2f} vs "
                               f"{pair(b)} {b['mean']:.2f}, paired difference "
                               f"{'-' if res.diff is None else format(res.diff, '+.2f')}{ci} over {res.n} seed(s){p}: "
                               f"{res.verdict}" + (f" ({unmatched})" if unmatched else "")))
    return "\n".join(lines) + "\n"


def pair(row: dict[str, Any]) -> str:
    return f"[{row['teacher']} -> {row['student']}]"


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.report.backbone_pairs", description=__doc__)
    ap.add_argument("results", nargs="+", help="results folders whose records are compared")
    ap.add_argument("--out", required=True, help="Markdown file to write")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--direction", required=True, help="e.g. a2v")
    ap.add_argument("--methods", default="none,logit")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="only records whose dataset parameter KEY has VALUE, e.g. preset=hard")
    a = ap.parse_args(argv)
    wanted = set(a.methods.split(","))
    bad = [kv for kv in a.sets if "=" not in kv]
    if bad:
        ap.error(f"--set {bad[0]!r}: expected KEY=VALUE, e.g. preset=hard")
    need = dict(kv.split("=", 1) for kv in a.sets)

    def keep(r: dict[str, Any]) -> bool:
        params = r.get("config", {}).get("dataset", {}).get("params", {})
        return (r["dataset"] == a.dataset and r["direction"] == a.direction and r["method"] in wanted
                and all(str(params.get(k)) == v for k, v in need.items()))

    records = [r for r in load_records(a.results, status="ok") if keep(r)]
    if not records:
        raise SystemExit(f"no ok {a.dataset} {a.direction} records of {a.methods} in {', '.join(a.results)}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(render(pair_rows(records), a.results))


if __name__ == "__main__":
    main(sys.argv[1:])
