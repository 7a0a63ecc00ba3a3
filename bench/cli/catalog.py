"""``bench list`` and ``bench prepare``: what is registered, and decoding a raw dataset into its cache."""

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


@app.command("list")
def list_(
    what: str = typer.Argument("methods", help="methods | datasets | backbones"),
    plugin: Optional[List[str]] = typer.Option(None, "--plugin", help="python file that registers extra methods, datasets or backbones"),
) -> None:
    """List registered methods (with parameters, defaults and valid ranges), datasets (with
    modalities) or backbones (with source, parameters and each dataset's default networks)."""
    from bench.report.console import backbone_catalog, dataset_catalog, method_catalog
    from bench.train.resolve import load_plugins

    load_plugins(list(plugin or []))
    if what in ("methods", "method"):
        console.print(method_catalog())
    elif what in ("datasets", "dataset"):
        console.print(dataset_catalog())
    elif what in ("backbones", "backbone"):
        print_all(backbone_catalog())
    else:
        raise BenchError(f"bench list {what!r}: expected 'methods', 'datasets' or 'backbones'")


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="dataset name (bench list datasets)"),
    root: Optional[Path] = typer.Option(None, "--root", help="raw dataset directory in its community layout"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="cache directory (default $CMKD_BENCH_CACHE/<name> or ~/.cache/cmkd-bench/<name>)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="DATASET.KEY=VALUE preprocessing parameters"),
    check: bool = typer.Option(False, "--check", help="verify an existing cache (shapes, dtypes, sha256) instead of preparing"),
    force: bool = typer.Option(False, "--force", help="rebuild a complete cache (built beside it and swapped in: runs reading it keep the version they opened)"),
) -> None:
    """Decode a raw dataset once into a compact memory-mapped cache (resumable; a complete cache is
    rebuilt only with --force)."""
    from bench.data.cache import check_cache
    from bench.data.prepared import PreparedDataset
    from bench.report.console import prepare_report
    from bench.train.resolve import build_adapter

    overrides = parse_overrides(set_ or [])
    scope = overrides.setdefault(dataset, {})
    if root is not None:
        scope["root"] = str(root)
    if cache is not None:
        scope["cache"] = str(cache)
    adapter = build_adapter(dataset, overrides)
    if not isinstance(adapter, PreparedDataset):
        raise BenchError(f"dataset {dataset!r} has nothing to prepare (it is generated or read directly)")
    if check:
        problems = check_cache(adapter.cache_path, adapter.name)
        if problems:
            for p in problems:
                err_console.print(f"[red]bad[/red] {escape(p)}")
            raise typer.Exit(1)
        m = adapter.manifest()
        console.print(f"[green]ok[/green] {escape(str(adapter.cache_path))}: "
                      + ", ".join(f"{s} {v['n']}" for s, v in m["splits"].items()) + f" (content {m['content_hash']})")
        return
    t0 = time.time()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as prog:
        tasks: dict[str, Any] = {}

        def report(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = prog.add_task(escape(f"{adapter.name}/{split}"), total=total)
            prog.update(tasks[split], completed=done)

        manifest = adapter.prepare(report, force=force)
    print_all(prepare_report(manifest, adapter.cache_path, time.time() - t0, adapter))
