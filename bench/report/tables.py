"""Comparison tables from result records (LaTeX, Markdown, CSV, rich).

Layout of the comparison table (FD-CMKD Table 2): rows = methods grouped by category
(Uni-Modal / Logits / Feature / Cross-Modal), columns = dataset x student modality, each cell
the mean over seeds of the selected-epoch test metric (optionally +- sample std). Per column the
best mean is bold and the second underlined; equal means (at the printed precision) share the
mark, and the caption says so (the marks † ▲ ▼ ≈ ◦ are :mod:`bench.report.table_stats`'s). ``marks="all"`` ranks every row; ``marks="kd-only"`` (the FD-CMKD
paper's convention) ranks the KD methods only: the w/o KD row is shown but never marked. Missing cells print as "--" and are never dropped. Records of one
cell made with different configurations (other than the seed) are not averaged together: the
cell is flagged with a dagger and the caption names it.

The comparison tables show the teachers too (:func:`add_teachers`): one row "Teacher (modality)",
above the methods, with each column's unimodal teacher (the one the KD rows distil, on the other
modality, named in brackets): its test metric, mean ± std over the seeds used. It is a reference,
not a method: in italics, set apart by a rule, never ranked, marked or tested, and the legend says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

from bench.api.errors import BenchError
from bench.report.cells import one_per_seed
from bench.report.kinds import DEFAULT_KINDS, select_frame
from bench.report.rows import (  # noqa: F401  (the row names' home; imported from here by older code)
    CATEGORY_ORDER,
    CONTROL_SUFFIXES,
    DISPLAY,
    MODALITY_SHORT,
    PAPER_ORDER,
    TUNED_SUFFIX,
    base_method,
    display_name,
    is_control_row,
    order_methods,
)
from bench.report.teacher_rows import TEACHER_ROW, add_teachers, teacher_sentence, teacher_text, teachers_json  # noqa: F401

BASELINE = "none"
"""The w/o KD row: the reference of gains, and unranked under ``marks="kd-only"``."""


MARK_RULES = ("all", "kd-only")


@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int
    conflict: bool = False
    configs: int = 1
    seeds: dict = field(default_factory=dict)
    """(seed, split fingerprint) -> value: what the paired tests of :mod:`bench.report.table_stats` match."""
    chance: bool = False
    """The seed-mean 95 % interval contains chance (1/num_classes): flagged ◦, whatever its rank."""

    @property
    def ci(self) -> tuple[float, float] | None:
        """95 % t-interval of the mean over seeds."""
        from bench.report.stats.paired import seed_interval

        return seed_interval(list(self.seeds.values())) if not self.conflict else None


def seed_values(sub: pd.DataFrame, value: str) -> dict:
    """One cell's (seed, split fingerprint) -> value, for the paired comparisons."""
    fp = sub["split_fingerprint"] if "split_fingerprint" in sub else pd.Series(None, index=sub.index)
    one = sub.assign(_fp=fp).drop_duplicates(subset=["config_hash"])
    return {(int(s), None if pd.isna(f) else str(f)): float(v) for s, f, v in zip(one["seed"], one["_fp"], one[value])}


@dataclass
class Comparison:
    methods: list[str]
    categories: dict[str, str]
    columns: list[tuple[str, str]]  # (dataset, student modality)
    cells: dict[tuple[str, tuple[str, str]], Cell]
    metric: str
    marks: dict[tuple[str, tuple[str, str]], str] = field(default_factory=dict)  # "best" | "second"
    ties: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    row_labels: dict[str, str] = field(default_factory=dict)
    """Display label per row key (default: the method's display name)."""
    lead_columns: list[str] = field(default_factory=list)
    """Extra left columns (e.g. the ablation's check-mark switches)."""
    lead_values: dict[str, list[str]] = field(default_factory=dict)
    """Per row key, the LaTeX text of each lead column."""
    title: str = "Comparison of KD methods"
    notes: list[str] = field(default_factory=list)
    tied: set = field(default_factory=set)
    """(row, column) cells not shown below the column's best (:func:`bench.report.table_stats.mark_tied`)."""
    tied_rule: str = ""
    marks_rule: str = "all"
    """Which rows compete for bold/underline: "all" or "kd-only" (w/o KD shown, not ranked)."""
    vs_baseline: dict = field(default_factory=dict)
    """(row, column) -> "better" | "worse" | "equivalent" | "inconclusive" | "untested" against w/o KD
    (:func:`bench.report.table_stats.mark_vs_baseline`)."""
    vs_rule: str = ""
    """Plain-text statement of the test behind ``vs_baseline`` (empty: not marked)."""
    detail: dict = field(default_factory=dict)
    """(row, column) -> {"vs_baseline": Paired, "vs_best": Paired}: differences, intervals, p-values."""
    chance_rule: str = ""
    """What ◦ means, when some cell is at chance."""
    teachers: dict = field(default_factory=dict)
    """column -> the column's teachers (:func:`bench.report.cells.teachers_of`: per teacher modality,
    mean ± std over seeds); empty: no teacher row."""

    def label_of(self, m: str) -> str:
        return self.row_labels.get(m, display_name(m))


