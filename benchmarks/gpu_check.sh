#!/usr/bin/env bash
# gpu_check.sh: the GPU path's first real run, one prepared script (under 9 minutes).
#
# Usage, from the repository root of a checkout on a machine with a CUDA GPU:
#     bash benchmarks/gpu_check.sh [DATA.bvd]
#
# On the lent GPU machine (torch 2.11, Triton 3.6, python3.12, no dataset, no network, at most
# 64 MiB carried along with the checkout, 10 minutes a command):
#   1. here, pack CIFAR-10 once (about 56 MB for the JPEG copy's 60,000 images):
#          bitvote data pack /path/to/cifar10-images --out cifar10.bvd
#      (*.bvd is git-ignored: the file must be carried explicitly);
#   2. run   bash benchmarks/gpu_check.sh cifar10.bvd   there with timeout 600 s and the
#      checkout's cifar10.bvd carried (or set $BITVOTE_DATA to the file; ./cifar10.bvd is
#      also found on its own). Without a pack, the reproduction step is skipped with one line.
#   Optional: wheels carried in a folder named by $BITVOTE_WHEELS (e.g. Pillow, pytest,
#   hypothesis for cp312) are installed into a temporary folder first, without network; the
#   pack needs Pillow to decode, the last step needs pytest and hypothesis.
#
# Steps, most valuable first; each has its own timeout and prints every row as it is
# measured (python3 -u, flushed), so a step cut short keeps what it measured:
#   1. environment: card, driver, torch / CUDA / Triton versions                      30 s
#   2. smoke: every epilogue of the Triton conv vs the CPU engine (compiled in the
#      background during step 1), then verify on 3 models                             60 s
#   3. per-layer Triton kernels vs cuDNN fp32 (TF32 off / on), fp16, bf16             120 s
#   4. whole model: GPU engine vs PyTorch eager fp32 / bf16 (reactnet18, mv)           45 s
#   5. training images/s: reactnet18 popcount / mv / tap vs float resnet18             80 s
#   6. bitvote reproduce --preset gpu1 (reactnet18; $REPRO_MODELS to change) on the
#      pack, its --minutes sized to what is left                                 what is left
#   7. the kernel tests compiled for the GPU, few hypothesis examples                 >= 45 s
# Timeouts (plus 5 s grace each) sum to at most $BUDGET seconds (default 520).
# Everything printed goes to $OUT/gpu_check.log (./gpu_check.log without $OUT) and stdout;
# the reproduction's small result files (CSV, JSON, Markdown, logs) go to $OUT/reproduce-gpu1.
set -u
DATA="${1:-${BITVOTE_DATA:-}}"
[ -n "$DATA" ] && DATA="$(realpath -m -- "$DATA")"  # before the cd below: relative to the caller
cd "$(dirname "$0")/.."
LOG="${OUT:+$OUT/gpu_check.log}"
LOG="${LOG:-./gpu_check.log}"
exec > >(tee -a "$LOG") 2>&1
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITON_INTERPRET=0
PY="${PYTHON:-python3}"
BUDGET="${BUDGET:-520}"
START=$(date +%s)
WORK="$(mktemp -d)"
export BITVOTE_CACHE="${BITVOTE_CACHE:-$WORK/cache}"

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( BUDGET - $(elapsed) )); }

step() {  # step SECONDS CMD...: run CMD under a timeout, never past the budget
    local t=$1
    shift
    local l
    l=$(( $(left) - 5 ))
    [ "$t" -gt "$l" ] && t=$l
    if [ "$t" -lt 10 ]; then
        echo "=== [$(elapsed)s] SKIPPED (budget spent): $*"
        return
    fi
    echo "=== [$(elapsed)s] $* (timeout ${t}s)"
    timeout -k 5 "$t" "$@"
    local rc=$?
    [ $rc -eq 124 ] && echo "=== TIMED OUT after ${t}s"
    echo "=== rc=$rc"
}

