#include "thread_pool.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace autofreeze {
namespace {

class Pool {
 public:
  explicit Pool() : owner_pid_(getpid()) {}
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_work_.notify_all();
    for (auto& t : workers_) t.join();
  }

  pid_t owner() const { return owner_pid_; }

  void run(int64_t n_tasks, int num_threads, const std::function<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> job_lock(job_mu_);  // one job at a time
    const int helpers = std::max(0, std::min<int>(num_threads, static_cast<int>(n_tasks)) - 1);
    ensure_workers(helpers);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_tasks_ = n_tasks;
      next_.store(0);
      active_helpers_ = helpers;
      pending_ = helpers;
      error_ = nullptr;
      ++generation_;
    }
    if (helpers > 0) cv_work_.notify_all();
    work();
    std::unique_lock<std::mutex> lk(mu_);
    cv_done_.wait(lk, [&] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      const int id = static_cast<int>(workers_.size());
      workers_.emplace_back([this, id] { loop(id); });
    }
  }

  void work() {
    for (;;) {
      const int64_t i = next_.fetch_add(1);
      if (i >= n_tasks_) return;
      try {
        (*fn_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_tasks_);
      }
    }
  }

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_work_.wait(lk, [&] { return stop_ || (generation_ != seen && id < active_helpers_); });
        if (stop_) return;
        seen = generation_;
      }
      work();
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (--pending_ == 0) cv_done_.notify_one();
      }
    }
  }

  const pid_t owner_pid_;
  std::mutex job_mu_;
  std::mutex mu_;
  std::condition_variable cv_work_, cv_done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int active_helpers_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

Pool* g_pool = nullptr;
std::mutex g_pool_mu;

Pool& pool() {
  std::lock_guard<std::mutex> lk(g_pool_mu);
  if (g_pool == nullptr || g_pool->owner() != getpid()) {
    // After fork() the parent's worker threads do not exist in the child: the old pool is
    // leaked on purpose (joining threads that are not there would hang).
    g_pool = new Pool();
  }
  return *g_pool;
}

// ---- Running on the host's OpenMP team -------------------------------------------------
// PyTorch's CPU wheels load their own libgomp. Its workers spin for milliseconds after each
// parallel region, so a second pool's threads would compete with them for the cores. When an
// OpenMP runtime is already loaded in the process we run our work items on *its* team through
// the GOMP_parallel ABI entry (exported by libgomp, and by LLVM's libomp and Intel's libiomp5
// for compatibility), found at run time: nothing is linked, no second runtime is started.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);

struct OmpApi {
  GompParallel parallel = nullptr;
  std::string path;
};

int find_omp(struct dl_phdr_info* info, size_t, void* data) {
  const char* name = info->dlpi_name;
  if (name != nullptr && (std::strstr(name, "libgomp") || std::strstr(name, "libiomp5") || std::strstr(name, "libomp"))) {
    *static_cast<std::string*>(data) = name;
    return 1;
  }
  return 0;
}

const OmpApi& omp_api() {
  static const OmpApi api = [] {
    OmpApi a;
    const char* env = std::getenv("AUTOFREEZE_CPU_THREADS");
    if (env != nullptr && std::strcmp(env, "own") == 0) return a;
    std::string path;
    dl_iterate_phdr(find_omp, &path);
    if (path.empty()) return a;
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD | RTLD_LOCAL);
    if (h == nullptr) return a;
    a.parallel = reinterpret_cast<GompParallel>(dlsym(h, "GOMP_parallel"));
    if (a.parallel != nullptr) a.path = path;
    return a;
  }();
  return api;
}

struct OmpJob {
  const std::function<void(int64_t)>* fn;
  int64_t n_tasks;
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::exception_ptr error;
};

void omp_trampoline(void* p) {  // runs on every thread of the team; must not throw
  auto* job = static_cast<OmpJob*>(p);
  for (;;) {
    const int64_t i = job->next.fetch_add(1);
    if (i >= job->n_tasks) return;
    try {
      (*job->fn)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lk(job->mu);
      if (!job->error) job->error = std::current_exception();
      job->next.store(job->n_tasks);
    }
  }
}

}  // namespace

std::string thread_backend() {
  const OmpApi& api = omp_api();
  return api.parallel != nullptr ? "openmp-team:" + api.path : "own-pool";
}

int hardware_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

void parallel_for(int64_t n_tasks, int num_threads, const std::function<void(int64_t)>& fn) {
  if (n_tasks <= 0) return;
  if (num_threads <= 1 || n_tasks == 1) {
    for (int64_t i = 0; i < n_tasks; ++i) fn(i);
    return;
  }
  const OmpApi& api = omp_api();
  if (api.parallel != nullptr) {
    OmpJob job;
    job.fn = &fn;
    job.n_tasks = n_tasks;
    api.parallel(omp_trampoline, &job, static_cast<unsigned>(std::min<int64_t>(num_threads, n_tasks)), 0);
    if (job.error) std::rethrow_exception(job.error);
    return;
  }
  pool().run(n_tasks, num_threads, fn);
}

}  // namespace autofreeze
