"""The ``bench`` command line (typer + rich)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from typer.core import TyperGroup
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from .config import describe_params, parse_overrides
from .errors import BenchError

console = Console()
err_console = Console(stderr=True)


class _BenchGroup(TyperGroup):
    """Every command reports a user error (:class:`BenchError`) as one line and exit status 2, the
    same whether it runs from the shell or from a test's CliRunner."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except BenchError as exc:
            err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=_BenchGroup,
    add_completion=False,
    no_args_is_help=True,
    help="cmkd-bench: benchmark and compare cross-modal knowledge distillation methods.",
    pretty_exceptions_enable=False,
)


class RichReporter:
    """Overall bar over runs plus a bar per running run over its (teacher + student) epochs, with
    ETA; several runs at once when they are packed (``--runs-per-gpu``).

    Run ids, metric names and error texts come from plug-ins, dataset folders and exceptions: they
    are escaped before they enter Rich markup, so a ``[/]`` or ``[bold]`` in them is shown as
    written instead of failing the progress display (and with it the run)."""

    def __init__(self, progress: Progress, total_runs: int):
        self.p = progress
        self.overall = progress.add_task("[bold]grid", total=total_runs)
        self.tasks: dict[str, int] = {}

    def begin(self, run_id: str, total_epochs: int) -> None:
        if run_id in self.tasks:
            self.p.remove_task(self.tasks.pop(run_id))
        self.tasks[run_id] = self.p.add_task(escape(run_id), total=max(total_epochs, 1))

    def epoch(self, run_id: str, phase: str, epoch: int, info: dict[str, Any]) -> None:
        task = self.tasks.get(run_id)
        if task is None:
            return
        val = info.get("val_metric")
        desc = (f"{escape(run_id)} [dim]{escape(str(phase))} ep{epoch} test={info['test_metric']:.1f}"
                + (f" val={val:.1f}" if val is not None else ""))
        self.p.update(task, advance=1, description=desc)

    def end(self, run_id: str, record: dict[str, Any]) -> None:
        task = self.tasks.pop(run_id, None)
        if task is not None:
            self.p.remove_task(task)
        self.p.advance(self.overall)
        if record["status"] == "ok":
            self.p.console.print(f"[green]ok[/green] {escape(run_id)}: {escape(str(record['metric']))} "
                                 f"{record['best_metric']:.2f} (epoch {record['selected_epoch']}, "
                                 f"final {record['final_metric']:.2f}, {record['wall_time_s']:.0f}s)")
        else:
            self.p.console.print(f"[red]failed[/red] {escape(run_id)}: {escape(str(record['error']))}")

    def skip(self) -> None:
        self.p.advance(self.overall)

    def note(self, run_id: str, message: str) -> None:
        self.p.console.print(f"[yellow]note[/yellow] {escape(run_id)}: {escape(message)}")


