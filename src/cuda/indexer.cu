// CUDA backend of paged_mqa_logits: the choice between the kernels of
// nsa/cuda/indexer_wgmma.cuh (sm_90a; its persistent schedule in
// nsa/cuda/indexer_wgmma_persistent.cuh, opt-in) and nsa/cuda/indexer.cuh
// (every architecture), their launchers and the launch-status check, nothing
// else (validation is done by src/indexer.cpp).
#include "cuda/cuda_check.h"
#include "indexer_backends.h"
#include "nsa/cuda/indexer.cuh"
#include "nsa/cuda/indexer_wgmma.cuh"
#include "nsa/cuda/indexer_wgmma_persistent.cuh"

namespace nsa {
namespace cuda {

namespace {

// kUnsupported for a kernel named by the caller that this device or build cannot run.
[[noreturn]] void throw_needs_sm90a(const char* kernel) {
  throw Error(ErrorCode::kUnsupported, std::string("nsa::paged_mqa_logits: argument 'kernel': MqaLogitsKernel::") +
                                           kernel +
                                           " needs a compute 9.0 device and a build with sm_90a SASS "
                                           "(CMAKE_CUDA_ARCHITECTURES 90a-real)");
}

}  // namespace

void paged_mqa_logits(cudaStream stream, const PagedMqaLogitsArgs& args) {
  if (args.kernel == MqaLogitsKernel::kWgmmaPersistent) {
    // Opt-in: no fallback (cudaErrorNotSupported: nothing was launched).
    const cudaError_t e = kernels::invoke_paged_mqa_logits_wgmma_persistent(args, stream);
    if (e == cudaErrorNotSupported) throw_needs_sm90a("kWgmmaPersistent");
    NSA_CUDA_CHECK(e);
    return;
  }
  if (args.kernel != MqaLogitsKernel::kMmaSync) {
    // cudaErrorNotSupported: the device or the build cannot run the wgmma
    // kernel, and nothing was launched (the answer is cached per device).
    const cudaError_t e = kernels::invoke_paged_mqa_logits_wgmma(args, stream);
    if (e != cudaErrorNotSupported) {
      NSA_CUDA_CHECK(e);
      return;
    }
    if (args.kernel == MqaLogitsKernel::kWgmma) throw_needs_sm90a("kWgmma");
  }
  NSA_CUDA_CHECK(kernels::invoke_paged_mqa_logits(args, stream));
}

}  // namespace cuda
}  // namespace nsa