def build_comparison(df: pd.DataFrame, *, value: str = "best_metric", methods: list[str] | None = None,
                     datasets: list[str] | None = None, decimals: int = 1,
                     row_labels: dict[str, str] | None = None, marks: str = "all",
                     kinds: tuple[str, ...] = DEFAULT_KINDS) -> Comparison:
    """Aggregate ok records into a :class:`Comparison` (mean/std over seeds per cell); only the
    cross-modal directions unless ``kinds`` asks for more (columns of their own, :mod:`bench.report.kinds`)."""
    if marks not in MARK_RULES:
        raise BenchError(f"--marks {marks!r}: expected 'all' (every row ranked) or 'kd-only' (w/o KD not ranked)")
    df = df[df["status"] == "ok"] if "status" in df else df
    df = select_frame(df, kinds)
    if datasets:
        df = df[df["dataset"].isin(datasets)]
    cats = {r.method: r.method_category for r in df[["method", "method_category"]].drop_duplicates().itertuples()}
    meths = methods or order_methods(df["method"].unique(), cats)
    if methods:
        for m in methods:
            cats.setdefault(m, None)
    col_order = []
    ds_order = datasets or list(dict.fromkeys(df["dataset"]))
    for d in ds_order:
        mods = sorted(df[df["dataset"] == d]["student_modality"].unique())
        col_order += [(d, m) for m in mods]
    cells: dict[tuple[str, tuple[str, str]], Cell] = {}
    conflicts = []
    for m in meths:
        for col in col_order:
            sub = df[(df["method"] == m) & (df["dataset"] == col[0]) & (df["student_modality"] == col[1])]
            if sub.empty:
                cells[(m, col)] = Cell(None, None, 0)
                continue
            groups = sub["group_hash"].nunique() if "group_hash" in sub else 1
            # One value per seed (copies of one run count once); anything else is a conflict.
            runs, problems = one_per_seed(sub.to_dict("records"), value)
            per_seed = pd.Series([r[value] for r in runs], dtype=float)
            if groups > 1 or problems:
                cells[(m, col)] = Cell(None, None, int(len(per_seed)), conflict=True, configs=int(groups))
                why = "; ".join(([f"{groups} configurations"] if groups > 1 else []) + problems)
                conflicts.append(f"{(row_labels or {}).get(m, display_name(m))} on {col[0]}/{col[1]} ({why})")
                continue
            mean = float(per_seed.mean())
            std = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None
            cells[(m, col)] = Cell(mean, std, int(len(per_seed)), seeds=seed_values(sub, value))
    metric = "/".join(sorted(df["metric"].astype(str).unique())) if len(df) else "top1"  # "mIoU/top1": mixed
    comp = Comparison(meths, cats, col_order, cells, metric, conflicts=conflicts, row_labels=dict(row_labels or {}),
                      marks_rule=marks)
    _mark(comp, decimals)
    return comp


CHANCE_MARK = "◦"
"""At chance (:func:`bench.report.table_stats.mark_chance`)."""


VS_SYMBOL = {"better": "▲", "worse": "▼", "equivalent": "≈"}
VS_TEX = {"better": r"$^{\uparrow}$", "worse": r"$^{\downarrow}$", "equivalent": r"$^{\approx}$"}
SYMBOL_TEX = {"▲/▼": r"$^{\uparrow}$/$^{\downarrow}$", "≈": r"$^{\approx}$", "†": r"$^\dagger$",
              CHANCE_MARK: r"$^{\circ}$"}
