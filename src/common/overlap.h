// Rejects calls whose written byte ranges overlap what they read or another
// range they write (an op's outputs are written in parallel, in no fixed
// order, so any overlap makes the result depend on the schedule). Each op
// lists the host-visible byte ranges of one call; empty ranges never overlap,
// and two ranges that are only read may share bytes.
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
  const char* name;     // argument name used in the error message
  bool written = true;  // false: only read by the call
};

// Throws (c.fail, naming both arguments) when two non-empty ranges share a
// byte and at least one of them is written. Sorts the ranges by start,
// O(n log n); no allocation for up to kInline ranges.
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
  if (n == 0) return;
  std::sort(order, order + n, [&](uint32_t a, uint32_t b) { return start(a) < start(b); });
  // A later start can only fall into the range reaching furthest so far (a
  // written one must miss it), or, for a read one, the written range reaching
  // furthest so far.
  const auto overlaps = [&](uint32_t earlier, uint32_t next) {
    return start(next) - start(earlier) < ranges[earlier].bytes;
  };
  size_t reach = 0;
  ptrdiff_t reach_written = ranges[order[0]].written ? 0 : -1;
  for (size_t k = 1; k < n; ++k) {
    const uint32_t next = order[k];
    const ptrdiff_t other = ranges[next].written ? static_cast<ptrdiff_t>(reach) : reach_written;
    if (other >= 0 && overlaps(order[other], next)) {
      const uint32_t far = order[other];
      const ByteRange& a = ranges[std::min(far, next)];
      const ByteRange& b = ranges[std::max(far, next)];
      std::ostringstream got;
      got << b.bytes << " bytes at " << b.begin << " overlapping " << a.bytes << " bytes at " << a.begin;
      c.fail(b.name, std::string("no overlap with '") + a.name + "'", got.str());
    }
    if (end(next) > end(order[reach])) reach = k;
    if (ranges[next].written && (reach_written < 0 || end(next) > end(order[reach_written])))
      reach_written = static_cast<ptrdiff_t>(k);
  }
}

}  // namespace detail
}  // namespace nsa
