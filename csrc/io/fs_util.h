// File-system helpers of the record store: aligned buffers, segment file names, directory
// listing and fsync, whole-file reads and atomic replacement.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace autofreeze {

std::string errstr(int e);  // strerror of e or -e

// Page-aligned (4 KiB) buffer of at least one page; free() it. Throws std::bad_alloc.
char* alloc_aligned(uint64_t bytes);

std::string seg_name(const std::string& dir, uint32_t id);
// Ids of the segment files (seg-NNNNNNNN.afc) in dir.
std::vector<uint32_t> list_segments(const std::string& dir);

void fsync_dir(const std::string& dir);

// The whole file (empty when missing or unreadable).
std::vector<char> read_file(const std::string& path);

// Write data to path + ".tmp", fsync, rename over path, fsync the directory; throws
// std::runtime_error naming `what` on failure.
void write_file_atomic(const std::string& path, const std::string& data, const std::string& what);

}  // namespace autofreeze
