#include "record_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "crc32c.h"
#include "pinned.h"

#ifdef AUTOFREEZE_TEST_OLD_KERNEL_HEADERS  // tests: compile as against kernel headers < 6.1
#undef STATX_DIOALIGN
#endif

namespace autofreeze {
namespace {

constexpr uint32_t kRecordMagic = 0x43524641;  // "AFRC"
constexpr uint32_t kIndexMagic = 0x58494641;   // "AFIX"
constexpr uint16_t kVersion = 1;
constexpr uint64_t kHeaderBytes = 128;

struct RecordHeader {
  uint32_t magic;
  uint16_t version;
  uint8_t dtype;
  uint8_t ndim;
  int32_t depth;
  uint32_t header_crc;  // CRC32C of the header with this field zero
  int64_t sample_id;
  uint64_t nbytes;
  uint32_t payload_crc;
  uint32_t reserved;
  int64_t shape[kMaxDims];
  uint8_t pad[kHeaderBytes - 104];
};
static_assert(sizeof(RecordHeader) == kHeaderBytes, "record header must be 128 bytes");

struct IndexRecord {
  int64_t id;
  uint64_t offset, record_len, nbytes;
  int64_t shape[kMaxDims];
  uint32_t segment, crc;
  int32_t depth;
  uint8_t dtype, ndim, pad[2];
};

uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

std::string errstr(int e) { return std::strerror(e < 0 ? -e : e); }

std::string seg_name(const std::string& dir, uint32_t id) {
  char b[32];
  std::snprintf(b, sizeof b, "/seg-%08u.afc", id);
  return dir + b;
}

bool parse_seg_name(const char* name, uint32_t* id) {
  unsigned v;
  char tail[8] = {0};
  if (std::sscanf(name, "seg-%8u.%4s", &v, tail) == 2 && std::strcmp(tail, "afc") == 0) {
    *id = v;
    return true;
  }
  return false;
}

char* alloc_aligned(uint64_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, bytes ? bytes : 4096) != 0) throw std::bad_alloc();
  return static_cast<char*>(p);
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

uint32_t header_crc(RecordHeader h) {
  h.header_crc = 0;
  return crc32c(&h, sizeof h);
}

// Status of a record read into buf (res: bytes read or -errno) against its index entry.
int check_record(const char* buf, int64_t res, const Entry& e, int64_t id) {
  if (res < 0) return kIoError;
  if (static_cast<uint64_t>(res) < e.record_len) return kShort;
  RecordHeader h;
  std::memcpy(&h, buf, sizeof h);
  bool ok = h.magic == kRecordMagic && h.header_crc == header_crc(h) && h.sample_id == id && h.nbytes == e.nbytes &&
            h.depth == e.depth && crc32c(buf + kHeaderBytes, e.nbytes) == h.payload_crc;
  return ok ? kOk : kCorrupt;
}

}  // namespace

void RecordStore::count_read(int status, uint64_t len) {
  switch (status) {
    case kOk: stats_.reads_ok++; stats_.bytes_read += len; break;
    case kCorrupt: stats_.reads_corrupt++; break;
    case kShort: stats_.reads_short++; break;
    default: stats_.reads_error++;
  }
}

Segment::~Segment() {
  if (fd >= 0) ::close(fd);
}

RecordStore::RecordStore(const StoreOptions& o) : opt_(o) {
  if (opt_.dir.empty()) throw std::invalid_argument("cache directory is empty");
  if (::mkdir(opt_.dir.c_str(), 0755) != 0 && errno != EEXIST)
    throw std::runtime_error("cannot create cache directory " + opt_.dir + ": " + errstr(errno));
  if (opt_.segment_bytes < (1u << 20)) opt_.segment_bytes = 1u << 20;
  probe_direct();
  open_existing();
  io_ = make_io_backend(opt_.backend, opt_.queue_depth, &backend_reason_);
  writer_ = std::thread([this] { writer_loop(); });
  prefetcher_ = std::thread([this] { prefetch_loop(); });
}

RecordStore::~RecordStore() {
  try {
    close();
  } catch (...) {
  }
}

int RecordStore::open_file(const std::string& path, bool create) {
  int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0) | (direct_ ? O_DIRECT : 0);
  return ::open(path.c_str(), flags, 0644);
}

