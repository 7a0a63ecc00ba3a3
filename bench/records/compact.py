"""Published records in one file: ``records.jsonl.gz``, one JSON record per line, sorted by run id
and gzipped with a zero mtime, so that rebuilding it from the same records gives the same bytes
(``bench reproduce`` writes it beside the outputs). :func:`bench.records.store.read_compact` reads it
back, validated like every record, and every reader of records takes it wherever it takes a results
folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

COMPACT_SUFFIXES = (".jsonl.gz", ".jsonl")
"""A results source that is one file of records, one JSON object a line (gzipped or not)."""


def is_compact(source: str | Path) -> bool:
    return str(source).endswith(COMPACT_SUFFIXES)


def compact_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    """The compact form of ``records``: one JSON object a line (keys sorted, no ``path``: where a
    record was read from is not part of it), in run id order, gzipped with mtime 0 and no file
    name, so the same records always give the same bytes."""
    import gzip
    import io

    from bench.records.files import _json_default

    rows = sorted(({k: v for k, v in r.items() if k != "path"} for r in records),
                  key=lambda r: (str(r.get("run_id")), str(r.get("config_hash"))))
    text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":"), default=_json_default) + "\n" for r in rows)
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text.encode())
    return buf.getvalue()


def write_compact(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write :func:`compact_bytes` of ``records`` to ``path`` atomically (gzipped whatever the
    suffix says; name it ``*.jsonl.gz``)."""
    from bench.records.files import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, compact_bytes(records))
    return path
