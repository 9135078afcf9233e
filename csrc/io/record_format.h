// The on-disk layouts: a record (128-byte header + payload, padded to the direct-I/O
// alignment) and an index record; how a record is encoded and how a read one is checked.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "store_types.h"

namespace autofreeze {

constexpr uint32_t kRecordMagic = 0x43524641;  // "AFRC"
constexpr uint32_t kIndexMagic = 0x58494641;   // "AFIX"
constexpr uint32_t kFormatVersion = 2;  // 2: each record carries its producer's run tag
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
  uint64_t run_tag;  // hash of the producer's fingerprint: a record of another run is never served
  uint8_t pad[kHeaderBytes - 112];
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

inline uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Bytes a record of nbytes payload takes on disk.
inline uint64_t record_length(uint64_t nbytes, uint32_t align) { return round_up(kHeaderBytes + nbytes, align); }

// The run tag of a fingerprint (64-bit FNV-1a), written into every record's header.
uint64_t run_tag_of(const std::string& fingerprint);

// The record (header, payload, zero padding) in a new page-aligned buffer of
// record_length(nbytes, align) bytes (free() it); *meta gets its entry without segment/offset.
char* encode_record(int64_t id, int32_t depth, uint8_t dtype, const std::vector<int64_t>& shape, const void* src,
                    uint64_t nbytes, uint32_t align, uint64_t run_tag, Entry* meta);

// Status of a record read into buf (res: bytes read or -errno) against its index entry and the
// reading store's run tag (a record another run wrote is corrupt to this one).
int check_record(const char* buf, int64_t res, const Entry& e, int64_t id, uint64_t run_tag);

IndexRecord to_index_record(int64_t id, const Entry& e);
Entry from_index_record(const IndexRecord& r, std::shared_ptr<Segment> seg);

}  // namespace autofreeze
