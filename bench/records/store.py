"""Result records: one JSON file per run, written atomically, loaded into a DataFrame.

Published records travel in one compact file instead (:mod:`bench.records.compact`). Every reader
here takes such a file wherever it takes a results folder (``bench table -r FILE``, ``bench
leaderboard -r FILE``, ``bench collect --from FILE``).

Layout of a results folder::

    results/
      records/<run_id>.json       one per (dataset, direction, method, seed, config)
      teachers/<dataset>/<modality>/<fingerprint>.pt   cached unimodal teachers
      checkpoints/<run_id>.pt     last finished epoch of an unfinished run (for resume)
      models/<run_id>.pt          final student weights (when --save-model)
      predictions/<run_id>.npz    per-sample val/test predictions of the selected and last epoch
                                  (bench.records.predictions; re-scored by bench results --verify)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench.api.errors import BenchError, RecordError
from bench.api.names import COMPONENT, check_component, encode_method
from bench.records.compact import is_compact
from bench.records.files import atomic_write_json

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
    "git_commit", "error", "path", "method_params", "pairing", "tuned", "split_fingerprint", "num_classes",
    "teacher_control", "teacher_key",
]


def records_dir(results: str | Path) -> Path:
    return Path(results) / "records"


def record_path(results: str | Path, run_id: str) -> Path:
    check_component(run_id, "run id")
    return records_dir(results) / f"{run_id}.json"


def write_record(results: str | Path, record: dict[str, Any]) -> Path:
    path = record_path(results, record["run_id"])
    atomic_write_json(path, record)
    return path


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


# field -> (check, what the field must be); None values of optional fields are allowed
_TYPES: dict[str, tuple[Any, str]] = {
    "schema": (_is_int, "an integer"),
    "run_id": (lambda v: isinstance(v, str), "a string"),
    "method": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "dataset": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "task": (lambda v: isinstance(v, str), "a string"),
    "teacher_modality": (lambda v: isinstance(v, str), "a string"),
    "student_modality": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "direction": (lambda v: isinstance(v, str), "a string"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "metric": (lambda v: isinstance(v, str) and COMPONENT.fullmatch(v) is not None, "a metric name (e.g. top1, mIoU)"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "config_hash": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
}


_OPTIONAL_TYPES: dict[str, tuple[Any, str]] = {
    "group_hash": (lambda v: isinstance(v, str), "a string"),
    "method_category": (lambda v: isinstance(v, str), "a string"),
    "method_source_hash": (lambda v: isinstance(v, str), "a string"),
    "selected_epoch": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "reference_best_metric": (_is_number, "a finite number"),
    "wall_time_s": (_is_number, "a finite number"),
    "git_commit": (lambda v: isinstance(v, str), "a string"),
    "teacher": (lambda v: isinstance(v, dict), "an object"),
    "error": (lambda v: isinstance(v, str), "a string"),
    "selection": (lambda v: v in ("val", "test"), "'val' or 'test'"),
    "split_fingerprint": (lambda v: isinstance(v, dict) and all(isinstance(x, str) or x is None for x in v.values()),
                          "an object of per-split fingerprints (strings or null)"),
    "predictions_path": (lambda v: isinstance(v, str), "a string"),
    "predictions_sha256": (lambda v: isinstance(v, str), "a string"),
    "code": (lambda v: isinstance(v, dict) and isinstance(v.get("commit"), str) and isinstance(v.get("dirty"), bool),
             "an object with a 'commit' string and a 'dirty' boolean"),
    "versions": (lambda v: isinstance(v, dict), "an object"),
}


PERCENT_METRICS = ("top1", "mIoU")
"""The metrics the training loop computes (accuracy, or mIoU for dense tasks): percentages. Any
other name a plug-in dataset declares is scored as accuracy by the same loop, so every ok
record's metric lies in [0, 100]."""


MAX_NESTING = 200
"""Deeper JSON than this is not a record (Python's parser would raise RecursionError near 1000)."""


