// Closes a record store while its prefetcher has reads in flight, many times, on each I/O
// backend: built with -fsanitize=address,undefined (tests/test_sanitizers.py) a read landing
// in an unmapped slot or any use after free fails the run. Usage: prog DIR BACKEND
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "record_store.h"

using autofreeze::BatchView;
using autofreeze::RecordStore;
using autofreeze::StoreOptions;

static int fail(const char* what) {
  std::fprintf(stderr, "FAIL: %s\n", what);
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 3) return fail("usage: prog DIR BACKEND");
  const int kRecords = 256, kBatch = 16;
  std::vector<float> payload(16 * 1024);  // 64 KiB a record
  for (int round = 0; round < 20; ++round) {
    StoreOptions o;
    o.dir = std::string(argv[1]) + "/r" + std::to_string(round % 2);
    o.backend = argv[2];
    o.queue_depth = 8;
    o.fingerprint = "sanitizer";
    RecordStore s(o);
    if (s.info()["backend"] != (o.backend == "uring" ? "io_uring" : "threads") && o.backend != "auto")
      std::fprintf(stderr, "note: backend %s (%s)\n", s.info()["backend"].c_str(), s.info()["backend_note"].c_str());
    for (int i = 0; i < kRecords; ++i) {
      payload[0] = static_cast<float>(i);
      if (!s.put(i, 2, 0, {16, 1024}, payload.data(), payload.size() * sizeof(float))) return fail("put");
    }
    s.flush();
    std::vector<std::vector<int64_t>> batches;
    for (int b = 0; b < kRecords / kBatch; ++b) {
      batches.emplace_back();
      for (int i = 0; i < kBatch; ++i) batches.back().push_back((b * 7 + i * 13) % kRecords);
    }
    s.plan(batches, 3);
    for (int k = 0; k < round % 4; ++k) {  // take a few batches, then stop with reads in flight
      BatchView v = s.next();
      if (v.batch != k || v.records.size() != static_cast<size_t>(kBatch)) return fail("next");
      for (auto& r : v.records) {
        float first;
        std::memcpy(&first, v.base + r.payload_offset, sizeof first);
        if (r.status != 0 || first != static_cast<float>(r.id)) return fail("payload");
      }
      s.release(v.slot);
    }
    if (round % 3 == 0) s.cancel_plan();
    s.close();  // the rest: mid-plan, reads in flight
  }
  std::printf("ok\n");
  return 0;
}
