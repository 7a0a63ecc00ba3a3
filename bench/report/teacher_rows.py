"""The comparison tables' teacher row (:func:`add_teachers`): per column, the unimodal teacher the
KD rows distil, as a reference that is never ranked, marked or tested."""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.report.rows import MODALITY_SHORT

Comparison = Any  # bench.report.tables.Comparison (not imported: the tables import this module)


TEACHER_ROW = "Teacher (modality)"
"""The label of the teachers' row: a reference row, never one of ``comp.methods``."""


def add_teachers(comp: Comparison, df: pd.DataFrame) -> None:
    """Give ``comp`` its teacher row: per column, the unimodal teacher that the KD records of the
    rows shown distilled (``teacher_metric``, one value per seed), mean ± std over the seeds. The
    random-teacher control's fresh network is not a teacher and is left out."""
    from bench.report.cells import teachers_of

    if "teacher_metric" not in df or df.empty:
        return
    df = df[df["status"] == "ok"] if "status" in df else df
    df = df[df["method"].isin(comp.methods) & df["teacher_metric"].notna()]
    if "teacher_key" not in df:
        df = df.assign(teacher_key=df["teacher_metric"].map(lambda v: f"metric:{v!r}"))
    for col in comp.columns:
        sub = df[(df["dataset"] == col[0]) & (df["student_modality"] == col[1])]
        found = teachers_of(sub.to_dict("records"))
        if found:
            comp.teachers[col] = found
    for col, ts in comp.teachers.items():
        for t in ts:
            if t["disagree"]:
                comp.notes.append(f"Teacher on {col[0]}/{col[1]}: at seed(s) {', '.join(map(str, t['disagree']))} the KD "
                                  f"rows distilled more than one {t['teacher_modality']} teacher (other training "
                                  f"settings); the row shows the one most of them used.")


def teacher_text(comp: Comparison, col: tuple[str, str], decimals: int) -> str:
    """One teacher cell: ``mean ± std (modality)`` per teacher modality; ``--`` without one."""
    parts = []
    for t in comp.teachers.get(col, []):
        s = f"{t['mean']:.{decimals}f}" + (f" ± {t['std']:.{decimals}f}" if t["std"] is not None else "")
        parts.append(f"{s} ({MODALITY_SHORT.get(t['teacher_modality'], t['teacher_modality'])})")
    return "; ".join(parts) or "--"


def teacher_sentence(comp: Comparison) -> str:
    """What the teacher row is, for a caption or legend (empty without one)."""
    if not comp.teachers:
        return ""
    seeds = sorted({t["n_seeds"] for ts in comp.teachers.values() for t in ts})
    n = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    return (f"{TEACHER_ROW}: the unimodal teacher the KD rows distil (trained alone on the modality in brackets, "
            f"with its own seed stream; not the w/o KD student), test {comp.metric} mean ± std over the {n} seeds "
            f"used; a reference, not a method: never ranked, marked or tested.")


def teachers_json(comp: Comparison) -> list[dict]:
    """The teacher row as data: per column and teacher modality, mean, std, seeds and values."""
    return [{"dataset": col[0], "student_modality": col[1], **t} for col in comp.columns
            for t in comp.teachers.get(col, [])]