def validate_record(rec: Any, where: str) -> dict[str, Any]:
    """Check presence *and* types of a record's fields (a wrong type would otherwise surface as a
    traceback without a file name, a silent NaN cell or a NaN rank); errors name ``where`` and the
    field."""
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if rec.get("status") == "ok":
        missing += [k for k in OK_FIELDS if k not in rec]
    if missing:
        raise RecordError(f"{where}: not a cmkd-bench result record; missing field(s): {', '.join(missing)}")
    if rec["schema"] != SCHEMA_VERSION:
        raise RecordError(f"{where}: record schema {rec['schema']!r}, this version reads schema {SCHEMA_VERSION}")
    if rec["status"] not in ("ok", "failed"):
        raise RecordError(f"{where}: field 'status' must be 'ok' or 'failed', got {rec['status']!r}")

    def bad(field: str, what: str, value: Any) -> RecordError:
        return RecordError(f"{where}: field {field!r} must be {what}, got {type(value).__name__} {value!r:.80}")

    for k, (ok, what) in _TYPES.items():
        if not ok(rec[k]):
            raise bad(k, what, rec[k])
    for k, (ok, what) in _OPTIONAL_TYPES.items():
        if rec.get(k) is not None and not ok(rec[k]):
            raise bad(k, what, rec[k])
    try:
        check_component(rec["run_id"], f"{where}: field 'run_id'")
    except BenchError as exc:
        raise RecordError(str(exc)) from None
    _validate_config(rec["config"], bad)
    if rec["status"] == "ok":
        for k in ("best_metric", "final_metric") + (("reference_best_metric",) if "reference_best_metric" in rec else ()):
            v = rec[k]
            if not _is_percent(v):
                raise bad(k, f"a finite number in [0, 100] (a percentage: the student's {rec['metric']})", v)
        h = rec["history"]
        if not isinstance(h, list) or not h:
            raise bad("history", "a non-empty list of epochs", h)
        for i, row in enumerate(h):
            if not isinstance(row, dict) or not _is_percent(row.get("test_metric")) or not _is_int(row.get("epoch")):
                raise bad(f"history[{i}]", "an object with an integer 'epoch' and a finite 'test_metric' in [0, 100]", row)
        sel = rec.get("selected_epoch")
        if sel is not None and sel not in {row["epoch"] for row in h}:
            raise bad("selected_epoch", f"one of the history's epochs (1 to {len(h)})", sel)
    return rec


def _is_percent(v: Any) -> bool:
    return _is_number(v) and 0.0 <= v <= 100.0


# config field -> (check, what it must be): what the tables, the leaderboard and the rerun command
# read from a record's configuration; a wrong type there would drop the record without a word
_CONFIG_TYPES: dict[str, tuple[Any, str]] = {
    "dataset": (lambda v: isinstance(v, dict), "an object"),
    "train": (lambda v: isinstance(v, dict), "an object"),
    "method_params": (lambda v: isinstance(v, dict), "an object"),
    "tuned": (lambda v: isinstance(v, dict), "an object"),
    "backbones": (lambda v: isinstance(v, dict) and all(isinstance(b, dict) for b in v.values()),
                  "an object of per-role objects"),
    "teacher_checkpoint": (lambda v: isinstance(v, dict), "an object"),
    "dataset.params": (lambda v: isinstance(v, dict), "an object"),
    "train.pairing": (lambda v: v in ("paired", "unpaired"), "'paired' or 'unpaired'"),
    "train.epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "tuned.study": (lambda v: isinstance(v, str) and v != "", "the study's name (a string)"),
    "tuned.trial": (_is_int, "the trial's number (an integer)"),
}


def _validate_config(cfg: dict[str, Any], bad: Any) -> None:
    for key, (ok, what) in _CONFIG_TYPES.items():
        outer, _, inner = key.partition(".")
        v = cfg.get(outer)
        if inner:
            v = v.get(inner) if isinstance(v, dict) else None
        if v is not None and not ok(v):
            raise bad(f"config.{key}", what, v)


def read_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record; errors name the file and the problem."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise RecordError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise RecordError(f"{path}: cannot read ({exc.strerror})") from None
    except RecursionError:
        raise RecordError(f"{path}: not a record (JSON nested too deeply for this reader)") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise RecordError(f"{path}: not a record ({exc})") from None
    if _depth(rec) > MAX_NESTING:
        raise RecordError(f"{path}: not a record (JSON nested deeper than {MAX_NESTING} levels)")
    return validate_record(rec, str(path))


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        o, d = todo.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            todo += [(v, d + 1) for v in (o.values() if isinstance(o, dict) else o)]
    return deepest


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


