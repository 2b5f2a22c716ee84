#!/usr/bin/env bash
# One run on a GPU machine (H200 here): build pyvlmx._C with CUDA, run the
# CUDA tests, run the GPU benchmarks, write everything to OUT_DIR.
#
#   bash benchmarks/gpu.sh OUT_DIR [WHEEL_DIR]
#
# For a machine without internet: WHEEL_DIR holds wheels of what its Python
# lacks (open_clip_torch, ftfy, wcwidth); they are installed to a private
# --target folder, never over the machine's torch. Budget: under 8 minutes.
set -uo pipefail
OUT=${1:?usage: gpu.sh OUT_DIR [WHEEL_DIR]}
WHEELS=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYVLMX_QUIET_EXT=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
t0=$(date +%s)
stamp() { echo "[gpu.sh +$(( $(date +%s) - t0 ))s] $*"; }

if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  stamp "installing carried wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/pyvlmx-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/pyvlmx-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}

stamp "nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
stamp "building pyvlmx._C with CUDA (sm_90)"
rm -rf build pyvlmx/_C*.so
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYVLMX_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
  $PY setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
$PY -m pyvlmx info | tee "$OUT/info.txt"

stamp "CUDA tests"
$PY -m pytest -q -x -m needs_cuda -p no:cacheprovider tests 2>&1 | tee "$OUT/tests_cuda.log" | tail -25
stamp "kernel tests (CPU and CUDA paths)"
$PY -m pytest -q -p no:cacheprovider tests/test_ops_*.py tests/test_build.py 2>&1 | tee "$OUT/tests_ops.log" | tail -15

stamp "GPU benchmarks"
timeout ${BENCH_TIMEOUT:-300} $PY -m benchmarks --device cuda --out "$OUT/bench" 2>&1 | tee "$OUT/bench.log" | tail -80
cp "$OUT/bench/summary.md" "$OUT/summary.md" 2>/dev/null
stamp "done"
