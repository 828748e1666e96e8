// Rejects calls whose written byte ranges overlap what they read or another
// range they write (an op's outputs are written in parallel, in no fixed
// order, so any overlap makes the result depend on the schedule). Each op
// lists the host-visible byte ranges of one call; empty ranges never overlap.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "common/check.h"

namespace nsa {
namespace detail {

struct ByteRange {
  const void* begin;
  uint64_t bytes;
  const char* name;  // argument name used in the error message
};

// Throws (c.fail, naming both arguments) when two non-empty ranges share a
// byte. Sorts the ranges by start, O(n log n); no allocation for up to
// kInline ranges.
inline void check_no_overlap(const ArgChecker& c, const ByteRange* ranges, size_t count) {
  constexpr size_t kInline = 256;
  uint32_t inline_order[kInline];
  std::vector<uint32_t> heap_order;
  uint32_t* order = inline_order;
  if (count > kInline) {
    heap_order.resize(count);
    order = heap_order.data();
  }
  size_t n = 0;
  for (size_t i = 0; i < count; ++i)
    if (ranges[i].bytes > 0 && ranges[i].begin != nullptr) order[n++] = static_cast<uint32_t>(i);
  const auto start = [&](uint32_t i) { return reinterpret_cast<uintptr_t>(ranges[i].begin); };
  const auto end = [&](uint32_t i) {  // one past the last byte, saturating at the top of the address space
    const uintptr_t room = UINTPTR_MAX - start(i);
    return ranges[i].bytes > room ? UINTPTR_MAX : start(i) + static_cast<uintptr_t>(ranges[i].bytes);
  };
  std::sort(order, order + n, [&](uint32_t a, uint32_t b) { return start(a) < start(b); });
  // The range reaching furthest so far is the one a later start may fall into.
  size_t reach = 0;
  for (size_t k = 1; k < n; ++k) {
    const uint32_t far = order[reach], next = order[k];
    if (start(next) - start(far) < ranges[far].bytes) {
      const ByteRange& a = ranges[std::min(far, next)];
      const ByteRange& b = ranges[std::max(far, next)];
      std::ostringstream got;
      got << b.bytes << " bytes at " << b.begin << " overlapping " << a.bytes << " bytes at " << a.begin;
      c.fail(b.name, std::string("no overlap with '") + a.name + "'", got.str());
    }
    if (end(next) > end(far)) reach = k;
  }
}

}  // namespace detail
}  // namespace nsa
