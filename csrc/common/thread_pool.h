// Parallel loops for the CPU kernels.
//
// Where an OpenMP runtime is already loaded (PyTorch's CPU wheels load their own libgomp),
// work runs on that runtime's thread team, found at run time (see thread_pool.cpp): a second
// pool would compete with torch's spinning workers for the cores. Otherwise (or with
// AUTOFREEZE_CPU_THREADS=own) a small persistent pool whose workers block on a condition
// variable. The calling thread takes part in every job.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace autofreeze {

// Runs fn(i) for i in [0, n_tasks) on up to num_threads threads (the caller included).
// Tasks are handed out dynamically. Blocks until all tasks are done. Exceptions thrown by
// fn are rethrown in the caller (the first one wins). Safe after fork(): a child process
// gets a fresh pool.
void parallel_for(int64_t n_tasks, int num_threads, const std::function<void(int64_t)>& fn);

// "openmp-team:<library path>" or "own-pool".
std::string thread_backend();

// Number of hardware threads (>= 1).
int hardware_threads();

}  // namespace autofreeze
