"""Build pyvlmx's compiled core ``pyvlmx._C`` (the package metadata lives in pyproject.toml).

C++ sources under ``csrc/`` are always compiled.  CUDA sources (``*.cu``) are
compiled when torch was built with CUDA and a CUDA toolkit is found.  The
environment variable ``PYVLMX_CUDA`` switches this:

* ``auto`` (default): CUDA when ``torch.version.cuda`` and a toolkit exist;
* ``1`` / ``on`` / ``force``: CUDA or a build error that says what is missing;
* ``0`` / ``off``: C++ only.

``FORCE_CUDA=1`` and ``USE_CUDA=0`` are honoured as aliases.  Whether a GPU is
visible never decides whether CUDA is built: build machines usually have none.

GPU architectures: ``TORCH_CUDA_ARCH_LIST`` when set.  Unset, torch compiles
for the GPUs it sees; with none visible (a build machine) torch's detection
would fail, so the default ``DEFAULT_CUDA_ARCH_LIST`` = ``7.5;8.0;9.0+PTX`` is
used and printed: Turing (T4), Ampere and Ada (sm_80 code runs on 8.6/8.9),
Hopper, and PTX that the driver compiles for newer GPUs (Blackwell).

Incremental builds: object files go to ``build/temp.<platform>-<python>``
(``PYVLMX_BUILD_TEMP`` overrides), also for ``pip install -e .``, whose own
temporary folder would otherwise rebuild everything every time; ninja then
recompiles only the sources (and headers, through its dependency files) that
changed.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# Used when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible (see the docstring).
DEFAULT_CUDA_ARCH_LIST = "7.5;8.0;9.0+PTX"


def _real_nvcc() -> str | None:
    """Follow an ``nvcc`` wrapper script to the compiler it runs.

    Some machines put a tiny ``exec /usr/local/cuda-X/bin/nvcc "$@"`` script on
    PATH; torch would then guess the toolkit root from the script's folder.
    """
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        with open(nvcc, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return nvcc
    if head.startswith(b"#!"):
        text = head.decode("utf-8", "replace")
        match = re.search(r"(/\S+/bin/nvcc)\b", text)
        if match and os.path.exists(match.group(1)):
            return os.path.realpath(match.group(1))
    return nvcc


def _find_cuda_home() -> str | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
            return home
    nvcc = _real_nvcc()
    if nvcc is not None:
        return os.path.dirname(os.path.dirname(nvcc))
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    return None


def _cuda_mode() -> str:
    raw = os.environ.get("PYVLMX_CUDA")
    if raw is None:
        if os.environ.get("FORCE_CUDA", "") == "1":
            raw = "1"
        elif os.environ.get("USE_CUDA", "") == "0":
            raw = "0"
        else:
            raw = "auto"
    raw = raw.strip().lower()
    if raw in ("auto", ""):
        return "auto"
    if raw in ("1", "on", "yes", "true", "force"):
        return "on"
    if raw in ("0", "off", "no", "false"):
        return "off"
    raise SystemExit(f"PYVLMX_CUDA must be auto, 1/on/force or 0/off, got {raw!r}")


# CUDA_HOME must be settled before torch.utils.cpp_extension is imported: it
# reads the toolkit location once, at import time.
_CUDA_HOME = _find_cuda_home()
if _CUDA_HOME is not None:
    os.environ["CUDA_HOME"] = _CUDA_HOME

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _extension():
    mode = _cuda_mode()
    torch_cuda = torch.version.cuda
    with_cuda = False
    if mode == "on":
        if torch_cuda is None:
            raise SystemExit(
                "PYVLMX_CUDA=1 but this torch was built without CUDA "
                f"(torch {torch.__version__}); install a CUDA build of torch or set PYVLMX_CUDA=0")
        if _CUDA_HOME is None:
            raise SystemExit(
                "PYVLMX_CUDA=1 but no CUDA toolkit was found (no nvcc on PATH, "
                "CUDA_HOME unset); install the toolkit or set PYVLMX_CUDA=0")
        with_cuda = True
    elif mode == "auto":
        with_cuda = torch_cuda is not None and _CUDA_HOME is not None

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "ops", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "ops", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "ops", "cuda", "*.cu")))
    cuda_sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))

    # headers: a change to one rebuilds the extension (setuptools' up-to-date check), and
    # ninja's dependency files then recompile only the sources that include it
    depends = sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
                     + glob.glob(os.path.join("csrc", "**", "*.cuh"), recursive=True))
    include_dirs = [os.path.join(ROOT, "csrc")]
    cxx = ["-O3", "-fopenmp"]
    if sys.platform == "darwin":
        cxx.remove("-fopenmp")
    define_macros = [("TORCH_VERSION_BUILT", f'"{torch.__version__}"')]
    extra_link_args = [] if sys.platform == "darwin" else ["-fopenmp"]

    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and torch.cuda.device_count() == 0:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
            print(f"pyvlmx: no GPU visible and TORCH_CUDA_ARCH_LIST unset: compiling CUDA code for "
                  f"TORCH_CUDA_ARCH_LIST={DEFAULT_CUDA_ARCH_LIST} (set it to choose)")
        # The toolkit may lack cuBLAS/cuSPARSE headers that ATen's CUDA headers
        # pull in; the pip nvidia-* wheels next to torch carry them.
        import site

        for sp in site.getsitepackages() + [site.getusersitepackages()]:
            for inc in glob.glob(os.path.join(sp, "nvidia", "*", "include")):
                include_dirs.append(inc)
            for inc in glob.glob(os.path.join(sp, "nvidia", "cu*", "include")):
                include_dirs.append(inc)
        define_macros += [("WITH_CUDA", None), ("CUDA_VERSION_BUILT", f'"{torch_cuda}"')]
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            "pyvlmx._C",
            sources + cuda_sources,
            depends=depends,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=extra_link_args,
        ), True
    return CppExtension(
        "pyvlmx._C",
        sources,
        depends=depends,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=extra_link_args,
    ), False


class _BuildExt(BuildExtension.with_options(use_ninja=True)):
    """torch's BuildExtension, with object files kept in build/ also for editable installs."""

    def finalize_options(self):
        super().finalize_options()
        if getattr(self, "editable_mode", False) or self.inplace:
            tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}"
            self.build_temp = os.environ.get("PYVLMX_BUILD_TEMP") or os.path.join(ROOT, "build", f"temp.{tag}")


ext, WITH_CUDA = _extension()
print(f"pyvlmx: building pyvlmx._C with CUDA={'yes' if WITH_CUDA else 'no'} "
      f"(CUDA_HOME={_CUDA_HOME}, torch {torch.__version__}, torch CUDA {torch.version.cuda}"
      + (f", TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', 'the visible GPUs')}" if WITH_CUDA else "")
      + ")")

# Name, version, dependencies, entry point and package data: pyproject.toml.
setup(
    ext_modules=[ext],
    cmdclass={"build_ext": _BuildExt},
)
