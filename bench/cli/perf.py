"""``bench speed``: the training step timed on a dataset's shapes, with and without the speed features."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from bench.api.config import parse_overrides
from bench.cli.app import app, console, print_all


@app.command()
def speed(
    methods: str = typer.Option("fdcmkd", "--methods", "-m", help="comma-separated: 'all' (every KD method and w/o KD, not the controls), 'controls', method names, or compositions such as dkd+rkd (one student, every part's losses)"),
    dataset: str = typer.Option("crema", "--dataset", "-d", help="whose input shapes and models to use (no data needed)"),
    directions: str = typer.Option("all", "--directions", help="'all' or e.g. a2v,v2a"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="default: the dataset's (64 on CREMA-D) on CUDA, 8 on CPU"),
    steps: Optional[int] = typer.Option(None, "--steps", help="timed steps per loop (default 30 on CUDA, 3 on CPU)"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="untimed steps first (default 10 on CUDA, 1 on CPU)"),
    repeats: Optional[int] = typer.Option(None, "--repeats", help="timed blocks of --steps steps; samples/s is the median "
                                          "block's, the spread goes to the JSON (default 5 on CUDA, 3 on CPU)"),
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
    from bench.records.files import atomic_write_json
    from bench.report.console import grid_estimate_lines, speed_table
    from bench.train.benchmark import run_speed

    out = run_speed(methods, dataset, directions, batch_size=batch_size, steps=steps, warmup=warmup, modes=modes,
                    workers=workers, epochs=epochs, seeds=seeds, peak_tflops=peak_tflops,
                    overrides=parse_overrides(set_), device=device, repeats=repeats,
                    on_start=lambda msg: console.print(f"[dim]{escape(msg)}"))
    Console(width=max(console.width, 150)).print(speed_table(out["results"], out["title"]))
    print_all(grid_estimate_lines(out["grid_estimate"], out["unit"]))
    path = json_out or Path("results") / "speed" / f"{time.strftime('%Y%m%d-%H%M%S')}-{out['dataset']}.json"
    load = out["load_average"]
    if load["before"] and load["cores"] and max(load["before"][0], load["after"][0]) > load["cores"]:
        console.print(f"[yellow]note: the machine was busy (1-min load average {load['before'][0]:.1f} -> "
                      f"{load['after'][0]:.1f} on {load['cores']} cores): other processes' work lands in some timed "
                      f"blocks; see the spread (timing) in the JSON[/]")
    atomic_write_json(path, {k: out[k] for k in ("results", "grid_estimate", "created", "environment",
                                                 "process_warmup_s", "load_average")})
    console.print(f"wrote {escape(str(path))}")
