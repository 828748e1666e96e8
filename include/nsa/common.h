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

// ---------------------------------------------------------------------------
// Checked mode. Device-resident indices (slots, page ids, lengths, request
// rows, accept lengths) are preconditions: out-of-range values are undefined
// behaviour in the default (unchecked) CUDA kernels, as upstream. With
// Exec::checked pointing at a DeviceError in device memory, the kernels
// validate every such value, write nothing for an invalid row (token, page,
// request), and record one violation there: the first one to be detected,
// not necessarily the lowest row. Reading it needs no sync on the hot path:
// read it whenever convenient (read_device_error synchronises the stream).
// The CPU backend always validates, before writing anything, and throws.
// ---------------------------------------------------------------------------
// The ops and arguments a violation names; both lists live in
// nsa/detail/ops.def (one line per op).
enum class OpId : int32_t {
  kNone = 0,
#define NSA_OP(Id, name, cuda_params) k##Id,
#include "nsa/detail/ops.def"
};
enum class ArgId : int32_t {
  kNone = 0,
#define NSA_ARG(Id, name) k##Id,
#include "nsa/detail/ops.def"
};
const char* to_string(OpId op);
const char* to_string(ArgId arg);

struct DeviceError {
  int32_t code = 0;  // 0: no violation recorded; 1: one was
  int32_t op = 0;    // OpId
  int32_t arg = 0;   // ArgId
  int32_t reserved = 0;
  int64_t row = 0;    // token / page / request index where it was found
  int64_t value = 0;  // the offending value
};
static_assert(sizeof(DeviceError) == 32, "DeviceError is shared with the kernels");

// "gather_k_and_s: argument 'page_table' at row 17: invalid value 99999" (or "no error").
std::string describe(const DeviceError& error);

struct Exec {
  Backend backend = Backend::kCpu;
  cudaStream stream = nullptr;     // kCuda only; nullptr is the legacy default stream
  int cpu_threads = 0;             // kCpu only; 0 = std::thread::hardware_concurrency()
  DeviceError* checked = nullptr;  // kCuda only: device memory; non-null = checked mode

  static Exec cpu(int threads = 0) { return Exec{Backend::kCpu, nullptr, threads, nullptr}; }
  static Exec cuda(cudaStream stream = nullptr) { return Exec{Backend::kCuda, stream, 0, nullptr}; }
  // The same execution context in checked mode, recording into `error` (device memory).
  Exec with_checks(DeviceError* error) const {
    Exec e = *this;
    e.checked = error;
    return e;
  }
};

// Clears exec.checked (cudaMemsetAsync on exec.stream: graph-capturable).
void reset_device_error(const Exec& exec);
// Synchronises exec.stream and returns the recorded violation (code 0: none).
DeviceError read_device_error(const Exec& exec);

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
    return type == IndexType::kInt32 ? static_cast<const int32_t*>(data)[i] : static_cast<const int64_t*>(data)[i];
  }
  explicit operator bool() const { return data != nullptr; }
};

}  // namespace nsa
