"""Teacher sets and direction kinds: which teacher a direction names, and how its input is batched.

A direction's teacher is one modality (``a2v``), the student's own modality (``v2v``, a
same-modality teacher) or a **teacher set** of several modalities (``av2v``: a multimodal teacher
over audio and visual distilled into a visual student; see :mod:`bench.models.fusion`).

Syntax. A teacher set is written with its members' codes or names joined by ``+`` (``a+v2v``,
``audio+visual->visual``) or, where that reads back unambiguously, with the codes run together
(``av2v``, ``foupix2mor``). Its canonical name, used in run ids, records and tables, is the codes
run together in the dataset's modality order, or joined by ``.`` when running them together would
not read back as the same set (codes ``a``, ``b`` and ``ab``): either way a path component
(``[A-Za-z0-9._-]``). Inside configurations and records the teacher modality of a set is the
members' full names joined by ``+`` in the dataset's order (``audio+visual``), so a set has one
spelling and a one-modality teacher keeps the name it always had.

Batches. A set's input is the dict ``{member: tensor}`` of its members' prepared inputs;
:func:`batch_inputs` asks the adapter for the member modalities (each prepared once, however many
of the requested names use it) and groups them, so every adapter, including those that override
``batch`` (NYU-Depth's joint crop) and bring-your-own folders, serves teacher sets unchanged.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.api.errors import BenchError

SET_SEP = "+"
"""Joins the member names of a teacher set in configurations and records (``audio+visual``)."""

KINDS = ("cross-modal", "same-modality", "teacher-set")
"""The kinds of direction: tables and the leaderboard keep them apart."""

GROUPS = {"all": "every cross-modal pair of modalities (the default job)",
          "same": "every same-modality direction (v2v: the student's modality's own teacher)",
          "sets": "the teacher set of all modalities into each student modality (av2v)"}
"""Named groups of ``--directions`` (combinable: ``all,same,sets``)."""


def is_set(teacher: str | None) -> bool:
    return bool(teacher) and SET_SEP in teacher  # type: ignore[operator]


def members(teacher: str) -> list[str]:
    """The modalities a teacher reads: ``audio+visual`` -> ``[audio, visual]``; ``audio`` -> ``[audio]``."""
    return teacher.split(SET_SEP)


def expand(modalities: list[str]) -> list[str]:
    """The distinct member modalities of ``modalities`` in order of first use (what to batch)."""
    out: list[str] = []
    for m in modalities:
        for k in members(m):
            if k not in out:
                out.append(k)
    return out


def direction_kind(teacher: str, student: str) -> str:
    """``teacher-set``, ``same-modality`` or ``cross-modal`` (from record fields, so every record has one)."""
    if is_set(teacher):
        return "teacher-set"
    return "same-modality" if teacher == student else "cross-modal"


def record_kind(rec: dict[str, Any]) -> str:
    """:func:`direction_kind` of a record (records from before teacher sets are all cross-modal)."""
    t, s = rec.get("teacher_modality"), rec.get("student_modality")
    if not isinstance(t, str) or not isinstance(s, str):
        return "cross-modal"
    return direction_kind(t, s)


def component(teacher: str) -> str:
    """A path component for a teacher's folder under ``results/teachers/<dataset>/``."""
    return ".".join(members(teacher))


def _codes(adapter: Any) -> dict[str, str]:
    return {m.code: m.name for m in adapter.modalities}


def decompositions(text: str, adapter: Any, limit: int = 2) -> list[list[str]]:
    """Ways of reading ``text`` as modality codes run together (at most ``limit``)."""
    codes = _codes(adapter)
    found: list[list[str]] = []

    def walk(rest: str, acc: list[str]) -> None:
        if len(found) >= limit:
            return
        if not rest:
            found.append(list(acc))
            return
        for c in sorted(codes, key=len, reverse=True):
            if rest.startswith(c):
                walk(rest[len(c):], acc + [codes[c]])

    walk(text, [])
    return found


