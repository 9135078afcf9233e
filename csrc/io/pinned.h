// Page-locking host memory for asynchronous host-to-device copies. Uses cudaHostRegister on
// memory we allocated with mmap (memory from cudaHostAlloc cannot always be registered with
// io_uring); a no-op returning false in CPU-only builds or without a CUDA device.
#pragma once
#include <cstddef>

namespace autofreeze {
bool pin_host(void* ptr, size_t bytes);
void unpin_host(void* ptr);
}  // namespace autofreeze