void RecordStore::probe_direct() {
  const std::string probe = opt_.dir + "/.probe";
  int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cache directory " + opt_.dir + " is not writable: " + errstr(errno));
  struct statx sx;
  uint32_t off_align = 0, mem_align = 0;
  bool reported = false;
#ifdef STATX_DIOALIGN  // kernel headers >= 6.1; older ones: probe O_DIRECT by trying it
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
    reported = true;
    off_align = sx.stx_dio_offset_align;
    mem_align = sx.stx_dio_mem_align;
  }
#else
  (void)sx;
#endif
  ::close(fd);
  align_ = std::max<uint32_t>(4096, std::max(off_align, mem_align));
  if (opt_.direct == "off") {
    direct_reason_ = "buffered I/O (direct=off)";
  } else if (reported && off_align == 0) {
    direct_reason_ = "the file system does not support O_DIRECT (statx), buffered I/O";
  } else {
    // Try it: some file systems accept the flag at open and fail the first I/O.
    int dfd = ::open(probe.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
    bool ok = false;
    if (dfd >= 0) {
      char* b = alloc_aligned(align_);
      std::memset(b, 0, align_);
      ok = pwrite_full(dfd, b, align_, 0) == static_cast<int64_t>(align_) &&
           pread_full(dfd, b, align_, 0) == static_cast<int64_t>(align_);
      std::free(b);
      ::close(dfd);
    }
    direct_ = ok;
    if (!ok) direct_reason_ = std::string("O_DIRECT refused (") + errstr(errno) + "), buffered I/O";
  }
  ::unlink(probe.c_str());
  if (opt_.direct == "on" && !direct_)
    throw std::runtime_error("direct=on but " + opt_.dir + " does not support O_DIRECT");
}

void RecordStore::wipe() {
  DIR* d = ::opendir(opt_.dir.c_str());
  if (d) {
    while (dirent* e = ::readdir(d)) {
      uint32_t id;
      if (parse_seg_name(e->d_name, &id)) ::unlink((opt_.dir + "/" + e->d_name).c_str());
    }
    ::closedir(d);
  }
  ::unlink(index_path().c_str());
}

