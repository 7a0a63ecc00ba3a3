"""Per-sample predictions of a run, beside its record, and their re-scoring (``bench results --verify``).

A run writes ``predictions/<run_id>.npz`` into its results folder: for the selected and the last
epoch, and for each evaluated split (val, test), what :func:`bench.train.loop.evaluate_with_predictions`
scored, keyed by sample id (the sample's index in the split's canonical order, i.e. row ``i`` of
every array is sample ``i``): the predicted class and the top-5 logits (values float16, indices
int16) for classification, per-image confusion counts for dense tasks (never pixels). The file is
written atomically; the record notes its ``predictions_path`` and ``predictions_sha256``, and
``split_fingerprint`` (``{"val": ..., "test": ...}``, the hash of each split's sample ids and
labels), which the statistics use to pair seeds only when they saw the same data.

Reading a file never runs code (``np.load(allow_pickle=False)``); it is read from the record's own
results folder only (``predictions/<run id>.npz``), never from wherever ``predictions_path``
points, as saved models are (:mod:`bench.records.models`).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bench.api.errors import BenchError
from bench.api.names import join_under

FORMAT = 1
EPOCHS = ("selected", "last")
SPLITS = ("val", "test")
NO_PREDICTIONS = "no predictions (recorded before predictions were stored)"
ARRAYS = {"top1": ("pred", "topk_values", "topk_indices"), "mIoU": ("confusion",)}
"""The arrays of each split by the metric (any other metric is scored as accuracy, as the loop does)."""
RECORD_FIELDS = {("selected", "test"): "best_metric", ("last", "test"): "final_metric", ("selected", "val"): "val_at_selected"}
"""The record's field that each (epoch, split)'s predictions must score exactly (and its history row)."""


class PredictionsError(BenchError):
    """A predictions file that cannot be used: the message names the file and what is wrong."""


def split_fingerprint_of(split: Any) -> str:
    """The hash of a split's sample ids and labels: two runs with the same fingerprint were scored
    on the same samples with the same labels, in the same order. A sample's id is its position in
    the dataset's data (``meta["rows"]`` of :func:`bench.train.loop.load_splits`, so per-seed splits
    of one cache differ), else its index in the split's canonical order."""
    labels = split.labels  # a tensor, or a memory-mapped view (dense labels of a prepared cache): read in chunks
    shape = tuple(labels.shape)
    n = shape[0]
    rows = getattr(split, "meta", {}).get("rows")
    ids = np.asarray(rows, dtype="<i8") if rows is not None and len(rows) == n else np.arange(n, dtype="<i8")
    h = hashlib.sha256(b"cmkd-bench split fingerprint v1\n")
    h.update(f"{shape}\n".encode())
    h.update(ids.tobytes())
    rows = max(1, (1 << 24) // max(1, int(np.prod(shape[1:], dtype=np.int64))))
    for i in range(0, n, rows):
        part = torch.as_tensor(labels[i:i + rows]).cpu().numpy()
        h.update(np.ascontiguousarray(part.astype("<i8")).tobytes())
    return h.hexdigest()[:16]


def split_fingerprints(splits: dict[str, Any]) -> dict[str, str | None]:
    """``record["split_fingerprint"]``: the evaluated splits' fingerprints (None: split absent)."""
    return {name: split_fingerprint_of(splits[name]) if splits.get(name) is not None else None for name in SPLITS}


def predictions_file(results: str | Path, run_id: str) -> Path:
    return join_under(Path(results) / "predictions", f"{run_id}.npz", where="record run_id")


def _key(which: str, split: str, name: str) -> str:
    return f"{which}.{split}.{name}"


def encode(predictions: dict[str, dict[str, dict[str, torch.Tensor]]], fingerprints: dict[str, str | None],
           epochs: dict[str, int]) -> bytes:
    """The ``.npz`` bytes of a run's predictions (compressed; plain arrays only, no objects)."""
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT, dtype=np.int64)}
    for which in EPOCHS:
        arrays[f"{which}.epoch"] = np.array(int(epochs[which]), dtype=np.int64)
        for split, named in predictions[which].items():
            for name, t in named.items():
                arrays[_key(which, split, name)] = torch.as_tensor(t).cpu().numpy()
    for split, fp in fingerprints.items():
        if fp is not None:
            arrays[f"{split}.fingerprint"] = np.array(fp)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def write_predictions(results: str | Path, run_id: str, predictions: dict[str, dict[str, dict[str, torch.Tensor]]],
                      fingerprints: dict[str, str | None], epochs: dict[str, int],
                      stage: Callable[[Path], Path] = lambda p: p) -> tuple[Path, str]:
    """Write ``predictions/<run_id>.npz`` atomically (at ``stage(path)`` until the record is
    written, for a rerun); returns its final path and sha256."""
    from bench.records.files import atomic_write_bytes

    data = encode(predictions, fingerprints, epochs)
    path = predictions_file(results, run_id)
    atomic_write_bytes(stage(path), data)
    return path, hashlib.sha256(data).hexdigest()


