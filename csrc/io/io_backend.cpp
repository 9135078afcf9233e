#include "io_backend.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#ifdef AUTOFREEZE_WITH_URING
#include <liburing.h>
#endif

namespace autofreeze {

int64_t pread_full(int fd, char* dst, uint64_t length, uint64_t offset) {
  uint64_t done = 0;
  while (done < length) {
    ssize_t r = ::pread(fd, dst + done, length - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) break;  // end of file: short read
    done += static_cast<uint64_t>(r);
  }
  return static_cast<int64_t>(done);
}

int64_t pwrite_full(int fd, const char* src, uint64_t length, uint64_t offset) {
  uint64_t done = 0;
  while (done < length) {
    ssize_t r = ::pwrite(fd, src + done, length - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (r == 0) return -EIO;
    done += static_cast<uint64_t>(r);
  }
  return static_cast<int64_t>(done);
}

namespace {

class ThreadBackend final : public IoBackend {
 public:
  explicit ThreadBackend(unsigned workers) {
    for (unsigned i = 0; i < workers; ++i) threads_.emplace_back([this] { run(); });
  }
  ~ThreadBackend() override {
    {
      std::lock_guard<std::mutex> g(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  const char* name() const override { return "threads"; }
  void submit(const ReadRequest& r) override {
    {
      std::lock_guard<std::mutex> g(mu_);
      work_.push_back(r);
    }
    work_cv_.notify_one();
  }
  void flush() override {}
  void wait(std::vector<Completion>& out) override {
    std::unique_lock<std::mutex> g(mu_);
    done_cv_.wait(g, [this] { return !done_.empty(); });
    out.insert(out.end(), done_.begin(), done_.end());
    done_.clear();
  }

 private:
  void run() {
    for (;;) {
      ReadRequest r;
      {
        std::unique_lock<std::mutex> g(mu_);
        work_cv_.wait(g, [this] { return stop_ || !work_.empty(); });
        if (stop_) return;
        r = work_.front();
        work_.pop_front();
      }
      int64_t res = pread_full(r.fd, r.dst, r.length, r.offset);
      {
        std::lock_guard<std::mutex> g(mu_);
        done_.push_back({r.user, res});
      }
      done_cv_.notify_one();
    }
  }
  std::mutex mu_;
  std::condition_variable work_cv_, done_cv_;
  std::deque<ReadRequest> work_;
  std::vector<Completion> done_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

#ifdef AUTOFREEZE_WITH_URING
class UringBackend final : public IoBackend {
 public:
  UringBackend(unsigned depth, int* err) : depth_(depth) {
    *err = io_uring_queue_init(depth, &ring_, 0);
    ok_ = (*err == 0);
  }
  ~UringBackend() override {
    if (ok_) {
      unregister_buffers();
      io_uring_queue_exit(&ring_);
    }
  }
  const char* name() const override { return "io_uring"; }
  void submit(const ReadRequest& r) override {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) {  // submission queue full: push what is queued and retry once
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
    }
    if (!sqe) {  // cannot happen while the caller respects the queue depth; do it inline
      int64_t res = pread_full(r.fd, r.dst, r.length, r.offset);
      inline_done_.push_back({r.user, res});
      return;
    }
    if (registered_ && r.buf_index >= 0)
      io_uring_prep_read_fixed(sqe, r.fd, r.dst, static_cast<unsigned>(r.length), r.offset, r.buf_index);
    else
      io_uring_prep_read(sqe, r.fd, r.dst, static_cast<unsigned>(r.length), r.offset);
    io_uring_sqe_set_data(sqe, r.user);
    ++queued_;
  }
  void flush() override {
    if (queued_) {
      io_uring_submit(&ring_);
      queued_ = 0;
    }
  }
  void wait(std::vector<Completion>& out) override {
    if (!inline_done_.empty()) {
      out.insert(out.end(), inline_done_.begin(), inline_done_.end());
      inline_done_.clear();
      return;
    }
    flush();
    io_uring_cqe* cqe = nullptr;
    int rc;
    do {
      rc = io_uring_wait_cqe(&ring_, &cqe);
    } while (rc == -EINTR);
    if (rc < 0) throw std::runtime_error(std::string("io_uring_wait_cqe: ") + std::strerror(-rc));
    unsigned head, n = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      out.push_back({io_uring_cqe_get_data(cqe), static_cast<int64_t>(cqe->res)});
      ++n;
    }
    io_uring_cq_advance(&ring_, n);
  }
  bool register_buffers(const std::vector<std::pair<char*, size_t>>& bufs) override {
    unregister_buffers();
    std::vector<iovec> iov;
    for (auto& b : bufs) iov.push_back({b.first, b.second});
    registered_ = io_uring_register_buffers(&ring_, iov.data(), static_cast<unsigned>(iov.size())) == 0;
    return registered_;
  }
  void unregister_buffers() override {
    if (registered_) io_uring_unregister_buffers(&ring_);
    registered_ = false;
  }
  bool buffers_registered() const override { return registered_; }

 private:
  io_uring ring_{};
  unsigned depth_;
  bool ok_ = false, registered_ = false;
  unsigned queued_ = 0;
  std::vector<Completion> inline_done_;
};
#endif

}  // namespace

bool uring_compiled() {
#ifdef AUTOFREEZE_WITH_URING
  return true;
#else
  return false;
#endif
}

std::unique_ptr<IoBackend> make_io_backend(const std::string& kind, unsigned queue_depth, std::string* why) {
  if (queue_depth < 1) queue_depth = 1;
  if (kind == "uring" || kind == "auto") {
#ifdef AUTOFREEZE_WITH_URING
    int err = 0;
    // AUTOFREEZE_IO_URING_REFUSE=1 simulates a kernel/seccomp that refuses io_uring (tests).
    const char* refuse = std::getenv("AUTOFREEZE_IO_URING_REFUSE");
    if (refuse && refuse[0] == '1') {
      err = -EPERM;
    } else {
      auto b = std::make_unique<UringBackend>(queue_depth, &err);
      if (err == 0) return b;
    }
    *why = std::string("io_uring refused at run time (") + std::strerror(-err) + "), using the pread thread pool";
#else
    *why = "built without liburing, using the pread thread pool";
#endif
  } else if (kind != "threads") {
    throw std::invalid_argument("unknown I/O backend '" + kind + "' (expected auto, uring or threads)");
  }
  unsigned workers = queue_depth < 16 ? queue_depth : 16;
  return std::make_unique<ThreadBackend>(workers);
}

}  // namespace autofreeze