void RecordStore::open_existing() {
  // Load the index if it is intact and made by the same producer; otherwise start empty.
  std::vector<char> data;
  {
    FILE* f = std::fopen(index_path().c_str(), "rb");
    if (f) {
      std::fseek(f, 0, SEEK_END);
      long n = std::ftell(f);
      std::fseek(f, 0, SEEK_SET);
      if (n > 0) {
        data.resize(static_cast<size_t>(n));
        if (std::fread(data.data(), 1, data.size(), f) != data.size()) data.clear();
      }
      std::fclose(f);
    }
  }
  bool valid = false;
  size_t pos = 0;
  auto take = [&](void* dst, size_t n) {
    if (pos + n > data.size()) return false;
    std::memcpy(dst, data.data() + pos, n);
    pos += n;
    return true;
  };
  uint32_t magic = 0, version = 0, align = 0, fp_len = 0, next_seg = 0;
  uint64_t count = 0;
  std::string fp;
  if (data.size() > 4) {
    uint32_t stored_crc;
    std::memcpy(&stored_crc, data.data() + data.size() - 4, 4);
    if (crc32c(data.data(), data.size() - 4) == stored_crc && take(&magic, 4) && magic == kIndexMagic &&
        take(&version, 4) && version == kVersion && take(&align, 4) && take(&next_seg, 4) && take(&count, 8) &&
        take(&fp_len, 4) && pos + fp_len <= data.size()) {
      fp.assign(data.data() + pos, fp_len);
      pos += fp_len;
      valid = (fp == opt_.fingerprint) && align == align_;
    }
  }
  if (!valid) {
    open_note_ = data.empty() ? "new cache" : (fp != opt_.fingerprint ? "stale cache (fingerprint differs): wiped"
                                                                      : "unreadable index: wiped");
    wipe();
    return;
  }
  next_segment_ = next_seg;
  for (uint64_t i = 0; i < count; ++i) {
    IndexRecord r;
    if (!take(&r, sizeof r)) break;
    auto it = segments_.find(r.segment);
    std::shared_ptr<Segment> seg;
    if (it == segments_.end()) {
      auto s = std::make_shared<Segment>();
      s->id = r.segment;
      s->path = seg_name(opt_.dir, r.segment);
      s->fd = open_file(s->path, false);
      struct stat st;
      if (s->fd < 0 || ::fstat(s->fd, &st) != 0) {
        segments_[r.segment] = nullptr;  // deleted segment: its entries are dropped
      } else {
        s->size = static_cast<uint64_t>(st.st_size);
        segments_[r.segment] = s;
      }
      it = segments_.find(r.segment);
    }
    seg = it->second;
    if (!seg || r.offset + r.record_len > seg->size) {  // deleted or truncated segment
      stats_.index_dropped++;
      continue;
    }
    Entry e;
    e.seg = seg;
    e.offset = r.offset;
    e.record_len = r.record_len;
    e.nbytes = r.nbytes;
    e.depth = r.depth;
    e.dtype = r.dtype;
    e.ndim = r.ndim;
    std::memcpy(e.shape, r.shape, sizeof e.shape);
    e.crc = r.crc;
    seg->live += r.record_len;
    live_ += r.record_len;
    index_[r.id] = e;
  }
  for (auto it = segments_.begin(); it != segments_.end();) {
    if (!it->second) it = segments_.erase(it);
    else ++it;
  }
  // Segment files the index does not know (written after the last flush) are garbage.
  DIR* d = ::opendir(opt_.dir.c_str());
  if (d) {
    while (dirent* e = ::readdir(d)) {
      uint32_t id;
      if (parse_seg_name(e->d_name, &id) && !segments_.count(id)) ::unlink((opt_.dir + "/" + e->d_name).c_str());
    }
    ::closedir(d);
  }
  for (auto& kv : segments_) next_segment_ = std::max(next_segment_, kv.first + 1);
  open_note_ = "reused " + std::to_string(index_.size()) + " records";
  if (stats_.index_dropped) open_note_ += " (" + std::to_string(stats_.index_dropped.load()) + " dropped: segment missing or truncated)";
}

std::shared_ptr<Segment> RecordStore::new_segment_locked() {
  auto s = std::make_shared<Segment>();
  s->id = next_segment_++;
  s->path = seg_name(opt_.dir, s->id);
  s->fd = open_file(s->path, true);
  if (s->fd < 0) {
    seg_errno_ = errno;
    return nullptr;
  }
  segments_[s->id] = s;
  return s;
}

void RecordStore::drop_entry_locked(std::unordered_map<int64_t, Entry>::iterator it) {
  auto seg = it->second.seg;
  seg->live -= it->second.record_len;
  live_ -= it->second.record_len;
  index_.erase(it);
  if (seg->live == 0 && seg != current_) {
    ::unlink(seg->path.c_str());  // readers holding the segment keep its fd until they finish
    segments_.erase(seg->id);
    stats_.segments_deleted++;
  }
}

