// The index-cache side of the fuzz targets: a small pool of 1, 2 or 4 pages of
// 16..256 tokens whose declared num_pages, page size and data pointer are
// sometimes broken, and the validity rules of the cache argument
// (index_cache.h / docs/spec/index-cache.md).
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
  int64_t page_size = 64;  // what the call says (sometimes unsupported)
  std::vector<uint8_t> bytes;

  explicit FuzzPool(Input& in) {
    pages = int64_t{1} << (in.byte() % 3);  // a power of two: slot strides below stay distinct
    declared_pages = maybe_broken(in, pages);
    null_data = in.rarely(32);
    static const int64_t sizes[] = {16, 32, 64, 128, 256};
    page_size = sizes[in.byte() % 5];
    if (in.rarely(32)) page_size = in.in(0, 300);  // mostly unsupported
    if (in.rarely(32)) declared_pages = std::numeric_limits<int64_t>::max() / L::bytes_per_page(tokens()) + in.in(0, 1);
    bytes = bytes_from(in, static_cast<size_t>(pages * L::bytes_per_page(tokens())));
  }
  // Tokens per allocated page: the declared page size when supported, else 64.
  int64_t tokens() const { return L::is_supported_page_size(page_size) ? page_size : 64; }
  // Pages the op may address: the allocation, or fewer when the call declares fewer.
  int64_t usable_pages() const { return declared_pages >= 1 && declared_pages < pages ? declared_pages : pages; }
  bool valid() const {
    return !null_data && L::is_supported_page_size(page_size) && declared_pages >= 1 &&
           declared_pages <= std::numeric_limits<int64_t>::max() / L::bytes_per_page(page_size);
  }
  // True when [p, p + len) shares a byte with the declared pool (num_pages *
  // page bytes from data, past the allocation when declared_pages > pages):
  // the op rejects such a call, since an output may not overlap an input.
  bool declared_overlaps(const void* p, uint64_t len) const {
    if (!valid() || p == nullptr || len == 0) return false;
    const uintptr_t a = reinterpret_cast<uintptr_t>(bytes.data()), b = reinterpret_cast<uintptr_t>(p);
    const uint64_t size = static_cast<uint64_t>(declared_pages * L::bytes_per_page(page_size));
    return a <= b ? b - a < size : a - b < len;
  }
  IndexCache view() { return {null_data ? nullptr : bytes.data(), declared_pages, page_size}; }
  IndexCache view_of(std::vector<uint8_t>& other) { return {other.data(), declared_pages, page_size}; }
};

// n distinct slots of the usable pages (odd stride modulo a power of two),
// about a quarter of them negative padding (-1 or any negative value).
inline std::vector<int64_t> fuzz_slots(Input& in, int64_t n, const FuzzPool& pool) {
  int64_t cap = 16;
  while (cap * 2 <= pool.usable_pages() * pool.tokens()) cap *= 2;
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
