#include "prefetcher.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <new>
#include <stdexcept>

#include "pinned.h"
#include "record_format.h"

namespace autofreeze {

Prefetcher::Prefetcher(std::unique_ptr<IoBackend> io, unsigned queue_depth, bool pin, StoreStats* stats,
                       uint64_t run_tag)
    : io_(std::move(io)), queue_depth_(queue_depth ? queue_depth : 1), pin_(pin), stats_(stats), run_tag_(run_tag) {
  thread_ = std::thread([this] { loop(); });
}

Prefetcher::~Prefetcher() {
  try {
    close();
  } catch (...) {
  }
}

void Prefetcher::close() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_) return;
    closed_ = stop_ = true;
    stats_->in_flight_at_close += static_cast<uint64_t>(inflight_);
  }
  cv_.notify_all();
  ready_cv_.notify_all();
  if (thread_.joinable()) thread_.join();  // it drains its reads in flight before it returns
  std::lock_guard<std::mutex> g(mu_);     // a plan() on another thread has finished or will throw
  if (io_) io_->unregister_buffers();
  io_.reset();  // backend threads joined
  free_slots();
}

std::string Prefetcher::backend_name() const {
  std::lock_guard<std::mutex> g(mu_);
  return io_ ? io_->name() : "closed";
}

bool Prefetcher::buffers_registered() const {
  std::lock_guard<std::mutex> g(mu_);
  return io_ && io_->buffers_registered();
}

void Prefetcher::free_slots() {
  if (inflight_ > 0 && !slots_.empty()) stats_->unmapped_in_flight++;  // a bug: checked by the tests
  for (auto& s : slots_) {
    if (!s.ptr) continue;
    if (pinned_) unpin_host(s.ptr);
    ::munmap(s.ptr, s.cap);
  }
  slots_.clear();
  pinned_ = false;
}

void Prefetcher::alloc_slots(unsigned nslots, uint64_t bytes) {
  io_->unregister_buffers();
  free_slots();
  slots_.resize(nslots);
  std::vector<std::pair<char*, size_t>> bufs;
  bool all_pinned = pin_;
  for (auto& s : slots_) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    s.ptr = static_cast<char*>(p);
    s.cap = bytes;
    if (pin_) all_pinned = pin_host(p, bytes) && all_pinned;
    bufs.push_back({s.ptr, s.cap});
  }
  pinned_ = pin_ && all_pinned;
  if (pin_ && !all_pinned)
    for (auto& s : slots_) unpin_host(s.ptr);  // all or none
  io_->register_buffers(bufs);
}

void Prefetcher::plan(std::vector<std::vector<Entry>> entries, std::vector<std::vector<int64_t>> ids,
                      uint64_t max_batch_bytes, unsigned nslots) {
  if (nslots < 1) nslots = 1;
  std::unique_lock<std::mutex> g(mu_);
  if (closed_) throw std::runtime_error("plan(): the store is closed");
  for (auto& s : slots_)
    if (s.state == Slot::kHeld) throw std::runtime_error("plan(): release every batch taken with next() first");
  reset_locked(g);
  if (stop_) throw std::runtime_error("plan(): the store is closing");  // reads may still be in flight
  const uint64_t need = round_up(std::max<uint64_t>(max_batch_bytes, 4096), 1u << 21);
  if (slots_.size() != nslots || (slots_.size() && slots_[0].cap < need)) alloc_slots(nslots, need);
  plan_entries_ = std::move(entries);
  plan_ids_ = std::move(ids);
  cv_.notify_all();
}

void Prefetcher::reset_locked(std::unique_lock<std::mutex>& g) {
  // Forget the plan, then wait for reads already in flight into the slots: the kernel (or a
  // pool thread) still writes into them. Held slots stay with the consumer.
  plan_entries_.clear();
  plan_ids_.clear();
  next_issue_ = next_deliver_ = 0;
  ops_.clear();
  for (auto& s : slots_)
    if (s.state == Slot::kLoading) s.stale = true;
  cv_.notify_all();
  ready_cv_.notify_all();
  cv_.wait(g, [this] { return (inflight_ == 0 && unverified_ == 0) || stop_; });
  for (auto& s : slots_) {
    s.stale = false;
    if (s.state != Slot::kHeld) s.state = Slot::kFree;
  }
}

void Prefetcher::cancel() {
  std::unique_lock<std::mutex> g(mu_);
  reset_locked(g);
}

BatchView Prefetcher::next() {
  auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> g(mu_);
  if (next_deliver_ >= plan_entries_.size()) return BatchView();
  const int64_t want = static_cast<int64_t>(next_deliver_);
  if (std::all_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.state == Slot::kHeld; }))
    throw std::runtime_error("next(): every prefetch slot is held; release() one first");
  int found = -1;
  ready_cv_.wait(g, [&] {
    if (stop_ || next_deliver_ >= plan_entries_.size()) return true;
    for (size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].state == Slot::kReady && !slots_[i].stale && slots_[i].batch == want) {
        found = static_cast<int>(i);
        return true;
      }
    return false;
  });
  if (found < 0) return BatchView();
  slots_[found].state = Slot::kHeld;
  next_deliver_++;
  cv_.notify_all();
  BatchView v = view_of(found, want);
  v.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return v;
}

BatchView Prefetcher::view_of(int slot, int64_t batch) {
  const Slot& s = slots_[slot];
  BatchView v;
  v.batch = batch;
  v.slot = slot;
  v.base = s.ptr;
  v.size = s.cap;
  uint64_t off = 0;
  for (size_t r = 0; r < s.entries.size(); ++r) {
    const Entry& e = s.entries[r];
    RecordView rv;
    rv.id = s.ids[r];
    rv.status = static_cast<int>(s.results[r]);
    rv.depth = e.depth;
    rv.dtype = e.dtype;
    rv.shape.assign(e.shape, e.shape + e.ndim);
    rv.payload_offset = off + kHeaderBytes;
    rv.nbytes = e.nbytes;
    v.records.push_back(std::move(rv));
    off += e.record_len;
  }
  return v;
}

void Prefetcher::release(int slot) {
  std::lock_guard<std::mutex> g(mu_);
  if (slot < 0 || static_cast<size_t>(slot) >= slots_.size() || slots_[slot].state != Slot::kHeld)
    throw std::invalid_argument("release(): slot is not held");
  slots_[slot].state = Slot::kFree;
  cv_.notify_all();
}

}  // namespace autofreeze