"""The plain-text marks of a legend and what LaTeX prints for them."""


def tex_symbols(text: str) -> str:
    """A legend written with the plain marks, escaped for LaTeX, with the marks as LaTeX prints them."""
    out = tex_escape(text)
    for plain, tex in SYMBOL_TEX.items():
        out = out.replace(plain, tex)
    return out


def ranked_rows(comp: Comparison) -> list[str]:
    """The rows that compete for the marks under ``comp.marks_rule``; a teacher-control row
    (``Logit (shuffled teacher)``) never does: it is a control of its method, not a method."""
    return [m for m in comp.methods if (comp.marks_rule == "all" or m != BASELINE) and not is_control_row(m)]


def _mark(comp: Comparison, decimals: int) -> None:
    ranked = ranked_rows(comp)
    for col in comp.columns:
        vals = {m: round(c.mean, decimals) for m in ranked if (c := comp.cells[(m, col)]).mean is not None}
        if not vals:
            continue
        distinct = sorted(set(vals.values()), reverse=True)
        best = distinct[0]
        best_ms = [m for m, v in vals.items() if v == best]
        for m in best_ms:
            comp.marks[(m, col)] = "best"
        if len(best_ms) > 1:
            comp.ties.append(f"{col[0]}/{col[1]}: best tied ({', '.join(comp.label_of(m) for m in best_ms)})")
            continue  # a tie for first takes both marks; no second place
        if len(distinct) > 1:
            second_ms = [m for m, v in vals.items() if v == distinct[1]]
            for m in second_ms:
                comp.marks[(m, col)] = "second"
            if len(second_ms) > 1:
                comp.ties.append(f"{col[0]}/{col[1]}: second tied ({', '.join(comp.label_of(m) for m in second_ms)})")


CONFLICT_RULE = ("Conflict = records of one cell that are not averaged (different configurations, or more than one "
                 "record of a seed; see bench.report.cells): ")


def _fmt(c: Cell, decimals: int, std: bool) -> str:
    if c.conflict:
        return "conflict"
    if c.mean is None:
        return "--"
    s = f"{c.mean:.{decimals}f}"
    if std and c.std is not None:
        s += f" ± {c.std:.{decimals}f}"
    return s


_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    # the default OT1 fonts print < > | as other glyphs (¡ ¿ —): use the text commands
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
}


def tex_escape(s: object) -> str:
    """Plain text -> LaTeX source that prints it as written.

    One pass over the characters, so the braces of a replacement (``\\textbackslash{}``) are never
    escaped again; line breaks, other control and the bidi characters become spaces
    (:func:`~bench.report.output.plain_text`: a blank line inside a caption is a paragraph break,
    which LaTeX refuses in a moving argument, and pdflatex stops at U+202E).
    """
    from bench.report.output import plain_text

    return "".join(_TEX.get(ch, ch) for ch in plain_text(s))


_LABEL = re.compile(r"[A-Za-z0-9:._/+\-]+")


def check_label(label: str) -> str:
    """A ``\\label`` key must survive LaTeX and hyperref: letters, digits and : . _ / + - only."""
    if not _LABEL.fullmatch(label):
        raise BenchError(f"--label {label!r}: expected letters, digits and : . _ / + - only (e.g. tab:comparison)")
    return label


_MD = {"\\": "\\\\", "|": "\\|", "*": "\\*", "_": "\\_", "`": "\\`", "[": "\\[", "]": "\\]",
       "<": "&lt;", ">": "&gt;", "&": "&amp;"}


def md_escape(s: object) -> str:
    """Plain text -> a Markdown table cell that shows it as written (no HTML, links or emphasis; no
    line break, control or bidi character: :func:`~bench.report.output.plain_text`)."""
    from bench.report.output import plain_text

    return "".join(_MD.get(ch, ch) for ch in plain_text(s))


METRIC_WORDS = {"top1": "top-1 accuracy", "mIoU": "mIoU"}




def marks_sentence(comp: Comparison, bold: str, underline: str) -> str:
    """The caption's statement of which rows compete for the marks (``bold``/``underline``: the
    format's spelling of the two words)."""
    s = f"Best in {bold}, second {underline}"
    controls = any(is_control_row(m) for m in comp.methods)
    if controls:
        s = ("Teacher-control rows (shuffled or random teacher) are controls, shown but never ranked or marked "
             "against the best. " + s)
    if BASELINE not in comp.methods:
        return s + (" among the methods." if controls else ".")
    if comp.marks_rule == "kd-only":
        return s + f" among the KD methods; {display_name(BASELINE)} is shown but not ranked (the FD-CMKD paper's convention)."
    return s + f" over every {'method ' if controls else ''}row, {display_name(BASELINE)} included."


