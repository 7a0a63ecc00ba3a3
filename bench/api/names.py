"""The one gate for strings that become file or folder names.

Dataset names (a bring-your-own ``meta.json``), modality names and codes, method names from
plug-ins and the run ids of collected records all end up as path components under the results
folder (``records/<run_id>.json``, ``teachers/<dataset>/<modality>/...``). Every such string goes
through :func:`check_component`, so none of them can climb out of the results folder (``..``, an
absolute path), hide in a sub-folder that the readers never look at (``a/b``), become a dot file
that the readers skip, or look like a command-line option.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.api.errors import BenchError

COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


MAX_LEN = 160


RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 160 characters"


PART_SEPARATOR = "+"
"""Between the parts of a method composition (``dkd+rkd``, :mod:`bench.api.compose`)."""


FILE_PART_SEPARATOR = "."
""":data:`PART_SEPARATOR` as run ids and file names write it: a method name never contains ``.``
(the registry refuses it), so the encoding is reversible."""


def encode_method(name: str) -> str:
    """A method name as run ids and file names hold it (``dkd+rkd`` -> ``dkd.rkd``; a single
    method's name unchanged)."""
    return name.replace(PART_SEPARATOR, FILE_PART_SEPARATOR)


def decode_method(text: str) -> str:
    """The inverse of :func:`encode_method`."""
    return text.replace(FILE_PART_SEPARATOR, PART_SEPARATOR)


class UnsafeNameError(BenchError):
    """A user-given name that cannot be used as a path component."""


def check_component(value: object, where: str) -> str:
    """Return ``value`` when it is a safe path component, else raise naming ``where`` (the file
    and field, or the option, it came from) and the rule."""
    if not isinstance(value, str):
        raise UnsafeNameError(f"{where}: expected a name (a string), got {type(value).__name__} {value!r}")
    if not value or len(value) > MAX_LEN or COMPONENT.fullmatch(value) is None or value in (".", ".."):
        raise UnsafeNameError(f"{where}: {value!r} cannot be used as a name; allowed: {RULE}")
    return value


def join_under(root: str | Path, *parts: str, where: str = "name") -> Path:
    """``root / part1 / part2 ...`` after checking every part with :func:`check_component`."""
    out = Path(root)
    for part in parts:
        out = out / check_component(part, where)
    return out


def resolve_path(path: str | Path, where: str) -> Path:
    """``path`` made absolute with its symlinks resolved; a symlink loop (or a path the system cannot
    resolve) raises a BenchError naming ``where`` (the option or field it came from) instead of a
    RuntimeError from pathlib."""
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:
        raise BenchError(f"{where}: cannot resolve the path {path} ({exc})") from None
