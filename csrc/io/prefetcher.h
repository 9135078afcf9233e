// The prefetch ring: reads an epoch's planned batches ahead of the consumer into a ring of
// page-aligned (optionally CUDA-pinned) slots, through an IoBackend, and verifies each
// finished batch while the next reads are in flight. One thread issues and reaps.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "io_backend.h"
#include "store_types.h"

namespace autofreeze {

class Prefetcher {
 public:
  // run_tag: the store's; a record carrying another is read as corrupt.
  Prefetcher(std::unique_ptr<IoBackend> io, unsigned queue_depth, bool pin, StoreStats* stats, uint64_t run_tag = 0);
  ~Prefetcher();

  // Read these batches (their index entries, snapshotted by the caller) ahead, in order, into
  // nslots slots of at least max_batch_bytes each. Throws while a batch is still held.
  void plan(std::vector<std::vector<Entry>> entries, std::vector<std::vector<int64_t>> ids,
            uint64_t max_batch_bytes, unsigned nslots);
  BatchView next();  // blocks until the next planned batch is in memory
  void release(int slot);
  void cancel();  // forget the plan once the reads in flight have landed
  // Stop the thread, then the backend (its threads joined, in-flight reads drained, buffers
  // unregistered), then unpin and unmap the slots: nothing can write into freed memory.
  void close();

  std::string backend_name() const;
  bool buffers_registered() const;
  bool pinned() const { return pinned_; }

 private:
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

  void loop();
  bool assign_slots_locked();
  void issue_locked();
  void verify_finished(std::vector<int>& to_verify);
  void reap(std::vector<int>& to_verify);
  void verify_slot(Slot& s);
  BatchView view_of(int slot, int64_t batch);
  void reset_locked(std::unique_lock<std::mutex>& g);
  void alloc_slots(unsigned nslots, uint64_t bytes);
  void free_slots();

  std::unique_ptr<IoBackend> io_;
  unsigned queue_depth_;
  bool pin_, pinned_ = false;
  StoreStats* stats_;
  uint64_t run_tag_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_, ready_cv_;
  std::vector<Slot> slots_;
  std::vector<std::vector<Entry>> plan_entries_;
  std::vector<std::vector<int64_t>> plan_ids_;
  size_t next_issue_ = 0, next_deliver_ = 0;
  int inflight_ = 0, unverified_ = 0;
  bool stop_ = false, closed_ = false;
  std::deque<Op> ops_;
  std::vector<Completion> done_;
  std::thread thread_;
};

}  // namespace autofreeze
