"""The ``bench`` application object, its consoles and the error handling every command shares."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from bench.api.errors import BenchError

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


def print_all(items) -> None:  # type: ignore[no-untyped-def]
    for item in items:
        console.print(item)
