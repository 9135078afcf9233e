// CUDA implementation of grad_stats (see grad_stats.h).
//
// Multi-tensor apply in the style of PyTorch's multi_tensor_apply: tensor metadata travels
// as a kernel argument (no host->device copy, no allocation), one CTA per chunk of
// kChunk elements; tensors are packed into launches of at most kMaxTensors tensors and
// kMaxChunks chunks, a tensor split across launches where needed. Each CTA reduces its
// chunk's sum in fp64 and adds it to block_sums[block] with one atomicAdd.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "grad_stats.h"

namespace autofreeze {
namespace {

constexpr int kThreads = 512;
constexpr int64_t kChunk = int64_t{1} << 16;
constexpr int kMaxTensors = 48;
constexpr int kMaxChunks = 320;

struct Batch {  // about 3.3 KB: within the classic 4 KB kernel-argument limit
  float* acc[kMaxTensors];
  const void* grad[kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t block[kMaxTensors];
  int8_t dtype[kMaxTensors];
  uint8_t chunk_tensor[kMaxChunks];
  int32_t chunk_index[kMaxChunks];
};

__device__ __forceinline__ float load(const void* p, int64_t i, int8_t d) {
  if (d == 0) return static_cast<const float*>(p)[i];
  const uint16_t h = static_cast<const uint16_t*>(p)[i];
  if (d == 2) return __uint_as_float(static_cast<uint32_t>(h) << 16);
  return __half2float(__ushort_as_half(h));
}

struct Mode {
  bool accumulate, compute, zero, l2;
};

__device__ __forceinline__ float step(float* acc, const void* g, int64_t i, int8_t d, Mode m) {
  float v = acc[i];
  if (m.accumulate) v += load(g, i, d);
  if (m.zero) {
    acc[i] = 0.0f;
  } else if (m.accumulate) {
    acc[i] = v;
  }
  return m.compute ? (m.l2 ? v * v : fabsf(v)) : 0.0f;
}

__global__ void __launch_bounds__(kThreads) grad_stats_kernel(Batch b, double* block_sums, Mode m) {
  const int c = blockIdx.x;
  const int t = b.chunk_tensor[c];
  const int64_t start = static_cast<int64_t>(b.chunk_index[c]) * kChunk;
  const int64_t n = min(kChunk, b.numel[t] - start);
  float* acc = b.acc[t] + start;
  const int8_t d = b.dtype[t];
  const int64_t esize = d == 0 ? 4 : 2;
  const void* g = m.accumulate ? static_cast<const char*>(b.grad[t]) + start * esize : nullptr;

  float local = 0.0f;
  // Vector path: 4 elements per thread per iteration when everything is 16/8-byte aligned.
  const bool aligned = (reinterpret_cast<uintptr_t>(acc) % 16 == 0) &&
                       (!m.accumulate || reinterpret_cast<uintptr_t>(g) % (4 * esize) == 0);
  int64_t i0 = 0;
  if (aligned) {
    const int64_t nv = n / 4;
    for (int64_t v = threadIdx.x; v < nv; v += kThreads) {
      float4 a = reinterpret_cast<float4*>(acc)[v];
      float x[4] = {a.x, a.y, a.z, a.w};
      if (m.accumulate) {
        if (d == 0) {
          const float4 gg = reinterpret_cast<const float4*>(g)[v];
          x[0] += gg.x; x[1] += gg.y; x[2] += gg.z; x[3] += gg.w;
        } else {
          const uint2 raw = reinterpret_cast<const uint2*>(g)[v];
          const uint16_t h[4] = {static_cast<uint16_t>(raw.x & 0xffffu), static_cast<uint16_t>(raw.x >> 16),
                                 static_cast<uint16_t>(raw.y & 0xffffu), static_cast<uint16_t>(raw.y >> 16)};
          for (int k = 0; k < 4; ++k)
            x[k] += d == 2 ? __uint_as_float(static_cast<uint32_t>(h[k]) << 16) : __half2float(__ushort_as_half(h[k]));
        }
      }
      if (m.compute)
        for (int k = 0; k < 4; ++k) local += m.l2 ? x[k] * x[k] : fabsf(x[k]);
      if (m.zero) {
        reinterpret_cast<float4*>(acc)[v] = make_float4(0.f, 0.f, 0.f, 0.f);
      } else if (m.accumulate) {
        reinterpret_cast<float4*>(acc)[v] = make_float4(x[0], x[1], x[2], x[3]);
      }
    }
    i0 = nv * 4;
  }
  for (int64_t i = i0 + threadIdx.x; i < n; i += kThreads) local += step(acc, g, i, d, m);

  if (!m.compute) return;
  // Block reduction in fp64.
  double s = local;
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  __shared__ double warp_sums[kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
    for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
    if (lane == 0) atomicAdd(block_sums + b.block[t], s);
  }
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("grad_stats_cuda: ") + what + ": " + cudaGetErrorString(e));
}

}  // namespace

void grad_stats_cuda(const GradStatsArgs& a, void* stream_ptr) {
  check_grad_stats_args(a);
  if (!a.accumulate && !a.compute && !a.zero_after) return;
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const Mode m{a.accumulate, a.compute, a.zero_after, a.norm == NormType::kL2};
  Batch b;
  int nt = 0, nc = 0;
  auto launch = [&] {
    if (nc > 0) {
      grad_stats_kernel<<<nc, kThreads, 0, stream>>>(b, a.block_sums, m);
      check(cudaGetLastError(), "kernel launch");
    }
    nt = 0;
    nc = 0;
  };
  auto add_tensor = [&](int64_t t) {  // register tensor t in the current batch
    b.acc[nt] = a.acc[t];
    b.grad[nt] = a.accumulate ? a.grad[t] : nullptr;
    b.numel[nt] = a.numel[t];
    b.block[nt] = a.block[t];
    b.dtype[nt] = static_cast<int8_t>(a.accumulate ? a.dtype[t] : 0);
    ++nt;
  };
  for (int64_t t = 0; t < a.n_tensors; ++t) {
    const int64_t n = a.numel[t];
    if (n == 0) continue;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    if (chunks > INT32_MAX) throw std::invalid_argument("grad_stats_cuda: tensor too large");
    if (nt == kMaxTensors) launch();
    add_tensor(t);
    for (int64_t c = 0; c < chunks; ++c) {
      if (nc == kMaxChunks) {  // batch full: launch it, continue this tensor in a fresh one
        launch();
        add_tensor(t);
      }
      b.chunk_tensor[nc] = static_cast<uint8_t>(nt - 1);
      b.chunk_index[nc] = static_cast<int32_t>(c);
      ++nc;
    }
  }
  launch();
}

}  // namespace autofreeze
