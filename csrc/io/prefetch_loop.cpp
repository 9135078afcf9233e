// The prefetcher's thread: give free slots to the next planned batches, keep up to the queue
// depth of reads in flight, verify finished batches while the next reads are in flight.
#include "prefetcher.h"
#include "record_format.h"

namespace autofreeze {

void Prefetcher::loop() {
  std::vector<int> to_verify;  // slots whose reads all completed, checked outside the lock
  for (;;) {
    bool reads_pending;
    {
      std::unique_lock<std::mutex> g(mu_);
      for (;;) {
        if (stop_) {  // drain what the kernel or the pool still reads into the slots
          while (inflight_ > 0) {
            done_.clear();
            io_->wait(done_);
            inflight_ -= static_cast<int>(done_.size());
          }
          return;
        }
        bool assigned = assign_slots_locked();
        if (!ops_.empty() || inflight_ > 0 || !to_verify.empty()) break;
        if (!assigned) cv_.wait(g);
      }
      issue_locked();
      reads_pending = inflight_ > 0;
    }
    io_->flush();
    verify_finished(to_verify);
    if (reads_pending) reap(to_verify);
  }
}

bool Prefetcher::assign_slots_locked() {
  bool assigned = false;
  for (size_t i = 0; i < slots_.size() && next_issue_ < plan_entries_.size(); ++i) {
    Slot& s = slots_[i];
    if (s.state != Slot::kFree) continue;
    s.state = Slot::kLoading;
    s.stale = false;
    s.batch = static_cast<int64_t>(next_issue_);
    s.entries = plan_entries_[next_issue_];
    s.ids = plan_ids_[next_issue_];
    s.results.assign(s.entries.size(), 0);
    s.pending = static_cast<int>(s.entries.size());
    next_issue_++;
    assigned = true;
    for (size_t r = 0; r < s.entries.size(); ++r) ops_.push_back({static_cast<int>(i), static_cast<int>(r)});
    if (s.pending == 0) {
      s.state = Slot::kReady;
      ready_cv_.notify_all();
    }
  }
  return assigned;
}

void Prefetcher::issue_locked() {
  while (!ops_.empty() && inflight_ < static_cast<int>(queue_depth_)) {
    Op op = ops_.front();
    ops_.pop_front();
    Slot& s = slots_[op.slot];
    uint64_t off = 0;
    for (int r = 0; r < op.rec; ++r) off += s.entries[r].record_len;
    const Entry& e = s.entries[op.rec];
    void* user = reinterpret_cast<void*>((static_cast<uintptr_t>(op.slot) << 32) | static_cast<uint32_t>(op.rec));
    io_->submit(ReadRequest{e.seg->fd, e.offset, e.record_len, s.ptr + off, op.slot, user});
    inflight_++;
  }
}

// A slot being verified is Loading and counted in unverified_, so nobody else touches it.
void Prefetcher::verify_finished(std::vector<int>& to_verify) {
  for (int si : to_verify) {
    Slot& s = slots_[si];
    if (!s.stale) verify_slot(s);
    std::lock_guard<std::mutex> g(mu_);
    s.state = s.stale ? Slot::kFree : Slot::kReady;
    s.stale = false;
    unverified_--;
    ready_cv_.notify_all();
    cv_.notify_all();
  }
  to_verify.clear();
}

void Prefetcher::reap(std::vector<int>& to_verify) {
  done_.clear();
  io_->wait(done_);
  std::lock_guard<std::mutex> g(mu_);
  for (auto& c : done_) {
    uintptr_t u = reinterpret_cast<uintptr_t>(c.user);
    Slot& s = slots_[u >> 32];
    s.results[u & 0xffffffffu] = c.result;
    inflight_--;
    if (--s.pending == 0) {
      to_verify.push_back(static_cast<int>(u >> 32));
      unverified_++;
    }
  }
  cv_.notify_all();
}

void Prefetcher::verify_slot(Slot& s) {
  uint64_t off = 0;
  for (size_t r = 0; r < s.entries.size(); ++r) {
    const Entry& e = s.entries[r];
    int status = check_record(s.ptr + off, s.results[r], e, s.ids[r], run_tag_);
    s.results[r] = status;
    count_read(*stats_, status, e.record_len);
    off += e.record_len;
  }
}

}  // namespace autofreeze