bool RecordStore::put(int64_t id, int32_t depth, uint8_t dtype, const std::vector<int64_t>& shape, const void* src,
                      uint64_t nbytes) {
  if (shape.size() > static_cast<size_t>(kMaxDims)) throw std::invalid_argument("at most 8 dimensions");
  stats_.puts++;
  const uint64_t len = round_up(kHeaderBytes + nbytes, align_);
  {
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
    queued_bytes_ += len;  // reserve before copying so the budget holds under concurrency
  }
  char* buf = alloc_aligned(len);
  RecordHeader h;
  std::memset(&h, 0, sizeof h);
  h.magic = kRecordMagic;
  h.version = kVersion;
  h.dtype = dtype;
  h.ndim = static_cast<uint8_t>(shape.size());
  h.depth = depth;
  h.sample_id = id;
  h.nbytes = nbytes;
  for (size_t i = 0; i < shape.size(); ++i) h.shape[i] = shape[i];
  std::memcpy(buf + kHeaderBytes, src, nbytes);
  h.payload_crc = crc32c(buf + kHeaderBytes, nbytes);
  h.header_crc = header_crc(h);
  std::memcpy(buf, &h, sizeof h);
  std::memset(buf + kHeaderBytes + nbytes, 0, len - kHeaderBytes - nbytes);
  WriteJob job;
  job.id = id;
  job.meta.nbytes = nbytes;
  job.meta.record_len = len;
  job.meta.depth = depth;
  job.meta.dtype = dtype;
  job.meta.ndim = h.ndim;
  std::memcpy(job.meta.shape, h.shape, sizeof h.shape);
  job.meta.crc = h.payload_crc;
  job.buf = buf;
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
      if (!current_ || current_->size + job.len > opt_.segment_bytes) {
        auto old = current_;
        current_ = new_segment_locked();
        if (old && old->live == 0) {
          ::unlink(old->path.c_str());
          segments_.erase(old->id);
          stats_.segments_deleted++;
        }
      }
      seg = current_;
      if (seg) {
        offset = seg->size;
        seg->size += job.len;
      }
    }
    int64_t res;
    if (!seg) {
      res = -seg_errno_;
    } else if (enospc_after_ == 0) {
      res = -ENOSPC;
    } else {
      res = pwrite_full(seg->fd, job.buf, job.len, offset);
      if (enospc_after_ > 0) enospc_after_--;
    }
    std::free(job.buf);
    {
      std::lock_guard<std::mutex> g(mu_);
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
      } else {
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
    }
    wq_space_cv_.notify_all();
    wq_idle_cv_.notify_all();
  }
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

void RecordStore::flush() {
  std::vector<IndexRecord> recs;
  std::vector<std::shared_ptr<Segment>> segs;
  uint32_t next_seg;
  {
    std::unique_lock<std::mutex> g(mu_);
    wq_idle_cv_.wait(g, [this] { return wq_.empty() && !writing_; });
    for (auto& kv : segments_) segs.push_back(kv.second);
    recs.reserve(index_.size());
    for (auto& kv : index_) {
      IndexRecord r;
      std::memset(&r, 0, sizeof r);
      r.id = kv.first;
      r.segment = kv.second.seg->id;
      r.offset = kv.second.offset;
      r.record_len = kv.second.record_len;
      r.nbytes = kv.second.nbytes;
      r.depth = kv.second.depth;
      r.dtype = kv.second.dtype;
      r.ndim = kv.second.ndim;
      std::memcpy(r.shape, kv.second.shape, sizeof r.shape);
      r.crc = kv.second.crc;
      recs.push_back(r);
    }
    next_seg = next_segment_;
  }
  for (auto& s : segs) ::fdatasync(s->fd);  // records before the index that names them
  std::string out;
  auto put_raw = [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
  uint32_t magic = kIndexMagic, version = kVersion, fp_len = static_cast<uint32_t>(opt_.fingerprint.size());
  uint64_t count = recs.size();
  put_raw(&magic, 4);
  put_raw(&version, 4);
  put_raw(&align_, 4);
  put_raw(&next_seg, 4);
  put_raw(&count, 8);
  put_raw(&fp_len, 4);
  put_raw(opt_.fingerprint.data(), fp_len);
  if (!recs.empty()) put_raw(recs.data(), recs.size() * sizeof(IndexRecord));
  uint32_t crc = crc32c(out.data(), out.size());
  put_raw(&crc, 4);
  const std::string tmp = index_path() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write the cache index " + tmp + ": " + errstr(errno));
  int64_t w = pwrite_full(fd, out.data(), out.size(), 0);
  bool ok = w == static_cast<int64_t>(out.size()) && ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write the cache index: " + errstr(w < 0 ? static_cast<int>(-w) : err));
  }
  if (::rename(tmp.c_str(), index_path().c_str()) != 0)
    throw std::runtime_error("cannot replace the cache index: " + errstr(errno));
  fsync_dir(opt_.dir);
}

void RecordStore::close() {
  {
    std::lock_guard<std::mutex> g(mu_);
    if (closed_) return;
  }
  {
    std::lock_guard<std::mutex> g(pmu_);
    pstop_ = true;
  }
  pcv_.notify_all();
  ready_cv_.notify_all();
  if (prefetcher_.joinable()) prefetcher_.join();
  {
    std::lock_guard<std::mutex> g(mu_);
    closed_ = true;
  }
  wq_cv_.notify_all();
  wq_space_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
  // The I/O backend goes first: its threads are joined and in-flight io_uring reads drained
  // (and the slots unregistered) before the slots they read into are unpinned and unmapped.
  if (io_) io_->unregister_buffers();
  io_.reset();
  free_slots();
}