def read_compact(path: str | Path) -> list[dict[str, Any]]:
    """The records of a compact file, each validated; an error names the file and the line. Each
    record's ``path`` is ``FILE:LINE``."""
    import gzip

    path = Path(path)
    if not path.is_file():
        raise RecordError(f"records file {path} does not exist" if not path.exists() else
                          f"records file {path} is not a file")
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except OSError as exc:  # BadGzipFile is an OSError
        raise RecordError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    except EOFError:
        raise RecordError(f"{path}: truncated gzip file") from None
    out = []
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except UnicodeDecodeError as exc:
            raise RecordError(f"{where}: not UTF-8 text ({exc.reason})") from None
        except (RecursionError, ValueError) as exc:
            raise RecordError(f"{where}: not a record ({type(exc).__name__})") from None
        if _depth(rec) > MAX_NESTING:
            raise RecordError(f"{where}: not a record (JSON nested deeper than {MAX_NESTING} levels)")
        rec = validate_record(rec, where)
        rec["path"] = f"{path}:{n}"
        out.append(rec)
    return out


def load_records(results: str | Path | Iterable[str | Path], status: str | None = None) -> list[dict[str, Any]]:
    """The records of one or more results sources: a results folder (its ``records/``), a folder of
    record files, or a compact ``records.jsonl.gz`` (:func:`write_compact`)."""
    folders = [results] if isinstance(results, (str, Path)) else list(results)
    out = []
    for folder in folders:
        if is_compact(folder):
            recs = read_compact(folder)
        else:
            recs = []
            for p in iter_record_files(folder):
                rec = read_record(p)
                rec["path"] = str(p)
                recs.append(rec)
        out += [rec for rec in recs if status is None or rec["status"] == status]
    return out


def split_fingerprint(rec: dict[str, Any]) -> str | None:
    """The fingerprint of the test split a record was scored on (None for records made before
    fingerprints): two runs are paired only when it is the same (bench.report.stats.paired)."""
    return (rec.get("split_fingerprint") or {}).get("test")


def teacher_control(rec: dict[str, Any]) -> str:
    """``train.teacher_control`` of a record: none (the trained teacher on the paired sample),
    shuffled or random (the controls of bench.train.teacher_outputs); none for records before it."""
    return ((rec.get("config") or {}).get("train") or {}).get("teacher_control") or "none"


def to_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    from bench.report.cells import teacher_key

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
            "tuned": ((r.get("config") or {}).get("tuned") or {}).get("study"),  # bench run --tuned: the study
            "split_fingerprint": split_fingerprint(r), "num_classes": r.get("num_classes"),
            "teacher_control": teacher_control(r),
            "teacher_key": teacher_key(r),  # which teacher it distilled (bench.report.cells.teachers_of)
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def load_results(results: str | Path | Iterable[str | Path] = "results", status: str | None = "ok") -> pd.DataFrame:
    """All records under one or more results folders (or compact files) as a DataFrame (one row per run)."""
    return to_frame(load_records(results, status=status))


