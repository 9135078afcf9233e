#include "record_store.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "crc32c.h"
#include "direct_io.h"
#include "fs_util.h"
#include "record_format.h"

namespace autofreeze {

Segment::~Segment() {
  if (fd >= 0) ::close(fd);
}

RecordStore::RecordStore(const StoreOptions& o) : opt_(o) {
  if (opt_.dir.empty()) throw std::invalid_argument("cache directory is empty");
  if (::mkdir(opt_.dir.c_str(), 0755) != 0 && errno != EEXIST)
    throw std::runtime_error("cannot create cache directory " + opt_.dir + ": " + errstr(errno));
  if (opt_.segment_bytes < (1u << 20)) opt_.segment_bytes = 1u << 20;
  run_tag_ = run_tag_of(opt_.fingerprint);
  DirectIo d = probe_direct_io(opt_.dir, opt_.direct);
  direct_ = d.direct;
  align_ = d.align;
  direct_reason_ = d.reason;
  open_existing();
  prefetch_ = std::make_unique<Prefetcher>(make_io_backend(opt_.backend, opt_.queue_depth, &backend_reason_),
                                           opt_.queue_depth, opt_.pin, &stats_, run_tag_);
  writer_ = std::thread([this] { writer_loop(); });
}

RecordStore::~RecordStore() {
  try {
    close();
  } catch (...) {
  }
}

void RecordStore::close() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_) return;
  }
  prefetch_->close();  // thread stopped, reads drained, backend gone, then the slots unmapped
  {
    std::lock_guard<std::mutex> g(mu_);
    closed_ = true;
  }
  wq_cv_.notify_all();
  wq_space_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

bool RecordStore::lookup(int64_t id, Entry* out) const {
  std::lock_guard<std::mutex> g(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  if (out) *out = it->second;
  return true;
}

int32_t RecordStore::depth_of(int64_t id) const {
  std::lock_guard<std::mutex> g(mu_);
  auto it = index_.find(id);
  return it == index_.end() ? -1 : it->second.depth;
}

size_t RecordStore::size() const {
  std::lock_guard<std::mutex> g(mu_);
  return index_.size();
}

uint64_t RecordStore::live_bytes() const {
  std::lock_guard<std::mutex> g(mu_);
  return live_;
}

uint64_t RecordStore::pending_bytes() const {
  std::lock_guard<std::mutex> g(mu_);
  return queued_bytes_;
}

size_t RecordStore::evict_below(int32_t depth) {
  std::lock_guard<std::mutex> g(mu_);
  size_t n = 0;
  for (auto it = index_.begin(); it != index_.end();) {
    if (it->second.depth < depth) {
      auto next = std::next(it);
      drop_entry_locked(it);
      it = next;
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

bool RecordStore::erase(int64_t id) {
  std::lock_guard<std::mutex> g(mu_);
  auto it = index_.find(id);
  if (it == index_.end()) return false;
  drop_entry_locked(it);
  return true;
}

int RecordStore::read_into(int64_t id, char* dst, uint64_t capacity, Entry* meta) {
  Entry e;
  if (!lookup(id, &e)) return kMissing;
  if (meta) *meta = e;
  if (e.nbytes > capacity) return kMissing;
  char* buf = alloc_aligned(e.record_len);
  int64_t r = pread_full(e.seg->fd, buf, e.record_len, e.offset);
  int status = check_record(buf, r, e, id, run_tag_);
  if (status == kOk) std::memcpy(dst, buf + kHeaderBytes, e.nbytes);
  std::free(buf);
  count_read(stats_, status, e.record_len);
  return status;
}

void RecordStore::plan(const std::vector<std::vector<int64_t>>& batches, unsigned nslots) {
  std::vector<std::vector<Entry>> entries(batches.size());
  std::vector<std::vector<int64_t>> ids(batches.size());
  uint64_t need = 0;
  {
    std::lock_guard<std::mutex> g(mu_);
    for (size_t b = 0; b < batches.size(); ++b) {
      uint64_t bytes = 0;
      for (int64_t id : batches[b]) {
        auto it = index_.find(id);
        if (it == index_.end()) continue;
        entries[b].push_back(it->second);
        ids[b].push_back(id);
        bytes += it->second.record_len;
      }
      need = std::max(need, bytes);
    }
  }
  prefetch_->plan(std::move(entries), std::move(ids), need, nslots);
}

BatchView RecordStore::next() { return prefetch_->next(); }

void RecordStore::release(int slot) { prefetch_->release(slot); }

void RecordStore::cancel_plan() { prefetch_->cancel(); }

std::map<std::string, std::string> RecordStore::info() const {
  std::map<std::string, std::string> m;
  m["backend"] = prefetch_->backend_name();
  m["backend_note"] = backend_reason_;
  m["direct"] = direct_ ? "1" : "0";
  m["direct_note"] = direct_reason_;
  m["alignment"] = std::to_string(align_);
  m["registered_buffers"] = prefetch_->buffers_registered() ? "1" : "0";
  m["pinned"] = prefetch_->pinned() ? "1" : "0";
  m["crc32c"] = crc32c_hardware() ? "sse4.2" : "table";
  m["queue_depth"] = std::to_string(opt_.queue_depth);
  m["opened"] = open_note_;
  return m;
}

}  // namespace autofreeze
