"""What identifies a configuration and the code that ran it (stable hashes, the git commit), and
what else its numbers depend on (the runtime environment: thread counts, BLAS, torch build)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import warnings
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


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Environment variables that set the thread pools' sizes when torch or numpy start."""


def runtime_environment() -> dict[str, Any]:
    """What a run's numbers depend on besides its config, seed and code: the torch build and the
    BLAS/LAPACK it calls, the intra- and inter-op thread counts (a sum split over two threads is
    added in another order than over one, so the last bits differ and training drifts apart), the
    CPU instruction set the kernels dispatch to, the thread pools loaded in the process, and CUDA /
    cuDNN. Kept in a record's ``environment`` and never in the config hash: it explains why two
    runs of one configuration differ, it does not make them different experiments."""
    import torch

    build = torch.__config__.show()
    info = dict(re.findall(r"\b(BLAS_INFO|LAPACK_INFO)=([^,\s]+)", build))
    backend = re.search(r"ATen parallel backend: (.+)", torch.__config__.parallel_info())
    mkl = re.search(r"Math Kernel Library Version (\S+)", build)
    onednn = re.search(r"MKL-DNN (v[\w.]+)", build)
    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "parallel_backend": backend.group(1).strip() if backend else None,
        "blas": info.get("BLAS_INFO"),
        "lapack": info.get("LAPACK_INFO"),
        "mkl": mkl.group(1) if mkl else None,
        "onednn": onednn.group(1) if onednn else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "thread_variables": {k: os.environ.get(k) for k in THREAD_VARIABLES},
        "threadpools": _threadpools(),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def _threadpools() -> list[dict[str, Any]] | None:
    """The BLAS and OpenMP libraries loaded in the process, with their versions and thread counts
    (threadpoolctl, a scikit-learn dependency; numpy's OpenBLAS is not torch's MKL)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        return None
    with warnings.catch_warnings():  # e.g. two OpenMP runtimes loaded: recorded, not worth a warning here
        warnings.simplefilter("ignore")
        pools = threadpool_info()
    return [{"api": p.get("user_api"), "library": p.get("internal_api"), "version": p.get("version"),
             "threads": p.get("num_threads"), "file": Path(str(p.get("filepath", ""))).name}
            for p in pools]
