"""cmkd-bench: a benchmark and leaderboard harness for cross-modal knowledge distillation.

Sub-packages, in the order a run goes through them: ``api`` (what plug-ins import), ``data`` and
``models`` (datasets as arrays, backbones), ``train`` (one run: teacher, student, record),
``launch`` (local, packed, SLURM), ``records`` (results on disk), ``report`` (tables, leaderboard,
analyses) and ``cli`` (the ``bench`` command).
"""

__version__ = "0.1.0"

from bench._moved import install as _install_moved_module_aliases  # noqa: E402

_install_moved_module_aliases()
