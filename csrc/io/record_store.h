// On-disk record store for cached activations: variable-size records appended to a few
// large segment files, each aligned for O_DIRECT and carrying a header with sample id,
// depth, dtype, shape, byte length and CRC32C. A background writer with a bounded queue
// does the writes; an index (sample id -> segment, offset, ...) is persisted atomically on
// flush() together with a fingerprint of what produced the cache. A prefetcher reads the
// planned batches of an epoch ahead of the consumer into a ring of page-aligned (and,
// when asked, CUDA-pinned) slots through io_uring or a pread thread pool.
//
// RecordStore is the facade; each job lives in its own file: record_format.* (record and
// index-record layouts, encode, check), direct_io.* (O_DIRECT probing), index_file.* (the
// index file's layout), fs_util.* (segment files, atomic replacement), store_index.cpp
// (opening an existing store, segments, flush), store_writer.cpp (put and the writer
// thread), prefetcher.* and prefetch_loop.cpp (the read-ahead ring), record_store.cpp (the
// rest: lifetime, lookups, synchronous reads, info).
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

#include "index_file.h"
#include "io_backend.h"
#include "prefetcher.h"
#include "store_types.h"

namespace autofreeze {

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

  // Synchronous read of one record's payload into dst (capacity bytes); returns a ReadStatus:
  // kMissing when there is no record, or when it does not fit (rewritten larger since the
  // caller sized dst; *meta then says its size).
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

  // store_index.cpp
  void open_existing();
  void adopt_index(const IndexImage& image);
  std::shared_ptr<Segment> open_segment(uint32_t id);
  void remove_unknown_segments();
  void wipe();
  std::shared_ptr<Segment> new_segment_locked();
  int open_file(const std::string& path, bool create);
  void drop_entry_locked(std::unordered_map<int64_t, Entry>::iterator it);
  IndexImage snapshot_index();
  // store_writer.cpp
  bool reserve_write(uint64_t len);
  void writer_loop();
  std::shared_ptr<Segment> segment_for_locked(uint64_t len, uint64_t* offset);
  int64_t write_record(const std::shared_ptr<Segment>& seg, const WriteJob& job, uint64_t offset);
  void finish_write_locked(const WriteJob& job, const std::shared_ptr<Segment>& seg, uint64_t offset, int64_t res);
  std::string index_path() const { return opt_.dir + "/index.bin"; }

  StoreOptions opt_;
  uint32_t align_ = 4096;
  uint64_t run_tag_ = 0;  // run_tag_of(fingerprint): in every record written, checked on every read
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
  std::unique_ptr<Prefetcher> prefetch_;
};

}  // namespace autofreeze
