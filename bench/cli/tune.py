"""``bench tune``: the same validation-only search budget for every method (Optuna, seeded TPE,
median pruning), locally in K worker processes or as a SLURM array; resumable."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.live import Live
from rich.markup import escape

from bench.api.config import parse_overrides
from bench.api.errors import BenchError
from bench.cli.app import app, console, err_console


class _Live(Live):
    """Rich ends a live display with a newline on a terminal only: in a pipe or a log file the next
    message would continue on the table's last line."""

    _shown = False

    def start(self, refresh: bool = False) -> None:
        super().start(refresh)
        self._shown = True

    def stop(self) -> None:
        super().stop()
        if self._shown and not self.console.is_terminal:
            self.console.line()
        self._shown = False


@app.command()
def tune(
    methods: str = typer.Option("all", "--methods", "-m", help="'all' or comma-separated method names"),
    datasets: str = typer.Option("synthetic", "--datasets", "-d", help="comma-separated dataset names"),
    directions: str = typer.Option("all", "--directions", help="'all' or e.g. a2v,v2a"),
    trials: int = typer.Option(..., "--trials", "-n", help="trials per method (the budget every method gets)"),
    seed: int = typer.Option(1000, "--seed", help="seed of every trial (default 1000: the final runs' seeds 0,1,2 stay fresh)"),
    tune_lr: bool = typer.Option(False, "--tune-lr", help="also search train.lr (x/10 .. x*10 around the dataset's), for every method including w/o KD"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="student epochs (default: the dataset's)"),
    teacher_epochs: Optional[int] = typer.Option(None, "--teacher-epochs", help="teacher epochs (default: the dataset's)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="fixed hyper-parameters SCOPE.KEY=VALUE (a fixed key is not searched)"),
    pruner: str = typer.Option("median", "--pruner", help="median (stop a trial whose validation metric is below the median of earlier trials at that epoch) | none"),
    prune_startup: int = typer.Option(5, "--prune-startup", help="trials finished before pruning starts"),
    prune_warmup: Optional[int] = typer.Option(None, "--prune-warmup", help="epochs before a trial can be pruned (default: a third)"),
    storage: Optional[str] = typer.Option(None, "--storage", help="a database URL (sqlite:///tune.db, postgresql://...) instead of the journal files in RESULTS/tuning"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    results: Path = typer.Option(Path("results"), "--results", "-r", help="results folder (studies go to RESULTS/tuning)"),
    plugin: Optional[List[str]] = typer.Option(None, "--plugin", help="python file that registers extra methods or datasets"),
    runs_per_gpu: int = typer.Option(1, "--runs-per-gpu", "--jobs", "-j", min=1, help="K worker processes sharing the studies (per GPU, or K single-threaded CPU processes; per SLURM task)"),
    executor: str = typer.Option("local", "--executor", help="local | slurm (an array of --tasks workers)"),
    tasks: int = typer.Option(2, "--tasks", help="slurm: array tasks, each a worker (or -j K workers) on the same studies"),
    partition: Optional[str] = typer.Option(None, "--partition", help="SLURM partition"),
    gpus_per_task: Optional[int] = typer.Option(None, "--gpus-per-task"),
    cpus_per_task: Optional[int] = typer.Option(None, "--cpus-per-task"),
    mem: Optional[str] = typer.Option(None, "--mem", help="e.g. 32G"),
    time_min: Optional[int] = typer.Option(None, "--time", help="time limit per task in minutes (requeued on timeout; its trial is rerun)"),
    account: Optional[str] = typer.Option(None, "--account"),
    qos: Optional[str] = typer.Option(None, "--qos"),
    slurm_arg: Optional[List[str]] = typer.Option(None, "--slurm-arg", help="extra sbatch option KEY=VALUE (repeatable)"),
    slurm_config: Optional[Path] = typer.Option(None, "--slurm-config", help="TOML with a \\[slurm] table (default ./slurm.toml if present)"),
    wait: bool = typer.Option(False, "--wait", help="slurm: follow the studies until every task has finished"),
) -> None:
    """Tune every method with the same budget on the validation split (the test split is never read);
    then `bench run --tuned --seeds 0,1,2` runs each method's best configuration on test."""
    from bench.tune.grid import plan_studies

    overrides = parse_overrides(set_)
    if epochs is not None:
        overrides.setdefault("train", {})["epochs"] = str(epochs)
    if teacher_epochs is not None:
        overrides.setdefault("train", {})["teacher_epochs"] = str(teacher_epochs)
    if executor not in ("local", "slurm"):
        raise BenchError(f"--executor {executor!r}: valid executors: local, slurm")
    if storage is not None and "://" not in storage:
        raise BenchError(f"--storage {storage!r}: expected a database URL such as sqlite:///tune.db "
                         f"(without --storage, studies are journal files in {results}/tuning)")
    plan = plan_studies(methods, datasets, directions, n_trials=trials, seed=seed, tune_lr=tune_lr, overrides=overrides,
                        results=results, device=device, plugins=list(plugin or []), pruner=pruner,
                        prune_startup=prune_startup, prune_warmup=prune_warmup, storage=storage,
                        runs_per_gpu=runs_per_gpu)
    from bench.tune.study import repair_journals

    repair_journals(plan, lambda m: console.print(f"[yellow]note[/yellow] {escape(m)}", soft_wrap=True))
    if plan.skipped:
        console.print(f"nothing to tune for {escape(', '.join(plan.skipped))} (no search space; --tune-lr adds train.lr): "
                      f"their tuned run is the default one")
    if not plan.studies:
        raise BenchError("no study to run: the chosen methods declare no search space (try --tune-lr)")
    console.print(f"{len(plan.studies)} studies x {trials} trials (seed {seed}) -> {escape(str(results))}/tuning/")
    t0 = time.perf_counter()
    if executor == "slurm":
        if not _slurm(plan, results, tasks, runs_per_gpu, wait, dict(
                partition=partition, gpus_per_task=gpus_per_task, cpus_per_task=cpus_per_task, mem=mem, time=time_min,
                account=account, qos=qos), list(slurm_arg or []), slurm_config):
            return
    else:
        _local(plan, runs_per_gpu)
    _finish(plan, results, methods, datasets, directions, time.perf_counter() - t0)


def _local(plan, k: int) -> None:  # type: ignore[no-untyped-def]
    from bench.launch.local import StoppedEarly
    from bench.train.stop import stop_on_sigterm
    from bench.tune.progress import Snapshot, table
    from bench.tune.worker import Hooks, work, work_in_processes

    stop_on_sigterm()  # `kill` stops at an epoch boundary; the trial is failed and queued again
    snap = Snapshot(plan)
    last = [0.0]
    with _Live(table(snap.rows()), console=console, refresh_per_second=2) as live:
        def refresh(force: bool = False) -> None:
            if force or time.monotonic() - last[0] > 1.0:
                live.update(table(snap.rows()))
                last[0] = time.monotonic()

        try:
            if k > 1:
                work_in_processes(plan, k, poll=refresh)
            else:
                work(plan, Hooks(epoch=lambda *a: refresh(), trial=lambda *a: refresh(True),
                                 note=lambda m: live.console.print(f"[yellow]note[/yellow] {escape(m)}")))
        except KeyboardInterrupt:
            live.stop()
            err_console.print("[yellow]interrupted[/yellow]: finished trials are kept, the running one is queued "
                              "again; rerun the same command to resume.")
            raise typer.Exit(130)
        except StoppedEarly as exc:  # a dead worker process: one line, not a traceback
            live.stop()
            err_console.print(f"[red]stopped[/red]: {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1)
        refresh(True)


def _slurm(plan, results: Path, tasks: int, k: int, wait: bool, cli: dict, extra: list[str],  # type: ignore[no-untyped-def]
           config: Optional[Path]) -> bool:
    """Submit the array (unless every study is done); True when the studies are finished here."""
    from bench.launch import slurm
    from bench.tune.progress import Snapshot, table
    from bench.tune.worker import submit

    opts = slurm.SlurmOptions.from_sources(config, cli, extra)
    limit = slurm.array_size_limit(opts)
    if tasks > limit:
        raise BenchError(f"--tasks {tasks}: one job array holds at most {limit} tasks on this cluster (MaxArraySize)")
    if all(r["finished"] >= r["n_trials"] for r in Snapshot(plan).rows()):
        console.print("every study has its trials: nothing to submit")
        return True
    m = submit(plan, opts, tasks, k)
    console.print(f"submitted tuning array {m['array_job']} ({tasks} task(s), {len(plan.studies)} studies); manifest "
                  f"{escape(m['path'])}")
    if not wait:
        console.print("when the array is done, rerun the same command: with every study finished it submits nothing "
                      "and writes the plots")
        return False
    snap = Snapshot(plan)
    ids = [t["job_id"] for t in m["tasks"]]
    with _Live(table(snap.rows(), f"bench tune: SLURM array {m['array_job']}"), console=console,
              refresh_per_second=1) as live:
        while True:
            states = slurm.array_states(slurm.arrays_of(m), m["tasks"])
            live.update(table(snap.rows(), f"bench tune: SLURM array {m['array_job']}"))
            if all(states.get(j, "UNKNOWN") in slurm.TERMINAL for j in ids):
                break
            time.sleep(2.0)
    bad = {j: states.get(j, "UNKNOWN") for j in ids if states.get(j) != "COMPLETED"}
    if bad:
        err_console.print(f"[red]tasks not completed[/red]: {bad}; logs in {escape(m['logs'])}")
        raise typer.Exit(1)
    return True


def _finish(plan, results: Path, methods: str, datasets: str, directions: str, seconds: float) -> None:  # type: ignore[no-untyped-def]
    from bench.tune.progress import Snapshot, history_plots, overview_plots

    rows = Snapshot(plan).rows()
    short = [r["study"] for r in rows if r["finished"] < r["n_trials"]]
    paths = history_plots(plan)
    overview = overview_plots(plan)
    console.print(f"finished in {seconds:.0f}s; {len(paths) // 2} optimisation-history plot(s) in "
                  f"{escape(str(results))}/tuning/<study>/history.png|pdf, best-so-far per method in "
                  + ", ".join(escape(str(p)) for p in overview if p.suffix == ".png"))
    if short:
        raise BenchError(f"{len(short)} studies have fewer finished trials than their budget: {', '.join(short)}; "
                         f"rerun the same command to finish them")
    console.print(f"next: bench run --tuned --methods {escape(methods)} --datasets {escape(datasets)} "
                  f"--directions {escape(directions)} --seeds 0,1,2 -r {escape(str(results))} (same --epochs/--set)")
