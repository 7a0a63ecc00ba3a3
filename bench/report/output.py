"""Option checks and output writes shared by ``bench table`` and ``bench leaderboard``.

Every problem becomes a :class:`BenchError` that names the option and what it expects, so the CLI
prints one line (exit 2) instead of a traceback from deep inside a format call or a file write.
"""

from __future__ import annotations

from pathlib import Path

from bench.api.errors import BenchError

MAX_DECIMALS = 10


def check_decimals(n: int, option: str = "--decimals") -> int:
    if not 0 <= n <= MAX_DECIMALS:
        raise BenchError(f"{option} {n}: expected a whole number of digits from 0 to {MAX_DECIMALS}")
    return n


def name_list(text: str | None, option: str, example: str) -> list[str] | None:
    """Comma-separated names; None when the option is absent. An option given but empty (``''``,
    ``','``) is an error, not a silent "everything"."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise BenchError(f"{option} {text!r}: expected comma-separated names (e.g. {example}); "
                         f"leave the option out to include all")
    return names


def check_known(names: list[str] | None, present: list[str], option: str, what: str) -> None:
    """Names that match no record are an error naming the ones there are (a typo must not print an
    empty table or silently drop a column)."""
    unknown = [n for n in names or [] if n not in present]
    if unknown:
        raise BenchError(f"{option}: no records of {what} {', '.join(map(repr, unknown))}; "
                         f"present: {', '.join(present) or 'none'}")


def check_out_file(out: Path | None, option: str = "--out") -> None:
    """Before any work: a file path is needed, not an existing folder."""
    if out is not None and out.is_dir():
        raise BenchError(f"{option} {out}: is a folder; expected a file path (e.g. {out / 'table.tex'})")


def check_out_folder(out: Path, option: str = "--out") -> None:
    if out.exists() and not out.is_dir():
        raise BenchError(f"{option} {out}: is a file; --format html writes a folder (index.html, "
                         f"cd_diagram.png, leaderboard.json)")


def write_text(out: Path, text: str, option: str = "--out") -> None:
    """Write atomically; a folder that cannot be written is reported with the OS's reason."""
    from bench.records.files import atomic_write_bytes

    check_out_file(out, option)
    try:
        atomic_write_bytes(out, text.encode("utf-8"))
    except OSError as exc:
        raise BenchError(f"{option} {out}: cannot write ({exc.strerror or exc})") from None


def unwritable(option: str, path: Path, exc: OSError) -> BenchError:
    return BenchError(f"{option} {path}: cannot write ({exc.strerror or exc})")


_FORMULA_START = ("=", "+", "-", "@")


_INVISIBLE = ("Cc", "Cf", "Zl", "Zp")
"""Unicode categories no output shows as written: controls (``\\r`` ends a CSV row, ESC starts a
terminal sequence), format characters (the bidi overrides and isolates such as U+202E reorder the
text around them; zero-width characters hide it) and the line/paragraph separators. pdflatex stops
at any of them."""


def plain_text(value: object) -> str:
    """A name from a record as one line of visible text: every control, format (bidi) and separator
    character becomes a space. The one place that decides it: the LaTeX, Markdown, CSV and terminal
    writers all start here."""
    import unicodedata

    return "".join(" " if unicodedata.category(ch) in _INVISIBLE else ch for ch in str(value))


def csv_text(value: object) -> object:
    """A name for a CSV cell: one line of visible text (:func:`plain_text`; a lone ``\\r`` would split
    the row, and the text after it start a new one), and a leading ``'`` where spreadsheets would run
    the cell as a formula (it starts with ``= + - @``, after any spaces). Numbers pass as they are."""
    if not isinstance(value, str):
        return value
    text = plain_text(value)
    return "'" + text if text.lstrip().startswith(_FORMULA_START) else text
