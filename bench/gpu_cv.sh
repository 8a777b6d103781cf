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
#   CHECK=0 bash bench/gpu_cv.sh   # the grid only (e.g. a second call finishing the first's:
#                                  # folds already saved in WORK are not retrained)
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
if [ -z "${SMOKE:-}" ] && [ "${CHECK:-1}" != 0 ]; then
  start=$SECONDS
  timeout 120 "$PY" bench/gpu_check.py --patients 300 --json "$OUT/gpu_check.json" \
    >"$OUT/gpu_check.log" 2>&1
  echo "gpu_check: exit $? in $((SECONDS - start)) s"; tail -25 "$OUT/gpu_check.log"
fi

# 2. the grid: one bench_cv process per group, all at once (each with its own work folder).
# Round 2 (round 1, the grid in docs/benchmarks.md, is in git history): each change twice
# (seeds 0 and 1: NAME_s1), to be scored against plain and plain_s1 of round 1's folds.
export OMP_NUM_THREADS=1
groups=(
  "mixup0.2,mixup0.2_s1" "mixup1,mixup1_s1" "ls0.1,ls0.1_s1" "dpr0.2,dpr0.2_s1"
  "lpft,lpft_s1" "blr0.3,blr0.3_s1"
)
ALL14=Atelectasis,Effusion,Infiltration,Pneumothorax,Cardiomegaly,Mass,Nodule,Pneumonia
ALL14=$ALL14,Consolidation,Edema,Emphysema,Fibrosis,Pleural_Thickening,Hernia
pids=()
for i in "${!groups[@]}"; do
  timeout "$GRID_S" "$PY" bench/bench_cv.py --data-root "$DATA" --work "$WORK/g$i" \
    --recipes "${groups[$i]}" --device $DEVICE --precision $PRECISION --bootstrap 100 \
    "${SMALL[@]}" >"$WORK/g$i.log" 2>&1 &
  pids+=($!)
done
# the four targets trained beside the other ten NIH findings (auxiliary outputs), scored on
# the four only, on the same folds (folds and val parts use the first four)
for seeds in "plain" "plain_s1"; do
  timeout "$GRID_S" "$PY" bench/bench_cv.py --data-root "$DATA" --work "$WORK/aux_$seeds" \
    --pathologies "$ALL14" --fold-targets 4 --recipes "$seeds" --device $DEVICE \
    --precision $PRECISION --bootstrap 100 "${SMALL[@]}" >"$WORK/aux_$seeds.log" 2>&1 &
  pids+=($!)
done
# smaller caches: cheaper, so an ensemble of seeds could fit a CPU budget
for size in 192 160; do
  for seeds in "plain,plain_s2" "plain_s1,plain_s3"; do
    timeout "$GRID_S" "$PY" bench/bench_cv.py --data-root "$DATA" \
      --work "$WORK/s${size}_${seeds%%,*}" --image-size "$size" --recipes "$seeds" \
      --device $DEVICE --precision $PRECISION --bootstrap 100 "${SMALL[@]}" \
      >"$WORK/s${size}_${seeds%%,*}.log" 2>&1 &
    pids+=($!)
  done
done
start=$SECONDS
for pid in "${pids[@]}"; do wait "$pid"; done
echo "grid: $((SECONDS - start)) s"
[ -z "${SMOKE:-}" ] && nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv
for log in "$WORK"/*.log; do echo "== $log"; grep -E "fold [0-9]|Error|error" "$log" | tail -12; done
(cd "$WORK" && find . -name 'fold*.npz' -o -name '*.log' -o -name bench_cv.json |
  tar czf "$OUT/cv_folds.tar.gz" -T -)
ls -la "$OUT"
