#!/usr/bin/env bash
# Set up pyvlmx in ./.venv: pinned torch from local disk, dependencies from
# PyPI, and the compiled extension (C++ always, CUDA sources when a toolkit is
# found), installed in editable mode.
#
# Idempotent, and a second run with nothing changed takes seconds:
# * pip runs only when a requirement file changed since the last successful
#   install, or an installed package no longer satisfies it;
# * the extension is rebuilt only when its inputs changed (csrc/, setup.py,
#   pyproject.toml, torch, the CUDA settings below): their hash is kept in
#   .venv/.pyvlmx-build.sha256.  A rebuild is incremental: object files stay in
#   build/ and ninja recompiles only what changed.
# PYVLMX_SETUP_FORCE=1 reinstalls and rebuilds regardless.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VPY=.venv/bin/python
FORCE=${PYVLMX_SETUP_FORCE:-0}
if [ ! -x "$VPY" ]; then
  "$PY" -m venv .venv
  "$VPY" -m pip install -q --upgrade pip
fi

# --- dependencies ------------------------------------------------------------------------
REQ_FILES="requirements.txt requirements-dev.txt requirements-imagebind.txt requirements-torchattacks.txt"
REQ_STAMP=.venv/.pyvlmx-requirements.sha256
req_hash=$(cat $REQ_FILES | sha256sum | cut -d' ' -f1)
satisfied() {
  # every requirement of the files installed at an allowed version (no network, about a second)
  "$VPY" - $REQ_FILES <<'PY' 2>/dev/null
import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement
for name in sys.argv[1:]:
    for raw in open(name):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        try:
            got = version(req.name)
        except PackageNotFoundError:
            sys.exit(1)
        if not req.specifier.contains(got.split("+")[0], prereleases=True):
            sys.exit(1)
PY
}
if [ "$FORCE" != 1 ] && [ -f "$REQ_STAMP" ] && [ "$(cat "$REQ_STAMP")" = "$req_hash" ] && satisfied; then
  echo "pyvlmx setup: requirements already satisfied"
else
  "$VPY" -m pip install -q -r requirements-dev.txt
  # Optional ImageBind family, without its audio/video dependencies (see the file).
  "$VPY" -m pip install -q --no-deps -r requirements-imagebind.txt
  # torchattacks (the detection matrix's PGD/APGD) without its stale requests pin (see the file).
  "$VPY" -m pip install -q --no-deps -r requirements-torchattacks.txt
  echo "$req_hash" > "$REQ_STAMP"
fi

# --- the extension -----------------------------------------------------------------------
# The toolkit on PATH may be a wrapper script; setup.py follows it to the real
# nvcc. Hopper (H100/H200) by default here; override with TORCH_CUDA_ARCH_LIST.
# (A bare `pip install .` on a machine without a GPU uses setup.py's default list.)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-2}
BUILD_STAMP=.venv/.pyvlmx-build.sha256
build_hash=$( {
  find csrc -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' \) -print0 | sort -z |
    xargs -0 sha256sum
  sha256sum setup.py pyproject.toml
  "$VPY" -c "import importlib.metadata as m; print(m.version('torch'))"  # e.g. 2.14.1+cu130, without importing torch
  echo "cuda=${PYVLMX_CUDA:-} force=${FORCE_CUDA:-} use=${USE_CUDA:-} arch=$TORCH_CUDA_ARCH_LIST home=${CUDA_HOME:-}"
  command -v nvcc || true
} | sha256sum | cut -d' ' -f1)
if [ "$FORCE" != 1 ] && [ -f "$BUILD_STAMP" ] && [ "$(cat "$BUILD_STAMP")" = "$build_hash" ] \
    && [ -x .venv/bin/pyvlmx ] && ls pyvlmx/_C*.so >/dev/null 2>&1; then
  echo "pyvlmx setup: extension up to date (nothing in csrc/, setup.py or the build settings changed)"
else
  "$VPY" -m pip install -q --no-build-isolation --no-deps -e .
  echo "$build_hash" > "$BUILD_STAMP"
fi

# the sample photos (a no-op once on disk), then `pyvlmx info`: one process, one torch import
"$VPY" -c 'import sys
from pyvlmx.cli import main
from pyvlmx.data import samples
sys.exit(samples.main(["--install"]) or main(["info"]))'
