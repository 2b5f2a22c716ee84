// CUDA runtime facts for the build-information op (compiled by nvcc).
#include <cuda_runtime.h>

#include <cstdint>

namespace pyvlmx {

int64_t cuda_runtime_version_built() { return CUDART_VERSION; }

int64_t cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

}  // namespace pyvlmx
