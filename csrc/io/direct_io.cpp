#include "direct_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "fs_util.h"
#include "io_backend.h"

#ifdef AUTOFREEZE_TEST_OLD_KERNEL_HEADERS  // tests: compile as against kernel headers < 6.1
#undef STATX_DIOALIGN
#endif

namespace autofreeze {
namespace {

// statx's direct-I/O alignments (0, 0 when not reported); *reported says whether it was.
void dio_alignment(int fd, uint32_t* off_align, uint32_t* mem_align, bool* reported) {
  *off_align = *mem_align = 0;
  *reported = false;
#ifdef STATX_DIOALIGN  // kernel headers >= 6.1; older ones: probe O_DIRECT by trying it
  struct statx sx;
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
    *reported = true;
    *off_align = sx.stx_dio_offset_align;
    *mem_align = sx.stx_dio_mem_align;
  }
#else
  (void)fd;
#endif
}

// Some file systems accept the flag at open and fail the first I/O: write and read a block.
bool try_direct(const std::string& path, uint32_t align) {
  int dfd = ::open(path.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  if (dfd < 0) return false;
  char* b = alloc_aligned(align);
  std::memset(b, 0, align);
  bool ok = pwrite_full(dfd, b, align, 0) == static_cast<int64_t>(align) &&
            pread_full(dfd, b, align, 0) == static_cast<int64_t>(align);
  int err = errno;
  std::free(b);
  ::close(dfd);
  errno = err;
  return ok;
}

}  // namespace

DirectIo probe_direct_io(const std::string& dir, const std::string& mode) {
  const std::string probe = dir + "/.probe";
  int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cache directory " + dir + " is not writable: " + errstr(errno));
  uint32_t off_align, mem_align;
  bool reported;
  dio_alignment(fd, &off_align, &mem_align, &reported);
  ::close(fd);
  DirectIo d;
  d.align = std::max<uint32_t>(4096, std::max(off_align, mem_align));
  if (mode == "off") {
    d.reason = "buffered I/O (direct=off)";
  } else if (reported && off_align == 0) {
    d.reason = "the file system does not support O_DIRECT (statx), buffered I/O";
  } else {
    d.direct = try_direct(probe, d.align);
    if (!d.direct) d.reason = std::string("O_DIRECT refused (") + errstr(errno) + "), buffered I/O";
  }
  ::unlink(probe.c_str());
  if (mode == "on" && !d.direct) throw std::runtime_error("direct=on but " + dir + " does not support O_DIRECT");
  return d;
}

}  // namespace autofreeze
