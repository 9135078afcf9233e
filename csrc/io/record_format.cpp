#include "record_format.h"

#include <cstring>

#include "crc32c.h"
#include "fs_util.h"

namespace autofreeze {
namespace {

uint32_t header_crc(RecordHeader h) {
  h.header_crc = 0;
  return crc32c(&h, sizeof h);
}

}  // namespace

uint64_t run_tag_of(const std::string& fingerprint) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : fingerprint) h = (h ^ c) * 1099511628211ull;
  return h;
}

void count_read(StoreStats& stats, int status, uint64_t len) {
  switch (status) {
    case kOk: stats.reads_ok++; stats.bytes_read += len; break;
    case kCorrupt: stats.reads_corrupt++; break;
    case kShort: stats.reads_short++; break;
    default: stats.reads_error++;
  }
}

char* encode_record(int64_t id, int32_t depth, uint8_t dtype, const std::vector<int64_t>& shape, const void* src,
                    uint64_t nbytes, uint32_t align, uint64_t run_tag, Entry* meta) {
  const uint64_t len = record_length(nbytes, align);
  char* buf = alloc_aligned(len);
  RecordHeader h;
  std::memset(&h, 0, sizeof h);
  h.magic = kRecordMagic;
  h.version = kFormatVersion;
  h.dtype = dtype;
  h.ndim = static_cast<uint8_t>(shape.size());
  h.depth = depth;
  h.sample_id = id;
  h.nbytes = nbytes;
  h.run_tag = run_tag;
  for (size_t i = 0; i < shape.size(); ++i) h.shape[i] = shape[i];
  std::memcpy(buf + kHeaderBytes, src, nbytes);
  h.payload_crc = crc32c(buf + kHeaderBytes, nbytes);
  h.header_crc = header_crc(h);
  std::memcpy(buf, &h, sizeof h);
  std::memset(buf + kHeaderBytes + nbytes, 0, len - kHeaderBytes - nbytes);
  *meta = Entry();
  meta->nbytes = nbytes;
  meta->record_len = len;
  meta->depth = depth;
  meta->dtype = dtype;
  meta->ndim = h.ndim;
  std::memcpy(meta->shape, h.shape, sizeof h.shape);
  meta->crc = h.payload_crc;
  return buf;
}

int check_record(const char* buf, int64_t res, const Entry& e, int64_t id, uint64_t run_tag) {
  if (res < 0) return kIoError;
  if (static_cast<uint64_t>(res) < e.record_len) return kShort;
  RecordHeader h;
  std::memcpy(&h, buf, sizeof h);
  bool ok = h.magic == kRecordMagic && h.header_crc == header_crc(h) && h.sample_id == id && h.nbytes == e.nbytes &&
            h.depth == e.depth && h.run_tag == run_tag && h.version == kFormatVersion &&
            crc32c(buf + kHeaderBytes, e.nbytes) == h.payload_crc;
  return ok ? kOk : kCorrupt;
}

IndexRecord to_index_record(int64_t id, const Entry& e) {
  IndexRecord r;
  std::memset(&r, 0, sizeof r);
  r.id = id;
  r.segment = e.seg->id;
  r.offset = e.offset;
  r.record_len = e.record_len;
  r.nbytes = e.nbytes;
  r.depth = e.depth;
  r.dtype = e.dtype;
  r.ndim = e.ndim;
  std::memcpy(r.shape, e.shape, sizeof r.shape);
  r.crc = e.crc;
  return r;
}

Entry from_index_record(const IndexRecord& r, std::shared_ptr<Segment> seg) {
  Entry e;
  e.seg = std::move(seg);
  e.offset = r.offset;
  e.record_len = r.record_len;
  e.nbytes = r.nbytes;
  e.depth = r.depth;
  e.dtype = r.dtype;
  e.ndim = r.ndim;
  std::memcpy(e.shape, r.shape, sizeof e.shape);
  e.crc = r.crc;
  return e;
}

}  // namespace autofreeze
