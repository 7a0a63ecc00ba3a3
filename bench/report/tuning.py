"""Default and tuned records in tables and the leaderboard (``--params default|tuned|both``).

A tuned record (``bench run --tuned``) carries ``config.tuned`` (study, trial, value). ``default``
(the default of every command, so existing outputs do not change) leaves tuned records out and
shows each method as published; ``tuned`` shows each method's tuned records (a method that has
none, e.g. one with nothing to tune, keeps its default records, with a note); ``both`` shows the
two side by side as "DKD" and "DKD (tuned)" rows and reports each method's gain from tuning, with
the paired verdict of tuned against default (both run with the same seeds: matched by seed,
Holm over every (method, cell) compared; :mod:`bench.report.stats.paired`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.api.errors import BenchError
from bench.report.tables import CONTROL_SUFFIXES, TUNED_SUFFIX, display_name

PARAMS = ("default", "tuned", "both")


def check_params(params: str) -> str:
    if params not in PARAMS:
        raise BenchError(f"--params {params!r}: expected default (as published), tuned (bench run --tuned) or both")
    return params


def _tuned_mask(df: pd.DataFrame) -> pd.Series:
    if "tuned" not in df:
        return pd.Series(False, index=df.index)
    return df["tuned"].notna()


def control_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Teacher-control records (``train.teacher_control`` shuffled / random) under their own row
    keys (:data:`~bench.report.tables.CONTROL_SUFFIXES`), so they are compared, never averaged."""
    if "teacher_control" not in df or df.empty:
        return df
    suffix = df["teacher_control"].map(lambda c: CONTROL_SUFFIXES.get(c, ""))
    return df.assign(method=df["method"] + suffix)


