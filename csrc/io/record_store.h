// On-disk record store for cached activations: variable-size records appended to a few
// large segment files, each aligned for O_DIRECT and carrying a header with sample id,
// depth, dtype, shape, byte length and CRC32C. A background writer with a bounded queue
// does the writes; an index (sample id -> segment, offset, ...) is persisted atomically on
// flush() together with a fingerprint of what produced the cache. A prefetcher reads the
// planned batches of an epoch ahead of the consumer into a ring of page-aligned (and,
// when asked, CUDA-pinned) slots through io_uring or a pread thread pool.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "io_backend.h"

namespace autofreeze {

constexpr int kMaxDims = 8;

struct StoreOptions {
  std::string dir;
  std::string backend = "auto";  // auto | uring | threads
  std::string direct = "auto";   // auto | on | off
  unsigned queue_depth = 32;
  uint64_t segment_bytes = 1ull << 30;
  uint64_t write_queue_bytes = 256ull << 20;
  uint64_t disk_budget = 0;      // 0: unlimited
  std::string fingerprint;
  bool pin = false;              // cudaHostRegister the prefetch slots (CUDA builds only)
};

struct Segment {
  uint32_t id = 0;
  int fd = -1;
  std::string path;
  uint64_t size = 0;  // append offset
  uint64_t live = 0;  // bytes of records the index still refers to
  ~Segment();
};

struct Entry {
  std::shared_ptr<Segment> seg;
  uint64_t offset = 0, record_len = 0, nbytes = 0;
  int32_t depth = 0;
  uint8_t dtype = 0, ndim = 0;
  int64_t shape[kMaxDims] = {0};
  uint32_t crc = 0;
};

enum ReadStatus : int { kOk = 0, kCorrupt = 1, kShort = 2, kIoError = 3, kMissing = 4 };

struct RecordView {
  int64_t id;
  int status;
  int32_t depth;
  uint8_t dtype;
  std::vector<int64_t> shape;
  uint64_t payload_offset;  // within the slot
  uint64_t nbytes;
};

struct BatchView {
  int64_t batch = -1;  // -1: the plan is exhausted
  int slot = -1;
  char* base = nullptr;
  uint64_t size = 0;
  std::vector<RecordView> records;
  double wait_seconds = 0;  // time the consumer blocked in next()
};

struct StoreStats {
  std::atomic<uint64_t> puts{0}, rejected_budget{0}, rejected_full{0}, writes{0}, bytes_written{0},
      write_errors{0}, reads_ok{0}, reads_corrupt{0}, reads_short{0}, reads_error{0}, bytes_read{0},
      index_dropped{0}, segments_deleted{0};
};

class RecordStore {
 public:
  explicit RecordStore(const StoreOptions& o);
  ~RecordStore();

  // Copies the payload; blocks only while the write queue is full. False: not stored
  // (budget, disk full or store closed) -- the caller recomputes instead.
  bool put(int64_t id, int32_t depth, uint8_t dtype, const std::vector<int64_t>& shape, const void* src,
           uint64_t nbytes);
  bool lookup(int64_t id, Entry* out) const;  // persisted (written) records only
  int32_t depth_of(int64_t id) const;
  size_t size() const;
  uint64_t live_bytes() const;
  uint64_t pending_bytes() const;
  size_t evict_below(int32_t depth);
  bool erase(int64_t id);
  void flush();  // drain the writer, fdatasync segments, write the index atomically
  void close();

  // Synchronous read of one record's payload into dst (capacity bytes); returns a ReadStatus.
  int read_into(int64_t id, char* dst, uint64_t capacity, Entry* meta);

  // Prefetch: snapshot the disk-resident records of these batches and read them ahead.
  void plan(const std::vector<std::vector<int64_t>>& batches, unsigned slots);
  BatchView next();  // blocks until the next planned batch is in memory
  void release(int slot);
  void cancel_plan();

  // Test hook: writes fail with ENOSPC after `after` more successful writes (-1: off).
  void inject_enospc(int64_t after) { enospc_after_ = after; }

  const StoreOptions& options() const { return opt_; }
  std::map<std::string, std::string> info() const;
  const StoreStats& stats() const { return stats_; }
  bool disk_full() const { return disk_full_; }
  uint32_t alignment() const { return align_; }

 private:
  struct WriteJob {
    int64_t id;
    Entry meta;  // without segment/offset
    char* buf;
    uint64_t len;
  };
  struct Slot {
    char* ptr = nullptr;
    uint64_t cap = 0;
    enum State { kFree, kLoading, kReady, kHeld } state = kFree;
    bool stale = false;
    int64_t batch = -1;
    int pending = 0;
    std::vector<Entry> entries;
    std::vector<int64_t> ids;
    std::vector<int64_t> results;
  };
  struct Op {
    int slot;
    int rec;
  };

  void probe_direct();
  void open_existing();
  void wipe();
  std::shared_ptr<Segment> new_segment_locked();
  int open_file(const std::string& path, bool create);
  void drop_entry_locked(std::unordered_map<int64_t, Entry>::iterator it);
  void writer_loop();
  void prefetch_loop();
  void verify_slot(Slot& s);
  void count_read(int status, uint64_t len);
  void reset_locked(std::unique_lock<std::mutex>& g);
  void free_slots();
  std::string index_path() const { return opt_.dir + "/index.bin"; }

  StoreOptions opt_;
  uint32_t align_ = 4096;
  bool direct_ = false;
  std::string direct_reason_, backend_reason_, open_note_;
  int seg_errno_ = 0;
  StoreStats stats_;

  mutable std::mutex mu_;  // index, segments, writer queue
  std::unordered_map<int64_t, Entry> index_;
  std::map<uint32_t, std::shared_ptr<Segment>> segments_;
  std::shared_ptr<Segment> current_;
  uint32_t next_segment_ = 0;
  uint64_t live_ = 0;
  std::deque<WriteJob> wq_;
  uint64_t queued_bytes_ = 0;
  bool writing_ = false;
  std::condition_variable wq_cv_, wq_space_cv_, wq_idle_cv_;
  std::atomic<bool> disk_full_{false};
  std::atomic<int64_t> enospc_after_{-1};
  bool closed_ = false;
  std::thread writer_;

  // prefetcher
  std::unique_ptr<IoBackend> io_;
  std::mutex pmu_;
  std::condition_variable pcv_, ready_cv_;
  std::vector<Slot> slots_;
  std::vector<std::vector<Entry>> plan_entries_;
  std::vector<std::vector<int64_t>> plan_ids_;
  size_t next_issue_ = 0, next_deliver_ = 0;
  int inflight_ = 0, unverified_ = 0;
  bool pinned_ = false, pstop_ = false;
  std::deque<Op> ops_;
  std::vector<Op> op_pool_;
  std::thread prefetcher_;
};

}  // namespace autofreeze
