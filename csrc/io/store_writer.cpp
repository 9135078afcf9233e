// Writes: put() encodes a record into an aligned buffer and queues it (bounded by bytes);
// one writer thread appends each to the current segment and then publishes its index entry.
// ENOSPC/EDQUOT marks the disk full and drops the queue; later puts return false.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>

#include "record_format.h"
#include "record_store.h"

namespace autofreeze {

// Reserve len bytes of the write queue (blocking while it is full); false: not to be stored.
bool RecordStore::reserve_write(uint64_t len) {
  std::unique_lock<std::mutex> g(mu_);
  if (closed_) return false;
  if (disk_full_) {
    stats_.rejected_full++;
    return false;
  }
  if (opt_.disk_budget && live_ + queued_bytes_ + len > opt_.disk_budget) {
    stats_.rejected_budget++;
    return false;
  }
  wq_space_cv_.wait(g, [&] { return closed_ || disk_full_ || wq_.empty() || queued_bytes_ + len <= opt_.write_queue_bytes; });
  if (closed_ || disk_full_) return false;
  queued_bytes_ += len;  // reserved before copying so the budget holds under concurrency
  return true;
}

bool RecordStore::put(int64_t id, int32_t depth, uint8_t dtype, const std::vector<int64_t>& shape, const void* src,
                      uint64_t nbytes) {
  if (shape.size() > static_cast<size_t>(kMaxDims)) throw std::invalid_argument("at most 8 dimensions");
  stats_.puts++;
  const uint64_t len = record_length(nbytes, align_);
  if (!reserve_write(len)) return false;
  WriteJob job;
  job.id = id;
  job.buf = encode_record(id, depth, dtype, shape, src, nbytes, align_, run_tag_, &job.meta);
  job.len = len;
  {
    std::lock_guard<std::mutex> g(mu_);
    wq_.push_back(job);
  }
  wq_cv_.notify_one();
  return true;
}

void RecordStore::writer_loop() {
  for (;;) {
    WriteJob job;
    std::shared_ptr<Segment> seg;
    uint64_t offset = 0;
    {
      std::unique_lock<std::mutex> g(mu_);
      wq_cv_.wait(g, [this] { return closed_ || !wq_.empty(); });
      if (wq_.empty()) return;  // closed and drained
      job = wq_.front();
      wq_.pop_front();
      writing_ = true;
      seg = segment_for_locked(job.len, &offset);
    }
    int64_t res = write_record(seg, job, offset);
    std::free(job.buf);
    {
      std::lock_guard<std::mutex> g(mu_);
      finish_write_locked(job, seg, offset, res);
    }
    wq_space_cv_.notify_all();
    wq_idle_cv_.notify_all();
  }
}

// The segment a record of len bytes goes to (a new one when the current is full; an old one
// nothing refers to any more is deleted), and its offset there; null when none can be made.
std::shared_ptr<Segment> RecordStore::segment_for_locked(uint64_t len, uint64_t* offset) {
  if (!current_ || current_->size + len > opt_.segment_bytes) {
    auto old = current_;
    current_ = new_segment_locked();
    if (old && old->live == 0) {
      ::unlink(old->path.c_str());
      segments_.erase(old->id);
      stats_.segments_deleted++;
    }
  }
  if (current_) {
    *offset = current_->size;
    current_->size += len;
  }
  return current_;
}

int64_t RecordStore::write_record(const std::shared_ptr<Segment>& seg, const WriteJob& job, uint64_t offset) {
  if (!seg) return -seg_errno_;
  if (enospc_after_ == 0) return -ENOSPC;  // test hook
  int64_t res = pwrite_full(seg->fd, job.buf, job.len, offset);
  if (enospc_after_ > 0) enospc_after_--;
  return res;
}

void RecordStore::finish_write_locked(const WriteJob& job, const std::shared_ptr<Segment>& seg, uint64_t offset,
                                      int64_t res) {
  queued_bytes_ -= job.len;
  writing_ = false;
  if (res == static_cast<int64_t>(job.len)) {
    auto old = index_.find(job.id);
    if (old != index_.end()) drop_entry_locked(old);
    Entry e = job.meta;
    e.seg = seg;
    e.offset = offset;
    seg->live += job.len;
    live_ += job.len;
    index_[job.id] = e;
    stats_.writes++;
    stats_.bytes_written += job.len;
    return;
  }
  stats_.write_errors++;
  if (res == -ENOSPC || res == -EDQUOT) {
    disk_full_ = true;  // stop writing; training goes on by recomputation
    for (auto& j : wq_) {
      std::free(j.buf);
      queued_bytes_ -= j.len;
    }
    wq_.clear();
  }
}

}  // namespace autofreeze
