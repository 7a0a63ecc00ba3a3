"""Shared fixtures: a CPU-sized synthetic configuration that trains in seconds."""

from __future__ import annotations

import pytest

TINY = {
    "synthetic": {"n_train": "480", "n_test": "180", "width": "8"},
    "train": {"epochs": "3", "teacher_epochs": "4", "batch_size": "32"},
}


def tiny(extra: dict | None = None) -> dict:
    out = {k: dict(v) for k, v in TINY.items()}
    for k, v in (extra or {}).items():
        out.setdefault(k, {}).update(v)
    return out


def holm_by_hand(ps: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, written out (an oracle independent of statsmodels)."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adj, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adj[i] = running
    return adj


@pytest.fixture
def tiny_overrides():
    return tiny()


@pytest.fixture(scope="module")
def one_thread():
    """One CPU thread per training process, as `-j` workers use (two threads stall on a shared machine).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def registries_restored_after_each_module():
    """Plug-ins a test module registers (``flaky``, ``gated``, ``markupkd``...) leave with it, so
    ``--methods all`` and the built-in hash checks of later modules see the built-ins only."""
    from bench.api.registry import BACKBONES, DATASETS, METHODS

    regs = (METHODS, DATASETS, BACKBONES)
    for reg in regs:
        reg.load_builtins()  # loaded before the snapshot: a module imported once never registers again
    saved = [dict(reg._entries) for reg in regs]
    yield
    for reg, entries in zip(regs, saved):
        reg._entries.clear()
        reg._entries.update(entries)
