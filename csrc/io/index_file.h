// The index file's layout: magic, version, alignment, next segment id, record count,
// fingerprint, IndexRecords, and a CRC32C of everything before it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "record_format.h"

namespace autofreeze {

struct IndexImage {
  uint32_t align = 0, next_segment = 0;
  std::string fingerprint;
  std::vector<IndexRecord> records;
};

std::string encode_index(const IndexImage& image);
// False when data is empty, torn (CRC), or not an index of this format and version.
bool decode_index(const std::vector<char>& data, IndexImage* out);

}  // namespace autofreeze
