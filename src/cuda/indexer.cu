// CUDA backend of paged_mqa_logits: the launcher of nsa/cuda/indexer.cuh and
// the launch-status check, nothing else (validation is done by src/indexer.cpp).
#include "cuda/cuda_check.h"
#include "indexer_backends.h"
#include "nsa/cuda/indexer.cuh"

namespace nsa {
namespace cuda {

void paged_mqa_logits(cudaStream stream, const PagedMqaLogitsArgs& args) {
  NSA_CUDA_CHECK(kernels::invoke_paged_mqa_logits(args, stream));
}

}  // namespace cuda
}  // namespace nsa
