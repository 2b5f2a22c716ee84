#!/usr/bin/env bash
# GPU check of the compiled kernels (issue 3), meant to finish in under 8 minutes
# on one GPU: build pyvlmx._C with CUDA in place, run the kernel tests (CPU and
# CUDA, CUDA compared against CPU), then the kernel benchmark on the GPU.
#
#   bash benchmarks/run_gpu_kernels.sh [OUT_DIR]        (default benchmarks/results)
#
# Environment: PYTHON (default python3), TORCH_CUDA_ARCH_LIST (default 9.0),
# MAX_JOBS (default: all cores), QUICK=1 for the short benchmark.
set -uo pipefail
PY=${PYTHON:-python3}
OUT_DIR=${1:-benchmarks/results}
mkdir -p "$OUT_DIR"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export PYVLMX_CUDA=1 PYTHONUNBUFFERED=1
# Some images put a compiler on PATH whose default std::string ABI differs from
# torch's; a std::string crossing into libtorch then crashes.  Pin torch's ABI.
# Prefer the system compiler when the image also carries another one on PATH.
if [ -x /usr/bin/g++ ] && [ -z "${CXX:-}" ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
echo "compiler: $(${CXX:-g++} --version | head -1)"
abi=$($PY -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
export CFLAGS="${CFLAGS:-} -D_GLIBCXX_USE_CXX11_ABI=$abi"
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -D_GLIBCXX_USE_CXX11_ABI=$abi"

start=$(date +%s)
echo "== build (CUDA arch $TORCH_CUDA_ARCH_LIST, $MAX_JOBS jobs)"
if ! $PY setup.py build_ext --inplace > "$OUT_DIR/build.log" 2>&1; then
  grep -E "error|Error" "$OUT_DIR/build.log" | head -40
  tail -20 "$OUT_DIR/build.log"
  exit 1
fi
echo "built in $(( $(date +%s) - start )) s"
PYVLMX_QUIET_EXT=1 $PY -c "import pyvlmx, torch; print(pyvlmx.build_info()); print('devices', torch.cuda.device_count(), torch.cuda.get_device_name(0))"

echo "== tests"
TESTS="tests/test_ops_projected_step.py tests/test_ops_image_quality.py tests/test_ops_moments.py tests/test_ops_sketch.py"
# error-message tests run in their own process: a crash there must not hide the rest
$PY -m pytest -q -p no:cacheprovider $TESTS -k "not errors" -rs 2>&1 | tee "$OUT_DIR/tests_gpu.log" | tail -40
$PY -m pytest -q -p no:cacheprovider $TESTS -k "errors" 2>&1 | tee "$OUT_DIR/tests_gpu_errors.log" | tail -15
echo "tests done at $(( $(date +%s) - start )) s"

echo "== benchmark"
if [ "${QUICK:-0}" = "1" ]; then q=--quick; else q=; fi
PYVLMX_BENCH_SKIP_BUILD_INFO=${PYVLMX_BENCH_SKIP_BUILD_INFO:-0} $PY -m benchmarks.bench_kernels --device cuda $q --out "$OUT_DIR" 2>&1 | tail -40
echo "all done in $(( $(date +%s) - start )) s"