def control_records(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`control_rows` for record dicts (the leaderboard)."""
    from bench.records.store import teacher_control

    return [dict(r, method=r["method"] + CONTROL_SUFFIXES[c]) if (c := teacher_control(r)) in CONTROL_SUFFIXES
            else r for r in recs]


def select_params(df: pd.DataFrame, params: str = "default") -> tuple[pd.DataFrame, list[str]]:
    """The records a comparison shows under ``params``, and notes on what was left out or added;
    teacher-control records as rows of their own (:func:`control_rows`)."""
    from bench.report.studies import prefer_defaults

    check_params(params)
    tuned = _tuned_mask(df)
    plain, notes = prefer_defaults(df[~tuned])  # on registered names, before control rows are renamed
    plain = control_rows(plain)
    t = control_rows(df[tuned])
    if params == "default":
        if len(t):
            notes.append(f"{len(t)} tuned record(s) not shown (--params tuned or both shows them)")
        return plain, notes
    if params == "tuned":
        have = set(t["method"])
        rest = plain[~plain["method"].isin(have)]
        if len(rest):
            notes.append("no tuned records of " + ", ".join(display_name(m) for m in dict.fromkeys(rest["method"]))
                         + ": default records shown (nothing to tune, or not tuned yet)")
        return pd.concat([t, rest]), notes
    t = t.assign(method=t["method"] + TUNED_SUFFIX)
    both = pd.concat([plain, t])
    return both, notes + gain_notes(gains(both))


def select_params_records(recs: list[dict[str, Any]],
                          params: str = "default") -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`select_params` for record dicts (the leaderboard); tuned rows renamed in ``both``."""
    check_params(params)
    recs = control_records(recs)

    def is_tuned(r: dict[str, Any]) -> bool:
        return bool((r.get("config") or {}).get("tuned"))

    tuned = [r for r in recs if is_tuned(r)]
    plain = [r for r in recs if not is_tuned(r)]
    if params == "default":
        note = f"{len(tuned)} tuned record(s) not ranked (--params tuned or both ranks them)"
        return plain, [note] if tuned else []
    if params == "tuned":
        have = {r["method"] for r in tuned}
        rest = [r for r in plain if r["method"] not in have]
        missing = list(dict.fromkeys(r["method"] for r in rest))
        return tuned + rest, ([("no tuned records of " + ", ".join(display_name(m) for m in missing)
                                + ": default records ranked (nothing to tune, or not tuned yet)")] if missing else [])
    renamed = [dict(r, method=r["method"] + TUNED_SUFFIX) for r in tuned]
    from bench.records.store import split_fingerprint

    frame = pd.DataFrame([{"method": r["method"], "dataset": r["dataset"], "student_modality": r["student_modality"],
                           "config_hash": r["config_hash"], "best_metric": r["best_metric"], "seed": r["seed"],
                           "split_fingerprint": split_fingerprint(r)} for r in plain + renamed])
    return plain + renamed, gain_notes(gains(frame), per_cell=False)


GAIN_COLUMNS = ["method", "dataset", "student_modality", "default", "tuned", "gain", "n_default", "n_tuned",
                "diff_ci_low", "diff_ci_high", "p_adj", "verdict"]


def gains(df: pd.DataFrame, value: str = "best_metric") -> pd.DataFrame:
    """Per method and cell of a ``both`` frame: default mean, tuned mean (over seeds), the gain from
    tuning (tuned - default, in points) and the paired comparison of tuned against default on their
    matched seeds (95 % interval, Holm-corrected p, verdict). Cells without both are left out."""
    from bench.report.stats.paired import compare_family
    from bench.report.tables import seed_values

    rows = []
    if df.empty:
        return pd.DataFrame(columns=GAIN_COLUMNS)
    one = df.drop_duplicates(subset=["config_hash"])
    tuned_keys = [m for m in dict.fromkeys(one["method"]) if m.endswith(TUNED_SUFFIX)]
    for tm in tuned_keys:
        m = tm[: -len(TUNED_SUFFIX)]
        for (d, s), sub in one[one["method"] == tm].groupby(["dataset", "student_modality"], sort=False):
            base = one[(one["method"] == m) & (one["dataset"] == d) & (one["student_modality"] == s)]
            if base.empty:
                continue
            dm, tmean = float(base[value].astype(float).mean()), float(sub[value].astype(float).mean())
            rows.append({"method": m, "dataset": d, "student_modality": s, "default": dm, "tuned": tmean,
                         "gain": tmean - dm, "n_default": len(base), "n_tuned": len(sub),
                         "_pair": (seed_values(sub, value), seed_values(base, value))})
    res = compare_family({i: r.pop("_pair") for i, r in enumerate(rows)})
    for i, r in enumerate(rows):
        ci = res[i].ci or (None, None)
        r.update({"diff_ci_low": ci[0], "diff_ci_high": ci[1], "p_adj": res[i].p_adj, "verdict": res[i].verdict})
    return pd.DataFrame(rows, columns=GAIN_COLUMNS)


def gain_notes(g: pd.DataFrame, per_cell: bool = True) -> list[str]:
    """One line: each method's gain from tuning (per cell with its paired interval and verdict, or
    the mean over its cells with the count of each verdict)."""
    if g.empty:
        return []
    parts = []
    for m, sub in g.groupby("method", sort=False):
        if per_cell:
            cells = ", ".join(f"{r.gain:+.2f} on {r.dataset}/{r.student_modality} ("
                              + ("" if pd.isna(r.diff_ci_low) else f"[{r.diff_ci_low:+.2f}, {r.diff_ci_high:+.2f}], ")
                              + f"{r.verdict})" for r in sub.itertuples())
            parts.append(f"{display_name(m)} {cells}")
        else:
            counts = ", ".join(f"{n} {v}" for v, n in sub["verdict"].value_counts().sort_index().items())
            parts.append(f"{display_name(m)} {sub['gain'].mean():+.2f} (mean over {len(sub)} cell(s); {counts})")
    return ["gain from tuning (tuned - default mean, points): " + "; ".join(parts)
            + f" (paired on seeds, Holm over the {len(g)} cell(s) compared, ROPE ±0.5)"]


def with_tuned_rows(methods: list[str] | None, params: str) -> list[str] | None:
    """``--methods dkd`` under ``both`` means the DKD and the DKD (tuned) rows."""
    if methods is None or params != "both":
        return methods
    return [k for m in methods for k in (m, m + TUNED_SUFFIX)]


def rank_changes(recs: list[dict[str, Any]], **build: Any) -> list[dict[str, Any]]:
    """Each method's place and mean rank on the default leaderboard and on the tuned one (the same
    ranking rule and cells), so "did tuning change the order?" has a direct answer."""
    from bench.report.leaderboard import build_leaderboard

    places: dict[str, dict[str, Any]] = {}
    for params in ("default", "tuned"):
        chosen, _ = select_params_records(recs, params)
        lb = build_leaderboard(chosen, **build)
        ranked = [r for r in lb.rows if r["mean_rank"] is not None]
        for r in ranked:  # equal mean ranks share a place (1, 1, 3, ...)
            place = 1 + sum(1 for o in ranked if o["mean_rank"] < r["mean_rank"] - 1e-9)
            places.setdefault(r["method"], {"method": r["method"]})[params] = (place, r["mean_rank"])
    return [p for p in places.values() if "default" in p and "tuned" in p]


def rank_change_note(changes: list[dict[str, Any]]) -> list[str]:
    """One line: who moved (place default -> tuned, mean rank) and who kept their place."""
    if not changes:
        return []
    moved = [c for c in changes if c["default"][0] != c["tuned"][0]]
    kept = [c for c in changes if c["default"][0] == c["tuned"][0]]
    text = "; ".join(f"{display_name(c['method'])} {c['default'][0]} -> {c['tuned'][0]} "
                     f"(mean rank {c['default'][1]:.2f} -> {c['tuned'][1]:.2f})"
                     for c in sorted(moved, key=lambda c: c["tuned"][0]))
    return ["places, default -> tuned leaderboard: " + (text if moved else "no method changed place")
            + (f"; unchanged: {', '.join(display_name(c['method']) for c in kept)}" if moved and kept else "")]
