// Fused gradient statistics over many tensors in one pass (multi-tensor apply).
//
// For every tensor i (belonging to block block_id[i]):
//   if accumulate:  acc[i] += float(grad[i])        (grad fp32, fp16 or bf16; acc fp32)
//   if compute:     block_sums[block_id[i]] += sum(|acc[i]|) (L1) or sum(acc[i]^2) (L2),
//                   taken over the values after the addition
//   if zero_after:  acc[i] = 0                       (the sum above still sees the new values)
// The caller zeroes block_sums and takes the square root for L2. Torch-free: pointers,
// element counts and type codes only.
#pragma once
#include <cstdint>

#include "../common/dtype.h"

namespace autofreeze {

struct GradStatsArgs {
  int64_t n_tensors = 0;
  float* const* acc = nullptr;        // n_tensors fp32 accumulators
  const void* const* grad = nullptr;  // n_tensors gradients, or nullptr when !accumulate
  const int64_t* numel = nullptr;     // n_tensors element counts (>= 0)
  const int32_t* dtype = nullptr;     // n_tensors DType codes of grad (ignored when !accumulate)
  const int32_t* block = nullptr;     // n_tensors block indices in [0, n_blocks)
  int32_t n_blocks = 0;
  double* block_sums = nullptr;       // n_blocks partial sums, added into
  NormType norm = NormType::kL2;
  bool accumulate = true;
  bool compute = false;
  bool zero_after = false;
};

// Validates the arguments; throws std::invalid_argument naming the bad value.
void check_grad_stats_args(const GradStatsArgs& a);

// CPU: multi-threaded over fixed-size chunks; deterministic for any thread count
// (per-chunk partials are reduced in chunk order).
void grad_stats_cpu(const GradStatsArgs& a, int num_threads);

// Elements per work item; shared with the Python layer for workspace planning.
constexpr int64_t kCpuChunk = int64_t{1} << 16;

#ifdef AUTOFREEZE_WITH_CUDA
// CUDA: pointers are device pointers held in host arrays; block_sums is a device array.
// Enqueued on `stream` (a cudaStream_t); returns without synchronising.
void grad_stats_cuda(const GradStatsArgs& a, void* stream);
#endif

}  // namespace autofreeze