def read_predictions(path: Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of a predictions file, checked against ``sha256`` when given; a missing, damaged or
    foreign file raises :class:`PredictionsError` naming it (never a traceback, never code run)."""
    from bench.data.cache import sha256_file

    if not path.is_file():
        raise PredictionsError(f"predictions file {path} is missing")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise PredictionsError(f"predictions file {path} cannot be read ({exc.strerror or exc})") from None
    if sha256 is not None and digest != sha256:
        raise PredictionsError(f"predictions file {path} has sha256 {digest}, the record's predictions_sha256 is "
                               f"{sha256} (the file is not the one this run wrote)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError, zipfile.LargeZipFile) as exc:
        raise PredictionsError(f"predictions file {path} is unreadable ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200] if str(exc) else 'damaged'})") from None
    if not isinstance(out.get("format"), np.ndarray) or out["format"].shape != () or int(out["format"]) != FORMAT:
        raise PredictionsError(f"predictions file {path} is not a cmkd-bench predictions file of format {FORMAT}")
    return out


def _checked_path(results: Path, rec: dict[str, Any]) -> Path:
    path = predictions_file(results, rec["run_id"])
    given = rec.get("predictions_path")
    if not isinstance(given, str) or Path(given).parts[-2:] != ("predictions", path.name):
        raise PredictionsError(f"predictions_path {given!r} is not predictions/{path.name} of its results folder "
                               f"{results}; refused (a record's predictions are read from there only)")
    return path


def adopt_predictions(rec: dict[str, Any], src: str | Path, dest: str | Path) -> str | None:
    """For ``bench collect``: copy ``rec``'s predictions file from ``src``'s predictions folder into
    ``dest``'s (read first as plain arrays, checked by sha256, the copy checked again) and point
    ``predictions_path`` at the copy. When that is impossible the record keeps its fields (``bench
    results --verify`` then names the missing file) and the note why is returned."""
    from bench.records.files import atomic_copy_file

    if not rec.get("predictions_path"):
        return None
    try:
        path = _checked_path(Path(src), rec)
        want = rec.get("predictions_sha256")
        read_predictions(path, want)
        target = predictions_file(dest, rec["run_id"])
        if path.resolve() != target.resolve():
            def same(copy: str) -> None:
                from bench.data.cache import sha256_file

                if sha256_file(copy) != want:
                    raise ValueError(f"the copy of {path} does not have the sha256 {want}")

            atomic_copy_file(path, target, same)
    except (BenchError, OSError, ValueError) as exc:
        return f"bench collect: predictions not copied: {exc}"
    rec["predictions_path"] = str(target)
    return None


def results_folder_of(rec: dict[str, Any], default: str | Path) -> Path:
    """The results folder a loaded record belongs to: the parent of its ``records/`` folder."""
    p = rec.get("path")
    if not p:
        return Path(default)
    parent = Path(p).parent
    return parent.parent if parent.name == "records" else parent


def _record_splits(rec: dict[str, Any], overrides: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """The dataset splits of a record, loaded as the runner loaded them (its dataset parameters and
    validation carve). Where the data lies (a prepared cache, a raw folder) is no part of a record:
    the dataset's defaults, or ``overrides`` (``--set nyudv2.cache=PATH``), which win."""
    from bench.report.rerun import _text
    from bench.train.loop import load_splits
    from bench.train.resolve import build_adapter, build_train_config

    cfg = rec.get("config") or {}
    ds = cfg.get("dataset") or {}
    name = rec.get("dataset_folder") or rec["dataset"]
    params = {k: _text(v) for k, v in (ds.get("params") or {}).items() if v is not None}
    params.update((overrides or {}).get(rec["dataset"], {}))
    train = {k: _text(v) for k, v in (cfg.get("train") or {}).items() if k in SPLIT_KEYS}
    adapter = build_adapter(name, {rec["dataset"]: params, "folder": params, "train": train})
    return {"adapter": adapter,
            "splits": load_splits(adapter, build_train_config(adapter, {"train": train}), seed=int(rec["seed"]))}


SPLIT_KEYS = ("val_fraction", "split_seed", "split_mode")
"""The ``train.*`` settings that decide a run's splits (with its seed, under ``split_mode=per_seed``)."""


def check_record(results: Path, rec: dict[str, Any], load: Callable[[dict[str, Any]], dict[str, Any]]) -> list[str]:
    """What is wrong with a record's stored predictions (empty: they re-score to its metrics exactly).
    ``load(rec)`` gives the dataset (``{"adapter", "splits"}``)."""
    from bench.train.loop import score_predictions

    try:
        path = _checked_path(results, rec)
        arrays = read_predictions(path, rec.get("predictions_sha256"))
    except PredictionsError as exc:
        return [str(exc)]
    metric = rec["metric"] if rec["metric"] in ARRAYS else "top1"
    names = ARRAYS[metric]
    fps = rec.get("split_fingerprint") if isinstance(rec.get("split_fingerprint"), dict) else {}
    history = rec["history"]
    epochs = {"selected": rec.get("selected_epoch"), "last": history[-1]["epoch"]}
    for which, e in epochs.items():
        got = arrays.get(f"{which}.epoch")
        if got is None or got.shape != () or int(got) != e:
            return [f"predictions file {path}: its {which} epoch is {None if got is None else got.tolist()}, "
                    f"the record's is {e} (a file of another run?)"]
    try:
        data = load(rec)
    except Exception as exc:  # noqa: BLE001 - a dataset that cannot be built here: said, not raised
        return [f"predictions file {path}: cannot load dataset {rec['dataset']!r} to re-score it "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})"]
    problems: list[str] = []
    for split in SPLITS:
        sp = data["splits"].get(split)
        stored = arrays.get(f"{split}.fingerprint")
        if stored is None and fps.get(split) is None:
            continue  # not evaluated (no validation split)
        if sp is None:
            problems.append(f"predictions file {path}: the dataset has no {split} split now")
            continue
        now = split_fingerprint_of(sp)
        stored_s = str(stored) if stored is not None and stored.shape == () else None
        if stored_s != fps.get(split) or now != fps.get(split):
            problems.append(f"predictions file {path}: labels fingerprint mismatch on {split} (record "
                            f"{fps.get(split)}, file {stored_s}, dataset now {now})")
            continue
        for which in EPOCHS:
            missing = [n for n in names if _key(which, split, n) not in arrays]
            if missing:
                problems.append(f"predictions file {path}: no {', '.join(_key(which, split, n) for n in missing)}")
                continue
            got = {n: arrays[_key(which, split, n)] for n in names}
            bad = {n: a.shape[0] if a.ndim else None for n, a in got.items() if a.ndim == 0 or a.shape[0] != len(sp)}
            if bad or (metric == "mIoU" and got["confusion"].shape[1:] != (data["adapter"].num_classes,) * 2):
                shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in got.items())
                problems.append(f"predictions file {path}: wrong number of samples for {which} {split} ({shapes}; "
                                f"the {split} split has {len(sp)} samples)")
                continue
            if not all(np.issubdtype(a.dtype, np.number) for a in got.values()):
                problems.append(f"predictions file {path}: {which} {split} arrays are not numeric")
                continue
            value = score_predictions(metric, {n: torch.from_numpy(np.array(a)) for n, a in got.items()}, sp.labels)
            row_no = epochs[which] - 1
            fields = {f"history[{row_no}].{split}_metric": history[row_no].get(f"{split}_metric")}
            named = RECORD_FIELDS.get((which, split))
            if named is not None and named in rec:
                fields = {named: rec[named], **fields}
            wrong = [(f, v) for f, v in fields.items() if v != value]
            if wrong:
                f, v = wrong[0]
                problems.append(f"{rec['run_id']}: predictions file {path}: the {which} epoch's ({epochs[which]}) {split} "
                                f"predictions score {rec['metric']} {value!r}, the record's {f} is {v!r}")
    return problems


