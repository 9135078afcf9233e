#include <cuda_runtime.h>

#include "pinned.h"

namespace autofreeze {
// Portable: the pages are pinned for every CUDA context, not only the one current on this
// thread (the runtime is linked statically here, so torch's context is not ours).
bool pin_host(void* ptr, size_t bytes) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return false;
  }
  if (cudaHostRegister(ptr, bytes, cudaHostRegisterPortable) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return true;
}
void unpin_host(void* ptr) {
  if (cudaHostUnregister(ptr) != cudaSuccess) cudaGetLastError();
}
}  // namespace autofreeze
