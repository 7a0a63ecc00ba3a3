"""A record's saved student (``bench run --save-model``): read only from ``models/<run id>.pt`` of
the results folder the record is in, never from wherever its ``model_path`` points. Records are
shared and collected, so a path in one is data, not a place to read from; ``model_sha256`` (written
with the file) ties the file to the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.api.errors import BenchError
from bench.api.names import join_under
from bench.data.cache import sha256_file
from bench.records.files import CorruptFileError, atomic_copy_file, load_torch_file

MODEL_FIELDS = ("student",)


def _checked_model(results: str | Path, rec: dict[str, Any]) -> tuple[Path, str]:
    """The record's model file under ``results/models`` and its sha256, or a BenchError saying why not."""
    rid = rec.get("run_id")
    given = rec.get("model_path")
    if not given:
        raise BenchError(f"record {rid} has no saved model (rerun it with --save-model)")
    path = join_under(Path(results) / "models", f"{rid}.pt", where="record run_id")
    if not isinstance(given, str) or Path(given).parts[-2:] != ("models", path.name):
        raise BenchError(f"record {rid}: model_path {given!r} is not models/{path.name} of its results folder "
                         f"{results}; refused (a record's model is read from there only)")
    if not path.is_file():
        raise BenchError(f"record {rid}: its saved model {path} does not exist")
    digest = sha256_file(path)
    want = rec.get("model_sha256")
    if want is not None and digest != want:
        raise BenchError(f"record {rid}: {path} has sha256 {digest}, the record's model_sha256 is {want}; "
                         f"refused (the file is not the model this run saved)")
    return path, digest


def _same_digest(copy: str, digest: str) -> None:
    got = sha256_file(copy)
    if got != digest:
        raise ValueError(f"its copy has sha256 {got}, the file {digest}")


def model_file(results: str | Path, rec: dict[str, Any]) -> Path:
    """The saved model of ``rec`` (a record of the results folder ``results``), checked as above."""
    return _checked_model(results, rec)[0]


def load_saved_model(results: str | Path, rec: dict[str, Any], map_location: Any = "cpu") -> dict[str, Any]:
    """The saved-model file of ``rec`` as tensors and plain types (never code, see load_torch_file)."""
    return load_torch_file(model_file(results, rec), "saved model", map_location, required=MODEL_FIELDS,
                           remedy="Delete it and rerun the run with --save-model --force")


def adopt_model(rec: dict[str, Any], src: str | Path, dest: str | Path) -> str | None:
    """For ``bench collect``: copy ``rec``'s model from ``src``'s models folder into ``dest``'s (read
    first as tensors and plain types, the copy checked by hash) and point ``model_path`` at the copy;
    when that is impossible drop ``model_path`` (the record's results are unaffected) and return the
    note why, which is also added to the record's notes."""
    if not rec.get("model_path"):
        rec.pop("model_sha256", None)
        return None
    try:
        path, digest = _checked_model(src, rec)
        load_torch_file(path, "saved model", required=MODEL_FIELDS)  # tensors and plain types, or refused
        target = join_under(Path(dest) / "models", path.name)
        if path.resolve() != target.resolve():
            atomic_copy_file(path, target, lambda copy: _same_digest(copy, digest))  # what arrives was checked
    except (BenchError, CorruptFileError, OSError, ValueError) as exc:
        note = f"bench collect: model_path {rec.get('model_path')!r} dropped: {exc}"
        rec.pop("model_path", None)
        rec.pop("model_sha256", None)
        notes = rec.get("notes")
        rec["notes"] = [*(notes if isinstance(notes, list) else []), note]
        return note
    rec["model_path"] = str(target)
    rec["model_sha256"] = digest
    return None
