// Reference implementation of paged_mqa_logits: plain loops over rows,
// tokens and heads, host memory only, no validation, no speed. Written
// without nsa/detail/indexer_math.h so the backends are checked against an
// independent reading of the spec (docs/spec/indexer.md).
#pragma once

#include <cstdint>

#include "nsa/indexer.h"

namespace nsa {
namespace reference {

// The logit of score row r (= b * N + j) and token t < its visible length,
// or -inf when the token's page cannot be read; the fixed head-sum order of
// nsa/indexer.h.
float paged_mqa_logit(const PagedMqaLogitsArgs& args, int64_t r, int64_t t);

// The same with K dequantized (fp8 * scale) before an fp64 dot product and
// an fp64 head sum: the formula DeepGEMM's tests compare against, for the
// calc_diff check of the tensor-core backend.
double paged_mqa_logit_dequantized(const PagedMqaLogitsArgs& args, int64_t r, int64_t t);

// The logit's magnitude: sum over heads of |weight| x sum over dims of
// |q x k x scale| (fp64), the scale of the rounding error any summation
// order can make (the condition of the two nested sums). 0 for an
// unreadable page.
double paged_mqa_logit_magnitude(const PagedMqaLogitsArgs& args, int64_t r, int64_t t);

// Writes columns [0, width) of every logits row.
void paged_mqa_logits(const PagedMqaLogitsArgs& args);

// DeepGEMM's calc_diff: 1 - 2 sum(x y) / sum(x x + y y) over the finite pairs
// (both sides -inf counts as agreement; one side -inf returns 1).
double calc_diff(const float* x, const double* y, int64_t n);

}  // namespace reference
}  // namespace nsa
