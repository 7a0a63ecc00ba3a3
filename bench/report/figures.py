"""Saving figures: every figure the harness draws is written as PNG (for pages) and PDF (for papers)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (works on headless nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


STABLE_METADATA = {".png": {"Software": None}, ".pdf": {"CreationDate": None, "Producer": None, "Creator": None}}
"""What a saved figure leaves out so that the same figure gives the same bytes: the PDF's creation
time, and the library versions (a published figure regenerated with a newer matplotlib would
differ by its version string alone)."""


def save_figure(fig, out_base: Path) -> list[Path]:
    """Write ``out_base.png`` and ``out_base.pdf`` (no timestamps, :data:`STABLE_METADATA`), close
    the figure, return both paths."""
    out_base = Path(out_base)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_base.with_suffix(".png"), out_base.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, metadata=STABLE_METADATA[p.suffix])
    pyplot().close(fig)
    return paths
