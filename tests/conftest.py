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


@pytest.fixture
def tiny_overrides():
    return tiny()
