// Test hooks of topk_test into the CUDA launcher (nsa/cuda/topk.cuh): the
// kernel and CTAs per row forced, so that the short-row kernel and every
// cluster size run on the same inputs whatever the shape would choose.
#include <cuda_runtime.h>

#include "nsa/cuda/topk.cuh"

namespace nsa {
namespace test {

bool topk_cluster_usable(int cluster, ScoreType type) {
  if (cluster == 1) return true;
  return type == ScoreType::kBfloat16 ? kernels::topk_cluster_capacity<uint16_t>(cluster) > 0
                                      : kernels::topk_cluster_capacity<float>(cluster) > 0;
}

cudaError_t topk_transform_with_cluster(const TopkArgs& a, int cluster, cudaStream_t stream) {
  return kernels::invoke_topk_transform(a, stream, cluster);
}

int topk_short_rows_layout() { return kernels::kTopkShortRows; }
int64_t topk_short_rows_max_width() { return kernels::kTopkShortMaxWidth; }

}  // namespace test
}  // namespace nsa
