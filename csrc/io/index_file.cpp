#include "index_file.h"

#include <cstring>

#include "crc32c.h"

namespace autofreeze {

std::string encode_index(const IndexImage& image) {
  std::string out;
  auto put = [&](const void* p, size_t n) { out.append(static_cast<const char*>(p), n); };
  uint32_t magic = kIndexMagic, version = kFormatVersion, fp_len = static_cast<uint32_t>(image.fingerprint.size());
  uint64_t count = image.records.size();
  put(&magic, 4);
  put(&version, 4);
  put(&image.align, 4);
  put(&image.next_segment, 4);
  put(&count, 8);
  put(&fp_len, 4);
  put(image.fingerprint.data(), fp_len);
  if (count) put(image.records.data(), count * sizeof(IndexRecord));
  uint32_t crc = crc32c(out.data(), out.size());
  put(&crc, 4);
  return out;
}

bool decode_index(const std::vector<char>& data, IndexImage* out) {
  if (data.size() <= 4) return false;
  uint32_t stored_crc;
  std::memcpy(&stored_crc, data.data() + data.size() - 4, 4);
  if (crc32c(data.data(), data.size() - 4) != stored_crc) return false;
  const size_t end = data.size() - 4;
  size_t pos = 0;
  auto take = [&](void* dst, size_t n) {
    if (pos + n > end) return false;
    std::memcpy(dst, data.data() + pos, n);
    pos += n;
    return true;
  };
  uint32_t magic = 0, version = 0, fp_len = 0;
  uint64_t count = 0;
  if (!(take(&magic, 4) && magic == kIndexMagic && take(&version, 4) && version == kFormatVersion &&
        take(&out->align, 4) && take(&out->next_segment, 4) && take(&count, 8) && take(&fp_len, 4) &&
        pos + fp_len <= end))
    return false;
  out->fingerprint.assign(data.data() + pos, fp_len);
  pos += fp_len;
  out->records.clear();
  IndexRecord r;
  for (uint64_t i = 0; i < count && take(&r, sizeof r); ++i) out->records.push_back(r);
  return true;
}

}  // namespace autofreeze
