// The quantization math of nsa/detail/quant.h (used by both backends) against
// the independent reference conversion, and against CUDA's own host-side
// e4m3 conversion when the CUDA headers are available.
#include <cmath>
#include <cstring>

#include "nsa/detail/quant.h"
#include "reference/index_cache.h"
#include "test_util.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_fp8.h>
#endif

namespace nsa {
namespace test {
namespace {

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(QuantMath, E4m3ConversionMatchesReferenceOnEveryBf16Value) {
  // Every bf16 bit pattern (as an fp32 value) and its scaled neighbours.
  for (uint32_t hi = 0; hi < 0x10000u; ++hi) {
    for (uint32_t lo : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      const float x = from_bits((hi << 16) | lo);
      ASSERT_EQ(detail::float_to_e4m3_satfinite(x), reference::float_to_e4m3(x))
          << "x bits " << std::hex << ((hi << 16) | lo);
    }
  }
}

TEST(QuantMath, E4m3ConversionMatchesReferenceOnRandomFloats) {
  auto rng = make_rng(20);
  std::uniform_real_distribution<float> mag(-12.0f, 9.5f);
  for (int i = 0; i < 2000000; ++i) {
    const float x = std::exp2(mag(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
    ASSERT_EQ(detail::float_to_e4m3_satfinite(x), reference::float_to_e4m3(x)) << x;
  }
}

TEST(QuantMath, E4m3ExactTiesRoundToEven) {
  // Midpoints between consecutive e4m3 codes must go to the even code.
  for (int c = 0; c < 126; ++c) {
    const float a = reference::e4m3_to_float(static_cast<uint8_t>(c));
    const float b = reference::e4m3_to_float(static_cast<uint8_t>(c + 1));
    const float mid = 0.5f * (a + b);  // exact: both are short binary fractions
    const uint8_t even = static_cast<uint8_t>(c % 2 == 0 ? c : c + 1);
    EXPECT_EQ(detail::float_to_e4m3_satfinite(mid), even) << "between codes " << c << " and " << c + 1;
    EXPECT_EQ(detail::float_to_e4m3_satfinite(-mid), 0x80 | even);
  }
  EXPECT_EQ(detail::float_to_e4m3_satfinite(464.0f), 0x7e);  // would round past 448: saturates
  EXPECT_EQ(detail::float_to_e4m3_satfinite(INFINITY), 0x7e);
  EXPECT_EQ(detail::float_to_e4m3_satfinite(-INFINITY), 0xfe);
  EXPECT_EQ(detail::float_to_e4m3_satfinite(NAN), 0x7f);
  EXPECT_EQ(detail::float_to_e4m3_satfinite(-NAN), 0xff);
  EXPECT_EQ(detail::float_to_e4m3_satfinite(std::ldexp(1.0f, -10)), 0x00);  // half of the smallest subnormal: tie to 0
  EXPECT_EQ(detail::float_to_e4m3_satfinite(std::ldexp(3.0f, -10)), 0x02);  // 1.5 units: tie to 2
}

#if defined(NSA_WITH_CUDA)
TEST(QuantMath, E4m3ConversionMatchesCudaHostConversion) {
  // CUDA's __nv_cvt_float_to_fp8 (host path) with saturation, RNE, on finite values.
  auto rng = make_rng(21);
  std::uniform_real_distribution<float> mag(-12.0f, 9.5f);
  for (int i = 0; i < 1000000; ++i) {
    const float x = std::exp2(mag(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
    const uint8_t cuda = static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
    ASSERT_EQ(detail::float_to_e4m3_satfinite(x), cuda) << x;
  }
}
#endif

// Every fp16 bit pattern against the arithmetic definition (sign, 2^(e-15) * 1.m, subnormals m * 2^-24).
TEST(QuantMath, Fp16ConversionMatchesDefinitionOnEveryValue) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const float got = detail::fp16_bits_to_float(static_cast<uint16_t>(h));
    ASSERT_EQ(std::signbit(got), (h & 0x8000u) != 0) << std::hex << h;
    if (e == 31) {
      ASSERT_TRUE(m ? std::isnan(got) : std::isinf(got)) << std::hex << h;
      continue;
    }
    const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -24) : std::ldexp(1.0f + m / 1024.0f, e - 15);
    ASSERT_EQ(std::fabs(got), mag) << std::hex << h;
  }
}

// The divide formula: IEEE x / s, NaN keeps its sign, saturation as the multiply formula.
TEST(QuantMath, DivideFormulaMatchesReference) {
  auto rng = make_rng(23);
  std::uniform_real_distribution<float> mag(-12.0f, 9.5f);
  for (int i = 0; i < 200000; ++i) {
    const float s = std::exp2(mag(rng)) / 448.0f;
    const float x = std::exp2(mag(rng)) * ((rng() & 1) ? -1.0f : 1.0f);
    ASSERT_EQ(detail::quantize_e4m3_divide(x, s), reference::float_to_e4m3(x / s)) << x << " / " << s;
  }
  EXPECT_EQ(detail::quantize_e4m3_divide(-NAN, 1.0f), 0xff);
  EXPECT_EQ(detail::quantize_e4m3_divide(INFINITY, 1.0f), 0x7e);
  EXPECT_EQ(detail::quantize_e4m3_divide(1e30f, 1e-10f), 0x7e);
}

TEST(QuantMath, ScaleMatchesReferenceAndSpecRules) {
  auto rng = make_rng(22);
  std::uniform_real_distribution<float> mag(-20.0f, 20.0f);
  for (int i = 0; i < 200000; ++i) {
    const float amax = std::exp2(mag(rng));
    EXPECT_EQ(detail::scale_from_amax(amax, false), reference::quant_scale(amax, ScaleMode::kFp32));
    EXPECT_EQ(detail::scale_from_amax(amax, true), reference::quant_scale(amax, ScaleMode::kUe8m0));
  }
  // The fragile log2 case of the spec: s = 2^-10 * (1 + 2^-23) must round up to 2^-9.
  const float s = from_bits(0x3a800001u);
  EXPECT_EQ(detail::scale_from_amax(s * 448.0f, true) >= s, true);
  EXPECT_EQ(detail::scale_from_amax(0.0f, true), std::ldexp(1.0f, -22));  // floor 1e-4 -> 2^-22
  EXPECT_EQ(detail::scale_from_amax(0.0f, false), 1e-4f / 448.0f);
  EXPECT_EQ(detail::scale_from_amax(448.0f, true), 1.0f);  // powers of two stay
}

}  // namespace
}  // namespace test
}  // namespace nsa