def verify(results: str | Path, records: list[dict[str, Any]],
           overrides: dict[str, dict[str, str]] | None = None) -> dict[str, list[str]]:
    """Re-score every ok record's stored predictions against its dataset's labels: ``ok`` (run ids),
    ``no_predictions`` (records from before predictions were stored) and ``problems`` (one line each).
    ``overrides``: dataset settings a record does not hold (where its prepared cache or raw files are)."""
    out: dict[str, list[str]] = {"ok": [], "no_predictions": [], "problems": []}
    cache: dict[str, dict[str, Any]] = {}

    def load(rec: dict[str, Any]) -> dict[str, Any]:
        from bench.records.provenance import stable_hash

        cfg = rec.get("config") or {}
        train = cfg.get("train") or {}
        key = stable_hash([rec.get("dataset_folder"), rec["dataset"], cfg.get("dataset"),
                           {k: v for k, v in train.items() if k in SPLIT_KEYS},
                           rec["seed"] if train.get("split_mode", "fixed") != "fixed" else None])
        if key not in cache:
            cache[key] = _record_splits(rec, overrides)
        return cache[key]

    for rec in records:
        if rec.get("status") != "ok":
            continue
        if not rec.get("predictions_path"):
            out["no_predictions"].append(rec["run_id"])
            continue
        problems = check_record(results_folder_of(rec, results), rec, load)
        if problems:
            out["problems"] += [p if p.startswith(rec["run_id"]) else f"{rec['run_id']}: {p}" for p in problems]
        else:
            out["ok"].append(rec["run_id"])
    return out
