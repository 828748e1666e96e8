#include "metadata_baseline.h"

namespace nsa {
namespace baseline {

cudaError_t copy_metadata_per_field(const MetadataCopyShape& shape, const MetadataSources& src,
                                    const MetadataBuffers* dsts, int64_t count, nsa::cudaStream stream,
                                    int64_t* copies) {
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  int64_t enqueued = 0;
  for (int64_t d = 0; d < count; ++d) {
    for (const FieldCopy& c : metadata_field_copies(shape, src, dsts[d])) {
      const cudaError_t err = c.rows == 1 ? cudaMemcpyAsync(c.dst, c.src, c.width, cudaMemcpyDeviceToDevice, s)
                                          : cudaMemcpy2DAsync(c.dst, c.dst_pitch, c.src, c.src_pitch, c.width, c.rows,
                                                              cudaMemcpyDeviceToDevice, s);
      if (err != cudaSuccess) return err;
      ++enqueued;
    }
  }
  if (copies) *copies = enqueued;
  return cudaSuccess;
}

}  // namespace baseline
}  // namespace nsa
