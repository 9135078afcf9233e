// Asynchronous positional reads behind one interface: io_uring (liburing, registered
// buffers when the kernel accepts them) or a thread pool running pread. Only one thread
// (the prefetcher) submits and reaps; completions carry the caller's pointer back.
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace autofreeze {

struct ReadRequest {
  int fd;
  uint64_t offset;
  uint64_t length;
  char* dst;
  int buf_index;    // registered-buffer index, -1 when not in a registered buffer
  void* user;       // returned with the completion
};

struct Completion {
  void* user;
  int64_t result;   // bytes read (may be short), or -errno
};

class IoBackend {
 public:
  virtual ~IoBackend() = default;
  virtual const char* name() const = 0;
  // Queue a read; it may be issued at once or at the next flush().
  virtual void submit(const ReadRequest& r) = 0;
  virtual void flush() = 0;
  // Block until at least one completion is available, then return all that are.
  virtual void wait(std::vector<Completion>& out) = 0;
  // Make these buffers eligible for fixed-buffer reads; false if refused (reads still work).
  virtual bool register_buffers(const std::vector<std::pair<char*, size_t>>& bufs) { return false; }
  virtual void unregister_buffers() {}
  virtual bool buffers_registered() const { return false; }
};

// Full pread loop: returns bytes read (short at end of file) or -errno.
int64_t pread_full(int fd, char* dst, uint64_t length, uint64_t offset);
int64_t pwrite_full(int fd, const char* src, uint64_t length, uint64_t offset);

// "uring" (falls back to threads with *why set if io_uring is unavailable at build or run
// time), or "threads".
std::unique_ptr<IoBackend> make_io_backend(const std::string& kind, unsigned queue_depth, std::string* why);
bool uring_compiled();

}  // namespace autofreeze
