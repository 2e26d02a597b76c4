#!/usr/bin/env bash
# One prepared GPU check (issue 9, item 5), for a machine with a CUDA GPU, run from the repo
# root:   bash benchmarks/gpu_check.sh
# Steps (each under its own timeout; about 9.5 minutes in all):
#   1. environment (GPU, torch, CUDA, triton)                                    30 s
#   2. the Triton kernel tests compiled for the GPU (TRITON_INTERPRET=0)       170 s
#   3. bitvote bench --device cuda --layers --model reactnet18 (vs cuDNN)       150 s
#   4. benchmarks/gpu_train_speed.py (reactnet18 popcount/mv/tap vs resnet18)   120 s
#   5. bitvote reproduce --preset gpu1 --minutes 1.4 (needs CIFAR-10 under $BITVOTE_DATA:
#      the GPU machine cannot download it; without it this step prints one error line)  100 s
# Everything printed goes to $OUT/gpu_check.log (./gpu_check.log without $OUT) and stdout.
# It installs nothing (the GPU machine has no network; torch with CUDA ships triton).
set -u
cd "$(dirname "$0")/.."
LOG="${OUT:+$OUT/gpu_check.log}"
LOG="${LOG:-./gpu_check.log}"
exec > >(tee -a "$LOG") 2>&1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_INTERPRET=0
PY="${PYTHON:-python}"
START=$(date +%s)

step() {  # step SECONDS CMD...
    local t=$1
    shift
    echo "=== [$(( $(date +%s) - START ))s] $* (timeout ${t}s)"
    timeout -k 5 "$t" "$@"
    local rc=$?
    [ $rc -eq 124 ] && echo "=== TIMED OUT after ${t}s"
    echo "=== rc=$rc"
}

step 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__, \
  \"device\", torch.cuda.get_device_name(), \"cc\", torch.cuda.get_device_capability())'"

if $PY -c "import pytest, hypothesis" 2>/dev/null; then
    step 170 $PY -m pytest -q -p no:cacheprovider tests/test_gpu_kernels.py
else
    echo "=== SKIPPED kernel tests: pytest/hypothesis are not installed here (this script installs nothing)"
fi

step 150 $PY -m bitvote bench --device cuda --layers --model reactnet18 --voter mv
step 120 $PY benchmarks/gpu_train_speed.py --steps 10 --rounds 2

if $PY -m bitvote reproduce --help >/dev/null 2>&1; then
    step 100 $PY -m bitvote reproduce --preset gpu1 --device cuda --minutes 1.4 --no-download \
        --out "${OUT:-.}/reproduce-gpu1"
else
    echo "=== SKIPPED reproduce: 'bitvote reproduce' does not exist in this checkout"
fi
echo "=== done in $(( $(date +%s) - START ))s; log: $LOG"