def to_latex(comp: Comparison, *, decimals: int = 1, std: bool = False, caption: str | None = None,
             label: str = "tab:comparison", booktabs: bool = True, caption_is_latex: bool = False,
             intervals: bool = False) -> str:
    """The table as LaTeX; every name from the records (datasets, modalities, methods, notes) and the
    caption are escaped as plain text unless ``caption_is_latex`` (then the caption is the user's source).
    ``intervals``: a 95 % CI column (t-interval of the seed mean) after each result column."""
    per = 2 if intervals else 1
    ncol = len(comp.columns) * per
    top, mid, bot = (r"\toprule", r"\midrule", r"\bottomrule") if booktabs else (r"\hline", r"\hline", r"\hline")
    lines = [r"\begin{table}[t]", r"\centering", r"\small"]
    metric_word = " / ".join(tex_escape(METRIC_WORDS.get(x, x)) for x in comp.metric.split("/")) + " (\\%)"
    if caption is not None:
        cap = caption if caption_is_latex else tex_escape(caption)
    else:
        cap = f"{tex_escape(comp.title)}, {metric_word} of the student (column: student modality); mean over seeds"
    if std:
        cap += r" $\pm$ sample std"
    cap += ". " + marks_sentence(comp, r"\textbf{bold}", r"\underline{underlined}")
    if comp.ties:
        cap += " Ties (equal at the printed precision) share the mark: " + tex_escape("; ".join(comp.ties)) + "."
    if any(c.mean is None and not c.conflict for c in comp.cells.values()):
        cap += " -- = no result."
    if comp.conflicts:
        cap += " " + tex_escape(CONFLICT_RULE + "; ".join(comp.conflicts)) + "."
    if comp.teachers:
        cap += " " + tex_escape(teacher_sentence(comp)).replace("±", r"$\pm$")
    for n in comp.notes:
        cap += " " + tex_escape(n)
    if intervals:
        cap += " 95 \\% CI = t-interval of the mean over seeds."
    for rule in (comp.tied_rule, comp.vs_rule, comp.chance_rule):
        if rule:
            cap += " " + tex_symbols(rule) + "."
    lines.append(r"\caption{" + cap + "}")
    lines.append(r"\label{" + check_label(label) + "}")
    nlead = len(comp.lead_columns)
    lines.append(r"\begin{tabular}{l" + "c" * nlead + "c" * ncol + "}")
    lines.append(top)
    # two-level header: dataset spans its modalities
    header1 = ["Method"] + [tex_escape(h) for h in comp.lead_columns]
    rules = []
    col = 2 + nlead
    datasets = list(dict.fromkeys(d for d, _ in comp.columns))
    for d in datasets:
        k = sum(1 for dd, _ in comp.columns if dd == d) * per
        header1.append(rf"\multicolumn{{{k}}}{{c}}{{{tex_escape(d)}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + k - 1}}}" if booktabs else "")
        col += k
    lines.append(" & ".join(header1) + r" \\")
    if any(rules):
        lines.append(" ".join(r for r in rules if r))
    header2 = [""] * (1 + nlead) + [h for _, m in comp.columns
                                    for h in [tex_escape(MODALITY_SHORT.get(m, m))] + ["95 \\% CI"] * (per - 1)]
    lines.append(" & ".join(header2) + r" \\")
    lines.append(mid)
    if comp.teachers:  # the reference row: italics, above a rule, no mark
        row = [r"\textit{" + tex_escape(TEACHER_ROW) + "}"] + [""] * nlead
        for colkey in comp.columns:
            row.append(r"\textit{" + tex_escape(teacher_text(comp, colkey, decimals)).replace("±", r"$\pm$") + "}")
            if intervals:
                row.append("")
        lines.append(" & ".join(row) + r" \\")
        lines.append(mid)
    prev_cat = None
    for m in comp.methods:
        cat = comp.categories.get(m)
        if prev_cat is not None and cat != prev_cat:
            lines.append(mid)
        prev_cat = cat
        row = [tex_escape(comp.label_of(m))] + list(comp.lead_values.get(m, []))
        for colkey in comp.columns:
            c = comp.cells[(m, colkey)]
            txt = _fmt(c, decimals, std).replace("±", r"$\pm$")
            mark = comp.marks.get((m, colkey))
            if mark == "best":
                txt = rf"\textbf{{{txt}}}"
            elif mark == "second":
                txt = rf"\underline{{{txt}}}"
            if (m, colkey) in comp.tied:
                txt += r"$^\dagger$"
            txt += VS_TEX.get(comp.vs_baseline.get((m, colkey), ""), "") + (SYMBOL_TEX[CHANCE_MARK] if c.chance else "")
            row.append(txt)
            if intervals:
                row.append(_ci_text(c, decimals))
        lines.append(" & ".join(row) + r" \\")
    lines.append(bot)
    lines.append(r"\end{tabular}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _ci_text(c: Cell, decimals: int) -> str:
    ci = c.ci
    return "--" if ci is None else f"[{ci[0]:.{decimals}f}, {ci[1]:.{decimals}f}]"


def to_markdown(comp: Comparison, *, decimals: int = 1, std: bool = False, intervals: bool = False) -> str:
    """``intervals``: a 95 % CI column (t-interval of the seed mean) after each result column."""
    head = ["Method"] + [md_escape(h) for h in comp.lead_columns] + [
        h for d, m in comp.columns
        for h in [f"{md_escape(d)} {md_escape(MODALITY_SHORT.get(m, m))}"] + (["95 % CI"] if intervals else [])]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if comp.teachers:  # the reference row, in italics, first: never marked
        row = [f"_{md_escape(TEACHER_ROW)}_"] + [""] * len(comp.lead_columns)
        for col in comp.columns:
            row.append(f"_{md_escape(teacher_text(comp, col, decimals))}_")
            if intervals:
                row.append("")
        out.append("| " + " | ".join(row) + " |")
    for m in comp.methods:
        row = [md_escape(comp.label_of(m))] + [("✓" if v else "") for v in comp.lead_values.get(m, [])]
        for col in comp.columns:
            txt = _fmt(comp.cells[(m, col)], decimals, std)
            mark = comp.marks.get((m, col))
            txt = f"**{txt}**" if mark == "best" else f"<u>{txt}</u>" if mark == "second" else txt
            row.append(txt + _plain_marks(comp, m, col))
            if intervals:
                row.append(_ci_text(comp.cells[(m, col)], decimals))
        out.append("| " + " | ".join(row) + " |")
    legend = legend_lines(comp, "bold", "underlined")
    return "\n".join(out) + "\n" + ("\n" + "\n".join(f"{md_escape(x)}  " for x in legend) + "\n" if legend else "")


def _plain_marks(comp: Comparison, m: str, col: tuple[str, str]) -> str:
    """† (not below the best), ▲/▼/≈ (against w/o KD) and ◦ (at chance) for the plain-text formats."""
    return (" †" if (m, col) in comp.tied else "") + (
        f" {VS_SYMBOL[v]}" if (v := comp.vs_baseline.get((m, col))) in VS_SYMBOL else "") + (
        f" {CHANCE_MARK}" if comp.cells[(m, col)].chance else "")


def legend_lines(comp: Comparison, bold: str, underline: str) -> list[str]:
    """What the marks of a plain-text table mean (the LaTeX caption says the same)."""
    out = [marks_sentence(comp, bold, underline)]
    if comp.ties:
        out.append("Ties at the printed precision share the mark: " + "; ".join(comp.ties) + ".")
    for rule in (comp.tied_rule, comp.vs_rule, comp.chance_rule):
        if rule:
            out.append(rule + ".")
    if comp.conflicts:
        out.append(CONFLICT_RULE + "; ".join(comp.conflicts) + ".")
    if comp.teachers:
        out.append(teacher_sentence(comp))
    out += comp.notes
    return out


def to_csv(comp: Comparison) -> str:
    from bench.report.output import csv_text

    rows = []
    for m in comp.methods:
        for col in comp.columns:
            c = comp.cells[(m, col)]
            rows.append({"method": csv_text(comp.label_of(m)), "category": csv_text(comp.categories.get(m)),
                         "dataset": csv_text(col[0]), "student_modality": csv_text(col[1]),
                         "mean": c.mean, "std": c.std, "n_seeds": c.n, "conflict": c.conflict,
                         "mark": comp.marks.get((m, col), ""), **cell_statistics(comp, m, col, flat=True)})
    return pd.DataFrame(rows).to_csv(index=False)


def cell_statistics(comp: Comparison, m: str, col: tuple[str, str], flat: bool = False) -> dict:
    """A cell's interval, chance flag and paired comparisons (against w/o KD and the column's best:
    difference, 95 % interval, p, corrected p, verdict), for CSV (``flat``) and JSON."""
    c = comp.cells[(m, col)]
    lo, hi = c.ci or (None, None)
    out: dict = {"ci_low": lo, "ci_high": hi, "at_chance": c.chance, "not_below_best": (m, col) in comp.tied}
    for name, p in (comp.detail.get((m, col)) or {}).items():
        d = p.as_dict()
        lo, hi = d["ci"] or (None, None)
        out.update({f"{name}_{k}": v for k, v in (("verdict", d["verdict"]), ("diff", d["diff"]), ("diff_ci_low", lo),
                    ("diff_ci_high", hi), ("p", d["p"]), ("p_adj", d["p_adj"]), ("p_tost_adj", d["p_tost_adj"]),
                    ("unmatched_seeds", " ".join(map(str, d["only_a"] + d["only_b"]))))} if flat else {name: d})
    return out


def to_json(comp: Comparison) -> dict:
    """Every cell with its statistics, and the rules, as data."""
    cells = [{"method": m, "label": comp.label_of(m), "dataset": col[0], "student_modality": col[1], "mean": c.mean,
              "std": c.std, "n_seeds": c.n, "conflict": c.conflict, "mark": comp.marks.get((m, col), ""),
              **cell_statistics(comp, m, col)} for m in comp.methods for col in comp.columns if (c := comp.cells[(m, col)])]
    return {"metric": comp.metric, "columns": [list(c) for c in comp.columns],
            "rules": legend_lines(comp, "bold", "underlined"), "cells": cells, "teachers": teachers_json(comp)}


def to_rich(comp: Comparison, *, decimals: int = 1, std: bool = True, title: str | None = None):
    """A rich Table; names from the records go in as :class:`rich.text.Text`, never parsed as markup."""
    from rich.table import Table
    from rich.text import Text

    from bench.report.output import plain_text

    rule = "; w/o KD shown, not ranked" if comp.marks_rule == "kd-only" and BASELINE in comp.methods else ""
    title = title or f"student {comp.metric} (mean over seeds; bold = best, underline = second{rule})"
    t = Table(title=Text(plain_text(title)))
    t.add_column("Method")
    for h in comp.lead_columns:
        t.add_column(Text(plain_text(h)))
    for d, m in comp.columns:
        t.add_column(Text(f"{plain_text(d)}\n{plain_text(MODALITY_SHORT.get(m, m))}"), justify="right")
    if comp.teachers:  # the reference row: italic, its own section, no mark
        t.add_row(Text(TEACHER_ROW, style="italic"), *[Text("") for _ in comp.lead_columns],
                  *[Text(plain_text(teacher_text(comp, col, decimals)), style="italic") for col in comp.columns])
        t.add_section()
    prev = None
    for m in comp.methods:
        cat = comp.categories.get(m)
        if prev is not None and cat != prev:
            t.add_section()
        prev = cat
        row = [Text(plain_text(comp.label_of(m)))] + [Text("✓" if v else "") for v in comp.lead_values.get(m, [])]
        for col in comp.columns:
            c = comp.cells[(m, col)]
            txt = _fmt(c, decimals, std) + (f" (n={c.n})" if c.n > 1 and not c.conflict else "")
            mark = comp.marks.get((m, col))
            cell = Text(txt, style="bold" if mark == "best" else "underline" if mark == "second" else "")
            vs = comp.vs_baseline.get((m, col))
            cell.append(_plain_marks(comp, m, col), style="green" if vs == "better" else "red" if vs == "worse" else "")
            row.append(cell)
        t.add_row(*row)
    legend = legend_lines(comp, "bold", "underlined")[1:]  # the title already says what bold/underline mean
    if legend:
        t.caption = Text("\n".join(map(plain_text, legend)))
        t.caption_justify = "left"
    return t
