// Dynamic shared memory above 48 KiB must be allowed once per kernel and
// device before a launch. allow_dynamic_shared_memory<kernel>(bytes) does it
// on the first call per device (remembered for devices 0..63; others ask on
// every call). The first call may happen inside a stream capture: the
// (non-stream) attribute call runs with this thread's capture mode relaxed.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace nsa {
namespace kernels {

template <auto Kernel>
inline cudaError_t allow_dynamic_shared_memory(size_t bytes) {
  static std::atomic<uint64_t> allowed{0};  // bit d: done on device d
  int device = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  const uint64_t bit = device >= 0 && device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (allowed.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  e = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  if (e == cudaSuccess && bit != 0) allowed.fetch_or(bit, std::memory_order_release);
  return e;
}

}  // namespace kernels
}  // namespace nsa