int RecordStore::read_into(int64_t id, char* dst, uint64_t capacity, Entry* meta) {
  Entry e;
  if (!lookup(id, &e)) return kMissing;
  if (meta) *meta = e;
  if (e.nbytes > capacity) throw std::invalid_argument("read_into: destination too small");
  char* buf = alloc_aligned(e.record_len);
  int64_t r = pread_full(e.seg->fd, buf, e.record_len, e.offset);
  int status = check_record(buf, r, e, id);
  if (status == kOk) std::memcpy(dst, buf + kHeaderBytes, e.nbytes);
  std::free(buf);
  count_read(status, e.record_len);
  return status;
}

// ---------------------------------------------------------------- prefetcher

void RecordStore::free_slots() {
  for (auto& s : slots_) {
    if (!s.ptr) continue;
    if (pinned_) unpin_host(s.ptr);
    ::munmap(s.ptr, s.cap);
  }
  slots_.clear();
  pinned_ = false;
}

void RecordStore::plan(const std::vector<std::vector<int64_t>>& batches, unsigned nslots) {
  if (nslots < 1) nslots = 1;
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
  std::unique_lock<std::mutex> g(pmu_);
  for (auto& s : slots_)
    if (s.state == Slot::kHeld) throw std::runtime_error("plan(): release every batch taken with next() first");
  reset_locked(g);
  need = round_up(std::max<uint64_t>(need, 4096), 1u << 21);
  if (slots_.size() != nslots || (slots_.size() && slots_[0].cap < need)) {
    io_->unregister_buffers();
    free_slots();
    slots_.resize(nslots);
    std::vector<std::pair<char*, size_t>> bufs;
    bool all_pinned = opt_.pin;
    for (auto& s : slots_) {
      void* p = ::mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      s.ptr = static_cast<char*>(p);
      s.cap = need;
      if (opt_.pin) all_pinned = pin_host(p, need) && all_pinned;
      bufs.push_back({s.ptr, s.cap});
    }
    pinned_ = opt_.pin && all_pinned;
    if (opt_.pin && !all_pinned) {
      for (auto& s : slots_) unpin_host(s.ptr);  // all or none
      pinned_ = false;
    }
    io_->register_buffers(bufs);
  }
  plan_entries_ = std::move(entries);
  plan_ids_ = std::move(ids);
  pcv_.notify_all();
}

void RecordStore::reset_locked(std::unique_lock<std::mutex>& g) {
  // Forget the plan, then wait for reads already in flight into the slots: the kernel (or a
  // pool thread) still writes into them. Held slots stay with the consumer.
  plan_entries_.clear();
  plan_ids_.clear();
  next_issue_ = next_deliver_ = 0;
  ops_.clear();
  for (auto& s : slots_)
    if (s.state == Slot::kLoading) s.stale = true;
  pcv_.notify_all();
  ready_cv_.notify_all();
  pcv_.wait(g, [this] { return (inflight_ == 0 && unverified_ == 0) || pstop_; });
  for (auto& s : slots_) {
    s.stale = false;
    if (s.state != Slot::kHeld) s.state = Slot::kFree;
  }
}

void RecordStore::cancel_plan() {
  std::unique_lock<std::mutex> g(pmu_);
  reset_locked(g);
}

BatchView RecordStore::next() {
  auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> g(pmu_);
  BatchView v;
  if (next_deliver_ >= plan_entries_.size()) return v;
  const int64_t want = static_cast<int64_t>(next_deliver_);
  if (std::all_of(slots_.begin(), slots_.end(), [](const Slot& s) { return s.state == Slot::kHeld; }))
    throw std::runtime_error("next(): every prefetch slot is held; release() one first");
  int found = -1;
  ready_cv_.wait(g, [&] {
    if (pstop_ || next_deliver_ >= plan_entries_.size()) return true;
    for (size_t i = 0; i < slots_.size(); ++i)
      if (slots_[i].state == Slot::kReady && !slots_[i].stale && slots_[i].batch == want) {
        found = static_cast<int>(i);
        return true;
      }
    return false;
  });
  if (found < 0) return v;
  Slot& s = slots_[found];
  s.state = Slot::kHeld;
  next_deliver_++;
  pcv_.notify_all();
  v.batch = want;
  v.slot = found;
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
  v.wait_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return v;
}

