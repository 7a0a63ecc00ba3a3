"""``bench docs``: the generated pages of the documentation site, and the check that every ``bench``
command the documentation shows still exists.

* :func:`cli_reference` walks the click command tree of the ``bench`` app and writes every
  command's usage, arguments, options and help (the CLI reference page).
* :func:`generate` writes (or, with ``check=True``, only compares) every generated file: the CLI
  reference, the method and dataset catalogues (:mod:`bench.report.docs`), and the generated blocks
  of ``README.md``, ``docs/index.md`` and ``mkdocs.yml``.
* :func:`check_commands` parses each ``bench ...`` line of the Markdown files against the real CLI
  without running it: in ``bash`` blocks every line must parse (command path, options and values,
  click's own parser), in ``text`` blocks (synopses such as ``[--epochs N]``) every ``--option``
  named must exist for its command.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
import typer.main

from bench.api.errors import BenchError
from bench.cli.app import app, console, err_console


def root_command() -> Any:
    """The click group behind the typer app (importing this module imported :mod:`bench.cli`, so
    every command is registered). Typer >= 0.26 builds it from its own vendored copy of click, so
    the code below uses only the click API both share (duck-typed, no ``isinstance`` on click classes)."""
    return typer.main.get_command(app)


def _is_group(cmd: Any) -> bool:
    return callable(getattr(cmd, "list_commands", None))


def _usage_error() -> type[Exception]:
    """The ``UsageError`` of the click that the typer app is built on."""
    try:
        from typer._click.exceptions import UsageError  # typer >= 0.26 (vendored click)
    except ImportError:  # pragma: no cover - older typer on the click package
        from click.exceptions import UsageError  # type: ignore[no-redef]
    return UsageError


WORKFLOW_ORDER = ["run", "results", "table", "leaderboard", "curves", "status", "collect", "prepare", "list",
                  "tune", "reproduce", "analyze", "speed", "docs"]
"""The order of the CLI reference: what a user runs first comes first (other commands follow, by name)."""


def _walk(group: Any, ctx: Any) -> list[tuple[Any, Any]]:
    out = []
    names = group.list_commands(ctx)
    for name in sorted(names, key=lambda n: (WORKFLOW_ORDER.index(n) if n in WORKFLOW_ORDER else len(WORKFLOW_ORDER), n)):
        cmd = group.get_command(ctx, name)
        if cmd is None or getattr(cmd, "hidden", False):
            continue
        sub = typer.Context(cmd, info_name=name, parent=ctx)
        out.append((cmd, sub))
        if _is_group(cmd):
            out.extend(_walk(cmd, sub))
    return out


def _cell(s: object) -> str:
    from bench.report.docs import inline_markdown

    return inline_markdown(" ".join(str(s).split()), cell=True)


def _anchor(path: str) -> str:
    return path.replace(" ", "-")


def cli_reference() -> str:
    """The CLI reference page: every command, its usage line, and each argument and option as
    ``--help`` shows it (names, value type, help, default)."""
    from bench.report.docs import GENERATED_NOTE, code_span, docstring_markdown

    root = root_command()
    rctx = typer.Context(root, info_name="bench")
    cmds = _walk(root, rctx)
    lines = ["# Command-line reference", "", GENERATED_NOTE.format(what="the `bench` typer app"), "",
             docstring_markdown(root.help or ""),
             "Every command accepts `--help`. A user error (an unknown name, a value out of range, a file that "
             "cannot be read) is one line on stderr and exit status 2.", "",
             "| command | what it does |", "|---|---|"]
    for cmd, ctx in cmds:
        first = (cmd.help or "").split("\n\n")[0]
        lines.append(f"| [`{ctx.command_path}`](#{_anchor(ctx.command_path)}) | {_cell(first)} |")
    lines.append("")
    for cmd, ctx in cmds:
        path = ctx.command_path
        lines += [f"## {path} {{ #{_anchor(path)} }}", "", docstring_markdown(cmd.help or ""),
                  "```text", cmd.get_usage(ctx).strip(), "```", ""]
        for kind in ("argument", "option"):
            recs = [p.get_help_record(ctx) for p in cmd.params if p.param_type_name == kind]
            recs = [r for r in recs if r]
            if recs:
                lines += [f"| {kind} | meaning |", "|---|---|"]
                lines += [f"| {code_span(names)} | {_cell(help_)} |" for names, help_ in recs]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# -- checking the commands the documentation shows ------------------------------------------------

@dataclass(frozen=True)
class CommandProblem:
    file: str
    line: int
    command: str
    problem: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.command}\n    {self.problem}"


_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<lang>[\w+-]*)")
_SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", ";;"}
_OPTION = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def fenced_lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, block language, logical line) for every line inside a fenced code block, with
    backslash-continued lines joined and comment-only lines dropped."""
    out: list[tuple[int, str, str]] = []
    lang, fence, pending, start = None, "", "", 0
    for no, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if lang is None:
            if m:
                lang, fence = m.group("lang").lower(), m.group("fence")
            continue
        if m and m.group("fence").startswith(fence) and not m.group("lang"):
            lang = None
            continue
        body = line.strip()
        if not pending:
            start = no
        if body.endswith("\\"):
            pending += body[:-1] + " "
            continue
        logical, pending = pending + body, ""
        if logical and not logical.startswith("#"):
            out.append((start, lang, logical))
    return out


