// Host-side argument validation shared by every public entry point. A failed
// check throws nsa::Error before the op writes anything; the message has one
// shape everywhere:  nsa::<op>: argument '<name>': expected <what>, got <value>
#pragma once

#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include "nsa/common.h"

namespace nsa {
namespace detail {

class ArgChecker {
 public:
  explicit ArgChecker(const char* op) : op_(op) {}

  [[noreturn]] void fail(const char* arg, const std::string& expected, const std::string& got) const {
    throw Error(ErrorCode::kInvalidArgument,
                std::string("nsa::") + op_ + ": argument '" + arg + "': expected " + expected + ", got " + got);
  }

  void not_null(const void* p, const char* arg) const {
    if (p == nullptr) fail(arg, "a non-null pointer", "nullptr");
  }
  void at_least(int64_t value, int64_t min, const char* arg) const {
    if (value < min) fail(arg, ">= " + std::to_string(min), std::to_string(value));
  }
  void aligned(const void* p, int64_t bytes, const char* arg) const {
    if (reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) != 0) {
      std::ostringstream got;
      got << p;
      fail(arg, "an address aligned to " + std::to_string(bytes) + " bytes", got.str());
    }
  }
  // A non-null int32/int64 index array; on CUDA aligned to its element size.
  void indices(const Exec& exec, Indices v, const char* arg) const {
    not_null(v.data, arg);
    if (v.type != IndexType::kInt32 && v.type != IndexType::kInt64)
      fail(arg, "int32 or int64 elements", std::to_string(static_cast<int>(v.type)));
    if (exec.backend == Backend::kCuda) aligned(v.data, static_cast<int64_t>(v.type), arg);
  }
  // a * b of two non-negative sizes fits in int64 (offsets are computed from it).
  void product_fits(int64_t a, int64_t b, const char* arg, const char* what) const {
    if (a > 0 && b > std::numeric_limits<int64_t>::max() / a)
      fail(arg, what, std::to_string(a) + " x " + std::to_string(b) + " overflows int64");
  }
  const char* op() const { return op_; }

 private:
  const char* op_;
};

// The CUDA backend is compiled in only when nvcc was found at configure time.
void require_backend(const ArgChecker& check, const Exec& exec);

}  // namespace detail
}  // namespace nsa
