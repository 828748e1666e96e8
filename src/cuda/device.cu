// Device queries of the CUDA backend.
#include <atomic>

#include "cuda/cuda_check.h"

namespace nsa {

bool cuda_built() { return true; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // no driver / no device is an answer (0), not a sticky error
    return 0;
  }
  return count;
}

void reset_device_error(const Exec& exec) {
  if (exec.backend != Backend::kCuda || exec.checked == nullptr)
    throw Error(ErrorCode::kInvalidArgument,
                "nsa::reset_device_error: argument 'exec': expected a CUDA exec with checked != nullptr, got " +
                    std::string(exec.backend == Backend::kCuda ? "checked == nullptr" : "backend cpu"));
  NSA_CUDA_CHECK(cudaMemsetAsync(exec.checked, 0, sizeof(DeviceError), exec.stream));
}

DeviceError read_device_error(const Exec& exec) {
  if (exec.backend != Backend::kCuda || exec.checked == nullptr)
    throw Error(ErrorCode::kInvalidArgument,
                "nsa::read_device_error: argument 'exec': expected a CUDA exec with checked != nullptr, got " +
                    std::string(exec.backend == Backend::kCuda ? "checked == nullptr" : "backend cpu"));
  DeviceError e;
  NSA_CUDA_CHECK(cudaMemcpyAsync(&e, exec.checked, sizeof e, cudaMemcpyDeviceToHost, exec.stream));
  NSA_CUDA_CHECK(cudaStreamSynchronize(exec.stream));
  return e;
}

namespace cuda {

int current_device_sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  int device = 0;
  NSA_CUDA_CHECK(cudaGetDevice(&device));
  if (device >= 0 && device < kMaxDevices) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int sms = 0;
  NSA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < kMaxDevices) cache[device].store(sms, std::memory_order_relaxed);
  return sms;
}

}  // namespace cuda
}  // namespace nsa
