#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
#   system packages (Debian): chromium (the HTML leaderboard is tested in a real headless browser),
#     texlive + poppler-utils (every generated LaTeX table is compiled and rendered to PNG),
#     strace (the trackers are run under a syscall trace: no network lookup)
#   a single-node SLURM cluster on localhost (slurm/cluster.sh: Debian slurm + munge + accounting)
#   python: the pinned torch stack + this package with its test extras (scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/apt.sh chromium fonts-dejavu-core texlive-latex-base texlive-latex-recommended texlive-fonts-recommended poppler-utils strace
bash scripts/setup.sh --test
bash slurm/cluster.sh up           # a real single-node SLURM on localhost for tests/test_slurm.py
exec .venv/bin/python -m pytest -q "$@"
