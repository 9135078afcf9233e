// pybind11 bindings of the record store (autofreeze_ext._C.RecordStore). Pointers arrive as
// Python integers (tensor.data_ptr()); blocking calls release the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "../io/crc32c.h"
#include "../io/io_backend.h"
#include "../io/record_store.h"

namespace py = pybind11;
using namespace autofreeze;

namespace {

using StoreClass = py::class_<RecordStore>;

py::object meta_tuple(const Entry& e) {
  py::list shape;
  for (int i = 0; i < e.ndim; ++i) shape.append(e.shape[i]);
  return py::make_tuple(e.depth, static_cast<int>(e.dtype), py::tuple(shape), e.nbytes);
}

std::unique_ptr<RecordStore> make_store(const std::string& dir, const std::string& backend, const std::string& direct,
                                        unsigned queue_depth, uint64_t segment_bytes, uint64_t write_queue_bytes,
                                        uint64_t disk_budget, const std::string& fingerprint, bool pin) {
  StoreOptions o;
  o.dir = dir;
  o.backend = backend;
  o.direct = direct;
  o.queue_depth = queue_depth;
  o.segment_bytes = segment_bytes;
  o.write_queue_bytes = write_queue_bytes;
  o.disk_budget = disk_budget;
  o.fingerprint = fingerprint;
  o.pin = pin;
  py::gil_scoped_release nogil;
  return std::make_unique<RecordStore>(o);
}

// The metadata of the record this read returned: a rewrite between a meta() and a
// read_into() cannot pair one depth's data with the other's label.
py::tuple read_with_meta(RecordStore& s, int64_t id, uintptr_t ptr, uint64_t capacity) {
  Entry e;
  int status;
  {
    py::gil_scoped_release nogil;
    status = s.read_into(id, reinterpret_cast<char*>(ptr), capacity, &e);
  }
  return py::make_tuple(status, status == 0 ? meta_tuple(e) : py::none());
}

py::object next_batch(RecordStore& s) {
  BatchView v;
  {
    py::gil_scoped_release nogil;
    v = s.next();
  }
  if (v.batch < 0) return py::none();
  py::list recs;
  for (auto& r : v.records) {
    py::list shape;
    for (auto d : r.shape) shape.append(d);
    recs.append(py::make_tuple(r.id, r.status, r.depth, static_cast<int>(r.dtype), py::tuple(shape),
                               r.payload_offset, r.nbytes));
  }
  py::dict out;
  out["batch"] = v.batch;
  out["slot"] = v.slot;
  out["buffer"] = py::memoryview::from_memory(static_cast<void*>(v.base), static_cast<ssize_t>(v.size));
  out["records"] = recs;
  out["wait_s"] = v.wait_seconds;
  return out;
}

py::dict stats_dict(const RecordStore& s) {
  const StoreStats& t = s.stats();
  py::dict d;
  d["puts"] = t.puts.load();
  d["rejected_budget"] = t.rejected_budget.load();
  d["rejected_full"] = t.rejected_full.load();
  d["writes"] = t.writes.load();
  d["bytes_written"] = t.bytes_written.load();
  d["write_errors"] = t.write_errors.load();
  d["reads_ok"] = t.reads_ok.load();
  d["reads_corrupt"] = t.reads_corrupt.load();
  d["reads_short"] = t.reads_short.load();
  d["reads_error"] = t.reads_error.load();
  d["bytes_read"] = t.bytes_read.load();
  d["index_dropped"] = t.index_dropped.load();
  d["segments_deleted"] = t.segments_deleted.load();
  d["in_flight_at_close"] = t.in_flight_at_close.load();
  d["unmapped_in_flight"] = t.unmapped_in_flight.load();
  return d;
}

// A member function run without the GIL.
template <void (RecordStore::*F)()>
void nogil(RecordStore& s) {
  py::gil_scoped_release release;
  (s.*F)();
}

void bind_writes(StoreClass& c) {
  c.def(
       "put",
       [](RecordStore& s, int64_t id, int32_t depth, int dtype, const std::vector<int64_t>& shape, uintptr_t ptr,
          uint64_t nbytes) {
         py::gil_scoped_release nogil;
         return s.put(id, depth, static_cast<uint8_t>(dtype), shape, reinterpret_cast<const void*>(ptr), nbytes);
       },
       py::arg("id"), py::arg("depth"), py::arg("dtype"), py::arg("shape"), py::arg("ptr"), py::arg("nbytes"))
      .def("flush", &nogil<&RecordStore::flush>)
      .def("evict_below", &RecordStore::evict_below, py::arg("depth"))
      .def("erase", &RecordStore::erase, py::arg("id"))
      .def("inject_enospc", &RecordStore::inject_enospc, py::arg("after"));
}

void bind_reads(StoreClass& c) {
  c.def("depths",
        [](const RecordStore& s, const std::vector<int64_t>& ids) {
          std::vector<int32_t> d(ids.size());
          for (size_t i = 0; i < ids.size(); ++i) d[i] = s.depth_of(ids[i]);
          return d;
        })
      .def("meta",
           [](const RecordStore& s, int64_t id) -> py::object {
             Entry e;
             return s.lookup(id, &e) ? meta_tuple(e) : py::none();
           })
      .def(
          "read_into",
          [](RecordStore& s, int64_t id, uintptr_t ptr, uint64_t capacity) {
            py::gil_scoped_release nogil;
            return s.read_into(id, reinterpret_cast<char*>(ptr), capacity, nullptr);
          },
          py::arg("id"), py::arg("ptr"), py::arg("capacity"))
      .def("read_with_meta", &read_with_meta, py::arg("id"), py::arg("ptr"), py::arg("capacity"));
}

void bind_prefetch(StoreClass& c) {
  c.def(
       "plan",
       [](RecordStore& s, const std::vector<std::vector<int64_t>>& batches, unsigned slots) {
         py::gil_scoped_release nogil;
         s.plan(batches, slots);
       },
       py::arg("batches"), py::arg("slots") = 4)
      .def("next", &next_batch)
      .def("release", &RecordStore::release, py::arg("slot"))
      .def("cancel_plan", &nogil<&RecordStore::cancel_plan>);
}

void bind_state(StoreClass& c) {
  c.def("close", &nogil<&RecordStore::close>)
      .def("__len__", &RecordStore::size)
      .def_property_readonly("live_bytes", &RecordStore::live_bytes)
      .def_property_readonly("pending_bytes", &RecordStore::pending_bytes)
      .def_property_readonly("disk_full", &RecordStore::disk_full)
      .def_property_readonly("alignment", &RecordStore::alignment)
      .def("info", &RecordStore::info)
      .def("stats", &stats_dict);
}

}  // namespace

void bind_io(py::module_& m) {
  m.attr("with_uring") = uring_compiled();
  m.def("crc32c_hardware", &crc32c_hardware);
  m.def("crc32c", [](py::buffer b) {
    py::buffer_info i = b.request();
    return crc32c(i.ptr, static_cast<size_t>(i.size * i.itemsize));
  });
  StoreClass c(m, "RecordStore");
  c.def(py::init(&make_store), py::arg("dir"), py::arg("backend") = "auto", py::arg("direct") = "auto",
        py::arg("queue_depth") = 32, py::arg("segment_bytes") = 1ull << 30,
        py::arg("write_queue_bytes") = 256ull << 20, py::arg("disk_budget") = 0, py::arg("fingerprint") = "",
        py::arg("pin") = false);
  bind_writes(c);
  bind_reads(c);
  bind_prefetch(c);
  bind_state(c);
}
