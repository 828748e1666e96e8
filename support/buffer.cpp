#include "buffer.h"

#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace support {

namespace {
#if defined(NSA_WITH_CUDA)
void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw Error(ErrorCode::kCudaError, std::string("support: ") + what + ": " + cudaGetErrorString(err));
}
#endif
[[noreturn]] void no_cuda() { throw Error(ErrorCode::kUnsupported, "support: this build has no CUDA backend"); }
}  // namespace

bool cuda_device_available() { return cuda_device_count() > 0; }

const char* cuda_unavailable_reason() {
  return cuda_built() ? "no CUDA device found" : "built without CUDA (NSA_CUDA=OFF, or no nvcc at configure time)";
}

std::string cuda_device_name() {
#if defined(NSA_WITH_CUDA)
  if (!cuda_device_available()) return "";
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  return prop.name;
#else
  return "";
#endif
}

Buffer::Buffer(Backend backend, size_t bytes) : backend_(backend), bytes_(bytes) {
  const size_t alloc = bytes == 0 ? 16 : bytes;  // non-null even when empty
  if (backend == Backend::kCpu) {
    data_ = std::aligned_alloc(64, (alloc + 63) / 64 * 64);
    if (!data_) throw std::bad_alloc();
  } else {
#if defined(NSA_WITH_CUDA)
    check(cudaMalloc(&data_, alloc), "cudaMalloc");
#else
    no_cuda();
#endif
  }
}

Buffer::~Buffer() {
  if (!data_) return;
  if (backend_ == Backend::kCpu) std::free(data_);
#if defined(NSA_WITH_CUDA)
  else (void)cudaFree(data_);  // destructor: nothing to report to
#endif
}

Buffer::Buffer(Buffer&& o) noexcept : backend_(o.backend_), data_(o.data_), bytes_(o.bytes_) {
  o.data_ = nullptr;
  o.bytes_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    this->~Buffer();
    backend_ = o.backend_;
    data_ = o.data_;
    bytes_ = o.bytes_;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void Buffer::upload(const void* host, size_t bytes, size_t offset) {
  if (bytes == 0) return;
  if (offset + bytes > bytes_) throw Error(ErrorCode::kInvalidArgument, "support: upload past the end of a buffer");
  if (backend_ == Backend::kCpu) {
    std::memcpy(static_cast<uint8_t*>(data_) + offset, host, bytes);
  } else {
#if defined(NSA_WITH_CUDA)
    // From pageable memory cudaMemcpy may return before the bytes reach the
    // device, and its legacy-stream copy does not order work on non-blocking
    // streams: wait for it, so a kernel launched next on any stream sees them.
    // (A poison upload that landed after a graph replay on a non-blocking
    // stream overwrote the replay's output, once, on a busy GPU.)
    check(cudaMemcpy(static_cast<uint8_t*>(data_) + offset, host, bytes, cudaMemcpyHostToDevice), "upload");
    check(cudaStreamSynchronize(cudaStreamLegacy), "upload");
#else
    no_cuda();
#endif
  }
}

void Buffer::download(void* host, size_t bytes, size_t offset) const {
  if (bytes == 0) return;
  if (offset + bytes > bytes_) throw Error(ErrorCode::kInvalidArgument, "support: download past the end of a buffer");
  if (backend_ == Backend::kCpu) {
    std::memcpy(host, static_cast<const uint8_t*>(data_) + offset, bytes);
  } else {
#if defined(NSA_WITH_CUDA)
    check(cudaMemcpy(host, static_cast<const uint8_t*>(data_) + offset, bytes, cudaMemcpyDeviceToHost), "download");
#else
    no_cuda();
#endif
  }
}

void Buffer::fill(uint8_t byte) {
  if (backend_ == Backend::kCpu) {
    std::memset(data_, byte, bytes_);
  } else {
#if defined(NSA_WITH_CUDA)
    check(cudaMemset(data_, byte, bytes_), "cudaMemset");
    check(cudaStreamSynchronize(cudaStreamLegacy), "cudaMemset");  // done before any stream's next work (see upload)
#else
    no_cuda();
#endif
  }
}

std::vector<uint8_t> Buffer::to_host() const {
  std::vector<uint8_t> v(bytes_);
  download(v.data(), bytes_);
  return v;
}

void synchronize(Backend backend) {
  if (backend == Backend::kCpu) return;
#if defined(NSA_WITH_CUDA)
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  check(cudaGetLastError(), "cudaGetLastError");
#else
  no_cuda();
#endif
}

}  // namespace support
}  // namespace nsa
