"""The leaderboard: methods ranked over every (dataset, student modality) cell, with statistics.

Per method it reports the mean rank (rank 1 = best mean metric in the cell; ties share the average
rank, ``scipy.stats.rankdata``) under one of two rules (:data:`RANK_RULES`): ``common`` (default)
ranks the methods among each other only on the cells every ranked method has, so all ranks are
averages over the same cells against the same opponents; ``own`` averages each method's ranks over
the cells it has (a method that ran only its two best cells can then stand first). Then the mean gain over w/o KD in points,
per-cell verdicts against w/o KD (better / equivalent / inconclusive / worse, a **paired t-test on
per-seed differences**, Holm over every comparison shown, TOST against a ROPE), the number of cells
with negative transfer (mean below w/o KD), coverage, and the aggregates with stratified-bootstrap
intervals; across independent blocks Friedman / Iman-Davenport, Wilcoxon-Holm and the Nemenyi CD,
refused below a minimum number of blocks. All of it is :mod:`bench.report.leaderboard_stats`'s,
computed by :mod:`bench.report.stats`.

Records of one (method, cell) made with different configurations are not pooled: the cell is a
conflict and left out. Methods registered from plug-ins are told apart by source hash when
several versions of the same name are present (``name@hash``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.api.errors import BenchError
from bench.report.figures import in_default_style
from bench.report.cells import one_per_seed, teacher_rows, teachers_of
from bench.report.kinds import DEFAULT_KINDS, select_records
from bench.report.rerun import reproduce_command  # noqa: F401 - the page's import
from bench.report.stats import paired as P
from bench.report.tables import BASELINE, display_name, order_methods

RANK_RULES = {
    "common": ("Mean rank, common-cells rule: rank 1 = best mean in a cell (ties share the average rank); "
               "the methods with at least one usable result are ranked among each other only on the cells "
               "that every one of them has, so every mean rank averages the same cells against the same "
               "opponents. Cells some method lacks are left out of the ranking but still count in gain, "
               "verdicts and coverage."),
    "complete": ("Mean rank, complete-methods rule: rank 1 = best mean in a cell (ties share the average rank); "
                 "only the methods with a usable result in every cell are ranked, among each other on every "
                 "cell; a method that lacks a cell (one it cannot run there, a conflict) is listed unranked "
                 "with its gain, verdicts and coverage, so no benchmark drops out of the ranks for it."),
    "own": ("Mean rank, own-cells rule: rank 1 = best mean in a cell (ties share the average rank), each "
            "method's ranks averaged over the cells it has; methods with different coverage are ranked on "
            "different cells, so read the rank together with the coverage."),
}
"""The rank rules in words (the CLI's --rank-cells, the page text and stats_statement)."""


@dataclass
class CellStat:
    values: list[float]
    seeds: list[int]
    mean: float
    std: float | None
    records: list[dict[str, Any]]
    conflict: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def keyed(self) -> dict[tuple[int, Any], float]:
        """(seed, test-split fingerprint) -> value: what the paired tests match."""
        from bench.records.store import split_fingerprint

        return {(int(r["seed"]), split_fingerprint(r)): float(r["best_metric"]) for r in self.records}


@dataclass
class Leaderboard:
    methods: list[str]
    categories: dict[str, str]
    cells: list[tuple[str, str]]
    stats: dict[tuple[str, tuple[str, str]], CellStat]
    rows: list[dict[str, Any]]
    alpha: float
    correction: str
    baseline: str
    metric: str
    verdicts: dict[tuple[str, tuple[str, str]], dict[str, Any]] = field(default_factory=dict)
    tied_best: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    friedman: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rank_rule: str = "common"
    rank_used: list[tuple[str, str]] = field(default_factory=list)
    """The cells the ranks are computed on (common rule; every cell under the own rule)."""
    rank_left_out: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """Common rule: cells left out of the ranking -> the ranked methods that lack them."""
    unranked: list[str] = field(default_factory=list)
    """Methods without any usable (non-conflict) cell: listed, not ranked."""
    rope: float = P.ROPE
    best_detail: dict = field(default_factory=dict)
    """(method, cell) -> the paired comparison with the cell's best."""
    families: dict = field(default_factory=dict)
    blocks: dict = field(default_factory=dict)
    """cell -> its block (cells sharing a dataset by default)."""
    loo: dict = field(default_factory=dict)
    profile_runs: dict = field(default_factory=dict)
    """method -> block -> per-seed normalised scores (the performance profile)."""
    teachers: dict = field(default_factory=dict)
    """cell -> the cell's teachers (:func:`bench.report.cells.teachers_of`): shown for reference,
    never a row of the ranking."""

    def method_label(self, m: str) -> str:
        base, _, h = m.partition("@")
        return display_name(base) + (f"@{h}" if h else "")

    def rank_detail(self) -> str:
        """Which cells the ranks of this leaderboard stand on (the page's script writes the same
        sentence for the cells and categories selected there)."""
        n = len(self.cells)
        if len(self.unranked) == len(self.methods):
            return "No method has a usable cell, so nothing is ranked."
        if self.rank_rule == "own":
            s = "Each method is ranked on its own cells (see coverage)"
        elif self.rank_rule == "complete":
            s = (f"Ranked on all {n} cells: the methods that have every one" if self.rank_used else
                 f"No method has all {n} cells, so none is ranked; rank on common cells (--rank-cells common)")
        elif not self.rank_used:
            s = (f"No cell of the {n} is covered by every ranked method, so no method is ranked; narrow the "
                 f"methods (--methods) or rank on own cells (--rank-cells own)")
        else:
            s = f"Ranked on {len(self.rank_used)} of {n} cells (those every ranked method has)"
            if self.rank_left_out:
                s += "; left out of the ranking: " + ", ".join(
                    f"{c[0]}/{c[1]} (missing: {', '.join(self.method_label(m) for m in ms)})"
                    for c, ms in self.rank_left_out.items())
        if self.unranked:
            s += (f"; not ranked ({'lacks a cell' if self.rank_rule == 'complete' else 'no usable cell'}): "
                  + ", ".join(self.method_label(m) for m in self.unranked))
        return s + "."

    def stats_statement(self, rank: bool = True) -> str:
        """Every test, level and rule behind the numbers, in words (``rank=False``: without the rank
        sentences, which the HTML page writes itself for the selected cells)."""
        from bench.report.leaderboard_stats import statement

        s = statement(self)
        return f"{RANK_RULES[self.rank_rule]} {self.rank_detail()} " + s if rank else s


def _method_key(rec: dict[str, Any], multi: dict[str, set]) -> str:
    m = rec["method"]
    h = rec.get("method_source_hash")
    return f"{m}@{h[:8]}" if (len(multi.get(m, ())) > 1 and h) else m


def build_leaderboard(records: list[dict[str, Any]], *, datasets: list[str] | None = None,
                      methods: list[str] | None = None, alpha: float = 0.05, correction: str = P.DEFAULT_CORRECTION,
                      baseline: str = BASELINE, pairing: str | None = "paired", rank_cells: str = "common",
                      rope: float = P.ROPE, blocks: str | None = "dataset", min_blocks: int | None = None,
                      kinds: tuple[str, ...] = DEFAULT_KINDS) -> Leaderboard:
    """The leaderboard of ``records``; ``blocks`` declares which cells are one independent block
    (:func:`bench.report.stats.aggregate.blocks_from_spec`), ``min_blocks`` the fewest blocks the
    across-block tests run on (default :data:`bench.report.stats.across.MIN_BLOCKS`)."""
    from bench.report import leaderboard_stats as LS
    from bench.report.stats.across import MIN_BLOCKS

    if rank_cells not in RANK_RULES:
        raise BenchError(f"--rank-cells {rank_cells!r}: expected 'common' (rank on the cells every method has), "
                         f"'complete' (rank the methods that have every cell) or 'own' (each method on its own cells)")
    P.check_correction(correction)
    P.check_alpha(alpha)
    P.check_rope(rope)
    recs = [r for r in records if r.get("status") == "ok"]
    recs, controls = _without_controls(recs)
    if pairing is not None:  # the two protocols are different benchmarks: never ranked together
        recs = [r for r in recs if ((r.get("config") or {}).get("train") or {}).get("pairing", "paired") == pairing]
    recs = select_records(recs, kinds)  # same-modality and teacher-set cells only when asked, as columns of their own
    if datasets:
        present = sorted({r["dataset"] for r in recs})
        recs = [r for r in recs if r["dataset"] in datasets]
        if not recs:
            raise BenchError(f"--datasets {','.join(datasets)}: no ok records to rank; present: {', '.join(present) or 'none'}")
    if not recs:
        raise BenchError("no ok records to rank")
    recs, hidden = _prefer_default_params(recs)
    versions: dict[str, set] = {}
    for r in recs:
        versions.setdefault(r["method"], set()).add(r.get("method_source_hash"))
    for r in recs:
        r["_mkey"] = _method_key(r, versions)
    if methods:
        keep = set(methods)
        present = sorted({r["_mkey"] for r in recs})
        recs = [r for r in recs if r["method"] in keep or r["_mkey"] in keep]
        if not recs:
            raise BenchError(f"--methods {','.join(methods)}: no ok records of these methods; present: {', '.join(present)}")
    cats = {r["_mkey"]: str(r.get("method_category") or "Cross-Modal") for r in recs}
    mkeys = order_methods(cats.keys(), cats)
    cells: list[tuple[str, str]] = []
    for r in recs:
        c = (r["dataset"], r["student_modality"])
        if c not in cells:
            cells.append(c)
    metric = "/".join(sorted({str(r.get("metric", "top1")) for r in recs}))  # "mIoU/top1": cells of both
    lb = Leaderboard(mkeys, cats, cells, {}, [], alpha, correction, baseline, metric, rank_rule=rank_cells, rope=rope)
    lb.notes += hidden + controls
    for c in cells:  # the teacher the cell's KD records distilled: a reference, never ranked
        found = teachers_of(teacher_rows(r for r in recs if (r["dataset"], r["student_modality"]) == c))
        if found:
            lb.teachers[c] = found
    for m in mkeys:
        for c in cells:
            sub = [r for r in recs if r["_mkey"] == m and (r["dataset"], r["student_modality"]) == c]
            if not sub:
                continue
            runs, problems = one_per_seed(sub)  # the same run collected twice counts once
            groups = {r.get("group_hash") for r in runs}
            vals = [float(r["best_metric"]) for r in runs]
            seeds = [int(r["seed"]) for r in runs]
            if len(groups) > 1 or problems:
                lb.stats[(m, c)] = CellStat(vals, seeds, float("nan"), None, runs, conflict=True)
                why = "; ".join(([f"has records of {len(groups)} configurations"] if len(groups) > 1 else []) + problems)
                lb.notes.append(f"conflict: {lb.method_label(m)} on {c[0]}/{c[1]} {why}; left out")
                continue
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
            lb.stats[(m, c)] = CellStat(vals, seeds, float(np.mean(vals)), std, runs)

    def ok(m: str, c: tuple[str, str]) -> CellStat | None:
        s = lb.stats.get((m, c))
        return s if s is not None and not s.conflict else None

    means = {(m, c): s.mean for (m, c), s in lb.stats.items() if not s.conflict}
    ranks, lb.rank_used, lb.rank_left_out, lb.unranked = rank_cells_rule(means, mkeys, cells, rank_cells)
    LS.cell_verdicts(lb, ok, rope)
    # summary rows
    for m in mkeys:
        present = [c for c in cells if ok(m, c)]
        gains = [ok(m, c).mean - ok(baseline, c).mean for c in present if ok(baseline, c)]  # type: ignore[union-attr]
        vs = [lb.verdicts[(m, c)]["verdict"] for c in present if (m, c) in lb.verdicts]
        lb.rows.append({
            "method": m, "display": lb.method_label(m), "category": cats[m],
            "mean_rank": float(np.mean(list(ranks[m].values()))) if ranks[m] else None,
            "rank_cells": len(ranks[m]),
            "mean_gain": float(np.mean(gains)) if (gains and m != baseline) else None,
            **{v: vs.count(v) for v in P.VERDICTS},
            "negative_transfer": sum(1 for g in gains if g < 0) if m != baseline else None,
            "cells": len(present), "grid": len(cells), "coverage": len(present) / len(cells),
            "seeds": sorted({s for c in present for s in ok(m, c).seeds}),  # type: ignore[union-attr]
            "source_hash": next((r.get("method_source_hash") for c in present for r in ok(m, c).records), None),  # type: ignore[union-attr]
        })
    lb.rows.sort(key=lambda r: (math.inf if r["mean_rank"] is None else r["mean_rank"], r["display"]))
    LS.aggregates(lb, ok, blocks, MIN_BLOCKS if min_blocks is None else min_blocks)
    return lb


def _without_controls(recs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The records without teacher-control runs (``train.teacher_control`` shuffled / random, raw or
    already under their row key): a control is not a method, so it is never ranked (and a raw one
    would otherwise conflict with its method's cell); a note says how many were left out."""
    from bench.records.store import teacher_control
    from bench.report.rows import is_control_row

    keep = [r for r in recs if teacher_control(r) == "none" and not is_control_row(str(r["method"]))]
    n = len(recs) - len(keep)
    return keep, ([f"{n} teacher-control record(s) (shuffled or random teacher) not ranked: controls, not methods "
                   f"(bench table shows them as rows of their own)"] if n else [])


def rank_cells_rule(means: dict[tuple[str, tuple[str, str]], float], methods: list[str],
                    cells: list[tuple[str, str]], rule: str = "common"):
    """Per-cell ranks under a :data:`RANK_RULES` rule (the page's script is the same algorithm).

    ``means`` holds the usable (non-conflict) cell means. Returns (per method: cell -> rank, the
    cells ranked on, common rule: left-out cell -> methods lacking it, methods without a usable cell).
    """
    from scipy.stats import rankdata

    if rule == "complete":
        ranked = [m for m in methods if cells and all((m, c) in means for c in cells)]
    else:
        ranked = [m for m in methods if any((m, c) in means for c in cells)]
    unranked = [m for m in methods if m not in ranked]
    if rule == "complete":
        used, left_out = (list(cells) if ranked else []), {}
    elif rule == "common":
        used = [c for c in cells if ranked and all((m, c) in means for m in ranked)]
        left_out = {c: [m for m in ranked if (m, c) not in means] for c in cells if c not in used}
    else:
        used, left_out = list(cells), {}
    ranks: dict[str, dict[tuple[str, str], float]] = {m: {} for m in methods}
    for c in used:
        present = [m for m in ranked if (m, c) in means]
        if not present:
            continue
        for m, r in zip(present, rankdata([-means[(m, c)] for m in present], method="average")):
            ranks[m][c] = float(r)
    return ranks, used, left_out, unranked


def _prefer_default_params(recs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """A method is ranked with its default parameters when such records exist (studies and sweeps
    of other settings stay out, as in the comparison table), otherwise with what was run. A tuned
    record (``bench run --tuned``) is the method's chosen configuration: always kept."""
    from bench.report.studies import default_params_keep

    out, notes = [], []
    by: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        if (r.get("config") or {}).get("tuned"):
            out.append(r)
            continue
        by.setdefault(r["method"], []).append(r)
    for m, rs in by.items():
        mask = default_params_keep(m, [(r.get("config") or {}).get("method_params", {}) for r in rs])
        out += [r for r, k in zip(rs, mask) if k]
        if not all(mask):
            notes.append(f"{mask.count(False)} {m} record(s) with non-default parameters not ranked")
    return out, notes


@in_default_style
def cd_diagram(lb: Leaderboard, out_base: Path) -> list[Path]:
    """Write the critical-difference diagram as PNG and PDF; [] with a note when refused."""
    f = lb.friedman
    if f.get("statistic") is None or "nemenyi_p" not in f:
        return []
    import pandas as pd
    import scikit_posthocs as sp

    from bench.report.figures import pyplot, save_figure

    plt = pyplot()

    labels = [lb.method_label(m).replace("$", r"\$") for m in f["methods"]]  # no mathtext from a name
    ranks = pd.Series(f["avg_ranks"].values(), index=labels)
    sig = pd.DataFrame(f["nemenyi_p"], index=labels, columns=labels)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(labels) + 1.3), dpi=150)
    drawn = sp.critical_difference_diagram(ranks, sig, ax=ax, alpha=lb.alpha)
    for line in (ln for bar in drawn.get("crossbars", []) for ln in bar):
        # a crossbar's points come in the order of a set of names, which the string hash seed
        # changes from process to process: drawn left to right, the same diagram gives the same bytes
        x, y = line.get_xdata(), line.get_ydata()
        order = sorted(range(len(x)), key=lambda i: x[i])
        line.set_data([x[i] for i in order], [y[i] for i in order])
    ax.set_title(f"Mean rank over {f['n_blocks']} blocks (Nemenyi, alpha={lb.alpha}, CD={f['cd']:.2f});\n"
                 f"bars join methods not significantly different", fontsize=8)  # two lines: fits the figure
    fig.tight_layout()
    return save_figure(fig, out_base)


COLUMNS = [("rank", "mean rank"), ("ranked_on", "ranked on"), ("method", "method"), ("category", "category"),
           ("gain", "gain vs w/o KD"), ("wtl", "B/E/I/W vs w/o KD"), ("neg", "neg. transfer"), ("coverage", "coverage"),
           ("rank_ci", "mean rank 95 % CI"), ("iqm", "IQM norm. score [95 % CI]"),
           ("poi", "P(improvement) [95 % CI]")]


RIGHT = {"rank", "ranked_on", "gain", "neg", "coverage", "rank_ci", "iqm", "poi"}


def _ci(x: Any, ci: Any, dec: int, signed: bool = False) -> str:
    if x is None:
        return "-"
    f = f"+.{dec}f" if signed else f".{dec}f"
    return f"{x:{f}}" + ("" if ci is None else f" [{ci[0]:{f}}, {ci[1]:{f}}]")


def _row_cells(r: dict[str, Any], dec: int) -> list[str]:
    g = r["mean_gain"]
    return [
        "-" if r["mean_rank"] is None else f"{r['mean_rank']:.2f}",
        "-" if r["mean_rank"] is None else f"{r['rank_cells']}/{r['grid']}", r["display"], r["category"],
        "-" if g is None else f"{g:+.{dec}f}",
        "-" if r["method"] == BASELINE else f"{r['better']}/{r['equivalent']}/{r['inconclusive']}/{r['worse']}"
        + (f" (+{r['untested']} untested)" if r["untested"] else ""),
        "-" if r["negative_transfer"] is None else str(r["negative_transfer"]),
        f"{r['cells']}/{r['grid']}",
        "-" if not r.get("mean_rank_ci") else f"[{r['mean_rank_ci'][0]:.2f}, {r['mean_rank_ci'][1]:.2f}]",
        _ci(r.get("iqm"), r.get("iqm_ci"), dec, signed=True), _ci(r.get("p_improve"), r.get("p_improve_ci"), dec),
    ]


def to_markdown(lb: Leaderboard, decimals: int = 2, cells: bool = False) -> str:
    """Markdown table; names from the records are escaped (no HTML, links or emphasis get through)."""
    from bench.report.tables import md_escape

    head = [h for _, h in COLUMNS] + ([f"{d}/{m}" for d, m in lb.cells] if cells else [])
    lines = ["| " + " | ".join(md_escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    for r in lb.rows:
        row = _row_cells(r, decimals) + ([_cell_text(lb, r["method"], c, decimals) for c in lb.cells] if cells else [])
        lines.append("| " + " | ".join(md_escape(x) for x in row) + " |")
    return ("\n".join(lines) + "\n\n" + md_escape(lb.stats_statement()) + "\n"
            + (f"\n{md_escape(teachers_line(lb, decimals))}\n" if lb.teachers else "")
            + "".join(f"\n- {md_escape(n)}" for n in lb.notes))


TEACHERS_RULE = ("the unimodal teacher the KD methods distil in each cell (trained alone on the other modality, "
                 "with its own seed stream; not the w/o KD student), test metric mean ± std over the seeds used; "
                 "a reference, not a method: never ranked, marked or tested")


def teacher_cell_text(lb: Leaderboard, c: tuple[str, str], dec: int) -> str:
    """``mean ± std (teacher modality, n seeds)`` for each teacher of the cell."""
    return "; ".join(f"{t['mean']:.{dec}f}" + (f" ± {t['std']:.{dec}f}" if t["std"] is not None else "")
                     + f" ({t['teacher_modality']}, {t['n_seeds']} seed{'s' if t['n_seeds'] != 1 else ''})"
                     for t in lb.teachers.get(c, [])) or "--"


def teachers_line(lb: Leaderboard, dec: int = 2) -> str:
    """The teachers of every cell in one sentence (Markdown, LaTeX comment, terminal caption)."""
    return ("Teachers (" + TEACHERS_RULE + "): "
            + "; ".join(f"{c[0]}/{c[1]}: {teacher_cell_text(lb, c, dec)}" for c in lb.cells if c in lb.teachers) + ".")


def teachers_json(lb: Leaderboard) -> list[dict[str, Any]]:
    return [{"dataset": c[0], "student_modality": c[1], **t} for c in lb.cells for t in lb.teachers.get(c, [])]


def _cell_text(lb: Leaderboard, m: str, c: tuple[str, str], dec: int) -> str:
    s = lb.stats.get((m, c))
    if s is None:
        return "--"
    if s.conflict:
        return "conflict"
    t = f"{s.mean:.{dec}f}" + (f"±{s.std:.{dec}f}" if s.std is not None else "")
    if m in lb.tied_best.get(c, [])[:1]:
        t += " (best)"
    elif m in lb.tied_best.get(c, []):
        t += " (~best)"
    return t


def to_csv(lb: Leaderboard) -> str:
    import csv
    import io

    from bench.report.output import csv_text

    buf = io.StringIO()
    w = csv.writer(buf)
    stats = ["mean_rank_ci", "iqm", "iqm_ci", "norm_mean", "norm_mean_ci", "p_improve", "p_improve_ci"]
    w.writerow(["method", "category", "mean_rank", "mean_gain", *P.VERDICTS, "negative_transfer", "cells", "grid",
                "rank_cells"] + [f"{k}_{e}" if k.endswith("_ci") else k for k in stats for e in (
                    ("low", "high") if k.endswith("_ci") else ("",))]
               + [csv_text(f"{d}/{m}{x}") for d, m in lb.cells for x in ("", " verdict", " diff", " diff_ci_low",
                                                                          " diff_ci_high", " p", " p_adj")])
    for r in lb.rows:
        cols = []
        for c in lb.cells:
            s, v = lb.stats.get((r["method"], c)), lb.verdicts.get((r["method"], c)) or {}
            ci = v.get("ci") or (None, None)
            cols += ["" if s is None or s.conflict else s.mean, v.get("verdict", ""), v.get("diff"), ci[0], ci[1],
                     v.get("p"), v.get("p_adj")]
        w.writerow([csv_text(r["display"]), csv_text(r["category"]), r["mean_rank"], r["mean_gain"],
                    *(r[v] for v in P.VERDICTS), r["negative_transfer"], r["cells"], r["grid"], r["rank_cells"]]
                   + [x for k in stats for x in ((r.get(k) or (None, None)) if k.endswith("_ci") else (r.get(k),))]
                   + cols)
    return buf.getvalue()


def to_latex(lb: Leaderboard, decimals: int = 2) -> str:
    """A booktabs tabular; every name is escaped, the statistics statement follows as comment lines."""
    from bench.report.output import plain_text
    from bench.report.tables import tex_escape

    lines = [r"\begin{tabular}{rrllrrrrrrr}", r"\toprule",
             " & ".join(tex_escape(h) for _, h in COLUMNS) + r" \\", r"\midrule"]
    for r in lb.rows:
        lines.append(" & ".join(tex_escape(x) for x in _row_cells(r, decimals)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    comment = " ".join(plain_text(lb.stats_statement()).split())  # one line: a newline would end the comment
    teachers = ("% " + " ".join(plain_text(teachers_line(lb, decimals)).split()) + "\n") if lb.teachers else ""
    return "\n".join(lines) + "\n% " + comment + "\n" + teachers


def to_json(lb: Leaderboard) -> dict[str, Any]:
    return {
        "metric": lb.metric, "baseline": lb.baseline, "alpha": lb.alpha, "correction": lb.correction,
        "cells": [list(c) for c in lb.cells], "rows": lb.rows, "statistics": lb.stats_statement(),
        "rank_rule": lb.rank_rule, "rank_cells": [list(c) for c in lb.rank_used],
        "rank_left_out": {f"{c[0]}|{c[1]}": ms for c, ms in lb.rank_left_out.items()},
        "friedman": {k: v for k, v in lb.friedman.items() if k != "matrix"}, "notes": lb.notes, "rope": lb.rope,
        "blocks": {f"{c[0]}|{c[1]}": b for c, b in lb.blocks.items()}, "leave_one_out": lb.loo,
        "vs_best": {f"{m}|{c[0]}|{c[1]}": v for (m, c), v in lb.best_detail.items()},
        "per_cell": {f"{m}|{c[0]}|{c[1]}": {"mean": s.mean if not s.conflict else None, "std": s.std, "n": s.n,
                                            "seeds": s.seeds, "conflict": s.conflict,
                                            **({"vs_baseline": lb.verdicts[(m, c)]} if (m, c) in lb.verdicts else {})}
                     for (m, c), s in lb.stats.items()},
        "tied_with_best": {f"{c[0]}|{c[1]}": v for c, v in lb.tied_best.items()},
        "teachers": teachers_json(lb), "teachers_rule": TEACHERS_RULE,
    }


def to_rich(lb: Leaderboard, decimals: int = 2, cells: bool = False):
    """A rich Table; every string goes in as :class:`rich.text.Text`, never parsed as markup."""
    from rich.table import Table
    from rich.text import Text

    from bench.report.output import plain_text

    caption = lb.stats_statement() + (("\n" + teachers_line(lb, decimals)) if lb.teachers else "")
    t = Table(title=Text(f"Leaderboard ({lb.metric}, {len(lb.cells)} cells)"),
              caption=Text(plain_text(caption)), caption_justify="left")
    for k, h in COLUMNS:
        t.add_column(h, justify="right" if k in RIGHT else "left")
    if cells:
        for d, m in lb.cells:
            t.add_column(Text(plain_text(f"{d}/{m}")), justify="right")
    for r in lb.rows:
        t.add_row(*(Text(plain_text(x)) for x in _row_cells(r, decimals)),
                  *([Text(_cell_text(lb, r["method"], c, decimals)) for c in lb.cells] if cells else []))
    return t


def write_json(lb: Leaderboard) -> str:
    return json.dumps(to_json(lb), indent=2, default=float)