def _tokens(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return list(lex)
    except ValueError:  # an unbalanced quote: fall back to whitespace
        return line.split()


_REDIRECT = re.compile(r"(?<!\S)\d*(?:>>?|<)&?\s*\S+")


def _invocations(line: str) -> list[list[str]]:
    """The argument lists of every ``bench`` (or ``path/to/bench``) call in a shell line; redirections
    (``> log``, ``2>&1``) are dropped, ``&&``, ``||``, ``;`` and ``|`` separate calls."""
    segments: list[list[str]] = [[]]
    for t in _tokens(_REDIRECT.sub(" ", line)):
        if t in _SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(t)
    calls = []
    for seg in segments:
        for i, t in enumerate(seg):
            if t == "bench" or t.endswith("/bench"):
                calls.append(seg[i + 1:])
                break
    return calls


def _resolve(args: list[str]) -> tuple[Any, Any, list[str]] | str:
    """Walk the command path at the start of ``args``: (command, its context, remaining args), or a
    problem when a sub-command does not exist."""
    cmd = root_command()
    ctx = typer.Context(cmd, info_name="bench", resilient_parsing=True)
    rest = list(args)
    while _is_group(cmd) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(ctx, rest[0])
        if sub is None:
            return f"no command {ctx.command_path} {rest[0]!r} (commands: {', '.join(cmd.list_commands(ctx))})"
        ctx = typer.Context(sub, info_name=rest[0], parent=ctx, resilient_parsing=True)
        cmd, rest = sub, rest[1:]
    return cmd, ctx, rest


def check_line(args: list[str], lang: str) -> str | None:
    """Why one ``bench`` call does not fit the CLI, or None. ``bash``: click parses it as the shell
    would hand it over (unknown commands and options, missing or invalid values, extra arguments);
    ``text``: the command path exists and every ``--option`` named exists for it."""
    found = _resolve(args)
    if isinstance(found, str):
        return found
    cmd, ctx, rest = found
    if lang == "text":
        known = {o for p in cmd.params if p.param_type_name == "option" for o in p.opts + p.secondary_opts} | {"--help"}
        missing = sorted({o for a in rest for o in _OPTION.findall(a)} - known)
        return f"{ctx.command_path} has no option {', '.join(missing)}" if missing else None
    # A strict parse, not a resilient one: click's resilient mode swallows every usage error, an
    # unknown option included. Parsing converts the values but runs no command (the CLI has no
    # parameter callbacks); --help stops the parse with Exit, which is fine.
    if "--help" in rest:  # valid wherever the command exists (parsing it would print the help)
        return None
    try:
        cmd.make_context(ctx.info_name, rest, parent=ctx.parent)
    except _usage_error() as exc:
        return f"{ctx.command_path}: {exc.format_message()}"  # type: ignore[attr-defined]
    except typer.Exit:
        pass
    return None


def check_markdown(text: str, where: str) -> list[CommandProblem]:
    """Every ``bench`` line of the ``bash``/``sh``/``shell``/``console`` and ``text`` blocks of one file."""
    problems = []
    for no, lang, line in fenced_lines(text):
        if lang in ("bash", "sh", "shell", "console"):
            kind = "bash"
            body = line[2:] if lang == "console" and line.startswith("$ ") else line
        elif lang in ("text", ""):
            kind, body = "text", line
            if not re.match(r"(\S*/)?bench(\s|$)", body):
                continue
        else:
            continue
        for args in _invocations(body) if kind == "bash" else [body.split()[1:]]:
            why = check_line(args, kind)
            if why:
                problems.append(CommandProblem(where, no, line, why))
    return problems


def documentation_files(root: Path) -> list[Path]:
    """README.md, every page under docs/ and the files they include with ``--8<--``."""
    files = [root / "README.md"] + sorted((root / "docs").rglob("*.md"))
    seen = set(files)
    for f in list(files):
        for inc in re.findall(r'^\s*--8<--\s+"([^":]+)(?::[^"]*)?"', f.read_text() if f.exists() else "", re.M):
            p = root / inc
            if p.exists() and p not in seen:
                seen.add(p)
                files.append(p)
    return [f for f in files if f.exists()]


def check_commands(root: Path) -> list[CommandProblem]:
    out = []
    for f in documentation_files(root):
        out.extend(check_markdown(f.read_text(), str(f.relative_to(root))))
    return out


# -- generating the pages --------------------------------------------------------------------------

def expected_files(root: Path) -> dict[Path, str | None]:
    """Every generated file and its content (None: a stale generated page that should be removed)."""
    from bench.report import docs as d

    docs = root / "docs"
    methods = d.builtin_methods()
    pages: dict[Path, str | None] = {
        docs / "reference" / "cli.md": cli_reference(),
        docs / d.METHOD_DIR / "index.md": d.method_index(methods),
        docs / "reference" / "datasets.md": d.dataset_page(d.builtin_datasets()),
    }
    for m in methods:
        pages[docs / d.METHOD_DIR / f"{m.name}.md"] = d.method_page(m)
    for old in (docs / d.METHOD_DIR).glob("*.md"):
        if old not in pages and "generated by `bench docs generate`" in old.read_text():
            pages[old] = None
    blocks = {"results-table": d.results_block(docs / "results"), "results-reading": d.reading_block(docs / "results"),
              "method-nav": "".join(f"          - {d.display_name(m.name)}: {d.METHOD_DIR}/{m.name}.md\n"
                                    for m in methods),
              "results-nav": d.results_nav(docs / "results")}
    for f in [root / "README.md", root / "mkdocs.yml"] + sorted(docs.rglob("*.md")):
        if f.exists() and f not in pages and "<!-- generated: " in f.read_text():
            pages[f] = d.fill_blocks(f.read_text(), blocks, str(f.relative_to(root)))
    return pages


def generate(root: Path, check: bool = False) -> list[str]:
    """Write every generated file under ``root`` (``check``: write nothing); returns the paths,
    relative to ``root``, whose content differs (or differed) from what the code generates."""
    from bench.records.files import atomic_write_bytes

    changed = []
    for path, text in expected_files(root).items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        changed.append(str(path.relative_to(root)))
        if check:
            continue
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, text.encode())
    return changed


@app.command("docs")
def docs_command(
    action: str = typer.Argument("generate", help="generate (write the generated pages) | check (compare, and check every documented bench command)"),
    root: Path = typer.Option(Path("."), "--root", help="the repository checkout (holds README.md, mkdocs.yml and docs/)"),
) -> None:
    """Write the documentation's generated pages (CLI reference, method and dataset catalogues,
    results blocks), or check that they are current and that every documented command parses."""
    if not (root / "mkdocs.yml").is_file():
        raise BenchError(f"--root {root}: no mkdocs.yml there (expected the repository checkout)")
    if action == "generate":
        changed = generate(root)
        console.print("\n".join(f"wrote {c}" for c in changed) or "generated pages are current")
    elif action == "check":
        stale = generate(root, check=True)
        problems = check_commands(root)
        for s in stale:
            err_console.print(f"stale: {s} (run bench docs generate)", markup=False)
        for p in problems:
            err_console.print(str(p), markup=False, soft_wrap=True)
        if stale or problems:
            raise typer.Exit(1)
        console.print("generated pages are current; every documented bench command parses")
    else:
        raise BenchError(f"bench docs {action!r}: expected 'generate' or 'check'")
