// Determinism checks shared by the op families' tests: an op, given identical
// inputs, writes bit-identical output buffers on every run, whatever the CPU
// thread count (1, 4, the default) and whichever CUDA stream it is enqueued on
// (the legacy default stream or a created non-blocking one). Whole buffers are
// compared, poison included, so a byte written on one run and not on another
// also shows.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace test {

using Outputs = std::vector<std::vector<uint8_t>>;
// Runs one op on fresh buffers built from fixed host inputs; returns its outputs.
using Op = std::function<Outputs(Backend, const Exec&)>;

// The ways an op may be run on `b`. CUDA: the legacy default stream and a
// created non-blocking stream (owned by this object).
class Execs {
 public:
  explicit Execs(Backend b) {
    if (b == Backend::kCpu) {
      list_ = {Exec::cpu(1), Exec::cpu(4), Exec::cpu()};
      names_ = {"cpu(1)", "cpu(4)", "cpu(default)"};
      return;
    }
#if defined(NSA_WITH_CUDA)
    if (cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking) != cudaSuccess) stream_ = nullptr;
    list_ = {Exec::cuda(), Exec::cuda(stream_)};
    names_ = {"cuda(default stream)", "cuda(non-blocking stream)"};
#endif
  }
  ~Execs() {
#if defined(NSA_WITH_CUDA)
    if (stream_) (void)cudaStreamDestroy(stream_);
#endif
  }
  Execs(const Execs&) = delete;
  Execs& operator=(const Execs&) = delete;
  const std::vector<Exec>& list() const { return list_; }
  const std::string& name(size_t i) const { return names_[i]; }

 private:
  std::vector<Exec> list_;
  std::vector<std::string> names_;
#if defined(NSA_WITH_CUDA)
  cudaStream_t stream_ = nullptr;
#endif
};

// Every exec, three times each (interleaved), must reproduce the first run.
inline void expect_deterministic(Backend b, const Op& op) {
  Execs execs(b);
  Outputs first;
  bool have_first = false;
  for (int repeat = 0; repeat < 3; ++repeat) {
    for (size_t e = 0; e < execs.list().size(); ++e) {
      SCOPED_TRACE(::testing::Message() << execs.name(e) << ", run " << repeat);
      Outputs out = op(b, execs.list()[e]);
      if (!have_first) {
        first = std::move(out);
        have_first = true;
        continue;
      }
      ASSERT_EQ(out.size(), first.size());
      for (size_t i = 0; i < out.size(); ++i) {
        SCOPED_TRACE(::testing::Message() << "output " << i);
        NSA_EXPECT_BYTES_EQ(out[i], first[i]);
      }
    }
  }
}

// Make sure the buffers written with synchronous copies are visible to a
// kernel on a non-blocking stream, and the kernel is done before we read.
inline void fence(Backend b) { support::synchronize(b); }

// The determinism tests of an op family: TEST_P(DeterminismTest, ...) in its
// test file, instantiated there for every backend (the CUDA one skips without a device).
class DeterminismTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { NSA_SKIP_WITHOUT_BACKEND(GetParam()); }
};

}  // namespace test
}  // namespace nsa
