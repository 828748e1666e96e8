// Shared helpers of the C++ tests: backends to run, random data, poisoning.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "buffer.h"
#include "host_data.h"
#include "nsa/common.h"

namespace nsa {
// Readable test names in ctest ("GetParam() = cuda" instead of raw bytes).
inline void PrintTo(Backend b, std::ostream* os) { *os << to_string(b); }

namespace test {

// Every op test runs once per backend; the CUDA instance skips (visibly) without a device.
inline std::vector<Backend> all_backends() { return {Backend::kCpu, Backend::kCuda}; }
inline std::string backend_name(const ::testing::TestParamInfo<Backend>& info) { return to_string(info.param); }

#define NSA_SKIP_WITHOUT_BACKEND(backend)                                               \
  do {                                                                                  \
    if ((backend) == ::nsa::Backend::kCuda && !::nsa::support::cuda_device_available()) \
      GTEST_SKIP() << "no CUDA device (or CUDA backend not built): GPU test not run";   \
  } while (0)

inline Exec exec_for(Backend b) { return b == Backend::kCpu ? Exec::cpu() : Exec::cuda(); }

// A fresh seed per test run, printed so a failure can be replayed (NSA_TEST_SEED).
inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("NSA_TEST_SEED");
    const uint64_t s = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
    std::printf("[ nsa seed ] NSA_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

inline std::mt19937_64 make_rng(uint64_t salt = 0) {
  return std::mt19937_64(test_seed() * 0x9E3779B97F4A7C15ull + salt);
}

using support::random_bf16;
using support::random_bytes;
using support::random_ints;
using support::to_backend;

// Index of the first differing byte, or -1.
inline int64_t first_mismatch(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  return -1;
}

#define NSA_EXPECT_BYTES_EQ(actual, expected)                                                       \
  do {                                                                                              \
    const int64_t nsa_mm_ = ::nsa::test::first_mismatch((actual), (expected));                      \
    EXPECT_EQ(nsa_mm_, -1) << "first differing byte at " << nsa_mm_ << " of " << (expected).size(); \
  } while (0)

constexpr uint8_t kPoison = 0xA5;

// Every failed check throws nsa::Error naming the argument (and, for invalid
// arguments, what was expected and what was given), before anything is written.
template <class Fn>
void expect_invalid(Fn&& fn, const std::string& arg, ErrorCode code = ErrorCode::kInvalidArgument) {
  try {
    fn();
    ADD_FAILURE() << "expected nsa::Error for argument " << arg;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    EXPECT_NE(std::string(e.what()).find(arg), std::string::npos) << e.what();
    if (code == ErrorCode::kInvalidArgument) {
      EXPECT_NE(std::string(e.what()).find("expected"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("got"), std::string::npos) << e.what();
    }
  }
}

// Checked mode on CUDA: a device DeviceError and the checked exec that records into it.
struct CheckedCuda {
  support::Buffer error{Backend::kCuda, sizeof(DeviceError)};
  Exec exec = Exec::cuda().with_checks(error.as<DeviceError>());
  CheckedCuda() { reset_device_error(exec); }
  DeviceError read() const { return read_device_error(exec); }
};

// The DeviceError records one violation: `op` found `value` in `arg` at `row`.
inline void expect_device_error(const DeviceError& e, OpId op, ArgId arg, int64_t row, int64_t value) {
  EXPECT_EQ(e.code, 1) << describe(e);
  EXPECT_EQ(e.op, static_cast<int32_t>(op)) << describe(e);
  EXPECT_EQ(e.arg, static_cast<int32_t>(arg)) << describe(e);
  EXPECT_EQ(e.row, row) << describe(e);
  EXPECT_EQ(e.value, value) << describe(e);
}

// Checked mode on the CPU: `fn` throws kInvalidArgument whose message names the
// op, the argument and the offending value.
template <class Fn>
void expect_rejected(Fn&& fn, const std::string& op, const std::string& arg, const std::string& got) {
  try {
    fn();
    ADD_FAILURE() << "expected nsa::Error for " << arg << " = " << got;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << what;
    EXPECT_NE(what.find("nsa::" + op + ":"), std::string::npos) << what;
    EXPECT_NE(what.find("argument '" + arg + "'"), std::string::npos) << what;
    EXPECT_NE(what.find("got " + got), std::string::npos) << what;
  }
}

}  // namespace test
}  // namespace nsa