def canonical(adapter: Any, names: list[str]) -> str:
    """The set's teacher name: distinct members in the dataset's modality order joined by ``+``."""
    order = [m.name for m in adapter.modalities]
    uniq = sorted(set(names), key=order.index)
    return SET_SEP.join(uniq)


def parse_teacher(adapter: Any, text: str) -> str:
    """A teacher as written in a direction -> its name (a modality or a ``+``-joined set)."""
    t = text.strip()
    if SET_SEP in t or ("." in t and all(_is_modality(adapter, p) for p in t.split("."))):
        parts = [adapter.modality(p.strip()).name for p in t.replace(".", SET_SEP).split(SET_SEP) if p.strip()]
        return canonical(adapter, parts)
    if _is_modality(adapter, t):
        return adapter.modality(t).name
    reads = decompositions(t, adapter)
    if len(reads) == 1 and len(set(reads[0])) > 1:
        return canonical(adapter, reads[0])
    if len(reads) > 1:
        raise BenchError(f"teacher {text!r} of dataset {adapter.name!r} reads as more than one set of modality codes; "
                         f"join the members with '+', e.g. {'+'.join(m.code for m in adapter.modalities[:2])}")
    return adapter.modality(t).name  # raises, naming the valid modalities


def _is_modality(adapter: Any, key: str) -> bool:
    return any(key in (m.name, m.code) for m in adapter.modalities)


def teacher_code(adapter: Any, teacher: str) -> str:
    """The teacher part of a direction name: a code, or the set's codes run together (``.``-joined
    where running them together would read back otherwise)."""
    if not is_set(teacher):
        return adapter.modality(teacher).code
    codes = [adapter.modality(m).code for m in members(teacher)]
    joined = "".join(codes)
    reads = decompositions(joined, adapter)
    if len(reads) == 1 and canonical(adapter, reads[0]) == teacher and not _is_modality(adapter, joined) and "2" not in joined:
        return joined
    return ".".join(codes)


def check_set(adapter: Any, teacher: str, student: str) -> None:
    """A set needs two distinct members of the dataset; the student is one modality."""
    if is_set(student):
        raise BenchError(f"direction into {student!r}: the student is one modality; only the teacher may be a set")
    if is_set(teacher) and len(members(teacher)) < 2:
        raise BenchError(f"teacher set {teacher!r}: a set needs at least two distinct modalities")


def expand_directions(adapter: Any, text: str) -> list[tuple[str, str]]:
    """``--directions``: ``all`` (the cross-modal pairs, as always), the named groups ``same`` and
    ``sets``, and direction names, comma-separated; duplicates dropped, order kept."""
    out: list[tuple[str, str]] = []
    names = [m.name for m in adapter.modalities]
    for item in [p.strip() for p in text.split(",") if p.strip()]:
        low = item.lower()
        if low == "all":
            got = adapter.directions()
        elif low == "same":
            got = [(m, m) for m in names]
        elif low == "sets":
            got = [(SET_SEP.join(names), m) for m in names] if len(names) > 1 else []
        else:
            got = [adapter.parse_direction(item)]
        out.extend(d for d in got if d not in out)
    return out


def batch_inputs(adapter: Any, split: Any, idx: torch.Tensor, modalities: list[str], device: torch.device,
                 train: bool, generator: torch.Generator | None) -> tuple[dict[str, Any], torch.Tensor]:
    """:meth:`DatasetAdapter.batch` for names that may be teacher sets: each member modality is
    prepared once, then a set's entry is the dict of its members' inputs. Without sets (and
    without repeats) this is exactly ``adapter.batch``, so no existing run changes."""
    flat = expand(modalities)
    xs, y = adapter.batch(split, idx, flat, device, train, generator)
    for m in modalities:
        if is_set(m):
            xs[m] = {k: xs[k] for k in members(m)}
    return xs, y
