"""Result records: one JSON file per run, written atomically, loaded into a DataFrame.

Layout of a results folder::

    results/
      records/<run_id>.json       one per (dataset, direction, method, seed, config)
      teachers/<dataset>/<modality>/<fingerprint>.pt   cached unimodal teachers
      checkpoints/<run_id>.pt     last finished epoch of an unfinished run (for resume)
      models/<run_id>.pt          final student weights (when --save-model)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .errors import RecordError
from .utils import atomic_write_json

SCHEMA_VERSION = 1

REQUIRED_FIELDS = (
    "schema", "run_id", "status", "method", "dataset", "task", "teacher_modality", "student_modality",
    "direction", "seed", "metric", "config", "config_hash",
)
OK_FIELDS = ("best_metric", "final_metric", "history")

COLUMNS = [
    "run_id", "status", "dataset", "task", "direction", "teacher_modality", "student_modality", "method",
    "method_category", "seed", "metric", "best_metric", "final_metric", "reference_best_metric",
    "selected_epoch", "selection", "epochs", "teacher_metric", "wall_time_s", "device", "config_hash", "group_hash",
    "git_commit", "error", "path", "method_params", "pairing",
]


def records_dir(results: str | Path) -> Path:
    return Path(results) / "records"


def record_path(results: str | Path, run_id: str) -> Path:
    return records_dir(results) / f"{run_id}.json"


def write_record(results: str | Path, record: dict[str, Any]) -> Path:
    path = record_path(results, record["run_id"])
    atomic_write_json(path, record)
    return path


def read_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record; errors name the file and the problem."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(rec, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if rec.get("status") == "ok":
        missing += [k for k in OK_FIELDS if k not in rec]
    if missing:
        raise RecordError(f"{path}: not a cmkd-bench result record; missing field(s): {', '.join(missing)}")
    if rec["schema"] != SCHEMA_VERSION:
        raise RecordError(f"{path}: record schema {rec['schema']!r}, this version reads schema {SCHEMA_VERSION}")
    if rec["status"] not in ("ok", "failed"):
        raise RecordError(f"{path}: field 'status' must be 'ok' or 'failed', got {rec['status']!r}")
    return rec


def existing_ok(results: str | Path, run_id: str) -> bool:
    p = record_path(results, run_id)
    if not p.exists():
        return False
    try:
        return read_record(p)["status"] == "ok"
    except RecordError:
        return False


def iter_record_files(results: str | Path) -> list[Path]:
    root = Path(results)
    if not root.exists():
        raise RecordError(f"results folder {root} does not exist")
    if not root.is_dir():
        raise RecordError(f"results folder {root} is not a directory")
    rd = records_dir(root)
    # Accept both a results root (with records/) and a bare folder of record files.
    base = rd if rd.is_dir() else root
    return sorted(p for p in base.glob("*.json") if not p.name.startswith("."))


def load_records(results: str | Path | Iterable[str | Path], status: str | None = None) -> list[dict[str, Any]]:
    folders = [results] if isinstance(results, (str, Path)) else list(results)
    out = []
    for folder in folders:
        for p in iter_record_files(folder):
            rec = read_record(p)
            rec["path"] = str(p)
            if status is None or rec["status"] == status:
                out.append(rec)
    return out


def to_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        rows.append({
            "run_id": r["run_id"], "status": r["status"], "dataset": r["dataset"], "task": r["task"],
            "direction": r["direction"], "teacher_modality": r["teacher_modality"],
            "student_modality": r["student_modality"], "method": r["method"],
            "method_category": r.get("method_category"), "seed": r["seed"], "metric": r["metric"],
            "best_metric": r.get("best_metric"), "final_metric": r.get("final_metric"),
            "reference_best_metric": r.get("reference_best_metric"), "selected_epoch": r.get("selected_epoch"),
            "selection": r.get("selection"), "epochs": r.get("config", {}).get("train", {}).get("epochs"),
            "teacher_metric": (r.get("teacher") or {}).get("test_metric"), "wall_time_s": r.get("wall_time_s"),
            "device": r.get("device"), "config_hash": r["config_hash"], "group_hash": r.get("group_hash"), "git_commit": r.get("git_commit"),
            "error": r.get("error"), "path": r.get("path"),
            "method_params": (r.get("config") or {}).get("method_params") or {},
            "pairing": ((r.get("config") or {}).get("train") or {}).get("pairing", "paired"),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def load_results(results: str | Path | Iterable[str | Path] = "results", status: str | None = "ok") -> pd.DataFrame:
    """All records under one or more results folders as a DataFrame (one row per run)."""
    return to_frame(load_records(results, status=status))


def _same_result(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("status", "best_metric", "final_metric", "selected_epoch")
    if any(a.get(k) != b.get(k) for k in keys):
        return False
    ha = [h.get("test_metric") for h in a.get("history", [])]
    hb = [h.get("test_metric") for h in b.get("history", [])]
    return ha == hb


def collect(sources: Iterable[str | Path], dest: str | Path) -> dict[str, list[str]]:
    """Merge the records of ``sources`` into ``dest/records`` (idempotent).

    Runs are identified by their config hash (which includes the seed): a record whose config hash
    is already in ``dest`` with the same results is a duplicate and skipped; one with different
    results is a **conflict**, reported and not copied (the destination keeps its record). A failed
    record never replaces an ok one; an ok record replaces a failed one.
    """
    dest = Path(dest)
    dest_dir = records_dir(dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    have: dict[str, tuple[Path, dict[str, Any]]] = {}
    for p in sorted(dest_dir.glob("*.json")):
        try:
            r = read_record(p)
        except RecordError:
            continue
        have[r["config_hash"]] = (p, r)
    report: dict[str, list[str]] = {"copied": [], "duplicate": [], "conflict": [], "invalid": [], "replaced_failed": []}
    for src in sources:
        for p in iter_record_files(src):
            if p.parent.resolve() == dest_dir.resolve():
                continue
            try:
                r = read_record(p)
            except RecordError as exc:
                report["invalid"].append(str(exc))
                continue
            h = r["config_hash"]
            if h in have:
                q, old = have[h]
                if _same_result(old, r):
                    report["duplicate"].append(r["run_id"])
                    continue
                if old["status"] == "failed" and r["status"] == "ok":
                    write_record(dest, r)
                    have[h] = (record_path(dest, r["run_id"]), r)
                    report["replaced_failed"].append(r["run_id"])
                    continue
                if r["status"] == "failed":
                    report["duplicate"].append(r["run_id"])
                    continue
                report["conflict"].append(
                    f"{r['run_id']}: {p} has {r['metric']} {r.get('best_metric')} (final {r.get('final_metric')}), "
                    f"{q} has {old.get('best_metric')} (final {old.get('final_metric')})")
                continue
            write_record(dest, r)
            have[h] = (record_path(dest, r["run_id"]), r)
            report["copied"].append(r["run_id"])
    return report
