// The header-only kernels of include/nsa/cuda/ are usable from another
// translation unit than the library's own (the library includes them too):
// this file only links if every kernel in them is ODR-safe (templates or
// inline), and it runs two launchers directly.
#include <gtest/gtest.h>

#include "buffer.h"
#include "nsa/cuda/index_cache.cuh"
#include "nsa/cuda/metadata.cuh"

namespace nsa {
namespace test {
namespace {

TEST(CudaHeaders, LaunchersUsableFromAnotherTranslationUnit_cuda) {
  if (!support::cuda_device_available()) GTEST_SKIP() << "no CUDA device: GPU test not run";
  support::Buffer pool(Backend::kCuda, 8448), out(Backend::kCuda, 8448);
  pool.fill(0x3c);
  out.fill(0x00);  // poisoned: the launcher must write the K bytes and nothing past them
  std::vector<int32_t> ids = {0};
  support::Buffer ids_dev(Backend::kCuda, 4);
  ids_dev.upload(ids);
  kernels::GatherParams<int32_t, int64_t> p{pool.as<uint8_t>(), ids_dev.as<int32_t>(), 1, 1, nullptr, 64, 1,
                                            out.as<uint8_t>(), nullptr};
  ASSERT_EQ((kernels::invoke_paged_gather<kernels::LengthForm::kHost, true, false>(p, 1, 1, nullptr)), cudaSuccess);
  kernels::CopyParams cp{};
  ASSERT_EQ(kernels::invoke_copy_metadata(cp, 1, nullptr), cudaSuccess);  // no jobs: no launch
  support::synchronize(Backend::kCuda);
  const auto bytes = out.to_host();
  for (int i = 0; i < 8448; ++i) ASSERT_EQ(bytes[i], i < 8192 ? 0x3c : 0x00) << i;
}

}  // namespace
}  // namespace test
}  // namespace nsa
