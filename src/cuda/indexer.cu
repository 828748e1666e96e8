// CUDA backend of paged_mqa_logits: the choice between the kernels of
// nsa/cuda/indexer_wgmma.cuh (sm_90a) and nsa/cuda/indexer.cuh (every
// architecture), their launchers and the launch-status check, nothing else
// (validation is done by src/indexer.cpp).
#include "cuda/cuda_check.h"
#include "indexer_backends.h"
#include "nsa/cuda/indexer.cuh"
#include "nsa/cuda/indexer_wgmma.cuh"

namespace nsa {
namespace cuda {

void paged_mqa_logits(cudaStream stream, const PagedMqaLogitsArgs& args) {
  if (args.kernel != MqaLogitsKernel::kMmaSync) {
    // cudaErrorNotSupported: the device or the build cannot run the wgmma
    // kernel, and nothing was launched (the answer is cached per device).
    const cudaError_t e = kernels::invoke_paged_mqa_logits_wgmma(args, stream);
    if (e != cudaErrorNotSupported) {
      NSA_CUDA_CHECK(e);
      return;
    }
    if (args.kernel == MqaLogitsKernel::kWgmma)
      throw Error(ErrorCode::kUnsupported,
                  "nsa::paged_mqa_logits: argument 'kernel': MqaLogitsKernel::kWgmma needs a compute 9.0 device and "
                  "a build with sm_90a SASS (CMAKE_CUDA_ARCHITECTURES 90a-real)");
  }
  NSA_CUDA_CHECK(kernels::invoke_paged_mqa_logits(args, stream));
}

}  // namespace cuda
}  // namespace nsa
