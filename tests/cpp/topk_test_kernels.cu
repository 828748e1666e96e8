// Test hooks of topk_test into the CUDA launcher (nsa/cuda/topk.cuh): the
// CTAs per row forced, so that every cluster size runs on the same inputs
// whatever the row count would choose.
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

}  // namespace test
}  // namespace nsa
