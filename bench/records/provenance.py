"""What identifies a configuration and the code that ran it: stable hashes and the git commit."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from bench.records.files import _json_default


def stable_hash(obj: Any, n: int = 10) -> str:
    """Short hex digest of a JSON-serialisable object, independent of dict ordering."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout that holds this package (``+dirty`` when modified), if any."""
    here = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        )
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
