// pybind11 bindings for autofreeze_ext._C. Binds only: no logic beyond turning Python
// integers (data pointers, sizes, type codes, stream handles) into the C++ arguments.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "../common/thread_pool.h"
#include "../kernels/grad_stats.h"

namespace py = pybind11;
using namespace autofreeze;

void bind_io(py::module_& m);  // io_bindings.cpp

namespace {

struct PackedArgs {
  std::vector<float*> acc;
  std::vector<const void*> grad;
  GradStatsArgs args;
};

PackedArgs pack(const std::vector<uintptr_t>& acc, const std::vector<uintptr_t>& grad,
                const std::vector<int64_t>& numel, const std::vector<int32_t>& dtype,
                const std::vector<int32_t>& block, int32_t n_blocks, uintptr_t block_sums,
                int32_t norm, bool compute, bool zero_after) {
  const size_t n = acc.size();
  const bool accumulate = !grad.empty();
  if (numel.size() != n || block.size() != n || (accumulate && (grad.size() != n || dtype.size() != n)))
    throw std::invalid_argument("grad_stats: argument lists differ in length");
  PackedArgs p;
  p.acc.reserve(n);
  for (auto v : acc) p.acc.push_back(reinterpret_cast<float*>(v));
  for (auto v : grad) p.grad.push_back(reinterpret_cast<const void*>(v));
  GradStatsArgs& a = p.args;
  a.n_tensors = static_cast<int64_t>(n);
  a.acc = p.acc.data();
  a.grad = accumulate ? p.grad.data() : nullptr;
  a.numel = numel.data();
  a.dtype = accumulate ? dtype.data() : nullptr;
  a.block = block.data();
  a.n_blocks = n_blocks;
  a.block_sums = reinterpret_cast<double*>(block_sums);
  a.norm = static_cast<NormType>(norm);
  a.accumulate = accumulate;
  a.compute = compute;
  a.zero_after = zero_after;
  return p;
}

// Binds one device's grad_stats: the kernel arguments every device takes, in order, then the
// device's own last one (CPU threads, CUDA stream), named `last`.
template <typename Last, typename Run>
void def_grad_stats(py::module_& m, const char* name, const char* last, Run run) {
  m.def(
      name,
      [run](const std::vector<uintptr_t>& acc, const std::vector<uintptr_t>& grad, const std::vector<int64_t>& numel,
            const std::vector<int32_t>& dtype, const std::vector<int32_t>& block, int32_t n_blocks,
            uintptr_t block_sums, int32_t norm, bool compute, bool zero_after, Last extra) {
        PackedArgs p = pack(acc, grad, numel, dtype, block, n_blocks, block_sums, norm, compute, zero_after);
        py::gil_scoped_release nogil;
        run(p.args, extra);
      },
      py::arg("acc"), py::arg("grad"), py::arg("numel"), py::arg("dtype"), py::arg("block"), py::arg("n_blocks"),
      py::arg("block_sums"), py::arg("norm"), py::arg("compute"), py::arg("zero_after"), py::arg(last));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "autofreeze_ext compiled core (torch-free: raw pointers, sizes, dtype codes, streams)";

  def_grad_stats<int>(m, "grad_stats_cpu", "num_threads",
                      [](const GradStatsArgs& a, int threads) { grad_stats_cpu(a, threads); });
#ifdef AUTOFREEZE_WITH_CUDA
  def_grad_stats<uintptr_t>(m, "grad_stats_cuda", "stream", [](const GradStatsArgs& a, uintptr_t stream) {
    grad_stats_cuda(a, reinterpret_cast<void*>(stream));
  });
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cpu_chunk_elements") = kCpuChunk;
  m.def("hardware_threads", &hardware_threads);
  m.def("thread_backend", &thread_backend, "Where the CPU kernels' parallel loops run");
  bind_io(m);
}
