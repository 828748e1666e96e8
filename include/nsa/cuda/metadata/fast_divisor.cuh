// Division by a divisor fixed per launch (or per chunk of a kernel's walk).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace nsa {
namespace kernels {

// n / d for any n < 2^31 with one multiply-high and a shift, for a divisor
// fixed per launch: the host picks the multiplier (round-up method of
// Granlund and Montgomery, "Division by invariant integers using
// multiplication", 1994), so the kernel's item math does not run the ~20
// dependent instructions of a hardware-less 32-bit division. 1 <= d < 2^31.
// A kernel may also make one itself (one 64-bit division), for a divisor
// that is known only on the device and used many times.
struct FastDivisor {
  uint32_t multiplier = 0;
  uint32_t shift = 0;

  __host__ __device__ static FastDivisor make(uint32_t d) {
    FastDivisor f;
#ifdef __CUDA_ARCH__
    f.shift = d <= 1 ? 0u : 32u - static_cast<uint32_t>(__clz(d - 1));  // ceil(log2 d)
#else
    while ((uint64_t{1} << f.shift) < d) ++f.shift;  // shift = ceil(log2 d)
#endif
    f.multiplier = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << f.shift) - d)) / d + 1);
    return f;
  }
  // (mulhi(n, m) + n) >> s; n < 2^31 keeps the sum below 2^32.
  __host__ __device__ __forceinline__ uint32_t div(uint32_t n) const {
#ifdef __CUDA_ARCH__
    const uint32_t hi = __umulhi(n, multiplier);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(n) * multiplier) >> 32);
#endif
    return (hi + n) >> shift;
  }
};

}  // namespace kernels
}  // namespace nsa
