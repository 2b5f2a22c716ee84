#!/usr/bin/env bash
# One run on the lent GPU machine (an H200 with no internet), sized for one device call (at most
# 600 s): build pyvlmx._C with CUDA, then the stages below in order of what is most wanted, each
# started only while the time budget allows and run under a timeout of what is left.  Everything
# comes back as two files (the device returns at most 8): OUT_DIR/gpu.log, this script's whole
# output, and OUT_DIR/gpu_results.tar.gz, every log and benchmark JSON/Markdown, refreshed after
# each stage so a run cut short still returns what it finished.
#
#   bash benchmarks/gpu.sh OUT_DIR [WHEEL_DIR]
#
# WHEEL_DIR holds wheels of what the machine's Python lacks (open_clip_torch, ftfy, wcwidth:
# benchmarks/gpu_wheels.sh fetches them here); they go to a private --target folder, never over
# its torch.  The offline default model's weights are not assumed there: the attack and sweep
# benchmarks use open_clip models with random weights (timing only).
#
# Stages (GPU_SH_STAGES, comma-separated; default all, in this order):
#   build       pyvlmx._C with CUDA for sm_90 (ninja, all cores)
#   cuda-tests  every test marked needs_cuda (73: kernels against the CPU, the sweep's sync-debug step)
#   sweep-b16   benchmarks.bench_sweep on open_clip ViT-B-16, batch 256, at most 50 steps (issue goals)
#   kernels     bench_kernels, bench_jvp, bench_attack (step and batched rows, ViT-B-32)
#   sweep-b32   the same sweep on ViT-B-32
#   op-tests    the op tests in full, their error-message tests in a process of their own
#   compile     bench_compile: torch.compile of the ViT-B-16 step against eager, batch 256
# GPU_SH_BUDGET_S (default 560): no stage starts with under GPU_SH_MIN_S (45) seconds left.
# GPU_SH_DRY=1: a rehearsal on a machine without a GPU: no build (the extension already built),
# tests collected only, the benchmarks on the CPU with --quick.  None of the stage times is
# measured on the GPU yet.
set -uo pipefail
OUT=${1:?usage: gpu.sh OUT_DIR [WHEEL_DIR]}
WHEELS=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/pyvlmx-gpu.XXXXXX)
PY=${PYTHON:-python3}
BUDGET=${GPU_SH_BUDGET_S:-560}
MIN_LEFT=${GPU_SH_MIN_S:-45}
STAGES=${GPU_SH_STAGES:-build,cuda-tests,sweep-b16,kernels,sweep-b32,op-tests,compile}
DRY=${GPU_SH_DRY:-0}
exec > >(tee -a "$OUT/gpu.log") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Some images' compilers break std::string / exceptions across the libtorch boundary (seen on the
# H200 image: build_info and C++ errors crashed), so pin torch's C++ ABI, prefer the system
# compiler, and keep the build-info op out of the benchmark metadata there.
export PYVLMX_QUIET_EXT=${PYVLMX_QUIET_EXT:-1} PYVLMX_BENCH_SKIP_BUILD_INFO=${PYVLMX_BENCH_SKIP_BUILD_INFO:-1}
if [ -x /usr/bin/g++ ] && [ -z "${CXX:-}" ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
stamp() { echo "[gpu.sh +$(elapsed)s] $*"; }
pack() { tar czf "$OUT/gpu_results.tar.gz.tmp" -C "$WORK" . && mv "$OUT/gpu_results.tar.gz.tmp" "$OUT/gpu_results.tar.gz"; }
# run_stage NAME CAP_S CMD...: runs CMD under timeout min(CAP, what is left), unless too little is left
run_stage() {
  local name=$1 cap=$2; shift 2
  case ",$STAGES," in *",$name,"*) ;; *) return 0 ;; esac
  local left=$(( BUDGET - $(elapsed) ))
  if [ "$left" -lt "$MIN_LEFT" ]; then stamp "SKIPPED $name: ${left}s left of ${BUDGET}s"; return 0; fi
  local limit=$(( cap < left ? cap : left ))
  stamp "$name (limit ${limit}s)"
  local s=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  tail -25 "$WORK/$name.log"
  stamp "$name: rc=$rc in $(( $(date +%s) - s ))s"
  echo "$name rc=$rc seconds=$(( $(date +%s) - s ))" >> "$WORK/stages.txt"
  pack
  return 0
}

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

if [ "$DRY" = 1 ]; then
  DEV=cpu; QUICK=--quick; COLLECT=--co
  stamp "DRY RUN: no GPU, benchmarks on the CPU with --quick, tests collected only"
  case ",$STAGES," in *",build,"*) STAGES=${STAGES/build/}; stamp "SKIPPED build: dry run" ;; esac
else
  DEV=cuda; QUICK=; COLLECT=
  stamp "GPU"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$WORK/gpu.txt"
fi
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee "$WORK/versions.txt"

run_stage build 300 env TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYVLMX_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
  $PY setup.py -q build_ext --inplace

OPS="tests/test_ops_projected_step.py tests/test_ops_image_quality.py tests/test_ops_moments.py tests/test_ops_sketch.py tests/test_ops_attention_jvp.py"
# shellcheck disable=SC2086
run_stage cuda-tests 150 $PY -m pytest -q -p no:cacheprovider $COLLECT tests -m needs_cuda
# the sweep engine: fixed vs continuous vs bf16 vs a plain PGD loop; batch 256, at most 50 steps, 483 pairs
# shellcheck disable=SC2086
run_stage sweep-b16 240 env PYVLMX_BENCH_MODEL=open_clip:ViT-B-16 \
  $PY -m benchmarks.bench_sweep --device $DEV $QUICK --out "$WORK/sweep_ViT-B-16"
# shellcheck disable=SC2086
run_stage kernels 180 bash -c "$PY -m benchmarks.bench_kernels --device $DEV $QUICK --out '$WORK/kernels' && \
  $PY -m benchmarks.bench_jvp --device $DEV $QUICK --out '$WORK/kernels' && \
  PYVLMX_BENCH_MODEL=open_clip:ViT-B-32 PYVLMX_BENCH_PARTS=step,batched \
  $PY -m benchmarks.bench_attack --device $DEV $QUICK --out '$WORK/kernels'"
# shellcheck disable=SC2086
run_stage sweep-b32 180 env PYVLMX_BENCH_MODEL=open_clip:ViT-B-32 \
  $PY -m benchmarks.bench_sweep --device $DEV $QUICK --out "$WORK/sweep_ViT-B-32"
# the error-message tests in their own process: a crash there must not hide the rest
# shellcheck disable=SC2086
run_stage op-tests 120 bash -c "$PY -m pytest -q -p no:cacheprovider $COLLECT $OPS -k 'not errors and not samples'; \
  $PY -m pytest -q -p no:cacheprovider $COLLECT $OPS -k errors"
# shellcheck disable=SC2086
run_stage compile 150 $PY -m benchmarks.bench_compile --device $DEV $QUICK --out "$WORK/compile"
stamp "done; stages:"; cat "$WORK/stages.txt" 2>/dev/null
pack
