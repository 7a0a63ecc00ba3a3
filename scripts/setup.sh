#!/usr/bin/env bash
# Set up cmkd-bench in ./.venv (idempotent): the pinned torch stack, then the package itself.
# Usage: bash scripts/setup.sh [--test]     (--test also installs the test extras)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# torch/torchvision/torchaudio first, pinned (constraints.txt explains why)
if ! .venv/bin/python -c "import torch, torchvision, torchaudio" >/dev/null 2>&1; then
  echo "installing the pinned torch stack (about 2 minutes, 4.7 GB)..."
  .venv/bin/python -m pip install -q -c constraints.txt torch torchvision torchaudio
fi
extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi
.venv/bin/python -m pip install -q -c constraints.txt -e ".${extras}"
.venv/bin/python -c "import bench, torch; print('cmkd-bench', bench.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
