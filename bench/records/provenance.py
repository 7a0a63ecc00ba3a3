"""What identifies a configuration and the code that ran it (stable hashes, the git commit), and
what else its numbers depend on (the runtime environment: thread counts, BLAS, torch build)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from bench.records.files import _json_default


def stable_hash(obj: Any, n: int = 10) -> str:
    """Short hex digest of a JSON-serialisable object, independent of dict ordering."""
    blob = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=30)


def code_state(path: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The exact code a run executed: the commit of the checkout that holds this package (or of
    ``path``), whether the tree differs from it, and if so a hash of the difference (``git diff
    HEAD --binary``, i.e. staged and unstaged changes to tracked files, plus the names and contents
    of untracked files that are not ignored), so that two dirty trees can be told apart. None
    outside a git checkout (an installed package)."""
    here = Path(path) if path else Path(__file__).resolve().parent
    try:
        sha = _git(["rev-parse", "HEAD"], here)
        if sha.returncode != 0:
            return None
        root = Path(_git(["rev-parse", "--show-toplevel"], here).stdout.decode().strip() or here)
        diff = _git(["diff", "HEAD", "--binary", "--no-color", "--no-ext-diff"], root)
        untracked = _git(["ls-files", "--others", "--exclude-standard", "-z"], root)
        if diff.returncode != 0 or untracked.returncode != 0:
            return None
    except (OSError, subprocess.SubprocessError):
        return None
    names = sorted(n for n in untracked.stdout.decode(errors="surrogateescape").split("\0") if n)
    dirty = bool(diff.stdout) or bool(names)
    out: dict[str, Any] = {"commit": sha.stdout.decode().strip(), "dirty": dirty, "diff_hash": None, "untracked": len(names)}
    if dirty:
        h = hashlib.sha256(b"diff\0" + diff.stdout)
        for name in names:  # name and content of each untracked file, each length-prefixed
            f = root / name
            h.update(b"\0untracked\0" + name.encode(errors="surrogateescape") + b"\0")
            try:
                data = f.read_bytes() if f.is_file() and not f.is_symlink() else os.readlink(f).encode()
            except OSError:
                data = b"<unreadable>"
            h.update(str(len(data)).encode() + b"\0" + data)
        out["diff_hash"] = h.hexdigest()[:16]
    return out


def git_commit(path: str | os.PathLike | None = None, state: dict[str, Any] | None = None) -> str | None:
    """The commit of the checkout that holds this package (``+dirty`` when modified, untracked
    files that are not ignored included), if any; ``state``: a :func:`code_state` already taken."""
    state = state if state is not None else code_state(path)
    if state is None:
        return None
    return state["commit"] + ("+dirty" if state["dirty"] else "")


_PACKAGES_SEEN: tuple[tuple, list[str]] | None = None
"""The last ``(sys.path state, package list)``: one entry, since a process sees one environment."""


def _path_state() -> tuple:
    """``sys.path`` with each entry's modification time: installing or removing a distribution
    touches its site directory, so an unchanged state means an unchanged package set."""
    state = []
    for entry in sys.path:
        try:
            state.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            state.append((entry, None))
    return tuple(state)


def installed_packages() -> list[str]:
    """The installed distributions as sorted, de-duplicated ``name==version`` lines (names
    normalised as pip does): what the package-set hash is taken over. Reading every
    distribution's metadata costs about half a second, once per run on a 2-second CPU run, so
    the answer is kept per process until a ``sys.path`` directory changes (a package installed
    or removed while a worker lives is still seen)."""
    import importlib.metadata

    global _PACKAGES_SEEN
    key = _path_state()
    if _PACKAGES_SEEN is not None and _PACKAGES_SEEN[0] == key:
        return list(_PACKAGES_SEEN[1])
    seen = set()
    for d in importlib.metadata.distributions():
        name = d.metadata["Name"] if d.metadata is not None else None
        if name:
            seen.add(f"{re.sub(r'[-_.]+', '-', name).lower()}=={d.version}")
    _PACKAGES_SEEN = (key, sorted(seen))
    return list(_PACKAGES_SEEN[1])


def package_set_hash(packages: list[str] | None = None) -> str:
    """A short hash of the installed package set (``packages``: ``name==version`` lines, default
    :func:`installed_packages`): equal hashes, same versions of every installed package."""
    lines = sorted(set(installed_packages() if packages is None else packages))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` says)."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
"""Environment variables that set the thread pools' sizes when torch or numpy start."""


def runtime_environment() -> dict[str, Any]:
    """What a run's numbers depend on besides its config, seed and code: the torch build and the
    BLAS/LAPACK it calls, the intra- and inter-op thread counts (a sum split over two threads is
    added in another order than over one, so the last bits differ and training drifts apart), the
    CPU instruction set the kernels dispatch to, the thread pools loaded in the process, and CUDA /
    cuDNN, the CPU and GPU models, the Python version and a hash of the installed package set. Kept in a record's ``environment`` and never in the config hash: it explains why two
    runs of one configuration differ, it does not make them different experiments."""
    import torch

    build = torch.__config__.show()
    info = dict(re.findall(r"\b(BLAS_INFO|LAPACK_INFO)=([^,\s]+)", build))
    backend = re.search(r"ATen parallel backend: (.+)", torch.__config__.parallel_info())
    mkl = re.search(r"Math Kernel Library Version (\S+)", build)
    onednn = re.search(r"MKL-DNN (v[\w.]+)", build)
    import platform

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
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
        "fill_uninitialized_memory": bool(torch.utils.deterministic.fill_uninitialized_memory),
        "cpu_model": cpu_model(),
        "gpu_model": torch.cuda.get_device_name(0) if cuda else None,
        "packages_hash": package_set_hash(),  # sorted name==version of every installed distribution
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
