// Host-side argument validation shared by every public entry point. A failed
// check throws nsa::Error before the op writes anything; the message has one
// shape everywhere:  nsa::<op>: argument '<name>': expected <what>, got <value>
#pragma once

#include <cstdint>
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
  void multiple_of(int64_t value, int64_t m, const char* arg) const {
    if (value % m != 0) fail(arg, "a multiple of " + std::to_string(m), std::to_string(value));
  }
  const char* op() const { return op_; }

 private:
  const char* op_;
};

// The CUDA backend is compiled in only when nvcc was found at configure time.
void require_backend(const ArgChecker& check, const Exec& exec);

}  // namespace detail
}  // namespace nsa
