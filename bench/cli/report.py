"""``bench results``, ``bench table``, ``bench leaderboard``, ``bench analyze``: what the records say."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from bench.api.config import parse_overrides
from bench.api.errors import BenchError
from bench.cli.app import app, console, err_console
from bench.report.output import plain_text


def _show(res) -> None:  # type: ignore[no-untyped-def]
    """Print a :class:`bench.report.render.Rendered`: the table, or where it was written."""
    if res.rich is not None:
        console.print(res.rich)
    for f in res.files:
        console.print(f"wrote {escape(str(f))}")
    for n in res.notes:
        err_console.print(f"[yellow]{escape(plain_text(n))}[/yellow]")  # no ESC or U+202E from a name
    if res.written_to is not None:
        console.print(f"wrote {escape(str(res.written_to))}")
    elif res.text is not None:
        sys.stdout.write(res.text)


KINDS_HELP = ("kinds of direction: cross-modal (default) | same-modality (v2v) | teacher-set (av2v) | all, "
              "comma-separated; the others get columns of their own and enter the ranks only when asked")


@app.command()
def results(
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results folder"),
    all_: bool = typer.Option(False, "--all", help="include failed runs"),
    verify: bool = typer.Option(False, "--verify", help="re-score every record's stored per-sample predictions "
                                "(predictions/RUN_ID.npz) against the dataset's labels and compare with its best and "
                                "final metric: one line per mismatch or damaged file, exit status 1 on any"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="with --verify: where a dataset's data lies, which "
                                             "records do not hold, e.g. nyudv2.cache=PATH (default: the dataset's)"),
) -> None:
    """Show collected records, one line per run."""
    from bench.records.store import load_results
    from bench.report.console import records_table

    if verify:
        _verify(results, parse_overrides(set_ or []))
        return
    if set_:
        raise BenchError("--set applies to --verify only")
    df = load_results(results, status=None if all_ else "ok")
    if df.empty:
        console.print(f"no records in {escape(str(results))}")
        return
    console.print(records_table(df, results))


def _verify(results: Path, overrides: dict[str, dict[str, str]]) -> None:
    from bench.records.predictions import NO_PREDICTIONS, verify
    from bench.records.store import load_records

    recs = load_records(results, status="ok")
    out = verify(results, recs, overrides)
    for rid in out["no_predictions"]:
        console.print(f"{escape(plain_text(rid))}: {NO_PREDICTIONS}", soft_wrap=True)
    for line in out["problems"]:
        err_console.print(f"[red]FAIL[/red] {escape(plain_text(line))}", soft_wrap=True)
    console.print(f"verified {len(recs)} record(s) in {escape(str(results))}: {len(out['ok'])} re-score exactly, "
                  f"{len(out['no_predictions'])} without predictions, {len(out['problems'])} problem(s)")
    if out["problems"]:
        raise typer.Exit(1)


@app.command()
def table(
    kind: str = typer.Argument("comparison", help="comparison | segmentation | ablation | threshold | sensitivity"),
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results folder, or a records.jsonl.gz"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the table to this file"),
    fmt: str = typer.Option("latex", "--format", help="latex | markdown | csv | json | rich"),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="comma-separated datasets (column order)"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated methods (row order; comparison tables)"),
    decimals: int = typer.Option(1, "--decimals", help="digits after the decimal point (0-10)"),
    std: bool = typer.Option(False, "--std/--no-std", help="print ± sample std over seeds"),
    value: str = typer.Option("best_metric", "--value", help="best_metric (val-selected) | final_metric | reference_best_metric"),
    caption: Optional[str] = typer.Option(None, "--caption", help="caption text (plain text: LaTeX specials are escaped)"),
    caption_latex: bool = typer.Option(False, "--caption-latex", help="take --caption as LaTeX source, unescaped"),
    label: Optional[str] = typer.Option(None, "--label", help="LaTeX label (default tab:KIND)"),
    booktabs: bool = typer.Option(True, "--booktabs/--no-booktabs"),
    standalone: bool = typer.Option(False, "--standalone", help="a complete, compilable LaTeX document"),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="sensitivity: also write a heatmap to PATH.png/.pdf"),
    mark_tied: bool = typer.Option(False, "--mark-tied", help="dagger on cells not significantly below the best "
                                   "(paired t-test on seed-matched differences, Holm)"),
    marks: str = typer.Option("all", "--marks", help="all: every row competes for bold/underline | kd-only: the KD methods only, "
                                                      "w/o KD shown but not ranked (the FD-CMKD paper's convention)"),
    pairing: str = typer.Option("paired", "--pairing", help="paired | unpaired: which protocol's records to tabulate"),
    alpha: float = typer.Option(0.05, "--alpha", help="level of --mark-tied and --vs-baseline"),
    vs_baseline: bool = typer.Option(False, "--vs-baseline", help="▲/▼/≈ on cells better/worse than / equivalent to w/o KD "
                                     "(paired t-test, TOST against the ROPE)"),
    correction: str = typer.Option("holm", "--correction", help="holm | bonferroni | none over each family of tests the "
                                   "table shows"),
    rope: float = typer.Option(0.5, "--rope", help="region of practical equivalence, +- metric points (equivalent = TOST inside it)"),
    intervals: bool = typer.Option(False, "--intervals", help="a 95 % CI column (t-interval of the seed mean) after each column"),
    params: str = typer.Option("default", "--params", help="default (as published) | tuned (bench run --tuned) | both "
                               "(side by side, with each method's gain from tuning)"),
    kinds: Optional[str] = typer.Option(None, "--kinds", help=KINDS_HELP),
) -> None:
    """Paper tables from the records: comparison (Table 2), segmentation (Table 3), ablation (Table 4),
    threshold (Table 7) and the l1 x l2 sensitivity grid (Fig. 5, with --heatmap)."""
    from bench.report.render import render_table

    _show(render_table(results, kind, fmt=fmt, datasets=datasets, methods=methods, decimals=decimals, std=std,
                       value=value, caption=caption, caption_latex=caption_latex, label=label, booktabs=booktabs,
                       standalone=standalone, heatmap=heatmap, mark_tied=mark_tied, marks=marks, pairing=pairing,
                       alpha=alpha, out=out, vs_baseline=vs_baseline, correction=correction, params=params, rope=rope,
                       intervals=intervals, kinds=kinds))


@app.command()
def leaderboard(
    results: Optional[List[Path]] = typer.Option(None, "--results", "-r", help="results folder(s) or records.jsonl.gz "
                                                 "file(s) (default: results)"),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="comma-separated datasets to rank over"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated methods (default: all present)"),
    fmt: str = typer.Option("rich", "--format", "-f", help="rich | markdown | csv | latex | json | html"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output file (a folder for --format html)"),
    cells: bool = typer.Option(False, "--cells", help="also show mean±std per cell (~best = not significantly below the best)"),
    alpha: float = typer.Option(0.05, "--alpha", help="significance level of the per-cell and Nemenyi tests"),
    correction: str = typer.Option("holm", "--correction", help="holm | bonferroni | none over each family of per-cell tests"),
    rope: float = typer.Option(0.5, "--rope", help="region of practical equivalence, +- metric points"),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="independent blocks: dataset (default: cells sharing a "
                                         "dataset are one block) | cell | NAME=ds1,ds2;NAME2=ds3"),
    cd: Optional[Path] = typer.Option(None, "--cd", help="write the critical-difference diagram to PATH.png/.pdf"),
    decimals: int = typer.Option(2, "--decimals", help="digits after the decimal point of gains and cells (0-10)"),
    pairing: str = typer.Option("paired", "--pairing", help="paired | unpaired protocol records"),
    rank_cells: str = typer.Option("common", "--rank-cells", help="common: rank the methods only on the cells every one "
                                   "of them has (default) | complete: rank only the methods that have every cell, "
                                   "on all cells | own: each method on the cells it has"),
    params: str = typer.Option("default", "--params", help="default | tuned | both (DKD and DKD (tuned) ranked side by side)"),
    kinds: Optional[str] = typer.Option(None, "--kinds", help=KINDS_HELP),
) -> None:
    """Rank methods over every (dataset, student modality) cell, with statistics."""
    from bench.report.render import render_leaderboard

    res = render_leaderboard(list(results or [Path("results")]), fmt=fmt, datasets=datasets, methods=methods, out=out,
                             cells=cells, alpha=alpha, correction=correction, cd=cd, decimals=decimals,
                             pairing=pairing, rank_cells=rank_cells, params=params, rope=rope, blocks=blocks,
                             kinds=kinds)
    if fmt == "html":
        res.notes.append("open the page from the file system; no server needed")
    _show(res)


@app.command()
def curves(
    results: Optional[List[Path]] = typer.Option(None, "--results", "-r", help="results folder(s) (default: results)"),
    out: Path = typer.Option(Path("results/curves"), "--out", "-o", help="folder for the figures (PNG + PDF each)"),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="comma-separated datasets"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated methods (default: all present)"),
    directions: Optional[str] = typer.Option(None, "--directions", help="comma-separated directions, e.g. a2v"),
    value: str = typer.Option("best_metric", "--value", help="best_metric | final_metric | reference_best_metric: "
                              "the number in the legend, and dots where each seed's value is read"),
    pairing: str = typer.Option("paired", "--pairing", help="paired | unpaired protocol records"),
) -> None:
    """Training curves from the records (no tracker needed): one figure per (dataset, direction), one
    line per method, mean ± std over seeds; validation and test metric, total loss, each loss term."""
    from bench.launch.grid import split_list
    from bench.report.curves import curves as draw_curves

    def opt(v: Optional[str]) -> Optional[list[str]]:
        return split_list(v) if v else None

    paths, notes = draw_curves(list(results or [Path("results")]), out, datasets=opt(datasets), methods=opt(methods),
                               directions=opt(directions), value=value, pairing=pairing)
    for n in notes:
        err_console.print(f"[yellow]{escape(plain_text(n))}[/yellow]")  # no ESC or U+202E from a name
    for p in paths:
        console.print(f"wrote {escape(str(p))}")


@app.command()
def analyze(
    kind: str = typer.Argument(..., help="similarity | means | tsne | cch | gap | premise"),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    direction: Optional[str] = typer.Option(None, "--direction", help="tsne: e.g. a2v (default: the first direction)"),
    results: Path = typer.Option(Path("results"), "--results", "-r"),
    out: Path = typer.Option(Path("results/analysis"), "--out", "-o", help="folder for the figure (PNG+PDF) and CSV"),
    seed: int = typer.Option(0, "--seed", help="the models' seed (gap: the seed whose features give the CCH)"),
    tap: str = typer.Option("pre", "--tap", help="pre (pre-ReLU pooled, FD-CMKD's) | post (classifier input)"),
    ratio: float = typer.Option(0.5, "--ratio", help="similarity: frequency split threshold"),
    ks: str = typer.Option("4,8,16", "--k", "--ks", help="cch, gap: PCA sizes"),
    methods: Optional[str] = typer.Option(None, "--methods", help="tsne: students to show (default none,feat,fdcmkd); "
                                                                   "gap: KD methods (default: every one recorded)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="dataset parameters the models were trained with"),
    device: str = typer.Option("cpu", "--device"),
    set_feature: str = typer.Option("output", "--set-feature", help="gap: a teacher set's H_T: output (the fusion "
                                                                     "teacher's classifier input) | fused (members' "
                                                                     "vectors concatenated)"),
    predict: str = typer.Option("all", "--predict", help="gap: CCH predicts from the sign of delta at every k (all) "
                                                         "or at the middle k (middle)"),
    alpha: float = typer.Option(0.05, "--alpha", help="gap: significance level of the gain and gap tests"),
    correction: str = typer.Option("holm", "--correction", help="gap: holm | bonferroni | none over each family"),
    rope: float = typer.Option(0.5, "--rope", help="gap: region of practical equivalence, +- metric points"),
) -> None:
    """Cross-modal analyses from trained checkpoints (FD-CMKD Table 1, Fig. 1, Fig. 4; the CCH criterion;
    the CCH and the modality gap per teacher choice, `gap`; FD-CMKD's premise probed against the ground
    truth of datasets that carry it, e.g. synthetic)."""
    from bench.launch.grid import split_list
    from bench.report import analysis as A
    from bench.report.console import cch_table

    ov = parse_overrides(set_ or [])
    if tap not in ("pre", "post"):
        raise BenchError("--tap must be pre or post")
    if kind == "similarity":
        res = A.similarity(dataset, results, out, ov, seed, tap, ratio, device)
        console.print(f"cosine similarity raw {res['values']['raw']:.4f}, low {res['values']['low']:.4f}, "
                      f"high {res['values']['high']:.4f}")
    elif kind == "means":
        res = A.means(dataset, results, out, ov, seed, tap, device)
    elif kind == "tsne":
        res = A.tsne(dataset, direction, results, out, ov, seed, tuple(split_list(methods or "none,feat,fdcmkd")),
                     tap=tap, device=device)
    elif kind in ("cch", "gap"):
        try:
            kk = tuple(int(x) for x in split_list(ks))
        except ValueError:
            raise BenchError(f"--k {ks!r}: expected comma-separated integers") from None
        if kind == "cch":
            res = A.cch(dataset, results, out, ov, seed, kk, tap, device)
            console.print(cch_table(dataset, res["rows"]))
        else:
            from bench.report.gap import gap

            res = gap(dataset, results, out, ov, seed, kk, tap, device, set_feature=set_feature, predict=predict,
                      methods=split_list(methods) if methods else None, alpha=alpha, rope=rope, correction=correction)
            console.print(res["markdown"], markup=False, highlight=False, soft_wrap=True)
    elif kind == "premise":
        from bench.report.premise import premise

        res = premise(dataset, results, out, ov, seed, ratio, tap, device, direction)
        console.print(res["markdown"], markup=False, highlight=False)
    else:
        raise BenchError(f"bench analyze {kind!r}: expected similarity, means, tsne, cch, gap or premise")
    console.print("wrote " + escape(", ".join(str(p) for p in [res["csv"], *res["figures"]])))


@app.command()
def reproduce(
    what: str = typer.Argument("offline", help="offline: synthetic, mfeat and the AV-Digits hard preset: every method and "
                                               "w/o KD in both directions, the controls, FD-CMKD's studies, the teacher "
                                               "sets and the teacher controls, 5 seeds with per-seed splits"),
    results: Path = typer.Option(Path("results/offline"), "--results", "-r",
                                 help="results folder of the runs; with --outputs-only also the records.jsonl.gz "
                                      "a build wrote (same records, same bytes)"),
    out: Path = typer.Option(Path("docs/results"), "--out", "-o", help="folder for the tables, pages and figures"),
    seeds: str = typer.Option("0,1,2,3,4", "--seeds"),
    device: str = typer.Option("auto", "--device"),
    runs_per_gpu: int = typer.Option(1, "--runs-per-gpu", "--jobs", "-j", help="runs at a time per GPU (on CPU: single-threaded processes)"),
    outputs_only: bool = typer.Option(False, "--outputs-only", help="rebuild the outputs from the records, run nothing"),
    plan_only: bool = typer.Option(False, "--plan", help="print the grid's parts, what is done, and the estimated time of "
                                                          "the rest; run nothing"),
    calibration: list[Path] = typer.Option([], "--calibration", help="with --plan: results folder(s) whose records' run "
                                                                      "times the estimate uses (default: --results)"),
    parts_: Optional[str] = typer.Option(None, "--parts", help="comma-separated parts to run (default: all, in order)"),
    allow_mixed_provenance: bool = typer.Option(False, "--allow-mixed-provenance",
                                                help="publish even records from a dirty tree, cells whose seeds ran "
                                                     "different commits or versions, or a grid of several runner "
                                                     "versions (the outputs and summary.json then say so)"),
) -> None:
    """The published offline results (docs/results/), regenerated by one resumable command: the
    grid's parts run in order (bench.report.offline_grid), finished runs are skipped, so running it
    again after an interruption finishes the job. Refuses to publish records from a dirty tree, a
    cell whose seeds ran different commits or runner / method / adapter / backbone versions, and a
    grid of several runner versions; writes the published records to OUT/records.jsonl.gz (bench
    table / leaderboard -r OUT/records.jsonl.gz read it)."""
    from bench.cli.runs import _run_local
    from bench.launch.grid import pending
    from bench.report.offline_grid import plan
    from bench.report.reproduce import build_outputs

    if what != "offline":
        raise BenchError(f"bench reproduce {what!r}: expected offline")
    parts = plan(results, seeds=seeds, device=device)
    names = [p.name for p in parts]
    wanted = [x.strip() for x in (parts_ or ",".join(names)).split(",") if x.strip()]
    if bad := [x for x in wanted if x not in names]:
        raise BenchError(f"--parts: unknown part(s) {', '.join(map(repr, bad))}; the parts are {', '.join(names)}")
    parts = [p for p in parts if p.name in wanted]
    if plan_only:
        _print_plan(parts, results, seeds, device, calibration or [results], runs_per_gpu)
        return
    if not outputs_only:
        if results.is_file():  # a compact records file holds finished records only: nothing can run into it
            raise BenchError(f"-r {results} is a records file: add --outputs-only to rebuild the outputs from it, "
                             "or give the results folder to run the grid")
        failed = []
        for part in parts:
            specs = part.build(results)
            for why in part.left_out:
                err_console.print(f"[yellow]{part.name}: left out {escape(plain_text(why))}[/yellow]")
            todo = pending(specs)
            console.print(f"{part.name}: {len(specs)} runs, {len(specs) - len(todo)} already done, {len(todo)} to run "
                          f"-> {escape(str(results))}/records/")
            outcome = _run_local(todo, False, False, runs_per_gpu)
            failed += outcome.failed
            if outcome.failed:
                break  # a later part may be planned from this one's records (the teacher controls from main)
        if failed:
            for rec in failed:
                err_console.print(f"[red]failed[/red] {escape(rec['run_id'])}: {escape(str(rec['error']))}")
            err_console.print("the finished runs are kept; rerun the same command to retry the failed ones and go on")
            raise typer.Exit(1)
    summary = build_outputs(results, out, log=lambda m: err_console.print(f"[yellow]{escape(m)}[/yellow]"),
                            allow_mixed_provenance=allow_mixed_provenance)
    f = summary.get("friedman", {})
    if f.get("statistic") is not None:
        console.print(f"Friedman chi2={f['statistic']:.2f}, p={f['pvalue']:.3g} over {f['n_cells']} cells x {f['k']} "
                      f"methods; Nemenyi CD={f['cd']:.2f}")
    console.print(f"wrote {escape(str(out))}/ (comparison, leaderboard, studies, protocol gap, unimodal, summary.json, "
                  "records.jsonl.gz)")


def _print_plan(parts: list, results: Path, seeds: str, device: str, calibration: list[Path], jobs: int) -> None:
    """``bench reproduce --plan``: per part, runs / done / estimated time of the rest."""
    from rich.table import Table

    from bench.records.store import load_records
    from bench.report.offline_grid import CONTROL_METHODS, TimeModel, ZOO, estimate, plan

    recs = [r for c in calibration if Path(c).exists() for r in load_records(c, status="ok")]
    if not recs:
        raise BenchError(f"--plan: no ok records in {', '.join(map(str, calibration))} to estimate run times from "
                         "(give --calibration FOLDER with a few runs of each benchmark)")
    model = TimeModel(recs)
    priced = sorted((model.seconds("synthetic", m, "cross"), m) for m in ZOO if m not in CONTROL_METHODS) \
        if any(k[0] == "synthetic" for k in model.by) else []
    stand_in_zoo = tuple(m for _, m in priced[-2:]) or ZOO[:2]  # the two costliest: an upper estimate
    model.source.clear()
    rows = estimate(parts, results, model, jobs, stand_in=plan(results, seeds=seeds, device=device, zoo=stand_in_zoo))
    t = Table(title=f"bench reproduce offline: the grid in {escape(str(results))} ({jobs} at a time)")
    for col in ("part", "runs", "done", "to run", "run time (h)", "wall time (h)", "what"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["part"], str(r["runs"]), str(r["done"]), str(r["runs"] - r["done"]), f"{r['run_seconds'] / 3600:.2f}",
                  f"{r['wall_seconds'] / 3600:.2f}", escape(r["note"]))
    total = sum(r["wall_seconds"] for r in rows)
    t.add_row("total", str(sum(r["runs"] for r in rows)), str(sum(r["done"] for r in rows)),
              str(sum(r["runs"] - r["done"] for r in rows)), f"{sum(r['run_seconds'] for r in rows) / 3600:.2f}",
              f"{total / 3600:.2f}", "")
    console.print(t)
    console.print(f"estimated from {len(recs)} record(s) of {escape(', '.join(map(str, calibration)))}; rules used: "
                  + ", ".join(f"{k} {v}" for k, v in model.source.items())
                  + "; runs shared by two parts (the studies' default point) are counted in both")
