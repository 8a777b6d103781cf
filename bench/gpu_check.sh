#!/usr/bin/env bash
# GPU check (<= 5 minutes): train Lite0 and DenseNet-121 one epoch with mixed precision on
# synthetic data, then evaluate, analyze and explain on the GPU; prints images/s and the
# data-path ratio (bench/gpu_check.py). On a machine without a CUDA GPU: one line, exit 0.
#
#   bash bench/gpu_check.sh [gpu_check.py options]
#
# On a bare GPU machine whose Python lacks cxrlab's dependencies, put their wheels in .whl/
# (bench/gpu_wheels.sh downloads them here for Python 3.12); they are installed into
# /tmp/site and cxrlab runs from src/ without an install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); nothing to check"
  exit 0
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec timeout 300 "$PY" bench/gpu_check.py "$@"
