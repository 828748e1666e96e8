// Small pieces of paged_mqa_logits shared by the CPU backend and the CUDA
// kernel (host and device), so both mask the same columns by construction.
#pragma once

#include <cstdint>

#include "nsa/detail/quant.h"

namespace nsa {
namespace detail {

// Columns of one request covered by one CUDA block (the grid is 1-D over
// (request, chunk of this many columns)); the host checks the grid size.
constexpr int64_t kIndexerCtaColumns = 512;

// Visible tokens of query row j of a request with L tokens and N rows: the
// MTP causal rule max(0, L - N + 1 + j), cut at the logits width.
NSA_HOST_DEVICE int64_t indexer_row_len(int64_t L, int64_t n, int64_t j, int64_t width) {
  int64_t len = L - n + 1 + j;
  len = len < 0 ? 0 : len;
  return len < width ? len : width;
}

// A table entry names a readable page (else its tokens are masked to -inf).
// Callers check the table column against table_cols before loading the entry.
NSA_HOST_DEVICE bool indexer_page_ok(int64_t entry, int64_t num_pages) { return entry >= 0 && entry < num_pages; }

// fp8 e4m3fn -> fp32, exact (NaN codes 0x7F/0xFF decode to NaN).
NSA_HOST_DEVICE float e4m3_value(uint8_t code) {
  const uint32_t sign = static_cast<uint32_t>(code & 0x80) << 24;
  const uint32_t exp = (code >> 3) & 0xF, man = code & 0x7;
  if ((code & 0x7F) == 0x7F) return bits_float(sign | 0x7fc00000u);
  if (exp == 0) {  // subnormal: man * 2^-9
    const float v = static_cast<float>(man) * (1.0f / 512.0f);
    return sign ? -v : v;
  }
  return bits_float(sign | ((exp + 120u) << 23) | (man << 20));
}

}  // namespace detail
}  // namespace nsa
