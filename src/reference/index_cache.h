// Reference implementation of the index-cache ops: plain loops over tokens and
// bytes that follow the spec (docs/spec/index-cache.md) word by word. Host memory only,
// no validation, no speed. Tests, `nsa selftest` and the benchmarks' output
// checks compare every backend against these.
#pragma once

#include <cstdint>

#include "nsa/index_cache.h"

namespace nsa {
namespace reference {

// fp32 -> e4m3fn by searching the 127 finite non-negative code values for the
// nearest one (ties to the even code), saturating at 448; NaN -> 0x7F | sign.
// Deliberately independent of the bit tricks in nsa/detail/quant.h.
uint8_t float_to_e4m3(float x);
float e4m3_to_float(uint8_t code);
float quant_scale(float amax, ScaleMode mode);

void quantize_and_store_k(IndexCache cache, const void* k, int64_t n, int64_t k_ld, const int64_t* slots,
                          ScaleMode mode, KDtype dtype = KDtype::kBf16);
void store_k_and_s(IndexCache cache, const uint8_t* k, int64_t n, int64_t k_ld, const float* scale,
                   const int64_t* slots);
void gather_k(ConstIndexCache cache, int64_t length, Indices page_ids, uint8_t* out_k);
void gather_s(ConstIndexCache cache, int64_t length, Indices page_ids, float* out_s);
void gather_k_and_s(ConstIndexCache cache, const PagedBatch& batch, uint8_t* out_k, float* out_s);

}  // namespace reference
}  // namespace nsa
