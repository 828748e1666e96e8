// Shared pieces of the libFuzzer targets: a reader that turns the fuzz input
// into bounded sizes, flags and index values, the choice of where the op runs,
// and the one rule every target enforces:
//   * a call whose host-visible arguments break the documented contract must
//     throw nsa::Error and leave every output byte unchanged;
//   * a call with valid arguments (and in-range device values, which the
//     targets construct) must not throw, and its outputs must equal the
//     plain-loop reference's bit for bit.
// Any contradiction aborts, which libFuzzer reports as a crash with the input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "nsa/common.h"

namespace nsa {
namespace fuzz {

[[noreturn]] inline void fail(const char* what, const char* detail = "") {
  std::fprintf(stderr, "nsa fuzz: %s %s\n", what, detail);
  std::abort();
}

// Reads the input front to back; past its end every read returns 0, so any
// prefix of an interesting input is still a well-formed (smaller) case.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t u16() { return static_cast<uint16_t>(byte() | (byte() << 8)); }
  bool flag() { return byte() & 1; }
  // True with probability about 1/n: the rare "break this argument" choices.
  bool rarely(int n = 16) { return byte() % n == 0; }
  // Uniform-ish value in [lo, hi] (lo <= hi, small ranges).
  int64_t in(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(u16() % static_cast<uint64_t>(hi - lo + 1)); }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// A value that is usually `good` and sometimes one of the edges that
// validation must reject or survive (negative, zero, int64 extremes).
inline int64_t maybe_broken(Input& in, int64_t good) {
  if (!in.rarely()) return good;
  static const int64_t kEdges[] = {-1, 0, 1, INT64_MIN, INT64_MAX, good - 1, good + 1, -good};
  return kEdges[in.byte() % (sizeof kEdges / sizeof kEdges[0])];
}

// `good`, or rarely a value below `min` that validation must reject. Used for
// sizes: a size above what was allocated is the caller's contract, not a
// host-checkable error, so the targets never pass one.
inline int64_t maybe_below(Input& in, int64_t good, int64_t min) {
  if (!in.rarely() || min <= INT64_MIN / 2) return good;  // nothing sensible below a huge negative minimum
  switch (in.byte() % 4) {
    case 0: return min - 1;
    case 1: return min - 1 - in.byte();
    case 2: return INT64_MIN;
    default: return min - (int64_t{1} << 40);
  }
}

// Index element type: int32/int64, rarely a value that is neither.
inline IndexType pick_index_type(Input& in) {
  if (in.rarely(32)) return static_cast<IndexType>(in.flag() ? 0 : 3);
  return in.flag() ? IndexType::kInt64 : IndexType::kInt32;
}
inline bool valid_index_type(IndexType t) { return t == IndexType::kInt32 || t == IndexType::kInt64; }

// Host array of indices of the given type (an invalid type is stored as int32,
// so a library that reads it as int64 overruns the allocation and ASan says so).
class IndexArray {
 public:
  IndexArray(IndexType type, const std::vector<int64_t>& values) : type_(type) {
    const size_t width = type == IndexType::kInt64 ? 8 : 4;
    bytes_.resize(values.size() * width + (values.empty() ? 1 : 0));  // never a null data()
    for (size_t i = 0; i < values.size(); ++i) {
      if (width == 8) std::memcpy(&bytes_[i * 8], &values[i], 8);
      else {
        const int32_t v = static_cast<int32_t>(values[i]);
        std::memcpy(&bytes_[i * 4], &v, 4);
      }
    }
  }
  Indices view(bool null = false) const { return null ? Indices(nullptr, type_) : Indices(bytes_.data(), type_); }

 private:
  IndexType type_;
  std::vector<uint8_t> bytes_;
};

// Where the op runs: the CPU with 0..4 threads, or rarely kCuda, which a
// CPU-only build must refuse with kUnsupported (the fuzz build is CPU-only).
struct Where {
  Exec exec;
  bool backend_ok;
};
// Rarely a negative thread count, which every op must reject.
inline Where pick_exec(Input& in) {
  if (in.rarely(32) && !cuda_built()) return {Exec::cuda(), false};
  if (in.rarely(64)) return {Exec::cpu(-1 - in.byte()), false};
  return {Exec::cpu(static_cast<int>(in.byte() % 5)), true};
}

// Runs `op` and checks its outcome against `valid`. Returns true when it ran.
template <class Fn>
bool run_checked(bool valid, Fn&& op) {
  try {
    op();
  } catch (const Error& e) {
    if (valid) fail("rejected a valid call:", e.what());
    return false;
  }
  if (!valid) fail("accepted a call whose host-visible arguments are invalid");
  return true;
}

inline void expect_equal(const void* actual, const void* expected, size_t bytes, const char* what) {
  if (bytes != 0 && std::memcmp(actual, expected, bytes) != 0) fail("output differs from the expected bytes:", what);
}
template <class T>
void expect_equal(const std::vector<T>& actual, const std::vector<T>& expected, const char* what) {
  if (actual.size() != expected.size()) fail("size mismatch:", what);
  expect_equal(actual.data(), expected.data(), actual.size() * sizeof(T), what);
}

// Bytes derived from the input (or a fixed pattern once it runs out).
// memcpy of a vector's bytes; a no-op for empty ones (memcpy with a null
// source is undefined even for 0 bytes).
template <class T>
void copy_into(T* dst, const std::vector<uint8_t>& src) {
  if (!src.empty()) std::memcpy(dst, src.data(), src.size());
}

inline std::vector<uint8_t> bytes_from(Input& in, size_t n) {
  std::vector<uint8_t> v(n);
  const uint8_t seed = in.byte();
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed * 131 + i * 29 + (i >> 7));
  // Overwrite a few positions with raw input so special values (NaN, Inf) appear.
  for (int k = 0, m = in.byte() % 16; k < m && n > 0; ++k) v[in.u16() % n] = in.byte();
  return v;
}

}  // namespace fuzz
}  // namespace nsa
