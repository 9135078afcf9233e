#include "fs_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "io_backend.h"

namespace autofreeze {

std::string errstr(int e) { return std::strerror(e < 0 ? -e : e); }

char* alloc_aligned(uint64_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 4096, bytes ? bytes : 4096) != 0) throw std::bad_alloc();
  return static_cast<char*>(p);
}

std::string seg_name(const std::string& dir, uint32_t id) {
  char b[32];
  std::snprintf(b, sizeof b, "/seg-%08u.afc", id);
  return dir + b;
}

std::vector<uint32_t> list_segments(const std::string& dir) {
  std::vector<uint32_t> ids;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return ids;
  while (dirent* e = ::readdir(d)) {
    unsigned v;
    char tail[8] = {0};
    if (std::sscanf(e->d_name, "seg-%8u.%4s", &v, tail) == 2 && std::strcmp(tail, "afc") == 0) ids.push_back(v);
  }
  ::closedir(d);
  return ids;
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::vector<char> read_file(const std::string& path) {
  std::vector<char> data;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return data;
  std::fseek(f, 0, SEEK_END);
  long n = std::ftell(f);
  std::fseek(f, 0, SEEK_SET);
  if (n > 0) {
    data.resize(static_cast<size_t>(n));
    if (std::fread(data.data(), 1, data.size(), f) != data.size()) data.clear();
  }
  std::fclose(f);
  return data;
}

void write_file_atomic(const std::string& path, const std::string& data, const std::string& what) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot write the " + what + " " + tmp + ": " + errstr(errno));
  int64_t w = pwrite_full(fd, data.data(), data.size(), 0);
  bool ok = w == static_cast<int64_t>(data.size()) && ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot write the " + what + ": " + errstr(w < 0 ? static_cast<int>(-w) : err));
  }
  size_t slash = path.rfind('/');
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error("cannot replace the " + what + ": " + errstr(errno));
  fsync_dir(slash == std::string::npos ? "." : path.substr(0, slash));
}

}  // namespace autofreeze
