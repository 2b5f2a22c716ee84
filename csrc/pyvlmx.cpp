// Module entry point of pyvlmx._C and the build-information op.
//
// The Python module itself is empty: every op registers with the dispatcher
// through TORCH_LIBRARY(_FRAGMENT) and is reached as torch.ops.pyvlmx.<op>.
// Importing pyvlmx._C is what runs those registrations.

#include <Python.h>
#include <torch/library.h>

#include <sstream>
#include <string>

#ifndef TORCH_VERSION_BUILT
#define TORCH_VERSION_BUILT "unknown"
#endif

namespace pyvlmx {

#ifdef WITH_CUDA
// Defined in csrc/cuda/cuda_info.cu, compiled by nvcc.
int64_t cuda_runtime_version_built();
int64_t cuda_device_count();
#endif

// JSON object describing how this extension was built:
//   {"with_cuda": bool, "cuda_version": str|null, "cuda_runtime": int|null,
//    "torch_version": str, "compiler": str, "openmp": bool}
std::string build_info() {
  std::ostringstream out;
  out << "{";
#ifdef WITH_CUDA
  out << "\"with_cuda\": true, \"cuda_version\": \"" << CUDA_VERSION_BUILT << "\", "
      << "\"cuda_runtime\": " << cuda_runtime_version_built() << ", ";
#else
  out << "\"with_cuda\": false, \"cuda_version\": null, \"cuda_runtime\": null, ";
#endif
  out << "\"torch_version\": \"" << TORCH_VERSION_BUILT << "\", ";
#if defined(__clang__)
  out << "\"compiler\": \"clang " << __clang_major__ << "." << __clang_minor__ << "\", ";
#elif defined(__GNUC__)
  out << "\"compiler\": \"gcc " << __GNUC__ << "." << __GNUC_MINOR__ << "\", ";
#else
  out << "\"compiler\": \"unknown\", ";
#endif
#ifdef _OPENMP
  out << "\"openmp\": true";
#else
  out << "\"openmp\": false";
#endif
  out << "}";
  return out.str();
}

// Number of CUDA devices the compiled CUDA runtime sees (0 without CUDA).
int64_t cuda_devices() {
#ifdef WITH_CUDA
  return cuda_device_count();
#else
  return 0;
#endif
}

}  // namespace pyvlmx

TORCH_LIBRARY(pyvlmx, m) {
  m.def("build_info() -> str", &pyvlmx::build_info);
  m.def("cuda_devices() -> int", &pyvlmx::cuda_devices);
}

extern "C" {
// Importing pyvlmx._C only has to run the static registrations above.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "pyvlmx compiled ops (torch.ops.pyvlmx)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
