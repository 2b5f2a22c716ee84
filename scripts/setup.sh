#!/usr/bin/env bash
# Set up pyvlmx in ./.venv: pinned torch from local disk, dependencies from
# PyPI, and the compiled extension (C++ always, CUDA sources when a toolkit is
# found). Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
# Optional ImageBind family, without its audio/video dependencies (see the file).
.venv/bin/python -m pip install -q --no-deps -r requirements-imagebind.txt
# The toolkit on PATH may be a wrapper script; setup.py follows it to the real
# nvcc. Hopper (H100/H200) by default; override with TORCH_CUDA_ARCH_LIST.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
.venv/bin/python -m pyvlmx.data.samples --install
.venv/bin/pyvlmx info
