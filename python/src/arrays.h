// Arguments of the bound ops after DLPack import, and the checks the binding
// runs on them. Every check runs before the library is called, so a bad
// argument raises before anything is written; messages have the library's
// shape:  nsa.<op>: argument '<name>': expected <what>, got <what was given>
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "nsa/common.h"

namespace nsa_py {

namespace nb = nanobind;

enum class DType { kUint8, kInt8, kInt16, kUint16, kBfloat16, kFloat16, kInt32, kInt64, kFloat32, kFloat64, kOther };
const char* to_string(DType dtype);

// A dtype mismatch: raised in Python as nsa.DTypeError (a TypeError).
class DTypeError : public nsa::Error {
 public:
  explicit DTypeError(const std::string& message) : nsa::Error(nsa::ErrorCode::kInvalidArgument, message) {}
};

enum class DeviceKind { kCpu, kCuda };

struct Array {
  static constexpr int kMaxDims = 4;

  const char* name = "";
  bool present = false;
  void* data = nullptr;
  DType dtype = DType::kOther;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};  // in elements
  DeviceKind device = DeviceKind::kCpu;
  int device_id = 0;
  // Keep the producer's memory alive for the duration of the call.
  nb::ndarray<nb::ro> keep_ro;
  nb::ndarray<> keep_rw;

  int64_t numel() const;
  // Unit stride along every dimension that has more than one element, in C order.
  bool contiguous() const;
  std::string describe() const;  // "int32 [3, 128] strides [128, 1] on cuda:0"
  template <class T>
  T* as() const {
    return static_cast<T*>(data);
  }
};

// One call of one op: imports its arguments, checks them and picks the Exec.
class Call {
 public:
  explicit Call(const char* op) : op_(op) {}

  // `writable` arguments are outputs. Python None gives an absent array for
  // optional arguments and an error for required ones.
  Array require(nb::handle obj, const char* name, bool writable = false);
  Array optional(nb::handle obj, const char* name, bool writable = false);

  [[noreturn]] void fail(const char* arg, const std::string& expected, const std::string& got) const;
  [[noreturn]] void fail_dtype(const Array& a, const std::string& expected) const;

  void dtype(const Array& a, std::initializer_list<DType> allowed, const std::string& expected) const;
  // Index arrays (page ids, lengths, tables): int32 or int64.
  nsa::IndexType index_type(const Array& a) const;
  nsa::Indices indices(const Array& a) const;
  // Shape checks. `what` is a literal describing the expected shape; messages
  // are built only when a check fails (these run on every call).
  // 1-D with unit stride and at least `min_len` elements (exactly, when exact).
  int64_t vector(const Array& a, int64_t min_len, const char* what, bool exact = false) const;
  // 2-D [rows, cols] with unit column stride; returns the row stride (>= cols).
  int64_t rows(const Array& a, int64_t cols, const char* what) const;
  // 2-D [rows, cols] with unit column stride and any cols; returns the row stride.
  int64_t table(const Array& a, const char* what) const;
  // 2-D [rows, cols] row-major without padding (row stride == cols).
  void dense_rows(const Array& a, int64_t cols, const char* what) const;

  // The Exec every argument seen so far agrees on; `stream` is an int (a
  // cudaStream_t) or None (the legacy default stream).
  nsa::Exec exec(nb::handle stream) const;
  bool on_cuda() const { return have_device_ && device_ == DeviceKind::kCuda; }
  int device_id() const { return device_id_; }
  const char* op() const { return op_; }

 private:
  Array import(nb::handle obj, const char* name, bool writable);
  void same_device(const Array& a);

  const char* op_;
  bool have_device_ = false;
  DeviceKind device_ = DeviceKind::kCpu;
  int device_id_ = 0;
  const char* device_arg_ = nullptr;
};

// Makes the arrays' CUDA device current for the launch and restores the
// previous one afterwards (no-op for CPU calls and in CPU-only builds).
class DeviceGuard {
 public:
  explicit DeviceGuard(const Call& call);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// Runs `fn` with the GIL released for CPU work (which may take a while and
// uses worker threads); CUDA launches are short and keep the GIL.
template <class Fn>
void run_op(const Call& call, Fn&& fn) {
  DeviceGuard guard(call);
  if (call.on_cuda()) {
    fn();
  } else {
    nb::gil_scoped_release release;
    fn();
  }
}

// A validated call kept for replay (nsa.prepare_*): the launch with its
// arguments bound, the arrays it uses kept alive, and the Call that picked the
// device. run() costs one launch plus the stream argument: no DLPack import
// and no validation, which is most of a plain call's host time.
class Prepared {
 public:
  using Launch = std::function<void(const nsa::Exec&)>;
  Prepared(const Call& call, std::vector<Array> keep, Launch launch)
      : call_(call), keep_(std::move(keep)), launch_(std::move(launch)) {}

  void run(nb::handle stream) const {
    const nsa::Exec exec = call_.exec(stream);
    run_op(call_, [&] { launch_(exec); });
  }
  const char* op() const { return call_.op(); }

 private:
  Call call_;
  std::vector<Array> keep_;  // their ndarray handles keep the producers' memory alive
  Launch launch_;
};

// Process-wide settings set from Python.
int cpu_threads();
void set_cpu_threads(int threads);
// Torch tensors are exported with torch.utils.dlpack.to_dlpack (a C function)
// instead of Tensor.__dlpack__ (a Python method with extra checks): it saves
// microseconds per tensor, which matters for launch overhead.
void register_torch(nb::handle tensor_type, nb::handle to_dlpack);

}  // namespace nsa_py
