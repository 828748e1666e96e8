// The index-cache side of the fuzz targets: a small pool of 1, 2 or 4 pages
// whose declared num_pages and data pointer are sometimes broken, and the
// validity rules of the cache argument (index_cache.h / indexer-cache.md).
#pragma once

#include <limits>
#include <vector>

#include "fuzz_input.h"
#include "nsa/index_cache.h"

namespace nsa {
namespace fuzz {

using L = IndexCacheLayout;

struct FuzzPool {
  int64_t pages = 1;           // what is allocated; device values stay inside it
  int64_t declared_pages = 1;  // what the call says (may exceed `pages`: never touched past `pages`)
  bool null_data = false;
  std::vector<uint8_t> bytes;

  explicit FuzzPool(Input& in) {
    pages = int64_t{1} << (in.byte() % 3);  // a power of two: slot strides below stay distinct
    declared_pages = maybe_broken(in, pages);
    if (in.rarely(32)) declared_pages = std::numeric_limits<int64_t>::max() / L::kBytesPerPage + in.in(0, 1);
    null_data = in.rarely(32);
    bytes = bytes_from(in, static_cast<size_t>(pages * L::kBytesPerPage));
  }
  // Pages the op may address: the allocation, or fewer when the call declares fewer.
  int64_t usable_pages() const { return declared_pages >= 1 && declared_pages < pages ? declared_pages : pages; }
  bool valid() const {
    return !null_data && declared_pages >= 1 && declared_pages <= std::numeric_limits<int64_t>::max() / L::kBytesPerPage;
  }
  IndexCache view() { return {null_data ? nullptr : bytes.data(), declared_pages}; }
  IndexCache view_of(std::vector<uint8_t>& other) { return {other.data(), declared_pages}; }
};

// n distinct slots of the usable pages (odd stride modulo a power of two),
// about a quarter of them negative padding (-1 or any negative value).
inline std::vector<int64_t> fuzz_slots(Input& in, int64_t n, int64_t usable_pages) {
  int64_t cap = 64;
  while (cap * 2 <= usable_pages * L::kPageSize) cap *= 2;
  const int64_t start = in.u16(), stride = 2 * in.byte() + 1;
  std::vector<int64_t> slots(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) {
    const uint8_t b = in.byte();
    if (b % 4 == 0) slots[static_cast<size_t>(t)] = b % 8 == 0 ? -1 : std::numeric_limits<int64_t>::min() + b;
    else slots[static_cast<size_t>(t)] = (start + t * stride) % cap;
  }
  return slots;
}

}  // namespace fuzz
}  // namespace nsa
