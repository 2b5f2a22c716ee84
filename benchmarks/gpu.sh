#!/usr/bin/env bash
# One run on a GPU machine (written for an H200 with no internet): build
# pyvlmx._C with CUDA, run the CUDA tests, run the GPU benchmarks, write
# everything to OUT_DIR. Takes about 8-11 minutes (the sweep benchmarks are new: not yet timed on a GPU).
#
#   bash benchmarks/gpu.sh OUT_DIR [WHEEL_DIR]
#
# WHEEL_DIR holds wheels of what the machine's Python lacks (open_clip_torch,
# ftfy, wcwidth); they go to a private --target folder, never over its torch.
# The offline default model's weights are not assumed there: the attack and
# spectra benchmarks use open_clip ViT-B-32 with random weights (timing only).
set -uo pipefail
OUT=${1:?usage: gpu.sh OUT_DIR [WHEEL_DIR]}
WHEELS=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Some images' compilers break std::string / exceptions across the libtorch
# boundary (seen on the H200 image: build_info and C++ errors crashed), so pin
# torch's C++ ABI, prefer the system compiler, and keep the build-info op out
# of the benchmark metadata there.
export PYVLMX_QUIET_EXT=${PYVLMX_QUIET_EXT:-1} PYVLMX_BENCH_SKIP_BUILD_INFO=${PYVLMX_BENCH_SKIP_BUILD_INFO:-1}
if [ -x /usr/bin/g++ ] && [ -z "${CXX:-}" ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
t0=$(date +%s)
stamp() { echo "[gpu.sh +$(( $(date +%s) - t0 ))s] $*"; }

if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  stamp "installing carried wheels"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/pyvlmx-site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/pyvlmx-site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
abi=$($PY -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
export CFLAGS="${CFLAGS:-} -D_GLIBCXX_USE_CXX11_ABI=$abi"
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -D_GLIBCXX_USE_CXX11_ABI=$abi"

stamp "GPU"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
stamp "building pyvlmx._C with CUDA (sm_90)"
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYVLMX_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  $PY setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }

stamp "CUDA tests (CUDA against CPU)"
OPS="tests/test_ops_projected_step.py tests/test_ops_image_quality.py tests/test_ops_moments.py tests/test_ops_sketch.py tests/test_ops_attention_jvp.py"
$PY -m pytest -q -p no:cacheprovider $OPS tests/test_attacks.py tests/test_continuous.py -m needs_cuda 2>&1 | tee "$OUT/tests_cuda.log" | tail -15
# the error-message tests in their own process: a crash there must not hide the rest
$PY -m pytest -q -p no:cacheprovider $OPS -k "not errors and not samples" 2>&1 | tee "$OUT/tests_ops.log" | tail -5
$PY -m pytest -q -p no:cacheprovider $OPS -k "errors" 2>&1 | tee "$OUT/tests_errors.log" | tail -5

stamp "GPU benchmarks"
$PY -m benchmarks.bench_kernels --device cuda --out "$OUT" 2>&1 | tail -30
# batched JVPs: fused attention_jvp against vmap(jvp) over math SDPA (T = 1, 16, 64)
$PY -m benchmarks.bench_jvp --device cuda --out "$OUT" 2>&1 | tail -12
PYVLMX_BENCH_MODEL=open_clip:ViT-B-32 PYVLMX_BENCH_PARTS=step,batched \
  $PY -m benchmarks.bench_attack --device cuda --out "$OUT" 2>&1 | tail -10
# the sweep engine: fixed vs continuous vs bf16 vs a plain PGD loop; batch 256, at most 50 steps, 483 pairs
for M in ViT-B-16 ViT-B-32; do
  stamp "sweep throughput, open_clip:$M"
  PYVLMX_BENCH_MODEL=open_clip:$M timeout 300 $PY -m benchmarks.bench_sweep --device cuda --out "$OUT/sweep_$M" \
    2>&1 | tail -12
done
stamp "done"
