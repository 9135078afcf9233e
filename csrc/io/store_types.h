// The record store's shared vocabulary: segments, index entries, read statuses, the views a
// consumer gets of a prefetched batch, and the counters every part updates.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace autofreeze {

constexpr int kMaxDims = 8;

struct Segment {
  uint32_t id = 0;
  int fd = -1;
  std::string path;
  uint64_t size = 0;  // append offset
  uint64_t live = 0;  // bytes of records the index still refers to
  ~Segment();
};

struct Entry {
  std::shared_ptr<Segment> seg;
  uint64_t offset = 0, record_len = 0, nbytes = 0;
  int32_t depth = 0;
  uint8_t dtype = 0, ndim = 0;
  int64_t shape[kMaxDims] = {0};
  uint32_t crc = 0;
};

enum ReadStatus : int { kOk = 0, kCorrupt = 1, kShort = 2, kIoError = 3, kMissing = 4 };

struct RecordView {
  int64_t id;
  int status;
  int32_t depth;
  uint8_t dtype;
  std::vector<int64_t> shape;
  uint64_t payload_offset;  // within the slot
  uint64_t nbytes;
};

struct BatchView {
  int64_t batch = -1;  // -1: the plan is exhausted
  int slot = -1;
  char* base = nullptr;
  uint64_t size = 0;
  std::vector<RecordView> records;
  double wait_seconds = 0;  // time the consumer blocked in next()
};

struct StoreStats {
  std::atomic<uint64_t> puts{0}, rejected_budget{0}, rejected_full{0}, writes{0}, bytes_written{0},
      write_errors{0}, reads_ok{0}, reads_corrupt{0}, reads_short{0}, reads_error{0}, bytes_read{0},
      index_dropped{0}, segments_deleted{0},
      in_flight_at_close{0},  // reads in flight when close() began (waited for)
      unmapped_in_flight{0};  // prefetch slots unmapped with reads in flight: must stay 0
};

// Counts one finished read of len bytes by its ReadStatus.
void count_read(StoreStats& stats, int status, uint64_t len);

}  // namespace autofreeze