def _fail(msg: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {msg}")
    raise typer.Exit(2)


@app.command()
def run(
    methods: str = typer.Option("all", "--methods", "-m", help="'all' or comma-separated method names"),
    datasets: str = typer.Option("synthetic", "--datasets", "-d", help="comma-separated dataset names"),
    directions: str = typer.Option("all", "--directions", help="'all' or e.g. a2v,v2a (teacher code 2 student code)"),
    seeds: str = typer.Option("0", "--seeds", help="comma-separated seeds, e.g. 0,1,2"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="student epochs (default: the dataset's)"),
    teacher_epochs: Optional[int] = typer.Option(None, "--teacher-epochs", help="teacher epochs (default: the dataset's)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a hyper-parameter: SCOPE.KEY=VALUE (dkd.beta=8, train.lr=0.1, synthetic.n_train=1000)"),
    executor: str = typer.Option("local", "--executor", help="local (in this process) | slurm (job arrays via submitit)"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results folder"),
    force: bool = typer.Option(False, "--force", help="rerun runs that already have an ok record"),
    plugin: Optional[List[str]] = typer.Option(None, "--plugin", help="python file that registers extra methods"),
    save_model: bool = typer.Option(False, "--save-model", help="keep the selected student weights under results/models/"),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="stop at the first failing run"),
    sweep: Optional[List[str]] = typer.Option(None, "--sweep", help="SCOPE.KEY=v1,v2,...: run every value (repeat for a cartesian grid), e.g. fdcmkd.ratio=0.25,0.5,0.75"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="only the runs whose last attempt failed (record or SLURM task)"),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition"),
    gpus_per_task: Optional[int] = typer.Option(None, "--gpus-per-task"),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task"),
    mem: Optional[str] = typer.Option(None, "--mem", help="e.g. 32G"),
    time_min: Optional[int] = typer.Option(None, "--time", help="time limit per task in minutes (requeued + resumed on timeout)"),
    array_parallelism: Optional[int] = typer.Option(None, "--array-parallelism"),
    account: Optional[str] = typer.Option(None, "--account"),
    qos: Optional[str] = typer.Option(None, "--qos"),
    slurm_arg: Optional[List[str]] = typer.Option(None, "--slurm-arg", help="extra sbatch option KEY=VALUE (repeatable)"),
    slurm_config: Optional[Path] = typer.Option(None, "--slurm-config", help="TOML with a [slurm] table (default ./slurm.toml if present)"),
    wait: bool = typer.Option(False, "--wait", help="slurm: block until every task has finished"),
    runs_per_gpu: int = typer.Option(1, "--runs-per-gpu", help="pack K runs per GPU (K processes; on CPU: K at a time); SLURM: K runs per array task"),
) -> None:
    """Train teachers, distil students and write one record per run; prints the comparison."""
    from .executors import LocalExecutor, PackedExecutor, expand_grid, pending, sweep_overrides
    from .results import load_results
    from .tables import build_comparison, to_rich

    overrides = parse_overrides(set_)
    if epochs is not None:
        overrides.setdefault("train", {})["epochs"] = str(epochs)
    if teacher_epochs is not None:
        overrides.setdefault("train", {})["teacher_epochs"] = str(teacher_epochs)
    if executor not in ("local", "slurm"):
        _fail(f"--executor {executor!r}: valid executors: local, slurm")
    specs = []
    for combo in sweep_overrides(overrides, list(sweep or [])):
        specs += expand_grid(methods, datasets, directions, seeds, overrides=combo, results_dir=str(results),
                             device=device, save_model=save_model, plugins=list(plugin or []))
    todo = pending(specs, force)
    if retry_failed:
        from .results import read_record, record_path
        from .runner import resolve
        from .slurm import retry_candidates

        again = retry_candidates(results) if (results / "slurm").exists() else set()
        ids = {id(sp): resolve(sp).run_id for sp in todo}
        for sp in todo:
            rp = record_path(results, ids[id(sp)])
            if rp.exists() and read_record(rp)["status"] == "failed":
                again.add(ids[id(sp)])
        todo = [sp for sp in todo if ids[id(sp)] in again]
    console.print(f"{len(specs)} runs in the grid, {len(specs) - len(todo)} already done, {len(todo)} to run "
                  f"-> {results}/records/")
    if executor == "slurm":
        _run_slurm(todo, results, dict(partition=partition, gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task,
                                       mem=mem, time=time_min, array_parallelism=array_parallelism, account=account,
                                       qos=qos), list(slurm_arg or []), slurm_config, wait, runs_per_gpu)
        return
    from .runner import stop_on_sigterm

    stop_on_sigterm()  # `kill` of a local grid stops like Ctrl-C: at an epoch boundary, resumable
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False) as progress:
        reporter = RichReporter(progress, len(todo))
        try:
            if runs_per_gpu > 1:
                outcome = PackedExecutor(runs_per_gpu, reporter, fail_fast=fail_fast).run(todo, force=force)
            else:
                outcome = LocalExecutor(reporter, fail_fast=fail_fast).run(todo, force=force)
        except KeyboardInterrupt:
            progress.stop()
            err_console.print("[yellow]interrupted[/yellow]: finished runs are saved; rerun the same command to resume.")
            raise typer.Exit(130)
    console.print(f"finished in {time.perf_counter() - t0:.0f}s: {len(outcome.done)} ran, {len(outcome.failed)} failed")
    ids = {s.dataset for s in specs}
    df = load_results(results)
    df = df[df["dataset"].isin(ids) & df["method"].isin({s.method for s in specs})
            & df["seed"].isin({s.seed for s in specs})]
    if len(df):
        console.print(to_rich(build_comparison(df)))
    if outcome.failed:
        for rec in outcome.failed:
            err_console.print(f"[red]failed[/red] {rec['run_id']}: {rec['error']}")
        raise typer.Exit(1)


def _run_slurm(todo: list, results: Path, cli: dict[str, Any], extra: list[str], config: Optional[Path], wait: bool,
               runs_per_gpu: int = 1) -> None:
    from . import slurm

    if not todo:
        console.print("nothing to submit")
        return
    opts = slurm.SlurmOptions.from_sources(config, cli, extra)
    m = slurm.submit(todo, results, opts, runs_per_task=runs_per_gpu)
    if m["teacher_job"]:
        console.print(f"submitted teacher array {m['teacher_job']} ({len(m['teachers'])} teacher(s))")
    n_tasks = len({t["job_id"] for t in m["tasks"]})
    console.print(f"submitted run array {m['array_job']} ({n_tasks} task(s), {len(m['tasks'])} run(s)); manifest {m['path']}")
    if not wait:
        console.print(f"follow it with `bench status -r {results}`; collect with `bench collect -r {results}`")
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as prog:
        bar = prog.add_task(f"array {m['array_job']}", total=n_tasks)

        def update(states: dict[str, str]) -> None:
            prog.update(bar, completed=sum(1 for s in states.values() if s in slurm.TERMINAL))

        states = slurm.wait(m, on_poll=update)
    bad = {j: s for j, s in states.items() if s != "COMPLETED"}
    console.print(f"array {m['array_job']}: {len(states) - len(bad)} completed, {len(bad)} not: {bad or ''}")
    if bad:
        raise typer.Exit(1)


