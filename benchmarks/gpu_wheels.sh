#!/usr/bin/env bash
# Fetch, on a machine with the package registries, the wheels benchmarks/gpu.sh needs on the GPU
# machine (Python 3.12, its own torch, timm, regex and huggingface_hub, no open_clip), into DIR
# (default .whl, which git ignores), pinned to the versions this project's requirements install.
#
#   bash benchmarks/gpu_wheels.sh [DIR]      then: device run with carry [".whl"] and
#   bash benchmarks/gpu.sh "$OUT" .whl
set -euo pipefail
DIR=${1:-.whl}
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
mkdir -p "$DIR"
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
ls -l "$DIR"
