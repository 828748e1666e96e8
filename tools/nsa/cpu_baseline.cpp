#include "cpu_baseline.h"

#include <cstring>

#include "metadata_baseline.h"

namespace nsa {
namespace cli {
namespace cpu_baseline {

int64_t copy_metadata_per_field(const MetadataCopyShape& shape, const MetadataSources& src, const MetadataBuffers* dsts,
                                int64_t count) {
  int64_t copies = 0;
  for (int64_t d = 0; d < count; ++d) {
    for (const auto& c : baseline::metadata_field_copies(shape, src, dsts[d])) {
      for (size_t r = 0; r < c.rows; ++r)
        std::memcpy(static_cast<uint8_t*>(c.dst) + r * c.dst_pitch,
                    static_cast<const uint8_t*>(c.src) + r * c.src_pitch, c.width);
      ++copies;
    }
  }
  return copies;
}

}  // namespace cpu_baseline
}  // namespace cli
}  // namespace nsa
