// CUDA backend of topk_transform: the launcher of nsa/cuda/topk.cuh and the
// launch-status check, nothing else (validation is done by src/topk.cpp).
#include "cuda/cuda_check.h"
#include "nsa/cuda/topk.cuh"
#include "topk_backends.h"

namespace nsa {
namespace cuda {

void topk_transform(cudaStream stream, const TopkArgs& args) {
  NSA_CUDA_CHECK(kernels::invoke_topk_transform(args, stream));
}

}  // namespace cuda
}  // namespace nsa
