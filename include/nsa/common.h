// Types shared by every NSA Runtime op: the typed error, where an op runs,
// and views of integer index arrays that may be int32 or int64.
//
// This header is framework-free and does not include CUDA headers. A CUDA
// stream is passed as `cudaStream_t`, which CUDA defines as `CUstream_st*`;
// we name the struct so callers can pass their stream unchanged.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

struct CUstream_st;

namespace nsa {

// ---------------------------------------------------------------------------
// Errors. Every public function validates what the host can see before it
// writes anything and throws nsa::Error on bad input; the message names the
// op, the argument, what was expected and what was given.
// ---------------------------------------------------------------------------
enum class ErrorCode {
  kInvalidArgument,  // a value, shape, stride, dtype or pointer is not acceptable
  kUnsupported,      // valid request, but this build/backend cannot run it (e.g. CUDA not built)
  kCudaError,        // the CUDA runtime reported an error (launch, sticky device error)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// ---------------------------------------------------------------------------
// Where an op runs. The backend says which memory every pointer of the call
// lives in: host memory for kCpu, device memory of the current device for
// kCuda. CUDA work is enqueued on `stream` and the call returns after the
// launch (no synchronisation), so it can be captured into a CUDA graph.
// ---------------------------------------------------------------------------
enum class Backend { kCpu, kCuda };

const char* to_string(Backend backend);

using cudaStream = CUstream_st*;  // == cudaStream_t

struct Exec {
  Backend backend = Backend::kCpu;
  cudaStream stream = nullptr;  // kCuda only; nullptr is the legacy default stream
  int cpu_threads = 0;          // kCpu only; 0 = std::thread::hardware_concurrency()

  static Exec cpu(int threads = 0) { return Exec{Backend::kCpu, nullptr, threads}; }
  static Exec cuda(cudaStream stream = nullptr) { return Exec{Backend::kCuda, stream, 0}; }
};

// True when this build contains the CUDA backend (independent of any device).
bool cuda_built();
// Number of CUDA devices visible now (0 in a CPU-only build or without a driver/GPU).
int cuda_device_count();

// ---------------------------------------------------------------------------
// Integer index arrays (page ids, lengths, table rows) come as int32 or int64.
// A view is a typed pointer; the element count and strides travel beside it.
// ---------------------------------------------------------------------------
enum class IndexType : int32_t { kInt32 = 4, kInt64 = 8 };

const char* to_string(IndexType type);

struct Indices {
  const void* data = nullptr;
  IndexType type = IndexType::kInt32;

  Indices() = default;
  Indices(const int32_t* p) : data(p), type(IndexType::kInt32) {}  // NOLINT: implicit on purpose
  Indices(const int64_t* p) : data(p), type(IndexType::kInt64) {}  // NOLINT
  Indices(const void* p, IndexType t) : data(p), type(t) {}

  // Host-side read of element i (only valid when `data` is host memory).
  int64_t at(int64_t i) const {
    return type == IndexType::kInt32 ? static_cast<const int32_t*>(data)[i]
                                     : static_cast<const int64_t*>(data)[i];
  }
  explicit operator bool() const { return data != nullptr; }
};

}  // namespace nsa
