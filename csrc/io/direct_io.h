// Whether a folder takes O_DIRECT, and at which alignment (statx STATX_DIOALIGN where the
// kernel headers have it, else by trying a direct write and read).
#pragma once
#include <cstdint>
#include <string>

namespace autofreeze {

struct DirectIo {
  bool direct = false;
  uint32_t align = 4096;  // at least 4 KiB
  std::string reason;     // why buffered I/O, when it is
};

// mode: "auto" | "on" | "off". Throws std::runtime_error when dir is not writable, or when
// mode is "on" and the file system refuses O_DIRECT.
DirectIo probe_direct_io(const std::string& dir, const std::string& mode);

}  // namespace autofreeze
