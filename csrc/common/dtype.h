// Element types the kernels understand, and scalar conversions to fp32.
// Torch-free: the Python layer maps torch dtypes to these codes.
#pragma once
#include <cstdint>
#include <cstring>

namespace autofreeze {

enum class DType : int32_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

enum class NormType : int32_t { kL1 = 1, kL2 = 2 };

inline bool valid_dtype(int32_t code) { return code >= 0 && code <= 2; }

// IEEE half -> float without F16C, branch-free so the compiler can vectorise it.
// Normal and subnormal halves are rescaled by one float multiply (exact), inf/nan keep
// an all-ones exponent (F. Giesen, "half_to_float_fast5").
inline float half_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h & 0x7fffu) << 13;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  f *= 0x1p112f;
  std::memcpy(&bits, &f, sizeof f);
  bits |= (f >= 65536.0f) ? 0x7f800000u : 0u;
  bits |= static_cast<uint32_t>(h & 0x8000u) << 16;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace autofreeze
