"""Saving figures: every figure the harness draws is written as PNG (for pages) and PDF (for papers)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (works on headless nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def in_default_style(draw: F) -> F:
    """Run ``draw`` under matplotlib's default style, restoring the caller's settings afterwards.

    Why: a figure's bytes must depend on its data only. matplotlib's style is process-global and
    libraries change it behind one's back (optuna's plot functions call ``plt.style.use("ggplot")``),
    so a leaderboard drawn after a tuning plot in the same process came out in another style; and
    a style the harness sets must not leak into a user's own plots either."""

    @functools.wraps(draw)
    def drawn(*args: Any, **kwargs: Any) -> Any:
        import matplotlib
        import matplotlib.style

        with matplotlib.rc_context(), matplotlib.style.context("default"):
            return draw(*args, **kwargs)

    return drawn  # type: ignore[return-value]


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
