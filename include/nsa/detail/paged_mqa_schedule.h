// DeepGEMM's paged-MQA schedule (docs/spec/metadata.md §10): the pieces the
// CPU backend and the CUDA kernel of build_metadata share, host and device,
// so both split the work the same way by construction. The plain reference
// (src/reference/metadata.cpp) restates the layout literally instead.
//
// Request b has u_b = ceil(L_b / 256) work units of 4 KV blocks, times A
// next_n atoms; T = A * sum(u_b). SM i of S starts at unit start(i) and the
// units [start(i), start(i + 1)) are its share; start(S) = T.
#pragma once

#include <cstdint>

#include "nsa/detail/quant.h"  // NSA_HOST_DEVICE

namespace nsa {
namespace detail {

constexpr int64_t kPagedMqaSplitKv = 256;  // tokens per work unit (DeepGEMM SPLIT_KV)

// Units of a request of `len` tokens (a negative length counts as 0; with
// clamp_min_len every length counts as at least 1).
NSA_HOST_DEVICE int64_t paged_mqa_units(int64_t len, bool clamp_min_len) {
  if (clamp_min_len && len < 1) len = 1;
  return len <= 0 ? 0 : (len + kPagedMqaSplitKv - 1) / kPagedMqaSplitKv;
}

// next_n atoms per request: G4 pairs the rows (ceil(N / 2) for N >= 2); G1 has none.
NSA_HOST_DEVICE int64_t paged_mqa_atoms(int64_t next_n, bool g1) { return g1 || next_n < 2 ? 1 : (next_n + 1) / 2; }

// The split of T units over S SMs: G4 gives the r = T mod S extra units to
// the last SMs (idle SMs, when T < S, start at unit 0); G1 to the first ones
// (idle SMs start at T).
struct PagedMqaSplit {
  int64_t sms;  // S >= 1
  int64_t q;    // T / S
  int64_t r;    // T mod S
  bool g1;

  NSA_HOST_DEVICE static PagedMqaSplit make(int64_t total_units, int64_t sms, bool g1) {
    return PagedMqaSplit{sms, total_units / sms, total_units % sms, g1};
  }
  // First unit of SM i, 0 <= i <= S (start(S) = T).
  NSA_HOST_DEVICE int64_t start(int64_t i) const {
    if (g1) return i * q + (i < r ? i : r);
    const int64_t extra = i - (sms - r);
    return i * q + (extra > 0 ? extra : 0);
  }
  // The smallest i in [0, S] with start(i) >= x (S when none is below start(S) = T >= x).
  NSA_HOST_DEVICE int64_t first_at(int64_t x) const {
    int64_t lo = 0, hi = sms;  // start is non-decreasing in i
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (start(mid) >= x) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }
};

// Row i of the schedule when SM i starts `offset` units into request b's
// units x atoms (request b has `units` units per atom): (b * A + atom, kv split).
NSA_HOST_DEVICE void paged_mqa_store_row(int32_t* schedule, int64_t i, int64_t b, int64_t atoms, int64_t units,
                                         int64_t offset) {
  schedule[2 * i] = static_cast<int32_t>(b * atoms + offset / units);
  schedule[2 * i + 1] = static_cast<int32_t>(offset % units);
}

}  // namespace detail
}  // namespace nsa
