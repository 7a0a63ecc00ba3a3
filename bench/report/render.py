"""``bench table`` and ``bench leaderboard`` as functions: check every option, read the records,
build the table or leaderboard and render it in the asked format.

Every option is checked before the records are read (a mistake costs no time), and every problem
is a :class:`BenchError` naming the option and what it expects. The CLI only parses options and
prints what these return; ``bench reproduce`` calls the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api.errors import BenchError
from bench.report import output as io
from bench.report.kinds import check_kinds, select_frame, select_records
from bench.report.tuning import (
    check_params,
    rank_change_note,
    rank_changes,
    select_params,
    select_params_records,
    with_tuned_rows,
)

TABLE_KINDS = ("comparison", "segmentation", "ablation", "threshold", "sensitivity")
TABLE_FORMATS = ("latex", "markdown", "csv", "json", "rich")
VALUES = ("best_metric", "final_metric", "reference_best_metric")
LEADERBOARD_FORMATS = ("rich", "markdown", "csv", "latex", "json", "html")


@dataclass
class Rendered:
    """What a render produced: ``text`` for a file or stdout, or ``rich`` for the terminal; files it
    wrote on the side (heatmaps, CD diagrams, the HTML site) and notes to show."""

    text: str | None = None
    rich: Any = None
    written_to: Path | None = None
    """Where ``text`` was written (``--out``); None: it goes to stdout."""
    files: list[Path] = field(default_factory=list)
    """Side outputs: heatmaps, CD diagrams, the HTML site."""
    notes: list[str] = field(default_factory=list)


def render_table(results: Path, kind: str = "comparison", *, fmt: str = "latex", datasets: str | None = None,
                 methods: str | None = None, decimals: int = 1, std: bool = False, value: str = "best_metric",
                 caption: str | None = None, caption_latex: bool = False, label: str | None = None,
                 booktabs: bool = True, standalone: bool = False, heatmap: Path | None = None,
                 mark_tied: bool = False, marks: str = "all", pairing: str = "paired", alpha: float = 0.05,
                 out: Path | None = None, vs_baseline: bool = False, correction: str = "holm",
                 params: str = "default", rope: float = 0.5, intervals: bool = False,
                 kinds: str | None = None) -> Rendered:
    """The paper tables from the records: comparison (Table 2), segmentation (Table 3), ablation
    (Table 4), threshold (Table 7) and the l1 x l2 sensitivity grid (Fig. 5, ``heatmap``). The
    statistical marks (``mark_tied``, ``vs_baseline``, at chance) are :mod:`bench.report.table_stats`'s."""
    from bench.records.store import load_results
    from bench.report import studies
    from bench.report import table_stats as marks_of
    from bench.report.stats.paired import check_correction, check_rope
    from bench.report.tables import (
        MARK_RULES,
        add_teachers,
        build_comparison,
        check_label,
        md_escape,
        to_csv,
        to_json,
        to_latex,
        to_markdown,
        to_rich,
    )

    if kind not in TABLE_KINDS:
        raise BenchError(f"bench table {kind!r}: expected one of {', '.join(TABLE_KINDS)}")
    if value not in VALUES:
        raise BenchError(f"--value {value!r}: expected best_metric, final_metric or reference_best_metric")
    if fmt not in TABLE_FORMATS:
        raise BenchError(f"--format {fmt!r}: expected latex, markdown, csv, json or rich")
    if pairing not in ("paired", "unpaired"):
        raise BenchError(f"--pairing {pairing!r}: expected paired or unpaired")
    if marks not in MARK_RULES:
        raise BenchError(f"--marks {marks!r}: expected all (every row ranked) or kd-only (w/o KD not ranked)")
    comparison = kind in ("comparison", "segmentation")
    if marks != "all" and not comparison:
        raise BenchError(f"--marks {marks} applies to the comparison and segmentation tables (they have the w/o KD row)")
    if mark_tied and not comparison:
        raise BenchError("--mark-tied applies to the comparison and segmentation tables")
    if vs_baseline and not comparison:
        raise BenchError("--vs-baseline applies to the comparison and segmentation tables")
    check_correction(correction)
    check_rope(rope)
    if fmt == "json" and not comparison:
        raise BenchError(f"--format json applies to the comparison and segmentation tables, not {kind}")
    if methods is not None and not comparison:
        raise BenchError(f"--methods applies to the comparison and segmentation tables; the {kind} table is FD-CMKD's")
    if check_params(params) != "default" and not comparison:
        raise BenchError(f"--params {params} applies to the comparison and segmentation tables")
    if heatmap is not None and kind != "sensitivity":
        raise BenchError("--heatmap applies to `bench table sensitivity`")
    if standalone and fmt != "latex":
        raise BenchError(f"--standalone makes a LaTeX document; it needs --format latex, not {fmt}")
    if not 0 < alpha < 1:
        raise BenchError(f"--alpha {alpha}: expected a significance level in (0, 1)")
    io.check_decimals(decimals)
    ds = io.name_list(datasets, "--datasets", "crema,ave")
    ms = io.name_list(methods, "--methods", "none,logit,fdcmkd")
    if fmt == "rich" and out is not None:
        raise BenchError("--out writes a file; --format rich prints to the terminal (use latex, markdown or csv)")
    io.check_out_file(out)
    label = label or f"tab:{kind}"
    if fmt == "latex":
        check_label(label)

    df = load_results(results)
    if df.empty:
        raise BenchError(f"no ok records in {results}/records; run `bench run` first")
    df = df[df["pairing"] == pairing]
    if df.empty:
        raise BenchError(f"no {pairing}-protocol records in {results} (run with --set train.pairing={pairing})")
    df = select_frame(df, check_kinds(kinds))  # cross-modal cells unless --kinds asks for more (own columns)
    if df.empty:
        raise BenchError(f"no records of the direction kinds {kinds or 'cross-modal'} in {results} (--kinds all shows every kind)")
    want_seg = kind == "segmentation"
    if comparison:
        df = df[(df["task"] == "segmentation") == want_seg]
        if df.empty:
            raise BenchError(f"no {'segmentation' if want_seg else 'classification'} records in {results}")
    io.check_known(ds, sorted(df["dataset"].unique()), "--datasets", "dataset")
    io.check_known(ms, sorted(df["method"].unique()), "--methods", "method")
    res = Rendered()
    metric = str(df["metric"].iloc[0])
    if kind == "sensitivity":
        grids, notes = studies.build_sensitivity(df, datasets=ds, value=value)
        if heatmap is not None:
            try:
                res.files += studies.sensitivity_heatmap(grids, heatmap, metric)
            except OSError as exc:
                raise io.unwritable("--heatmap", heatmap, exc) from None
        if fmt == "latex":
            res.text = studies.sensitivity_latex(grids, decimals=decimals, metric=metric, caption=caption, label=label,
                                                 booktabs=booktabs, notes=notes, caption_is_latex=caption_latex)
        else:
            parts = []
            for (d, m), g in grids.items():
                head = f"{md_escape(d)}/{md_escape(m)}" if fmt == "markdown" else f"{d}/{m}"
                body = (g.to_csv() if fmt == "csv" else studies.grid_markdown(g, decimals) if fmt == "markdown"
                        else g.round(decimals).to_string())
                parts.append(f"# {head} (rows l1, columns l2)\n" + body)
            res.text = "\n".join(parts) + "\n"
    else:
        if kind == "ablation":
            comp = studies.build_ablation(df, datasets=ds, value=value, decimals=decimals)
        elif kind == "threshold":
            comp = studies.build_threshold(df, datasets=ds, value=value, decimals=decimals)
        else:
            df, notes = select_params(df, params)  # default: as published; tuned / both: bench run --tuned
            ms = with_tuned_rows(ms, params)
            comp = build_comparison(df, value=value, methods=ms, datasets=ds, decimals=decimals, marks=marks)
            comp.notes += notes
            add_teachers(comp, df)  # the reference row: never ranked, marked or tested
            marks_of.mark_chance(comp, df)
            if mark_tied:
                marks_of.mark_tied(comp, alpha, rope, correction)
            if vs_baseline:
                marks_of.mark_vs_baseline(comp, alpha, rope, correction)
            if want_seg:
                comp.title = "Semantic segmentation on NYU-Depth V2 (depth <-> RGB)"
            if pairing == "unpaired":
                comp.title = "Unpaired protocol (teacher inputs re-drawn from the same class at every step): " + comp.title
        if fmt == "rich":
            res.rich = to_rich(comp, decimals=decimals, std=std)
            return res
        if fmt == "latex":
            res.text = to_latex(comp, decimals=decimals, std=std, caption=caption, label=label, booktabs=booktabs,
                                caption_is_latex=caption_latex, intervals=intervals)
        elif fmt == "markdown":
            res.text = to_markdown(comp, decimals=decimals, std=std, intervals=intervals)
        elif fmt == "json":
            import json

            res.text = json.dumps(to_json(comp), indent=2, default=float) + "\n"
        else:
            res.text = to_csv(comp)
    if standalone:
        res.text = studies.standalone(res.text or "")
    if out is not None:
        io.write_text(out, res.text or "")
        res.written_to = out
    return res


