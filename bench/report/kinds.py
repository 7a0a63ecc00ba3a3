"""Which kinds of direction a table or leaderboard shows (:data:`bench.data.tsets.KINDS`).

A same-modality direction (``v2v``) and a teacher set (``av2v``) distil into the same student as
the cross-modal ``a2v``, but they are different questions: by default tables and the leaderboard
show only cross-modal cells, so their ranks are the ones they always were. Asked for
(``--kinds cross-modal,same-modality`` or ``--kinds all``), the other kinds get columns of their
own, labelled with their direction (``visual (v2v)``), never pooled into a cross-modal cell;
only then do they enter the leaderboard's ranks.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.api.errors import BenchError
from bench.data.tsets import KINDS, direction_kind, record_kind

DEFAULT_KINDS = ("cross-modal",)


def check_kinds(text: str | None) -> tuple[str, ...]:
    """``--kinds``: comma-separated kinds, or ``all``; None: cross-modal only."""
    if text is None or not text.strip():
        return DEFAULT_KINDS
    items = [p.strip().lower() for p in text.split(",") if p.strip()]
    if items == ["all"]:
        return KINDS
    bad = [k for k in items if k not in KINDS]
    if bad:
        raise BenchError(f"--kinds {text!r}: {bad[0]!r} is not a kind of direction; expected all or a comma-separated "
                         f"list of {', '.join(KINDS)}")
    return tuple(k for k in KINDS if k in items)


def column_label(student: str, direction: str, kind: str) -> str:
    """A cell's student-modality label: the modality for cross-modal cells, else with its direction."""
    return student if kind == "cross-modal" else f"{student} ({direction})"


def select_records(records: list[dict[str, Any]], kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[dict[str, Any]]:
    """The records of ``kinds`` (copies marked ``direction_kind``); those of another kind than
    cross-modal relabelled so that they form columns of their own."""
    out = []
    for r in records:
        if "direction_kind" in r:  # selected (and relabelled) once already: an earlier selection decided
            out.append(r)
            continue
        kind = record_kind(r)
        if kind in kinds:
            label = column_label(str(r["student_modality"]), str(r.get("direction")), kind)
            out.append(dict(r, student_modality=label, direction_kind=kind))
    return out


def select_frame(df: pd.DataFrame, kinds: tuple[str, ...] = DEFAULT_KINDS) -> pd.DataFrame:
    """:func:`select_records` for a results frame (columns teacher_modality, student_modality, direction)."""
    if df.empty or "teacher_modality" not in df or "student_modality" not in df:
        return df
    if "direction_kind" in df:  # selected (and relabelled) once already: an earlier selection decided
        return df
    kind = [direction_kind(str(t), str(s)) for t, s in zip(df["teacher_modality"], df["student_modality"])]
    df = df.assign(direction_kind=kind)
    df = df[df["direction_kind"].isin(kinds)].copy()
    other = df["direction_kind"] != "cross-modal"
    if other.any():
        dirs = df["direction"] if "direction" in df else df["teacher_modality"] + "2" + df["student_modality"]
        df.loc[other, "student_modality"] = [column_label(str(s), str(d), k) for s, d, k in
                                             zip(df.loc[other, "student_modality"], dirs[other],
                                                 df.loc[other, "direction_kind"])]
    return df