@app.command()
def status(
    results: Path = typer.Option(Path("results"), "--results", "-r"),
    all_: bool = typer.Option(False, "--all", help="list every task, not only unfinished ones"),
) -> None:
    """Progress of submitted SLURM arrays: pending / running / done / failed, with error tails."""
    from . import slurm

    rows = slurm.task_table(results)
    if not rows:
        console.print(f"no SLURM submissions under {results}/slurm")
        return
    t = Table(title="SLURM arrays")
    for c in ("array", "done", "running", "pending", "failed", "other"):
        t.add_column(c)
    for arr, c in slurm.summarize(rows).items():
        other = sum(v for k, v in c.items() if k not in ("done", "running", "pending", "failed"))
        t.add_row(arr, *(str(c.get(k, 0)) for k in ("done", "running", "pending", "failed")), str(other))
    console.print(t)
    show = rows if all_ else [r for r in rows if r["status"] != "DONE"]
    for r in show:
        line = f"{r['job_id']:>10} {r['status']:<12} {r['run_id']}"
        if r["error"]:
            console.print(f"[red]{line}[/red]")
            console.print("    " + r["error"].strip().replace("\n", "\n    "), markup=False, highlight=False)
        else:
            console.print(line)


@app.command("list")
def list_(
    what: str = typer.Argument("methods", help="methods | datasets"),
    plugin: Optional[List[str]] = typer.Option(None, "--plugin", help="python file that registers extra methods"),
) -> None:
    """List registered methods (with parameters and defaults) or datasets (with modalities)."""
    from .registry import DATASETS, METHODS
    from .runner import load_plugins

    load_plugins(list(plugin or []))
    if what in ("methods", "method"):
        t = Table(title="KD methods")
        for c in ("name", "category", "description", "parameters (defaults)", "source"):
            t.add_column(c)
        for e in METHODS.entries():
            cls = e.obj
            ps = ", ".join(f"{n}={d}" + (f" ({rng})" if rng else "")
                           for n, _, d, _, rng in describe_params(cls.Params)) or "-"
            src = e.source + (f" [{e.source_hash}]" if e.source_hash else "")
            # a plug-in's strings are shown as written, never read as Rich markup
            t.add_row(*(Text(str(x)) for x in (e.name, cls.category, cls.description, ps, src)))
        console.print(t)
    elif what in ("datasets", "dataset"):
        t = Table(title="datasets")
        for c in ("name", "task", "metric", "modalities", "directions", "description"):
            t.add_column(c)
        for e in DATASETS.entries():
            cls = e.obj
            ad = cls(cls.Params())
            mods = ", ".join(f"{m.name} ({m.code}, {m.kind})" for m in ad.modalities)
            dirs = ", ".join(ad.direction_name(a, b) for a, b in ad.directions())
            t.add_row(*(Text(str(x)) for x in (e.name, cls.task, cls.metric, mods, dirs, cls.description)))
        console.print(t)
    else:
        _fail(f"bench list {what!r}: expected 'methods' or 'datasets'")


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="dataset name (bench list datasets)"),
    root: Optional[Path] = typer.Option(None, "--root", help="raw dataset directory in its community layout"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="cache directory (default $CMKD_BENCH_CACHE/<name> or ~/.cache/cmkd-bench/<name>)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="DATASET.KEY=VALUE preprocessing parameters"),
    check: bool = typer.Option(False, "--check", help="verify an existing cache (shapes, dtypes, sha256) instead of preparing"),
) -> None:
    """Decode a raw dataset once into a compact memory-mapped cache (resumable)."""
    from .cache import check_cache
    from .prepared import PreparedDataset
    from .runner import build_adapter

    overrides = parse_overrides(set_ or [])
    scope = overrides.setdefault(dataset, {})
    if root is not None:
        scope["root"] = str(root)
    if cache is not None:
        scope["cache"] = str(cache)
    adapter = build_adapter(dataset, overrides)
    if not isinstance(adapter, PreparedDataset):
        _fail(f"dataset {dataset!r} has nothing to prepare (it is generated or read directly)")
    if check:
        problems = check_cache(adapter.cache_path, adapter.name)
        if problems:
            for p in problems:
                err_console.print(f"[red]bad[/red] {p}")
            raise typer.Exit(1)
        m = adapter.manifest()
        console.print(f"[green]ok[/green] {adapter.cache_path}: " + ", ".join(f"{s} {v['n']}" for s, v in m["splits"].items())
                      + f" (content {m['content_hash']})")
        return
    t0 = time.time()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as prog:
        tasks: dict[str, Any] = {}

        def report(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = prog.add_task(f"{adapter.name}/{split}", total=total)
            prog.update(tasks[split], completed=done)

        manifest = adapter.prepare(report)
    _print_prepare_report(manifest, adapter.cache_path, time.time() - t0, adapter)


def _print_prepare_report(m: dict[str, Any], cache: Path, seconds: float, adapter: Any = None) -> None:
    from .speed import fmt_bytes as g, manifest_sizes, placement_needs

    splits = m["splits"]
    dense = any(s.get("hist_unit") == "pixels" for s in splits.values())
    t = Table(title=f"{m['dataset']} prepared into {cache} in {seconds:.1f}s")
    for c in ("split", "listed", "used", "skipped (reason: count)", "void pixels" if dense else "class histogram"):
        t.add_column(c)
    for split, s in splits.items():
        skipped = "; ".join(f"{r}: {v['count']}" for r, v in s["skipped"].items()) or "-"
        last = f"{s.get('void_pixels', 0):,}" if dense else " ".join(map(str, s["class_hist"]))
        t.add_row(split, str(s["listed"]), str(s["n"]), skipped, last)
    console.print(t)
    if dense:  # segmentation: pixels per class (void excluded), one column per split
        h = Table(title=f"{m['dataset']}: labelled pixels per class")
        h.add_column("class")
        for split in splits:
            h.add_column(split, justify="right")
        totals = {split: max(sum(s["class_hist"]), 1) for split, s in splits.items()}
        for c, name in enumerate(m.get("classes") or range(len(next(iter(splits.values()))["class_hist"]))):
            h.add_row(f"{c} {name}", *(f"{s['class_hist'][c]:,} ({100 * s['class_hist'][c] / totals[sp]:.1f}%)"
                                       for sp, s in splits.items()))
        console.print(h)
    size = sum(f.stat().st_size for f in cache.glob("*.npy"))
    notes = {k: v for k, v in m.get("info", {}).items()
             if k in ("clips_with_empty_audio", "video_ids_shared_across_splits", "images_in_train_and_test")}
    console.print(f"cache: {size / 2**20:.1f} MiB, content hash {m['content_hash']}" + (f", notes: {notes}" if notes else ""))
    if adapter is None:
        return
    # what one run on a GPU holds per placement (train.data_placement), from the manifest's arrays
    from .runner import build_train_config

    tc = build_train_config(adapter, {})
    mt = Table(title=f"memory of one GPU run on this cache (batch {tc.batch_size}, eval batch {tc.eval_batch_size}; "
                     f"teacher-output cache not included)")
    for c in ("direction", "arrays read", "device", "pinned", "stream"):
        mt.add_column(c)
    for t_mod, s_mod in adapter.directions():
        sizes = manifest_sizes(m, [s_mod, t_mod], getattr(adapter, "label_key", "label"))
        need = placement_needs(sizes, tc.batch_size, tc.eval_batch_size, cuda=True)
        mt.add_row(adapter.direction_name(t_mod, s_mod), g(sum(d for _n, d, _r in sizes.values())),
                   f"{g(need['device']['device_bytes'])} GPU + {g(need['device']['host_bytes'])} RAM",
                   f"{g(need['pinned']['host_bytes'])} pinned RAM",
                   f"{g(need['stream']['host_bytes'])} RAM (+{g(need['stream']['page_cache_bytes'])} page cache)")
    console.print(mt)


@app.command()
def leaderboard(
    results: Optional[List[Path]] = typer.Option(None, "--results", "-r", help="results folder(s) (default: results)"),
    datasets: Optional[str] = typer.Option(None, "--datasets", help="comma-separated datasets to rank over"),
    methods: Optional[str] = typer.Option(None, "--methods", help="comma-separated methods (default: all present)"),
    fmt: str = typer.Option("rich", "--format", "-f", help="rich | markdown | csv | latex | json | html"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output file (a folder for --format html)"),
    cells: bool = typer.Option(False, "--cells", help="also show mean±std per cell (~best = tied with the best, Welch)"),
    alpha: float = typer.Option(0.05, "--alpha", help="significance level of the per-cell and Nemenyi tests"),
    correction: str = typer.Option("none", "--correction", help="none | holm | bonferroni over the per-cell tests"),
    cd: Optional[Path] = typer.Option(None, "--cd", help="write the critical-difference diagram to PATH.png/.pdf"),
    decimals: int = typer.Option(2, "--decimals", help="digits after the decimal point of gains and cells (0-10)"),
    pairing: str = typer.Option("paired", "--pairing", help="paired | unpaired protocol records"),
    rank_cells: str = typer.Option("common", "--rank-cells", help="common: rank the methods only on the cells every one "
                                   "of them has (default) | own: each method on the cells it has"),
) -> None:
    """Rank methods over every (dataset, student modality) cell, with statistics."""
    from . import leaderboard as L
    from . import reportio as io
    from .results import load_records

    formats = ("rich", "markdown", "csv", "latex", "json", "html")
    try:
        if fmt not in formats:
            _fail(f"--format {escape(repr(fmt))}: expected {', '.join(formats)}")
        if pairing not in ("paired", "unpaired"):
            _fail(f"--pairing {escape(repr(pairing))}: expected paired or unpaired")
        if rank_cells not in L.RANK_RULES:
            _fail(f"--rank-cells {escape(repr(rank_cells))}: expected common (the cells every ranked method has) "
                  f"or own (each method's own cells)")
        io.check_decimals(decimals)
        ds = io.name_list(datasets, "--datasets", "crema,ave")
        ms = io.name_list(methods, "--methods", "none,logit,fdcmkd")
        if fmt == "rich" and out is not None:
            _fail("--out writes a file; --format rich prints to the terminal (use markdown, csv, latex, json or html)")
        if fmt == "html":
            io.check_out_folder(out or Path("site"))
        else:
            io.check_out_file(out)
        recs = load_records([str(p) for p in (results or [Path("results")])], status="ok")
        lb = L.build_leaderboard(recs, datasets=ds, methods=ms, alpha=alpha, correction=correction, pairing=pairing,
                                 rank_cells=rank_cells)
        if cd is not None:
            try:
                paths = L.cd_diagram(lb, cd)
            except OSError as exc:
                raise io.unwritable("--cd", cd, exc) from None
            if paths:
                console.print("CD diagram: " + escape(", ".join(map(str, paths))))
            else:
                err_console.print(f"[yellow]no CD diagram[/yellow]: {escape(lb.friedman.get('refused', 'Nemenyi test unavailable'))}")
        if fmt == "html":
            from .leaderboard_html import write_site

            site = out or Path("site")
            try:
                page = write_site(lb, site)
            except OSError as exc:
                raise io.unwritable("--out", site, exc) from None
            console.print(f"wrote {escape(str(page))} (open it from the file system; no server needed)")
            return
        if fmt == "rich":
            console.print(L.to_rich(lb, decimals, cells))
            for n in lb.notes:
                console.print(f"[yellow]{escape(n)}[/yellow]")
            return
        s = {"markdown": lambda: L.to_markdown(lb, decimals, cells), "csv": lambda: L.to_csv(lb),
             "latex": lambda: L.to_latex(lb, decimals), "json": lambda: L.write_json(lb)}[fmt]()
        if out:
            io.write_text(out, s)
            console.print(f"wrote {escape(str(out))}")
        else:
            sys.stdout.write(s if s.endswith("\n") else s + "\n")
    except BenchError as exc:  # names and paths in the message are the user's: no markup
        _fail(escape(str(exc)))


@app.command()
def collect(
    from_: Optional[List[Path]] = typer.Option(None, "--from", help="results folder(s) to merge from (repeatable)"),
    results: Path = typer.Option(Path("results"), "--results", "-r", help="destination results folder"),
) -> None:
    """Merge records from other folders (--from; identical runs deduplicated, conflicts reported), or,
    without --from, gather the records of finished SLURM tasks (idempotent)."""
    from .results import collect as do_collect

    if not from_:
        from .slurm import collect_finished

        rep = collect_finished(results)
        console.print(f"{len(rep['present'])} record(s) already present, {len(rep['recovered'])} recovered from "
                      f"finished tasks, {len(rep['unfinished'])} task(s) without a result yet")
        return

    rep = do_collect([str(p) for p in from_], results)
    console.print(f"{len(rep['copied'])} copied, {len(rep['duplicate'])} duplicate(s) skipped, "
                  f"{len(rep['replaced_failed'])} failed record(s) replaced by ok ones, "
                  f"{len(rep['conflict'])} conflict(s), {len(rep['invalid'])} invalid file(s) -> {results}/records")
    for c in rep["conflict"]:
        err_console.print(f"[red]conflict[/red] {c}")
    for c in rep["invalid"]:
        err_console.print(f"[yellow]invalid[/yellow] {c}")
    if rep["conflict"]:
        raise typer.Exit(1)


@app.command()
def results(
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results folder"),
    all_: bool = typer.Option(False, "--all", help="include failed runs"),
) -> None:
    """Show collected records, one line per run."""
    from .results import load_results

    df = load_results(results, status=None if all_ else "ok")
    if df.empty:
        console.print(f"no records in {results}")
        return
    t = Table(title=f"{len(df)} records in {results}")
    for c in ("dataset", "dir", "method", "seed", "status", "metric", "selected", "final", "ref. best", "epoch", "time"):
        t.add_column(c, justify="right" if c in ("seed", "selected", "final", "ref. best", "epoch", "time") else "left")
    for r in df.sort_values(["dataset", "direction", "method", "seed"]).itertuples():
        ok = r.status == "ok"
        t.add_row(r.dataset, r.direction, r.method, str(r.seed), r.status if ok else f"[red]{r.status}[/red]", r.metric,
                  f"{r.best_metric:.2f}" if ok else "-", f"{r.final_metric:.2f}" if ok else "-",
                  f"{r.reference_best_metric:.2f}" if ok else "-", str(int(r.selected_epoch)) if ok else "-",
                  f"{r.wall_time_s:.0f}s" if r.wall_time_s == r.wall_time_s else "-")
    console.print(t)


def _grid_markdown(g: Any, decimals: int) -> str:
    head = "| l1 \\ l2 | " + " | ".join(f"{c:g}" for c in g.columns) + " |"
    rows = [head, "|" + "---|" * (g.shape[1] + 1)]
    for a in g.index:
        rows.append(f"| {a:g} | " + " | ".join("--" if v != v else f"{v:.{decimals}f}" for v in g.loc[a]) + " |")
    return "\n".join(rows) + "\n"


TABLE_KINDS = ("comparison", "segmentation", "ablation", "threshold", "sensitivity")


@app.command()
def table(
    kind: str = typer.Argument("comparison", help="comparison | segmentation | ablation | threshold | sensitivity"),
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results folder"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the table to this file"),
    fmt: str = typer.Option("latex", "--format", help="latex | markdown | csv | rich"),
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
    mark_tied: bool = typer.Option(False, "--mark-tied", help="dagger on cells statistically tied with the best (Welch over seeds)"),
    marks: str = typer.Option("all", "--marks", help="all: every row competes for bold/underline | kd-only: the KD methods only, "
                                                      "w/o KD shown but not ranked (the FD-CMKD paper's convention)"),
    pairing: str = typer.Option("paired", "--pairing", help="paired | unpaired: which protocol's records to tabulate"),
    alpha: float = typer.Option(0.05, "--alpha", help="level of --mark-tied"),
) -> None:
    """Paper tables from the records: comparison (Table 2), segmentation (Table 3), ablation (Table 4),
    threshold (Table 7) and the l1 x l2 sensitivity grid (Fig. 5, with --heatmap)."""
    from . import reportio as io
    from . import studies
    from .results import load_results
    from .tables import MARK_RULES, build_comparison, md_escape, to_csv, to_latex, to_markdown, to_rich

    try:
        # every option is checked before the records are read: a mistake costs no time
        if kind not in TABLE_KINDS:
            _fail(f"bench table {escape(repr(kind))}: expected one of {', '.join(TABLE_KINDS)}")
        if value not in ("best_metric", "final_metric", "reference_best_metric"):
            _fail(f"--value {escape(repr(value))}: expected best_metric, final_metric or reference_best_metric")
        if fmt not in ("latex", "markdown", "csv", "rich"):
            _fail(f"--format {escape(repr(fmt))}: expected latex, markdown, csv or rich")
        if pairing not in ("paired", "unpaired"):
            _fail(f"--pairing {escape(repr(pairing))}: expected paired or unpaired")
        if marks not in MARK_RULES:
            _fail(f"--marks {escape(repr(marks))}: expected all (every row ranked) or kd-only (w/o KD not ranked)")
        comparison = kind in ("comparison", "segmentation")
        if marks != "all" and not comparison:
            _fail(f"--marks {marks} applies to the comparison and segmentation tables (they have the w/o KD row)")
        if mark_tied and not comparison:
            _fail("--mark-tied applies to the comparison and segmentation tables")
        if methods is not None and not comparison:
            _fail(f"--methods applies to the comparison and segmentation tables; the {kind} table is FD-CMKD's")
        if heatmap is not None and kind != "sensitivity":
            _fail("--heatmap applies to `bench table sensitivity`")
        if standalone and fmt != "latex":
            _fail(f"--standalone makes a LaTeX document; it needs --format latex, not {escape(fmt)}")
        if not 0 < alpha < 1:
            _fail(f"--alpha {alpha}: expected a significance level in (0, 1)")
        io.check_decimals(decimals)
        ds = io.name_list(datasets, "--datasets", "crema,ave")
        ms = io.name_list(methods, "--methods", "none,logit,fdcmkd")
        if fmt == "rich" and out is not None:
            _fail("--out writes a file; --format rich prints to the terminal (use latex, markdown or csv)")
        io.check_out_file(out)
        label = label or f"tab:{kind}"
        if fmt == "latex":
            from .tables import check_label

            check_label(label)

        df = load_results(results)
        if df.empty:
            _fail(f"no ok records in {escape(str(results))}/records; run `bench run` first")
        df = df[df["pairing"] == pairing]
        if df.empty:
            _fail(f"no {pairing}-protocol records in {escape(str(results))} (run with --set train.pairing={pairing})")
        want_seg = kind == "segmentation"
        if comparison:
            df = df[(df["task"] == "segmentation") == want_seg]
            if df.empty:
                _fail(f"no {'segmentation' if want_seg else 'classification'} records in {escape(str(results))}")
        io.check_known(ds, sorted(df["dataset"].unique()), "--datasets", "dataset")
        io.check_known(ms, sorted(df["method"].unique()), "--methods", "method")
        if kind == "sensitivity":
            grids, notes = studies.build_sensitivity(df, datasets=ds, value=value)
            if heatmap is not None:
                try:
                    paths = studies.sensitivity_heatmap(grids, heatmap, str(df["metric"].iloc[0]))
                except OSError as exc:
                    raise io.unwritable("--heatmap", heatmap, exc) from None
                console.print("heatmap: " + escape(", ".join(map(str, paths))))
            if fmt == "latex":
                text = studies.sensitivity_latex(grids, decimals=decimals, metric=str(df["metric"].iloc[0]), caption=caption,
                                                 label=label, booktabs=booktabs, notes=notes, caption_is_latex=caption_latex)
            else:
                parts = []
                for (d, m), g in grids.items():
                    head = f"{md_escape(d)}/{md_escape(m)}" if fmt == "markdown" else f"{d}/{m}"
                    parts.append(f"# {head} (rows l1, columns l2)\n" + (g.to_csv() if fmt == "csv" else _grid_markdown(g, decimals) if fmt == "markdown" else g.round(decimals).to_string()))
                text = "\n".join(parts) + "\n"
        else:
            if kind == "ablation":
                comp = studies.build_ablation(df, datasets=ds, value=value, decimals=decimals)
            elif kind == "threshold":
                comp = studies.build_threshold(df, datasets=ds, value=value, decimals=decimals)
            else:
                df, notes = studies.prefer_defaults(df)
                comp = build_comparison(df, value=value, methods=ms, datasets=ds, decimals=decimals, marks=marks)
                comp.notes += notes
                if mark_tied:
                    from .tables import mark_tied as do_mark_tied

                    do_mark_tied(comp, df, value, alpha)
                if want_seg:
                    comp.title = "Semantic segmentation on NYU-Depth V2 (depth <-> RGB)"
                if pairing == "unpaired":
                    comp.title = "Unpaired protocol (teacher inputs re-drawn from the same class at every step): " + comp.title
            if fmt == "rich":
                console.print(to_rich(comp, decimals=decimals, std=std))
                return
            if fmt == "latex":
                text = to_latex(comp, decimals=decimals, std=std, caption=caption, label=label, booktabs=booktabs,
                                caption_is_latex=caption_latex)
            elif fmt == "markdown":
                text = to_markdown(comp, decimals=decimals, std=std)
            else:
                text = to_csv(comp)
        if standalone:
            text = studies.standalone(text)
        if out:
            io.write_text(out, text)
            console.print(f"wrote {escape(str(out))}")
        else:
            sys.stdout.write(text)
    except BenchError as exc:  # names and paths in the message are the user's: no markup
        _fail(escape(str(exc)))


@app.command()
def analyze(
    kind: str = typer.Argument(..., help="similarity | means | tsne | cch"),
    dataset: str = typer.Option("synthetic", "--dataset", "-d"),
    direction: Optional[str] = typer.Option(None, "--direction", help="tsne: e.g. a2v (default: the first direction)"),
    results: Path = typer.Option(Path("results"), "--results", "-r"),
    out: Path = typer.Option(Path("results/analysis"), "--out", "-o", help="folder for the figure (PNG+PDF) and CSV"),
    seed: int = typer.Option(0, "--seed"),
    tap: str = typer.Option("pre", "--tap", help="pre (pre-ReLU pooled, FD-CMKD's) | post (classifier input)"),
    ratio: float = typer.Option(0.5, "--ratio", help="similarity: frequency split threshold"),
    ks: str = typer.Option("4,8,16", "--k", help="cch: PCA sizes"),
    methods: str = typer.Option("none,feat,fdcmkd", "--methods", help="tsne: students to show"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="dataset parameters the models were trained with"),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Cross-modal analyses from trained checkpoints (FD-CMKD Table 1, Fig. 1, Fig. 4; the CCH criterion)."""
    from . import analysis as A
    from .executors import split_list

    ov = parse_overrides(set_ or [])
    if tap not in ("pre", "post"):
        _fail("--tap must be pre or post")
    if kind == "similarity":
        res = A.similarity(dataset, results, out, ov, seed, tap, ratio, device)
        console.print(f"cosine similarity raw {res['values']['raw']:.4f}, low {res['values']['low']:.4f}, "
                      f"high {res['values']['high']:.4f}")
    elif kind == "means":
        res = A.means(dataset, results, out, ov, seed, tap, device)
    elif kind == "tsne":
        from .runner import build_adapter

        d = direction or build_adapter(dataset, ov).direction_name(*build_adapter(dataset, ov).directions()[0])
        res = A.tsne(dataset, d, results, out, ov, seed, tuple(split_list(methods)), tap=tap, device=device)
    elif kind == "cch":
        try:
            kk = tuple(int(x) for x in split_list(ks))
        except ValueError:
            _fail(f"--k {ks!r}: expected comma-separated integers")
        res = A.cch(dataset, results, out, ov, seed, kk, tap, device)
        t = Table(title=f"CCH criterion on {dataset} (Gaussian MI, nats)")
        for c in ("direction", "k", "I(H_T;H_S)", "I(H_S;Y)", "delta", "verdict", "measured_mean_gain"):
            t.add_column(c)
        for r in res["rows"]:
            t.add_row(*(str(r[c]) for c in ("direction", "k", "I(H_T;H_S)", "I(H_S;Y)", "delta", "verdict", "measured_mean_gain")))
        console.print(t)
    else:
        _fail(f"bench analyze {kind!r}: expected similarity, means, tsne or cch")
    console.print("wrote " + ", ".join(str(p) for p in [res["csv"], *res["figures"]]))


@app.command()
def speed(
    methods: str = typer.Option("fdcmkd", "--methods", "-m", help="'all' or comma-separated method names"),
    dataset: str = typer.Option("crema", "--dataset", "-d", help="whose input shapes and models to use (no data needed)"),
    directions: str = typer.Option("all", "--directions", help="'all' or e.g. a2v,v2a"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="default: the dataset's (64 on CREMA-D) on CUDA, 8 on CPU"),
    steps: Optional[int] = typer.Option(None, "--steps", help="timed steps per loop (default 30 on CUDA, 3 on CPU)"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="untimed steps first (default 10 on CUDA, 1 on CPU)"),
    modes: str = typer.Option("on,off", "--modes", help="on (the runner's speed features) and/or off (reference set-up)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="DataLoader workers of the 'off' set-up (default min(8, cores-1))"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs per run for the grid estimate (default: the dataset's)"),
    seeds: int = typer.Option(1, "--seeds", help="seeds per cell for the grid estimate"),
    peak_tflops: Optional[float] = typer.Option(None, "--peak-tflops", help="device peak for MFU (default: from the GPU's name; none on CPU)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="dataset or train overrides, e.g. train.compile=true"),
    device: str = typer.Option("auto", "--device"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="write every figure here (default results/speed/<time>.json)"),
) -> None:
    """Time the training step (data / teacher / student / optimizer), memory, TFLOP/s and MFU, with
    the speed features on and with everything off, on a dataset's real input shapes."""
    from dataclasses import replace as dc_replace

    from .executors import split_list
    from .registry import METHODS
    from .runner import build_adapter, build_train_config
    from .speedbench import benchmark, grid_estimate
    from .utils import atomic_write_json, resolve_device

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    overrides = parse_overrides(set_)
    adapter = build_adapter(dataset, overrides)
    train = build_train_config(adapter, overrides)
    train = dc_replace(train, batch_size=batch_size or (train.batch_size if cuda else 8))
    mnames = METHODS.names() if methods.strip().lower() == "all" else [m.lower() for m in split_list(methods)]
    for m in mnames:
        METHODS.entry(m)
    dirs = adapter.directions() if directions.strip().lower() == "all" else [adapter.parse_direction(x) for x in split_list(directions)]
    mode_list = tuple(m for m in split_list(modes))
    if not mode_list or any(m not in ("on", "off") for m in mode_list):
        _fail(f"--modes {modes!r}: expected on, off or on,off")
    steps = steps or (30 if cuda else 3)
    warmup = warmup if warmup is not None else (10 if cuda else 1)
    results = []
    for t_mod, s_mod in dirs:
        for m in mnames:
            mcls = METHODS.get(m)
            if adapter.task != "classification" and not mcls.dense_ok:
                continue
            console.print(f"[dim]timing {m} {adapter.direction_name(t_mod, s_mod)} on {adapter.name} shapes ...")
            results.append(benchmark(adapter, m, t_mod, s_mod, train, dev, steps=steps, warmup=warmup, modes=mode_list,
                                     workers=workers, peak_tflops=peak_tflops))
    tab = Table(title=f"bench speed: {adapter.name} shapes, batch {train.batch_size}, {results[0]['device'] if results else dev}")
    for col in ("method", "dir", "mode", "samples/s", "step ms", "data%", "teacher%", "student%", "optim%",
                "TFLOP/s", "MFU", "peak GiB", "speed-up"):
        tab.add_column(col, justify="right" if col not in ("method", "dir", "mode") else "left")
    for r in results:
        for name, x in r["modes"].items():
            pct = x["breakdown_pct"]
            tab.add_row(r["method"], r["direction"], name, f"{x['samples_per_s']:.1f}", f"{x['step_ms']:.1f}",
                        *(f"{pct.get(k, 0):.1f}" for k in ("data", "teacher_forward", "student_forward_backward", "optimizer")),
                        f"{x['tflops']:.2f}", f"{100 * x['mfu']:.1f}%" if x["mfu"] is not None else "n/a",
                        f"{x['peak_memory_gib']:.2f}", f"{r['speedup']:.2f}x" if name == "on" and "speedup" in r else "")
    Console(width=max(console.width, 150)).print(tab)
    n_epochs = epochs or train.epochs
    estimate = grid_estimate(results, adapter.name, mode_list, n_epochs, train.teacher_epochs, seeds, train.val_fraction,
                             train.batch_size)
    unit = "GPU" if cuda else "CPU"
    for name, e in estimate.items():
        teach = (f" + teachers {e['teacher_hours']:.2f}" if e["teacher_hours"] is not None
                 else " (teachers not included: add 'none' to --methods)")
        console.print(f"estimated {unit}-hours ({name}), {e['runs']} runs x {e['epochs']} epochs at the official split "
                      f"sizes, one run after another: students [bold]{e['student_runs_hours']:.2f}[/bold]{teach}; "
                      f"{e['train_pflop']:.1f} PFLOP of training steps")
    out = {"results": results, "grid_estimate": estimate, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = json_out or Path("results") / "speed" / f"{time.strftime('%Y%m%d-%H%M%S')}-{adapter.name}.json"
    atomic_write_json(path, out)
    console.print(f"wrote {path}")


def main() -> None:
    try:
        app()
    except BenchError as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

