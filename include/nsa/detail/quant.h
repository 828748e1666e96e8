// Quantization math shared by the CPU backend and the CUDA kernels, so both
// produce the same bits by construction (spec: docs/spec/index-cache.md §3). Header-
// only, host and device. Integer bit manipulation instead of the hardware
// cvt instruction keeps the result identical on every backend, including the
// documented NaN/Inf behaviour.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define NSA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NSA_HOST_DEVICE inline
#endif

namespace nsa {
namespace detail {

constexpr float kFp8E4m3Max = 448.0f;
constexpr float kAmaxFloor = 1e-4f;

NSA_HOST_DEVICE uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
#endif
}

NSA_HOST_DEVICE float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
#endif
}

// bf16 -> fp32 is exact: the bf16 bits are the top half of the fp32 bits.
NSA_HOST_DEVICE float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// fp16 -> fp32 is exact too: re-bias the exponent (15 -> 127); subnormals are
// m * 2^-24 (exact in fp32); Inf and NaN keep their sign and payload.
NSA_HOST_DEVICE float fp16_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  if (exp == 0) {
    const float mag = static_cast<float>(mant) * 5.9604644775390625e-8f;  // 2^-24
    return bits_float(float_bits(mag) | sign);
  }
  if (exp == 31) return bits_float(sign | 0x7f800000u | (mant << 13));
  return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

// |x| if x is finite, else 0: NaN and Inf never contribute to amax.
NSA_HOST_DEVICE float finite_abs(float x) {
  const uint32_t a = float_bits(x) & 0x7fffffffu;
  return a < 0x7f800000u ? bits_float(a) : 0.0f;
}

// fp32 -> fp8 e4m3fn, round to nearest even, saturating to +-448 (Inf too);
// NaN -> 0x7F with the sign kept.
NSA_HOST_DEVICE uint8_t float_to_e4m3_satfinite(float x) {
  const uint32_t bits = float_bits(x);
  const uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) return sign | 0x7f;   // NaN
  if (abs_bits >= 0x43e00000u) return sign | 0x7e;  // >= 448 (or Inf): saturate
  if (abs_bits < 0x3c800000u) {                     // < 2^-6: e4m3 subnormal range
    // Units of 2^-9; the scaling is exact, the rounding is ties-to-even.
    const float units = bits_float(abs_bits) * 512.0f;
    uint32_t q = static_cast<uint32_t>(units);         // truncation (units < 8)
    const float rem = units - static_cast<float>(q);   // exact
    if (rem > 0.5f || (rem == 0.5f && (q & 1u))) ++q;  // q == 8 is the min normal, code 0x08
    return sign | static_cast<uint8_t>(q);
  }
  // Normal: keep 3 mantissa bits with round-to-nearest-even on bit 20, then
  // re-bias the exponent from 127 to 7 ((127 - 7) << 3 == 960).
  const uint32_t rounded = (abs_bits + 0x7ffffu + ((abs_bits >> 20) & 1u)) >> 20;
  return sign | static_cast<uint8_t>(rounded - 960u);
}

// One element: x * inv_scale as e4m3. NaN is handled before the multiply:
// the GPU's FMUL returns a canonical (positive) NaN, x86 keeps the input's
// sign, and we promise the sign is kept on every backend.
NSA_HOST_DEVICE uint8_t quantize_e4m3(float x, float inv_scale) {
  const uint32_t bits = float_bits(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint8_t>(((bits >> 24) & 0x80u) | 0x7fu);
  return float_to_e4m3_satfinite(x * inv_scale);
}

// One element: x / scale as e4m3 (the kFp32Divide formula; IEEE division,
// also on the GPU whatever the compiler's precision flags).
NSA_HOST_DEVICE uint8_t quantize_e4m3_divide(float x, float scale) {
  const uint32_t bits = float_bits(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint8_t>(((bits >> 24) & 0x80u) | 0x7fu);
#if defined(__CUDA_ARCH__)
  return float_to_e4m3_satfinite(__fdiv_rn(x, scale));
#else
  return float_to_e4m3_satfinite(x / scale);
#endif
}

// Per-token scale from the finite amax of its 128 values (spec §3).
NSA_HOST_DEVICE float scale_from_amax(float amax, bool ue8m0) {
  const float floored = amax > kAmaxFloor ? amax : kAmaxFloor;
  float s = floored / kFp8E4m3Max;
  if (ue8m0) {
    // Round up to a power of two on the bits: a fraction > 0 means the next binade.
    const uint32_t b = float_bits(s);
    if (b & 0x007fffffu) s = bits_float((b & 0x7f800000u) + 0x00800000u);
  }
  return s;
}

}  // namespace detail
}  // namespace nsa
