"""The training device and determinism: ``--device`` resolution and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic kernels.

    On CPU this makes a run bit-reproducible. On CUDA, deterministic mode also turns off
    cuDNN autotuning (torchdistill #503/#504: the same seed gave different results with
    benchmarking on) and sets the cuBLAS workspace variable that deterministic GEMMs need.

    Deterministic mode would also fill every new tensor with NaN
    (``torch.utils.deterministic.fill_uninitialized_memory``), which only matters to a program
    that reads memory it never wrote; no operator does, nor does any method here (each
    ``torch.empty`` is written in full before it is read), so the results are the same bits and
    the fill, about a tenth of a small CPU run (every activation, gradient and evaluation batch),
    is turned off. Recorded in a record's ``environment``.
    """
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


KEEP_FREED_BYTES = 128 << 20
"""How much freed memory a CPU run's process keeps for reuse (:func:`keep_freed_memory`)."""

_KEPT = False


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of handing it back to the kernel at once.

    By default, blocks of a few MB (an evaluation batch's activations) are returned as soon as
    they are freed, and every next batch faults fresh zeroed pages in again: on a small CPU run
    that is about a seventh of its evaluation time. Blocks up to 32 MB (glibc's largest
    threshold) come from the heap, and up to :data:`KEEP_FREED_BYTES` of free memory stays
    there. Once per process; a no-op where the C library is not glibc. Numbers are untouched."""
    global _KEPT
    if _KEPT:
        return
    _KEPT = True
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, KEEP_FREED_BYTES)


def resolve_device(name: str | None) -> torch.device:
    """``auto`` picks CUDA when present; ``cpu``, ``cuda`` and ``cuda:N`` are checked against this
    machine, so a typo fails before any run starts instead of inside every run."""
    from bench.api.errors import ConfigError

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N (cmkd-bench runs on CPU and CUDA)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev
