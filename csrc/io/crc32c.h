// CRC32C (Castagnoli) of a byte range: SSE4.2 instruction where the CPU has it, table otherwise.
#pragma once
#include <cstddef>
#include <cstdint>

namespace autofreeze {
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);
bool crc32c_hardware();
}  // namespace autofreeze
