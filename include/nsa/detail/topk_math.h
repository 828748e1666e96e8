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
  if (bits == 0x80000000u) bits = 0u;
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
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

// The transform of raw index x (0 <= x < len) of row r whose request is q,
// in two steps so that a kernel can issue the memory reads of many indices
// before it uses any of them: topk_transform_operand reads the one value the
// transform needs (the table entry, the row's offset; kTopkNoOperand where
// it reads nothing or the entry is out of the table), topk_transform_result
// makes the output from it (-1 when the result cannot be a valid index, see
// TopkArgs).
constexpr int64_t kTopkNoOperand = INT64_MIN;

// The element of a.table a table transform reads for raw index x of
// request q, -1 where that is outside the table (the output is then -1).
NSA_HOST_DEVICE int64_t topk_table_position(const TopkArgs& a, int64_t q, int64_t x) {
  const int64_t col = a.transform == TopkTransform::kPaged64 ? (x >> 6) : x;
  if (q < 0 || q >= a.table_rows || col >= a.table_cols) return -1;
  return q * a.table_ld + col;
}

NSA_HOST_DEVICE int64_t topk_transform_operand(const TopkArgs& a, int64_t r, int64_t q, int64_t x) {
  switch (a.transform) {
    case TopkTransform::kRaw: return kTopkNoOperand;
    case TopkTransform::kRaggedOffset: return topk_index_at(a.offsets, r);
    default: {  // table transforms
      const int64_t at = topk_table_position(a, q, x);
      return at < 0 ? kTopkNoOperand : topk_index_at(a.table, at);
    }
  }
}

NSA_HOST_DEVICE int32_t topk_transform_result(const TopkArgs& a, int64_t x, int64_t operand) {
  switch (a.transform) {
    case TopkTransform::kRaw: return static_cast<int32_t>(x);
    case TopkTransform::kRaggedOffset: {
      if (operand > kTopkInt32Max) return -1;
      const int64_t v = operand + x;
      return v < 0 || v > kTopkInt32Max ? -1 : static_cast<int32_t>(v);
    }
    default: {  // table transforms: an entry outside the table or negative gives -1
      if (operand < 0) return -1;
      if (a.transform == TopkTransform::kTokenTable)
        return operand > kTopkInt32Max ? -1 : static_cast<int32_t>(operand);
      if (operand > (kTopkInt32Max >> 6)) return -1;
      return static_cast<int32_t>(operand * 64 + (x & 63));
    }
  }
}

// Both steps at once.
NSA_HOST_DEVICE int32_t topk_apply_transform(const TopkArgs& a, int64_t r, int64_t q, int64_t x) {
  return topk_transform_result(a, x, topk_transform_operand(a, r, q, x));
}

}  // namespace detail
}  // namespace nsa