if [ -n "${BITVOTE_WHEELS:-}" ] && ls "$BITVOTE_WHEELS"/*.whl >/dev/null 2>&1; then
    echo "=== installing the carried wheels from $BITVOTE_WHEELS into a temporary folder"
    "$PY" -m pip install -q --no-index --no-deps --target "$WORK/pylib" "$BITVOTE_WHEELS"/*.whl \
        && export PYTHONPATH="$PYTHONPATH:$WORK/pylib"
fi

# the CPU engine (the smoke test's reference) compiles in the background meanwhile
( timeout 60 "$PY" -c "from bitvote.packed.build import lib; lib()" >"$WORK/engine-build.log" 2>&1 ) &
BUILD=$!

# 1. environment
step 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  $PY -c 'import os, sys, importlib.util as u, torch, triton; \
print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__, \"cpus\", os.cpu_count()); \
print(\"device\", *((torch.cuda.get_device_name(), \"cc\", torch.cuda.get_device_capability()) if torch.cuda.is_available() else (\"none: no CUDA\",))); \
print(\"present:\", *[m for m in (\"numpy\", \"PIL\", \"pytest\", \"hypothesis\") if u.find_spec(m)]); \
print(\"missing:\", *[m for m in (\"numpy\", \"PIL\", \"pytest\", \"hypothesis\") if not u.find_spec(m)])'"

# 2. smoke: each epilogue against the CPU engine, then verify (TF32 would show here)
if wait "$BUILD"; then
    REF=engine
else
    REF=torch
    echo "=== the CPU engine did not build (the smoke test compares with the PyTorch layer):"
    tail -n 3 "$WORK/engine-build.log"
fi
step 60 "$PY" -u benchmarks/gpu_smoke.py --reference "$REF"

# 3. per layer vs cuDNN; 4. whole model
step 120 "$PY" -u -m bitvote bench --device cuda --layers
step 45 "$PY" -u -m bitvote bench --device cuda --model reactnet18 --voter mv

# 5. training speed
step 80 "$PY" -u benchmarks/gpu_train_speed.py --steps 10 --rounds 1

# 6. the reproduction, on the pack, in what is left (tests keep 45 s)
[ -z "$DATA" ] && [ -f ./cifar10.bvd ] && DATA="$PWD/cifar10.bvd"
if [ -z "$DATA" ] || [ ! -e "$DATA" ]; then
    echo "=== SKIPPED reproduce: no data (pass DATA.bvd, set \$BITVOTE_DATA, or carry ./cifar10.bvd)"
elif ! "$PY" -c "import PIL" 2>/dev/null && [ -f "$DATA" ]; then
    echo "=== SKIPPED reproduce: decoding $DATA needs Pillow (carry a wheel: \$BITVOTE_WHEELS)"
else
    T=$(( $(left) - 45 - 10 ))
    if [ "$T" -lt 60 ]; then
        echo "=== SKIPPED reproduce: ${T}s left for it"
    else
        MIN=$(awk -v t="$T" 'BEGIN { printf "%.2f", (t - 30) / 60 }')  # 30 s: decoding, evaluation
        step "$T" "$PY" -u -m bitvote reproduce --preset gpu1 --models "${REPRO_MODELS:-reactnet18}" \
            --device cuda --minutes "$MIN" --no-download --data "$DATA" --out "$WORK/reproduce-gpu1"
        if [ -n "${OUT:-}" ] && [ -d "$WORK/reproduce-gpu1" ]; then
            (cd "$WORK" && find reproduce-gpu1 -type f \( -name '*.csv' -o -name '*.json' -o -name '*.md' \
                -o -name '*.log' -o -name '*.txt' \) -size -2M -exec cp --parents {} "$OUT" \;)
        fi
    fi
fi

# 7. the kernel tests on the GPU, few examples (each new shape or rule is a compilation)
if "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
    export BITVOTE_GPU_EXAMPLES="${BITVOTE_GPU_EXAMPLES:-4}"
    step $(( $(left) - 5 )) "$PY" -u -m pytest -x -q \
        -p no:cacheprovider tests/test_gpu_device.py tests/test_gpu_kernels.py
else
    echo "=== SKIPPED kernel tests: pytest/hypothesis are not installed here (carry wheels: \$BITVOTE_WHEELS)"
fi
rm -rf "$WORK"
echo "=== done in $(elapsed)s; log: $LOG"
