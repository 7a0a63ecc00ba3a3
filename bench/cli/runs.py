"""``bench run``, ``bench status``, ``bench collect``: run a grid (locally, packed or on SLURM),
follow a SLURM submission, gather records."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.api.config import parse_overrides
from bench.api.errors import BenchError
from bench.cli.app import app, console, err_console, print_all


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

    def note(self, run_id: str, message: str) -> None:
        self.p.console.print(f"[yellow]note[/yellow] {escape(run_id)}: {escape(message)}")


@app.command()
def run(
    methods: str = typer.Option("all", "--methods", "-m", help="comma-separated: 'all' (every KD method and w/o KD, not the controls), 'controls', method names, or compositions such as dkd+rkd (one student, every part's losses)"),
    datasets: str = typer.Option("synthetic", "--datasets", "-d", help="comma-separated dataset names"),
    directions: str = typer.Option("all", "--directions", help="'all' or e.g. a2v,v2a (teacher code 2 student code)"),
    seeds: str = typer.Option("0", "--seeds", help="comma-separated seeds, e.g. 0,1,2"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="student epochs (default: the dataset's)"),
    teacher_epochs: Optional[int] = typer.Option(None, "--teacher-epochs", help="teacher epochs (default: the dataset's)"),
    teacher_checkpoint: Optional[Path] = typer.Option(None, "--teacher-checkpoint", help="use this trained teacher (results/teachers/*.pt or a state dict) instead of training one; = --set train.teacher_checkpoint=PATH"),
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
    runs_per_gpu: int = typer.Option(1, "--runs-per-gpu", "--jobs", "-j", min=1, help="K runs at a time: per GPU, or on the CPU K single-threaded processes (-j 2 on 2 cores is ~3x faster for small models); SLURM: K runs per array task"),
    log: Optional[str] = typer.Option(None, "--log", help="also log every run to trackers, written under RESULTS/tracking: any of tensorboard,mlflow,wandb (W&B offline)"),
    tuned: bool = typer.Option(False, "--tuned", help="each method with the parameters of its best `bench tune` trial (labelled tuned)"),
    tuned_trials: Optional[int] = typer.Option(None, "--tuned-trials", help="with --tuned: the study with this budget, where several tuned the same runs"),
    storage: Optional[str] = typer.Option(None, "--storage", help="with --tuned: the studies' database URL (default: their journal files)"),
) -> None:
    """Train teachers, distil students and write one record per run; prints the comparison."""
    from bench.launch.grid import plan_grid
    from bench.train.trackers import parse_trackers

    skipped: list[str] = []

    trackers = parse_trackers(log)  # not part of a run's identity: the same runs, logged to more places
    overrides = parse_overrides(set_)
    if epochs is not None:
        overrides.setdefault("train", {})["epochs"] = str(epochs)
    if teacher_epochs is not None:
        overrides.setdefault("train", {})["teacher_epochs"] = str(teacher_epochs)
    if teacher_checkpoint is not None:
        overrides.setdefault("train", {})["teacher_checkpoint"] = str(teacher_checkpoint)
    if executor not in ("local", "slurm"):
        raise BenchError(f"--executor {executor!r}: valid executors: local, slurm")
    specs, todo = plan_grid(methods, datasets, directions, seeds, overrides=overrides, sweeps=list(sweep or []),
                            results=results, device=device, save_model=save_model, plugins=list(plugin or []),
                            force=force, retry_failed=retry_failed,
                            tuned=dict(trials=tuned_trials, storage=storage) if tuned else None, skipped=skipped)
    for why in skipped:
        err_console.print(f"[yellow]{escape(why)}[/yellow]")
    console.print(f"{len(specs)} runs in the grid, {len(specs) - len(todo)} already done, {len(todo)} to run "
                  f"-> {escape(str(results))}/records/")
    if executor == "slurm":
        cli = dict(partition=partition, gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task, mem=mem, time=time_min,
                   array_parallelism=array_parallelism, account=account, qos=qos, log=trackers if log is not None else None)
        _run_slurm(todo, results, cli, list(slurm_arg or []), slurm_config, wait, runs_per_gpu)
        return
    outcome = _run_local(todo, force, fail_fast, runs_per_gpu, trackers)
    _print_comparison(results, specs, "tuned" if tuned else "default")
    if outcome.failed:
        for rec in outcome.failed:
            err_console.print(f"[red]failed[/red] {escape(rec['run_id'])}: {escape(str(rec['error']))}")
        raise typer.Exit(1)


def _run_local(todo: list, force: bool, fail_fast: bool, runs_per_gpu: int,  # type: ignore[no-untyped-def]
               trackers: list[str] | None = None):
    from bench.launch.local import LocalExecutor, StoppedEarly
    from bench.launch.packed import PackedExecutor
    from bench.train.stop import stop_on_sigterm
    from bench.train.trackers import with_trackers

    stop_on_sigterm()  # `kill` of a local grid stops like Ctrl-C: at an epoch boundary, resumable
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False) as progress:
        reporter = RichReporter(progress, len(todo))
        try:
            if runs_per_gpu > 1:  # the trackers log in the workers
                outcome = PackedExecutor(runs_per_gpu, reporter, fail_fast=fail_fast, trackers=trackers).run(todo, force=force)
            else:
                with with_trackers(reporter, trackers) as rep:  # runs cut short are closed as killed
                    outcome = LocalExecutor(rep, fail_fast=fail_fast).run(todo, force=force)
        except KeyboardInterrupt:
            progress.stop()
            err_console.print("[yellow]interrupted[/yellow]: finished runs are saved; rerun the same command to resume.")
            raise typer.Exit(130)
        except StoppedEarly as exc:  # --fail-fast, a dead worker process: one line, not a traceback
            progress.stop()
            err_console.print(f"[red]stopped[/red]: {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1)
    console.print(f"finished in {time.perf_counter() - t0:.0f}s: {len(outcome.done)} ran, {len(outcome.failed)} failed")
    return outcome


def _print_comparison(results: Path, specs: list, params: str = "default") -> None:
    """The grid's comparison table: mean ± std over its seeds, with the paired verdicts (not below the
    best, against w/o KD, at chance: :mod:`bench.report.table_stats`)."""
    from bench.records.store import load_results
    from bench.report.table_stats import mark_chance, mark_tied, mark_vs_baseline
    from bench.report.tables import build_comparison, to_rich
    from bench.report.tuning import select_params
    from bench.train.resolve import resolve

    names = {resolve(s).adapter.name for s in {s.dataset: s for s in specs}.values()}  # a folder's name, not its path
    df = load_results(results)
    df = df[df["dataset"].isin(names) & df["method"].isin({s.method for s in specs})
            & df["seed"].isin({s.seed for s in specs})]
    if not len(df):
        return
    df, _notes = select_params(df, params)
    from bench.data.tsets import KINDS
    from bench.report.kinds import select_frame

    df = select_frame(df, KINDS)  # what was run, every kind of direction in columns of its own
    comp = build_comparison(df)
    mark_chance(comp, df)
    mark_tied(comp)
    mark_vs_baseline(comp)
    console.print(to_rich(comp))


def _run_slurm(todo: list, results: Path, cli: dict[str, Any], extra: list[str], config: Optional[Path], wait: bool,
               runs_per_gpu: int = 1) -> None:
    from bench.launch import slurm

    if not todo:
        console.print("nothing to submit")
        return
    opts = slurm.SlurmOptions.from_sources(config, cli, extra)
    m = slurm.submit(todo, results, opts, runs_per_task=runs_per_gpu)
    if m["teacher_job"]:
        console.print(f"submitted teacher array {', '.join(m['teacher_jobs'])} ({len(m['teachers'])} teacher(s))")
    n_tasks = len({t["job_id"] for t in m["tasks"]})
    arrays = slurm.arrays_of(m)
    split = f" in {len(arrays)} arrays of at most {m['max_array_size']}" if len(arrays) > 1 else ""
    console.print(f"submitted run array{'s' if split else ''} {', '.join(arrays)} ({n_tasks} task(s){split}, "
                  f"{len(m['tasks'])} run(s)); "
                  f"manifest {escape(str(m['path']))}")
    if not wait:
        console.print(f"follow it with `bench status -r {escape(str(results))}`; collect with "
                      f"`bench collect -r {escape(str(results))}`")
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as prog:
        bar = prog.add_task(f"array {slurm.grid_label(m)}", total=n_tasks)

        def update(states: dict[str, str]) -> None:
            prog.update(bar, completed=sum(1 for s in states.values() if s in slurm.TERMINAL))

        states = slurm.wait(m, on_poll=update)
    bad = {j: s for j, s in states.items() if s != "COMPLETED"}
    console.print(f"array {slurm.grid_label(m)}: {len(states) - len(bad)} completed, {len(bad)} not: {bad or ''}")
    if bad:
        raise typer.Exit(1)


@app.command()
def status(
    results: Path = typer.Option(Path("results"), "--results", "-r"),
    all_: bool = typer.Option(False, "--all", help="list every task, not only unfinished ones"),
) -> None:
    """Progress of submitted SLURM arrays: pending / running / done / failed, with error tails."""
    from bench.launch.slurm import task_table
    from bench.report.console import slurm_status

    rows = task_table(results)
    if not rows:
        console.print(f"no SLURM submissions under {escape(str(results))}/slurm")
        return
    print_all(slurm_status(rows, all_))


@app.command()
def collect(
    from_: Optional[List[Path]] = typer.Option(None, "--from", help="results folder(s) or records.jsonl.gz file(s) to merge from (repeatable)"),
    results: Path = typer.Option(Path("results"), "--results", "-r", help="destination results folder"),
) -> None:
    """Merge records from other folders (--from; identical runs deduplicated, conflicts reported), or,
    without --from, gather the records of finished SLURM tasks (idempotent)."""
    from bench.records.store import collect as do_collect

    if not from_:
        from bench.launch.slurm import collect_finished

        rep = collect_finished(results)
        console.print(f"{len(rep['present'])} record(s) already present, {len(rep['recovered'])} recovered from "
                      f"finished tasks, {len(rep['unfinished'])} task(s) without a result yet")
        for c in rep.get("notes", []):
            err_console.print(f"[yellow]note[/yellow] {escape(c)}")
        return
    rep = do_collect([str(p) for p in from_], results)
    console.print(f"{len(rep['copied'])} copied, {len(rep['duplicate'])} duplicate(s) skipped, "
                  f"{len(rep['replaced_failed'])} failed record(s) replaced by ok ones, "
                  f"{len(rep['conflict'])} conflict(s), {len(rep['invalid'])} invalid file(s) -> "
                  f"{escape(str(results))}/records")
    for c in rep["conflict"]:
        err_console.print(f"[red]conflict[/red] {escape(c)}")
    for c in rep["invalid"]:
        err_console.print(f"[yellow]invalid[/yellow] {escape(c)}")
    for c in rep["notes"]:
        err_console.print(f"[yellow]note[/yellow] {escape(c)}")
    if rep["conflict"]:
        raise typer.Exit(1)
