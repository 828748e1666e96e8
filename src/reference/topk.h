// Reference implementation of topk_transform: per row, every visible index
// sorted by (score descending, index ascending) with the documented score
// order, the first min(len, K) kept, sorted ascending, transformed. Plain
// loops and std::sort, host memory only, no validation, no speed; written
// without nsa/detail/topk_math.h so the backends are checked against an
// independent reading of the spec (docs/spec/topk.md).
#pragma once

#include <cstdint>
#include <vector>

#include "nsa/topk.h"

namespace nsa {
namespace reference {

// True when score a ranks above score b (fp32 bits): floats by value with
// -0 == +0; +NaN above +inf, -NaN below -inf, NaNs among themselves by bits.
bool topk_score_above(uint32_t a_bits, uint32_t b_bits);

// The selected raw indices of row r, ascending (at most K of them).
std::vector<int64_t> topk_row(const TopkArgs& args, int64_t r);

// Writes slots [0, k) of every output row (and of out_raw when given): the
// selected indices of topk_row in ascending order, then -1.
void topk_transform(const TopkArgs& args);

}  // namespace reference
}  // namespace nsa
