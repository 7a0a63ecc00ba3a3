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
