// Host-side check that the memory a call writes shares no byte with the
// memory it reads or with its other outputs. Kernels read and write in any
// order, so an output laid over an input (out_s on the lengths, K rows inside
// the cache) would give results that depend on scheduling; we reject it
// before anything is written.
#pragma once

#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "common/check.h"

namespace nsa {
namespace detail {

// [begin, begin + bytes) of one argument; empty or null ranges take no part.
struct ByteRange {
  const void* begin;
  uint64_t bytes;
  const char* name;
};

// Every pair of non-empty ranges must be disjoint. On the first overlap,
// fails on the earlier argument: "expected no overlap with '<later>', got ...".
// List outputs first so the message names the argument that is written.
inline void check_no_overlap(const ArgChecker& c, const ByteRange* ranges, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const ByteRange& a = ranges[i];
    if (a.begin == nullptr || a.bytes == 0) continue;
    const uintptr_t a0 = reinterpret_cast<uintptr_t>(a.begin);
    for (size_t j = i + 1; j < count; ++j) {
      const ByteRange& b = ranges[j];
      if (b.begin == nullptr || b.bytes == 0) continue;
      const uintptr_t b0 = reinterpret_cast<uintptr_t>(b.begin);
      // Overlap iff each starts before the other ends (written without a0 + bytes, which could wrap).
      const bool overlap = (a0 <= b0) ? (b0 - a0 < a.bytes) : (a0 - b0 < b.bytes);
      if (overlap) {
        std::ostringstream got;
        got << "bytes [" << a.begin << ", +" << a.bytes << ") and '" << b.name << "' at [" << b.begin << ", +"
            << b.bytes << ")";
        c.fail(a.name, std::string("no overlap with '") + b.name + "'", got.str());
      }
    }
  }
}

}  // namespace detail
}  // namespace nsa