def render_leaderboard(results: list[Path], *, fmt: str = "rich", datasets: str | None = None,
                       methods: str | None = None, out: Path | None = None, cells: bool = False, alpha: float = 0.05,
                       correction: str = "holm", cd: Path | None = None, decimals: int = 2, pairing: str = "paired",
                       rank_cells: str = "common", params: str = "default", rope: float = 0.5,
                       blocks: str | None = None, kinds: str | None = None) -> Rendered:
    """Rank methods over every (dataset, student modality) cell, with statistics; ``html`` writes
    the offline page (a folder), ``cd`` the critical-difference diagram. Only cross-modal cells
    unless ``kinds`` asks for the same-modality or teacher-set ones too (ranked with them then)."""
    from bench.records.store import load_records
    from bench.report import leaderboard as L

    if fmt not in LEADERBOARD_FORMATS:
        raise BenchError(f"--format {fmt!r}: expected {', '.join(LEADERBOARD_FORMATS)}")
    if pairing not in ("paired", "unpaired"):
        raise BenchError(f"--pairing {pairing!r}: expected paired or unpaired")
    if rank_cells not in L.RANK_RULES:
        raise BenchError(f"--rank-cells {rank_cells!r}: expected common (the cells every ranked method has), "
                         f"complete (the methods that have every cell) or own (each method's own cells)")
    io.check_decimals(decimals)
    ds = io.name_list(datasets, "--datasets", "crema,ave")
    ms = io.name_list(methods, "--methods", "none,logit,fdcmkd")
    if fmt == "rich" and out is not None:
        raise BenchError("--out writes a file; --format rich prints to the terminal (use markdown, csv, latex, json or html)")
    if fmt == "html":
        io.check_out_folder(out or Path("site"))
    else:
        io.check_out_file(out)
    every = select_records(load_records([str(p) for p in results], status="ok"), check_kinds(kinds))
    recs, pnotes = select_params_records(every, check_params(params))
    lb = L.build_leaderboard(recs, datasets=ds, methods=with_tuned_rows(ms, params), alpha=alpha, correction=correction,
                             pairing=pairing, rank_cells=rank_cells, rope=rope, blocks=blocks)
    lb.notes += pnotes
    if params == "both":  # the two leaderboards' orders, side by side
        lb.notes += rank_change_note(rank_changes(every, datasets=ds, methods=ms, alpha=alpha, correction=correction,
                                                  pairing=pairing, rank_cells=rank_cells, rope=rope, blocks=blocks))
    res = Rendered()
    if cd is not None:
        try:
            paths = L.cd_diagram(lb, cd)
        except OSError as exc:
            raise io.unwritable("--cd", cd, exc) from None
        if paths:
            res.files += paths
        else:
            res.notes.append(f"no CD diagram: {lb.friedman.get('refused', 'Nemenyi test unavailable')}")
    if fmt == "html":
        from bench.report.leaderboard_page import write_site

        site = out or Path("site")
        try:
            res.files.append(write_site(lb, site))
        except OSError as exc:
            raise io.unwritable("--out", site, exc) from None
        return res
    if fmt == "rich":
        res.rich = L.to_rich(lb, decimals, cells)
        res.notes += lb.notes
        return res
    text = {"markdown": lambda: L.to_markdown(lb, decimals, cells), "csv": lambda: L.to_csv(lb),
            "latex": lambda: L.to_latex(lb, decimals), "json": lambda: L.write_json(lb)}[fmt]()
    res.text = text if text.endswith("\n") else text + "\n"
    if out is not None:
        io.write_text(out, res.text)
        res.written_to = out
    return res
