#!/usr/bin/env bash
# Issue 12's recipe grid on a lent GPU, after the short GPU check (bench/gpu_check.sh).
#
# Every recipe of the grid is trained on each of the 5 patient-grouped folds of the real dev
# set (bench/bench_cv.py), several recipes at once on the one GPU, in fp32 (`--precision 32`,
# as on a CPU). What comes back: gpu_check.json/.log and cv_folds.tar.gz, the saved folds
# (WORK/<group>/<recipe>/fold<f>.npz) and logs, which bench_cv.py scores anywhere:
#
#   bench_cv.py --work W --recipes plain,... (the saved folds are reused, nothing retrains)
#
# The dev images must be inside the checkout to travel: copy ../shared/data/nih-cxr14-dev's
# images/ and metadata to .gpudata/nih-cxr14-dev (git-ignored),
# the wheels to .whl (bench/gpu_wheels.sh), and carry both. On a machine without CUDA: exits.
#
#   bash bench/gpu_cv.sh [grid seconds, default 380]
#   SMOKE=1 bash bench/gpu_cv.sh   # on the CPU: 40 images, 2 folds, 1 epoch (a dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
GRID_S=${1:-380}
DATA=${DATA:-.gpudata/nih-cxr14-dev}
OUT=${OUT:-/tmp/gpu_cv_out}
WORK=${WORK:-/tmp/cvgrid}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
DEVICE=cuda; PRECISION=32; SMALL=()
if [ -n "${SMOKE:-}" ]; then
  DEVICE=cpu; SMALL=(--n-images 40 --folds 2 --epochs 1)
elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_cv: no CUDA GPU visible to $PY; nothing to run"
  exit 0
fi
if [ -z "${SMOKE:-}" ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
[ -z "${SMOKE:-}" ] && nvidia-smi -L
"$PY" -c "import torch, timm, lightning; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__)"

# 1. the GPU check: train/evaluate/analyze/explain on the GPU, images/s, data-path ratio
if [ -z "${SMOKE:-}" ]; then
  start=$SECONDS
  timeout 120 "$PY" bench/gpu_check.py --patients 300 --json "$OUT/gpu_check.json" \
    >"$OUT/gpu_check.log" 2>&1
  echo "gpu_check: exit $? in $((SECONDS - start)) s"; tail -25 "$OUT/gpu_check.log"
fi

# 2. the grid: one bench_cv process per group, all at once (each with its own work folder)
export OMP_NUM_THREADS=1
groups=(
  "plain,ep16" "plain_s1,plain_s2,ep4" "lr1e-4,lr1e-3" "ld0.8,ld0.65" "noaug,strongaug"
  "bs16,drop0.5" "posw,wd0.05" "simple_cnn" "previous" "plain_s3,plain_s4"
)
pids=()
for i in "${!groups[@]}"; do
  extra=(); [ "$i" = 0 ] && extra=(--tta)
  timeout "$GRID_S" "$PY" bench/bench_cv.py --data-root "$DATA" --work "$WORK/g$i" \
    --recipes "${groups[$i]}" --device $DEVICE --precision $PRECISION --bootstrap 100 \
    "${extra[@]}" "${SMALL[@]}" \
    >"$WORK/g$i.log" 2>&1 &
  pids+=($!)
done
for size in 256 288; do
  timeout "$GRID_S" "$PY" bench/bench_cv.py --data-root "$DATA" --work "$WORK/s$size" \
    --image-size "$size" --recipes plain --device $DEVICE --precision $PRECISION \
    --bootstrap 100 "${SMALL[@]}" \
    >"$WORK/s$size.log" 2>&1 &
  pids+=($!)
done
start=$SECONDS
for pid in "${pids[@]}"; do wait "$pid"; done
echo "grid: $((SECONDS - start)) s"
[ -z "${SMOKE:-}" ] && nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
for log in "$WORK"/*.log; do echo "== $log"; grep -E "fold [0-9]|Error|error" "$log" | tail -12; done
(cd "$WORK" && find . -name 'fold*.npz' -o -name '*.log' -o -name bench_cv.json |
  tar czf "$OUT/cv_folds.tar.gz" -T -)
ls -la "$OUT"
