#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/thread_pool.h"
#include "grad_stats.h"

namespace autofreeze {
namespace {

// Runtime dispatch to an AVX2 clone where the CPU has it (GCC/Clang on x86-64).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AF_TARGET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define AF_TARGET_CLONES
#endif
#define AF_INLINE inline __attribute__((always_inline))

template <DType D>
struct Load;
template <>
struct Load<DType::kFloat32> {
  using T = float;
  static AF_INLINE float get(const T* p, int64_t i) { return p[i]; }
};
template <>
struct Load<DType::kFloat16> {
  using T = uint16_t;
  static AF_INLINE float get(const T* p, int64_t i) { return half_to_float(p[i]); }
};
template <>
struct Load<DType::kBFloat16> {
  using T = uint16_t;
  static AF_INLINE float get(const T* p, int64_t i) { return bf16_to_float(p[i]); }
};

constexpr int kLanes = 16;      // independent partial sums: lets the compiler vectorise
constexpr int64_t kFlush = 1024;  // elements summed in fp32 before moving to fp64

// acc[0, n) op grad[0, n); returns the chunk's partial sum (0 when !COMPUTE).
template <DType D, bool ACC, bool COMPUTE, bool ZERO, bool L2>
AF_INLINE double process(float* __restrict acc, const void* grad_v, int64_t n) {
  using L = Load<D>;
  const auto* __restrict g = static_cast<const typename L::T*>(grad_v);
  double total = 0.0;
  int64_t i = 0;
  while (i < n) {
    const int64_t end = (n - i > kFlush) ? i + kFlush : n;
    float lane[kLanes] = {};
    const int64_t vec_end = i + ((end - i) / kLanes) * kLanes;
    for (; i < vec_end; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) {
        float v = acc[i + j];
        if (ACC) v += L::get(g, i + j);
        if (COMPUTE) lane[j] += L2 ? v * v : std::fabs(v);
        if (ZERO) {
          acc[i + j] = 0.0f;
        } else if (ACC) {
          acc[i + j] = v;
        }
      }
    }
    for (; i < end; ++i) {
      float v = acc[i];
      if (ACC) v += L::get(g, i);
      if (COMPUTE) lane[0] += L2 ? v * v : std::fabs(v);
      if (ZERO) {
        acc[i] = 0.0f;
      } else if (ACC) {
        acc[i] = v;
      }
    }
    if (COMPUTE) {
      double s = 0.0;
      for (int j = 0; j < kLanes; ++j) s += lane[j];
      total += s;
    }
  }
  return total;
}

using ChunkFn = double (*)(float*, const void*, int64_t);

// One non-template entry per (dtype, mode) so that target_clones applies to each.
#define AF_DEFINE(NAME, D, ACC, COMPUTE, ZERO, L2)                                   \
  AF_TARGET_CLONES double NAME(float* acc, const void* g, int64_t n) {               \
    return process<D, ACC, COMPUTE, ZERO, L2>(acc, g, n);                            \
  }
#define AF_DEFINE_DTYPE(SUFFIX, D)                                                   \
  AF_DEFINE(acc_##SUFFIX, D, true, false, false, false)                              \
  AF_DEFINE(acc_l1_##SUFFIX, D, true, true, false, false)                            \
  AF_DEFINE(acc_l2_##SUFFIX, D, true, true, false, true)                             \
  AF_DEFINE(acc_l1_zero_##SUFFIX, D, true, true, true, false)                        \
  AF_DEFINE(acc_l2_zero_##SUFFIX, D, true, true, true, true)                         \
  AF_DEFINE(acc_zero_##SUFFIX, D, true, false, true, false)

AF_DEFINE_DTYPE(f32, DType::kFloat32)
AF_DEFINE_DTYPE(f16, DType::kFloat16)
AF_DEFINE_DTYPE(bf16, DType::kBFloat16)
// Without accumulation the gradient type does not matter.
AF_DEFINE(l1_only, DType::kFloat32, false, true, false, false)
AF_DEFINE(l2_only, DType::kFloat32, false, true, false, true)
AF_DEFINE(l1_zero_only, DType::kFloat32, false, true, true, false)
AF_DEFINE(l2_zero_only, DType::kFloat32, false, true, true, true)
AF_DEFINE(zero_only, DType::kFloat32, false, false, true, false)

double noop(float*, const void*, int64_t) { return 0.0; }

ChunkFn select(DType d, bool accumulate, bool compute, bool zero, bool l2) {
  if (!accumulate) {
    if (compute) return zero ? (l2 ? l2_zero_only : l1_zero_only) : (l2 ? l2_only : l1_only);
    return zero ? zero_only : noop;
  }
#define AF_PICK(SUFFIX)                                                              \
  if (!compute) return zero ? acc_zero_##SUFFIX : acc_##SUFFIX;                      \
  if (zero) return l2 ? acc_l2_zero_##SUFFIX : acc_l1_zero_##SUFFIX;                 \
  return l2 ? acc_l2_##SUFFIX : acc_l1_##SUFFIX;
  switch (d) {
    case DType::kFloat32: { AF_PICK(f32) }
    case DType::kFloat16: { AF_PICK(f16) }
    case DType::kBFloat16: { AF_PICK(bf16) }
  }
#undef AF_PICK
  throw std::invalid_argument("grad_stats: unknown dtype code");
}

struct Chunk {
  int64_t tensor;
  int64_t start;
  int64_t len;
};

}  // namespace

void check_grad_stats_args(const GradStatsArgs& a) {
  if (a.n_tensors < 0) throw std::invalid_argument("grad_stats: negative tensor count");
  if (a.n_blocks < 0) throw std::invalid_argument("grad_stats: negative block count");
  if (a.compute && a.block_sums == nullptr && a.n_tensors > 0)
    throw std::invalid_argument("grad_stats: block_sums is null but norms were requested");
  if (a.norm != NormType::kL1 && a.norm != NormType::kL2)
    throw std::invalid_argument("grad_stats: norm code " + std::to_string(static_cast<int>(a.norm)) +
                                " is neither 1 (L1) nor 2 (L2)");
  for (int64_t i = 0; i < a.n_tensors; ++i) {
    const std::string at = " at tensor " + std::to_string(i);
    if (a.numel[i] < 0) throw std::invalid_argument("grad_stats: negative numel" + at);
    if (a.block[i] < 0 || a.block[i] >= a.n_blocks)
      throw std::invalid_argument("grad_stats: block id " + std::to_string(a.block[i]) +
                                  " outside [0, " + std::to_string(a.n_blocks) + ")" + at);
    if (a.numel[i] == 0) continue;
    if (a.acc[i] == nullptr) throw std::invalid_argument("grad_stats: null accumulator" + at);
    if (a.accumulate) {
      if (a.grad == nullptr || a.grad[i] == nullptr)
        throw std::invalid_argument("grad_stats: null gradient" + at);
      if (!valid_dtype(a.dtype[i]))
        throw std::invalid_argument("grad_stats: unsupported dtype code " + std::to_string(a.dtype[i]) + at);
    }
  }
}

void grad_stats_cpu(const GradStatsArgs& a, int num_threads) {
  check_grad_stats_args(a);
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < a.n_tensors; ++t)
    for (int64_t s = 0; s < a.numel[t]; s += kCpuChunk)
      chunks.push_back({t, s, std::min(kCpuChunk, a.numel[t] - s)});
  if (chunks.empty()) return;

  const bool l2 = a.norm == NormType::kL2;
  std::vector<double> partial(a.compute ? chunks.size() : 0, 0.0);
  parallel_for(static_cast<int64_t>(chunks.size()), num_threads, [&](int64_t c) {
    const Chunk& ch = chunks[c];
    const DType d = a.accumulate ? static_cast<DType>(a.dtype[ch.tensor]) : DType::kFloat32;
    const ChunkFn fn = select(d, a.accumulate, a.compute, a.zero_after, l2);
    const void* g = nullptr;
    if (a.accumulate) {
      const int64_t elem = d == DType::kFloat32 ? 4 : 2;
      g = static_cast<const char*>(a.grad[ch.tensor]) + ch.start * elem;
    }
    const double s = fn(a.acc[ch.tensor] + ch.start, g, ch.len);
    if (a.compute) partial[c] = s;
  });
  if (a.compute)  // chunk order, not thread order: the result is the same for any thread count
    for (size_t c = 0; c < chunks.size(); ++c) a.block_sums[a.block[chunks[c].tensor]] += partial[c];
}

}  // namespace autofreeze
