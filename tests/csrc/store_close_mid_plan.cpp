// Closes a record store while its prefetcher has reads in flight, many times, on each I/O
// backend. Built with -fsanitize=address,undefined (tests/test_sanitizers.py): any use after
// free in user space fails the run; a read the kernel (or a pool thread) still does into a slot
// after it was unmapped is invisible to the sanitizer, so the store counts slots unmapped with
// reads in flight (must stay 0) and the reads in flight when close() began (must be > 0: the
// case was exercised; a backend whose completions are reaped late makes sure of it). Usage: prog DIR BACKEND
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "record_store.h"

using namespace autofreeze;

// Forwards to a real backend but reaps completions late: reads are in flight in the kernel (or
// the pool) when the prefetcher is closed.
class LateReaper final : public IoBackend {
 public:
  explicit LateReaper(std::unique_ptr<IoBackend> in) : in_(std::move(in)) {}
  const char* name() const override { return in_->name(); }
  void submit(const ReadRequest& r) override { in_->submit(r); }
  void flush() override { in_->flush(); }
  void wait(std::vector<Completion>& out) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    in_->wait(out);
  }
  bool register_buffers(const std::vector<std::pair<char*, size_t>>& b) override { return in_->register_buffers(b); }
  void unregister_buffers() override { in_->unregister_buffers(); }
  bool buffers_registered() const override { return in_->buffers_registered(); }

 private:
  std::unique_ptr<IoBackend> in_;
};

// A prefetcher over the store's records with a late-reaping backend, closed right after plan().
static uint64_t close_prefetcher_mid_read(const RecordStore& s, const std::vector<std::vector<int64_t>>& batches,
                                          const std::string& backend, uint64_t* unmapped) {
  std::vector<std::vector<Entry>> entries(batches.size());
  uint64_t most = 0;
  for (size_t b = 0; b < batches.size(); ++b) {
    uint64_t bytes = 0;
    for (int64_t id : batches[b]) {
      entries[b].emplace_back();
      s.lookup(id, &entries[b].back());
      bytes += entries[b].back().record_len;
    }
    most = std::max(most, bytes);
  }
  std::string why;
  StoreStats stats;
  Prefetcher p(std::make_unique<LateReaper>(make_io_backend(backend, 8, &why)), 8, false, &stats);
  p.plan(entries, batches, most, 3);
  std::this_thread::sleep_for(std::chrono::milliseconds(1));  // reads submitted, not reaped
  p.close();
  *unmapped += stats.unmapped_in_flight;
  return stats.in_flight_at_close;
}

static int fail(const char* what) {
  std::fprintf(stderr, "FAIL: %s\n", what);
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 3) return fail("usage: prog DIR BACKEND");
  const int kRecords = 256, kBatch = 16;
  std::vector<float> payload(16 * 1024);  // 64 KiB a record
  uint64_t in_flight = 0, in_flight_late = 0, unmapped = 0;
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
    in_flight_late += close_prefetcher_mid_read(s, batches, o.backend, &unmapped);
    s.close();  // the rest: mid-plan, reads in flight
    unmapped += s.stats().unmapped_in_flight;
    in_flight += s.stats().in_flight_at_close;
  }
  std::fprintf(stderr, "reads in flight when close() began: %lu (store), %lu (late reaper)\n",
               static_cast<unsigned long>(in_flight), static_cast<unsigned long>(in_flight_late));
  if (unmapped != 0) return fail("prefetch slots unmapped with reads in flight");
  if (in_flight_late == 0) return fail("no close with reads in flight: the case was not exercised");
  std::printf("ok\n");
  return 0;
}
