// The store's index and segments: opening an existing store, creating and dropping segment
// files, and flush() (records synced before the index that names them, index replaced
// atomically).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "fs_util.h"
#include "record_store.h"

namespace autofreeze {

int RecordStore::open_file(const std::string& path, bool create) {
  int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0) | (direct_ ? O_DIRECT : 0);
  return ::open(path.c_str(), flags, 0644);
}

void RecordStore::wipe() {
  for (uint32_t id : list_segments(opt_.dir)) ::unlink(seg_name(opt_.dir, id).c_str());
  ::unlink(index_path().c_str());
}

// Load the index if it is intact and made by the same producer; otherwise start empty.
void RecordStore::open_existing() {
  const std::vector<char> data = read_file(index_path());
  IndexImage image;
  const bool readable = decode_index(data, &image);
  if (!readable || image.fingerprint != opt_.fingerprint || image.align != align_) {
    open_note_ = data.empty() ? "new cache"
                 : readable && image.fingerprint != opt_.fingerprint ? "stale cache (fingerprint differs): wiped"
                 : readable ? "index written at another alignment: wiped"
                            : "unreadable index: wiped";
    wipe();
    return;
  }
  next_segment_ = image.next_segment;
  adopt_index(image);
  remove_unknown_segments();  // written after the last flush: garbage
  for (auto& kv : segments_) next_segment_ = std::max(next_segment_, kv.first + 1);
  open_note_ = "reused " + std::to_string(index_.size()) + " records";
  if (stats_.index_dropped)
    open_note_ += " (" + std::to_string(stats_.index_dropped.load()) + " dropped: segment missing or truncated)";
}

// The index's entries whose segment exists and holds them; the others are dropped.
void RecordStore::adopt_index(const IndexImage& image) {
  std::map<uint32_t, std::shared_ptr<Segment>> opened;  // null: missing segment
  for (const IndexRecord& r : image.records) {
    auto it = opened.find(r.segment);
    if (it == opened.end()) it = opened.emplace(r.segment, open_segment(r.segment)).first;
    const auto& seg = it->second;
    if (!seg || r.offset + r.record_len > seg->size) {  // deleted or truncated segment
      stats_.index_dropped++;
      continue;
    }
    seg->live += r.record_len;
    live_ += r.record_len;
    index_[r.id] = from_index_record(r, seg);
  }
  for (auto& kv : opened)
    if (kv.second) segments_[kv.first] = kv.second;
}

std::shared_ptr<Segment> RecordStore::open_segment(uint32_t id) {
  auto s = std::make_shared<Segment>();
  s->id = id;
  s->path = seg_name(opt_.dir, id);
  s->fd = open_file(s->path, false);
  struct stat st;
  if (s->fd < 0 || ::fstat(s->fd, &st) != 0) return nullptr;
  s->size = static_cast<uint64_t>(st.st_size);
  return s;
}

void RecordStore::remove_unknown_segments() {
  for (uint32_t id : list_segments(opt_.dir))
    if (!segments_.count(id)) ::unlink(seg_name(opt_.dir, id).c_str());
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

// Waits for the writer to drain, then copies the index and syncs the segments it names.
IndexImage RecordStore::snapshot_index() {
  IndexImage image;
  std::vector<std::shared_ptr<Segment>> segs;
  {
    std::unique_lock<std::mutex> g(mu_);
    wq_idle_cv_.wait(g, [this] { return wq_.empty() && !writing_; });
    for (auto& kv : segments_) segs.push_back(kv.second);
    image.records.reserve(index_.size());
    for (auto& kv : index_) image.records.push_back(to_index_record(kv.first, kv.second));
    image.next_segment = next_segment_;
  }
  for (auto& s : segs) ::fdatasync(s->fd);  // records before the index that names them
  image.align = align_;
  image.fingerprint = opt_.fingerprint;
  return image;
}

void RecordStore::flush() { write_file_atomic(index_path(), encode_index(snapshot_index()), "cache index"); }

}  // namespace autofreeze
