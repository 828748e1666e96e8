// Per-row math of topk_transform shared by the CPU backend and the CUDA
// kernels, so both decide windows, order scores and transform indices the
// same way by construction. Header-only, host and device. The reference
// (src/reference/topk.cpp) is written independently of this file.
#pragma once

#include <cstdint>

#include "nsa/detail/quant.h"  // NSA_HOST_DEVICE
#include "nsa/topk.h"

namespace nsa {
namespace detail {

// Order-preserving uint32 key of a float's bits: a > b as scores (with the
// NaN and signed-zero rules of nsa/topk.h) iff key(a) > key(b). -0 is folded
// onto +0 so the two tie.
NSA_HOST_DEVICE uint32_t topk_key(uint32_t bits) {
  // 2^31 plus the magnitude, negated for a negative score: -0 and +0 both
  // give 2^31, and keys run from 1 (the negative NaN of largest magnitude)
  // to 2^32 - 1. No branch: an arithmetic shift spreads the sign s, and
  // (m ^ s) - s negates m when s is all ones. Three instructions on sm_90
  // (shift, LOP3, IADD3) where ~bits / bits | sign with a separate fold of
  // -0 took five; the order is the same (every negative key is one higher:
  // compared with the old form on all 2^32 inputs by a one-off program; the
  // test TopkKey.OrdersScoresAsTheContractSays checks the order on a sample).
  const uint32_t s = static_cast<uint32_t>(static_cast<int32_t>(bits) >> 31);
  return 0x80000000u + (((bits & 0x7fffffffu) ^ s) - s);
}
// A bf16 score is the upper half of the fp32 with the same value.
NSA_HOST_DEVICE uint32_t topk_bits(float x) { return float_bits(x); }
NSA_HOST_DEVICE uint32_t topk_bits(uint16_t bf16) { return static_cast<uint32_t>(bf16) << 16; }

// Element i of an int32/int64 index array (host or device memory).
NSA_HOST_DEVICE int64_t topk_index_at(const Indices& v, int64_t i) {
  return v.type == IndexType::kInt32 ? static_cast<int64_t>(static_cast<const int32_t*>(v.data)[i])
                                     : static_cast<const int64_t*>(v.data)[i];
}

NSA_HOST_DEVICE int64_t topk_clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Row r's window [start, start + len) within [0, width): lengths are clamped
// (negative -> 0, past the width -> cut), never trusted.
struct TopkWindow {
  int64_t start;
  int64_t len;
};
NSA_HOST_DEVICE TopkWindow topk_window(const TopkArgs& a, int64_t r) {
  int64_t start = 0, len = 0;
  if (a.length_form == TopkLengths::kPerRequest) {
    const int64_t n = a.rows_per_request;
    const int64_t b = r / n;
    // L_b clamped first, so that any int64 value is safe: below 0 or above
    // width + n the row's clamped length is 0 or the width either way.
    len = topk_clamp(topk_index_at(a.lengths, b), 0, a.width + n) - n + 1 + (r - b * n);
  } else {
    len = topk_index_at(a.lengths, r);
    if (a.row_starts.data != nullptr) start = topk_clamp(topk_index_at(a.row_starts, r), 0, a.width);
  }
  return {start, topk_clamp(len, 0, a.width - start)};
}

// The table row of score row r (see TopkArgs::row_to_request).
NSA_HOST_DEVICE int64_t topk_request(const TopkArgs& a, int64_t r) {
  if (a.row_to_request.data != nullptr) return topk_index_at(a.row_to_request, r);
  return a.length_form == TopkLengths::kPerRequest ? r / a.rows_per_request : r;
}

constexpr int64_t kTopkInt32Max = 2147483647;

// The paged-64 output of raw index x from its table entry e (e < 0, or a
// page whose tokens pass int32, gives -1).
NSA_HOST_DEVICE int32_t topk_paged_result(int64_t e, int64_t x) {
  if (e < 0 || e > (kTopkInt32Max >> 6)) return -1;
  return static_cast<int32_t>(e * 64 + (x & 63));
}

// Output of raw index x (0 <= x < len) of row r whose request is q; -1 when
// the result cannot be a valid index (see TopkArgs).
NSA_HOST_DEVICE int32_t topk_apply_transform(const TopkArgs& a, int64_t r, int64_t q, int64_t x) {
  switch (a.transform) {
    case TopkTransform::kRaw: return static_cast<int32_t>(x);
    case TopkTransform::kRaggedOffset: {
      const int64_t off = topk_index_at(a.offsets, r);
      if (off > kTopkInt32Max) return -1;
      const int64_t v = off + x;
      return v < 0 || v > kTopkInt32Max ? -1 : static_cast<int32_t>(v);
    }
    default: {  // table transforms
      const bool paged = a.transform == TopkTransform::kPaged64;
      const int64_t col = paged ? (x >> 6) : x;
      if (q < 0 || q >= a.table_rows || col >= a.table_cols) return -1;
      const int64_t e = topk_index_at(a.table, q * a.table_ld + col);
      if (paged) return topk_paged_result(e, x);
      return e < 0 || e > kTopkInt32Max ? -1 : static_cast<int32_t>(e);
    }
  }
}

}  // namespace detail
}  // namespace nsa