void RecordStore::release(int slot) {
  std::lock_guard<std::mutex> g(pmu_);
  if (slot < 0 || static_cast<size_t>(slot) >= slots_.size() || slots_[slot].state != Slot::kHeld)
    throw std::invalid_argument("release(): slot is not held");
  slots_[slot].state = Slot::kFree;
  pcv_.notify_all();
}

void RecordStore::verify_slot(Slot& s) {
  uint64_t off = 0;
  for (size_t r = 0; r < s.entries.size(); ++r) {
    const Entry& e = s.entries[r];
    int status = check_record(s.ptr + off, s.results[r], e, s.ids[r]);
    s.results[r] = status;
    count_read(status, e.record_len);
    off += e.record_len;
  }
}

void RecordStore::prefetch_loop() {
  std::vector<Completion> done;
  std::vector<int> to_verify;  // slots whose reads all completed, checked outside the lock
  for (;;) {
    bool reads_pending;
    {
      std::unique_lock<std::mutex> g(pmu_);
      // Give free slots to the next planned batches and queue their reads.
      for (;;) {
        if (pstop_) return;
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
        if (!ops_.empty() || inflight_ > 0 || !to_verify.empty()) break;
        if (!assigned) pcv_.wait(g);
      }
      // Issue up to the queue depth.
      while (!ops_.empty() && inflight_ < static_cast<int>(opt_.queue_depth)) {
        Op op = ops_.front();
        ops_.pop_front();
        Slot& s = slots_[op.slot];
        uint64_t off = 0;
        for (int r = 0; r < op.rec; ++r) off += s.entries[r].record_len;
        const Entry& e = s.entries[op.rec];
        ReadRequest rq{e.seg->fd, e.offset, e.record_len, s.ptr + off, op.slot,
                       reinterpret_cast<void*>((static_cast<uintptr_t>(op.slot) << 32) | static_cast<uint32_t>(op.rec))};
        io_->submit(rq);
        inflight_++;
      }
      reads_pending = inflight_ > 0;
    }
    io_->flush();
    // Check completed batches while the reads just issued are in flight. A slot being
    // verified is Loading and counted in unverified_, so nobody else touches it.
    for (int si : to_verify) {
      Slot& s = slots_[si];
      if (!s.stale) verify_slot(s);
      std::lock_guard<std::mutex> g(pmu_);
      s.state = s.stale ? Slot::kFree : Slot::kReady;
      s.stale = false;
      unverified_--;
      ready_cv_.notify_all();
      pcv_.notify_all();
    }
    to_verify.clear();
    if (!reads_pending) continue;
    done.clear();
    io_->wait(done);
    std::lock_guard<std::mutex> g(pmu_);
    for (auto& c : done) {
      uintptr_t u = reinterpret_cast<uintptr_t>(c.user);
      Slot& s = slots_[u >> 32];
      s.results[u & 0xffffffffu] = c.result;
      inflight_--;
      if (--s.pending == 0) {
        to_verify.push_back(static_cast<int>(u >> 32));
        unverified_++;
      }
    }
    pcv_.notify_all();
  }
}

std::map<std::string, std::string> RecordStore::info() const {
  std::map<std::string, std::string> m;
  m["backend"] = io_ ? io_->name() : "closed";
  m["backend_note"] = backend_reason_;
  m["direct"] = direct_ ? "1" : "0";
  m["direct_note"] = direct_reason_;
  m["alignment"] = std::to_string(align_);
  m["registered_buffers"] = io_ && io_->buffers_registered() ? "1" : "0";
  m["pinned"] = pinned_ ? "1" : "0";
  m["crc32c"] = crc32c_hardware() ? "sse4.2" : "table";
  m["queue_depth"] = std::to_string(opt_.queue_depth);
  m["opened"] = open_note_;
  return m;
}

}  // namespace autofreeze
