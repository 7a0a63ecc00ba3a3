"""Old module paths keep working (issue #18 moved ``bench/`` into sub-packages).

Plug-ins, notebooks and pickles made before the move import ``bench.method``, ``bench.config``,
``bench.runner`` and so on. A finder on ``sys.meta_path`` answers those names with a module that
re-exports everything the old module had, from its new home(s), and a ``DeprecationWarning`` that
says where it lives now. It answers only these exact names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED: dict[str, tuple[str, ...]] = {
    "bench.errors": ("bench.api.errors",),
    "bench.paths": ("bench.api.names",),
    "bench.config": ("bench.api.config",),
    "bench.registry": ("bench.api.registry",),
    "bench.method": ("bench.api.method",),
    "bench.cache": ("bench.data.cache",),
    "bench.prepared": ("bench.data.prepared",),
    "bench.audio": ("bench.data.audio",),
    "bench.vision": ("bench.data.vision",),
    "bench.utils": ("bench.records.files", "bench.records.provenance", "bench.train.device"),
    "bench.results": ("bench.records.store",),
    "bench.runner": ("bench.train.run", "bench.train.resolve", "bench.train.loop", "bench.train.stop",
                     "bench.train.teachers"),
    "bench.engine": ("bench.train.step",),
    "bench.speed": ("bench.train.acceleration", "bench.train.placement", "bench.train.teacher_outputs",
                    "bench.api.config"),
    "bench.speedbench": ("bench.train.benchmark",),
    "bench.executors": ("bench.launch.grid", "bench.launch.local", "bench.launch.packed"),
    "bench.slurm": ("bench.launch.slurm",),
    "bench.tables": ("bench.report.tables",),
    "bench.studies": ("bench.report.studies",),
    "bench.leaderboard": ("bench.report.leaderboard",),
    "bench.leaderboard_html": ("bench.report.leaderboard_page",),
    "bench.figures": ("bench.report.figures",),
    "bench.analysis": ("bench.report.analysis",),
    "bench.reportio": ("bench.report.output",),
}
"""old module -> the modules its names now live in."""


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return None  # a fresh module, filled below

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        homes = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {', '.join(homes)}; import from there (or from bench.api)",
                      DeprecationWarning, stacklevel=2)
        for home in homes:
            real = importlib.import_module(home)
            for name, value in vars(real).items():
                if not (name.startswith("__") and name.endswith("__")):
                    module.__dict__.setdefault(name, value)


def install() -> None:
    # first in line, but only for these exact names: a stale copy of an old module left on disk
    # (or found by an editable install's finder) must not shadow the alias
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
