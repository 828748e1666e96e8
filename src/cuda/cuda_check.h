// CUDA error handling for the CUDA backend: every runtime call and every
// launch status goes through NSA_CUDA_CHECK, which throws nsa::Error.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "nsa/common.h"

namespace nsa {
namespace cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file, int line) {
  throw Error(ErrorCode::kCudaError, std::string("nsa: CUDA error '") + cudaGetErrorName(err) + "' (" +
                                         cudaGetErrorString(err) + ") from " + what + " at " + file + ":" +
                                         std::to_string(line));
}

// Number of SMs of the current device, cached per device (no driver call on the hot path).
int current_device_sm_count();

}  // namespace cuda
}  // namespace nsa

#define NSA_CUDA_CHECK(expr)                                                                         \
  do {                                                                                               \
    const cudaError_t nsa_err_ = (expr);                                                             \
    if (nsa_err_ != cudaSuccess) ::nsa::cuda::throw_cuda_error(nsa_err_, #expr, __FILE__, __LINE__); \
  } while (0)
