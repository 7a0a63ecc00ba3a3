"""The records of one table cell (a method on one dataset and student modality): one per seed.

Tables, the leaderboard and their statistics average over seeds, so a cell must hold one record
per seed. Copies of one run (the same config hash and result, e.g. a results folder collected
twice) count once. Anything else that puts two records on one seed is a **conflict**, shown with
what conflicts and never averaged: two records of one seed with different config hashes or
different results, one config hash recorded for several seeds (a config hash includes the seed),
and records of different metrics. The cell is refused (no mean) rather than one record picked:
which of the two is right cannot be told from the records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable


def one_per_seed(rows: Iterable[dict[str, Any]], value: str = "best_metric") -> tuple[list[dict[str, Any]], list[str]]:
    """The cell's records, one per seed (in seed order), and what conflicts (empty: none)."""
    by_seed: dict[int, dict[tuple[str, float], dict[str, Any]]] = {}
    seeds_of: dict[str, set[int]] = {}
    metrics: set[str] = set()
    for r in rows:
        seed = int(r["seed"])
        by_seed.setdefault(seed, {}).setdefault((str(r["config_hash"]), float(r[value])), r)
        seeds_of.setdefault(str(r["config_hash"]), set()).add(seed)
        metrics.add(str(r.get("metric")))
    kept, problems = [], []
    for seed, runs in sorted(by_seed.items()):
        kept.append(next(iter(runs.values())))
        if len(runs) > 1:
            problems.append(f"seed {seed} has {len(runs)} different records ("
                            + ", ".join(f"config {h}: {v:g} in {_where(r)}" for (h, v), r in runs.items()) + ")")
    for h, seeds in seeds_of.items():
        if len(seeds) > 1:
            problems.append(f"config {h} is recorded for seeds {', '.join(map(str, sorted(seeds)))}")
    if len(metrics) > 1:
        problems.append(f"records of different metrics ({', '.join(sorted(metrics))})")
    return kept, problems


def _where(r: dict[str, Any]) -> str:
    path = r.get("path")
    return Path(path).name if isinstance(path, str) and path else str(r.get("run_id"))


# -- the teachers of a cell ----------------------------------------------------------------------
# A cell's KD records name the unimodal teacher they distilled (``teacher.test_metric``); the
# tables, the leaderboard and summary.json show it per cell as a reference row: mean ± std over the
# seeds, never ranked, marked or tested (it is not a method, and it is not the w/o KD student: the
# teacher trains with its own seed stream, bench.train.teachers' salt 17).

def teacher_key(rec: dict[str, Any]) -> str | None:
    """Which teacher a record distilled: its cached file's name (the name carries the teacher's
    fingerprint), or a user checkpoint's sha256; None for a record without a teacher and for the
    random-teacher control (a fresh network, not the teacher)."""
    t = rec.get("teacher") or {}
    if not isinstance(t, dict) or t.get("test_metric") is None or t.get("source") == "random":
        return None
    if t.get("source") == "checkpoint":
        return f"sha256:{t.get('sha256')}"
    ck = t.get("checkpoint")
    if isinstance(ck, str) and ck:
        return Path(ck).name
    return f"metric:{t['test_metric']!r}"


def teacher_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records -> the flat rows :func:`teachers_of` reads (the DataFrame of
    :func:`bench.records.store.to_frame` has these columns already)."""
    return [{"teacher_modality": r.get("teacher_modality"), "seed": r.get("seed"), "config_hash": r.get("config_hash"),
             "teacher_metric": (r.get("teacher") or {}).get("test_metric") if isinstance(r.get("teacher"), dict) else None,
             "teacher_key": teacher_key(r)} for r in records]


def teachers_of(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The teachers of one cell, one entry per teacher modality: the teacher's test metric per seed,
    mean ± sample std over those seeds, and ``disagree`` (seeds whose KD records distilled more than
    one teacher, e.g. a method run with other training settings: the teacher most of them used is
    taken, ties to the first name)."""
    by_mod: dict[str, dict[int, dict[str, list[float]]]] = {}
    seen: set[tuple[str, str]] = set()
    for r in rows:
        key, value = r.get("teacher_key"), r.get("teacher_metric")
        if any(x is None or (isinstance(x, float) and x != x) for x in (key, value)):  # None, or NaN from a frame
            continue
        if (str(r.get("config_hash")), str(key)) in seen:  # copies of one run count once
            continue
        seen.add((str(r.get("config_hash")), str(key)))
        by_mod.setdefault(str(r.get("teacher_modality")), {}).setdefault(int(r["seed"]), {}).setdefault(
            str(key), []).append(float(value))
    out = []
    for mod, seeds in sorted(by_mod.items()):
        values, disagree = {}, []
        for seed, keys in sorted(seeds.items()):
            pick = sorted(keys, key=lambda k: (-len(keys[k]), k))[0]
            values[seed] = keys[pick][0]
            if len(keys) > 1:
                disagree.append(seed)
        vals = list(values.values())
        mean = sum(vals) / len(vals)
        std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else None
        out.append({"teacher_modality": mod, "mean": mean, "std": std, "n_seeds": len(vals),
                    "seeds": sorted(values), "values": [values[s] for s in sorted(values)], "disagree": disagree})
    return out
