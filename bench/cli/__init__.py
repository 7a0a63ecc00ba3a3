"""The ``bench`` command line (typer + rich): options are parsed here and handed to the packages.

One module per group of commands: ``runs`` (run, status, collect), ``catalog`` (list, prepare), ``docs`` (docs),
``report`` (results, table, leaderboard, analyze, reproduce), ``perf`` (speed), ``tune`` (tune); ``app`` holds the
application and its error handling: a user error (:class:`BenchError`) is printed as one line with
exit status 2 by every command.
"""

from __future__ import annotations

import sys

from rich.markup import escape

from bench.api.errors import BenchError
from bench.cli import catalog, docs, perf, report, runs, tune  # noqa: F401  (the commands register on import)
from bench.cli.app import app, err_console

__all__ = ["app", "main"]


def main() -> None:
    try:
        app()
    except BenchError as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)