def _same_result(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("status", "best_metric", "final_metric", "selected_epoch")
    if any(a.get(k) != b.get(k) for k in keys):
        return False
    ha = [h.get("test_metric") for h in a.get("history", [])]
    hb = [h.get("test_metric") for h in b.get("history", [])]
    return ha == hb


def identity_problem(rec: dict[str, Any]) -> str | None:
    """What in a record's identity does not hold together (None: all of it does). A run's config
    hash is the hash of its configuration (seed included), its group hash that of the rest, and its
    run id ``DATASET_DIRECTION_METHOD_sSEED_HASH8``: a record edited or made by hand that breaks
    one of these would enter a merged folder as another seed of a cell, or as another run."""
    from bench.records.provenance import stable_hash

    cfg = rec["config"]
    expected = f"{rec['dataset']}_{rec['direction']}_{encode_method(rec['method'])}_s{rec['seed']}_{rec['config_hash'][:8]}"
    if rec["run_id"] != expected:
        return (f"run id {rec['run_id']!r} does not match the record's dataset, direction, method, seed and "
                f"config hash (expected {expected!r})")
    ds = cfg.get("dataset")
    named = {"seed": rec["seed"], "method": rec["method"], "teacher_modality": rec["teacher_modality"],
             "student_modality": rec["student_modality"]}
    for k, v in named.items():
        if cfg.get(k) != v:
            return f"field {k!r} is {v!r} but config.{k} is {cfg.get(k)!r}"
    if not isinstance(ds, dict) or ds.get("dataset") != rec["dataset"]:
        return f"field 'dataset' is {rec['dataset']!r} but config.dataset names {(ds or {}).get('dataset')!r}"
    if stable_hash(cfg, 10) != rec["config_hash"]:
        return f"config hash {rec['config_hash']} is not the hash of the record's configuration ({stable_hash(cfg, 10)})"
    group = stable_hash({k: v for k, v in cfg.items() if k != "seed"}, 10)
    if rec.get("group_hash") is not None and rec["group_hash"] != group:
        return f"group hash {rec['group_hash']} is not the hash of the record's configuration without the seed ({group})"
    return None


def collect(sources: Iterable[str | Path], dest: str | Path) -> dict[str, list[str]]:
    """Merge the records of ``sources`` into ``dest/records`` (idempotent). A source is a results
    folder, a folder of record files, or a compact ``records.jsonl.gz`` (a published grid: taking
    it in lets a grid be extended or resumed where its runs were not kept; a file with one bad line
    is refused whole, naming the line).

    Runs are identified by their config hash (which includes the seed): a record whose config hash
    is already in ``dest`` with the same results is a duplicate and skipped; one with different
    results is a **conflict**, reported and not copied (the destination keeps its record). A record
    is never written over a destination record of another run (same run id, other config hash: a
    conflict), a failed record never replaces an ok one, and an ok record replaces a failed one.
    A record whose identity does not hold together (:func:`identity_problem`) is refused, naming
    its file (``invalid``).
    A copied record's saved model comes along into ``dest/models``, checked by hash, or its
    ``model_path`` is dropped with a note (``notes``; :func:`bench.records.models.adopt_model`);
    its predictions file into ``dest/predictions``, checked by hash, or a note says why not (the
    record keeps its fields: ``bench results --verify`` names the missing file;
    :func:`bench.records.predictions.adopt_predictions`).
    """
    dest = Path(dest)
    dest_dir = records_dir(dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    by_hash: dict[str, tuple[Path, dict[str, Any]]] = {}
    by_id: dict[str, dict[str, Any]] = {}
    for p in iter_record_files(dest):
        try:
            r = read_record(p)
        except RecordError:
            continue
        by_hash[r["config_hash"]] = (p, r)
        by_id[r["run_id"]] = r
    report: dict[str, list[str]] = {"copied": [], "duplicate": [], "conflict": [], "invalid": [], "replaced_failed": [],
                                    "notes": []}

    def put(r: dict[str, Any], src: str | Path) -> None:
        from bench.records.models import adopt_model

        from bench.records.predictions import adopt_predictions

        note = adopt_model(r, src, dest)  # its model file comes along, checked, or its model_path goes
        if note is not None:
            report["notes"].append(f"{r['run_id']}: {note}")
        note = adopt_predictions(r, src, dest)  # its predictions file comes along, checked by sha256
        if note is not None:
            report["notes"].append(f"{r['run_id']}: {note}")
        write_record(dest, r)
        by_hash[r["config_hash"]] = (record_path(dest, r["run_id"]), r)
        by_id[r["run_id"]] = r

    for src in sources:
        if is_compact(src):
            # a published records.jsonl.gz: its records, and its folder for the files they name
            try:
                entries: list[tuple[str, dict[str, Any] | RecordError]] = [(r.pop("path"), r) for r in read_compact(src)]
            except RecordError as exc:  # one bad line: the file is not taken in part
                report["invalid"].append(f"{exc}; nothing copied from {src}")
                continue
            src = Path(src).parent
        else:
            entries = []
            for p in iter_record_files(src):
                if p.parent.resolve() == dest_dir.resolve():
                    continue
                try:
                    entries.append((str(p), read_record(p)))
                except RecordError as exc:
                    entries.append((str(p), exc))
        for p, r in entries:
            if isinstance(r, RecordError):
                report["invalid"].append(str(r))
                continue
            r.pop("path", None)
            h, rid = r["config_hash"], r["run_id"]
            occupant = by_id.get(rid)
            if occupant is not None and occupant["config_hash"] != h:
                report["conflict"].append(
                    f"{rid}: {p} (config {h}) would overwrite the destination's record of another configuration "
                    f"({occupant['config_hash']}, {occupant['status']}); not copied")
                continue
            problem = identity_problem(r)
            if problem is not None:
                report["invalid"].append(f"{p}: {problem}; not copied")
                continue
            if h in by_hash:
                q, old = by_hash[h]
                if _same_result(old, r):
                    report["duplicate"].append(rid)
                    continue
                if old["status"] == "failed" and r["status"] == "ok":
                    put(r, src)
                    report["replaced_failed"].append(rid)
                    continue
                if r["status"] == "failed":
                    report["duplicate"].append(rid)  # an ok result is never replaced by a failure
                    continue
                report["conflict"].append(
                    f"{rid}: {p} has {r['metric']} {r.get('best_metric')} (final {r.get('final_metric')}), "
                    f"{q} has {old.get('best_metric')} (final {old.get('final_metric')})")
                continue
            put(r, src)
            report["copied"].append(rid)
    return report
