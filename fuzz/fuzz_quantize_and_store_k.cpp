// libFuzzer target: quantize_and_store_k on the CPU against the reference.
// Fuzzed: pool size, page size and declared page count, n, row stride, K
// dtype (bf16/fp16/fp32) and values (NaN/Inf/subnormals come from raw input
// bits), slots with padding, scale mode, null pointers and the backend.
#include "fuzz_cache.h"
#include "reference/index_cache.h"

using namespace nsa;
using namespace nsa::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const Where where = pick_exec(in);
  FuzzPool pool(in);
  const int64_t n = maybe_below(in, in.in(0, 64), 0);
  const int64_t ld = maybe_below(in, 128 + in.in(0, 8), 128);
  const int64_t rows = n > 0 ? n : 0;  // what is allocated
  const int64_t row_elems = ld >= 128 ? ld : 128;

  KDtype dtype = static_cast<KDtype>(in.byte() % 3);
  const std::vector<uint8_t> k_bytes = bytes_from(in, static_cast<size_t>(rows * row_elems * element_bytes(dtype)));
  std::vector<uint32_t> k(static_cast<size_t>(rows * row_elems) + 1);  // 4-byte aligned for every dtype
  copy_into(reinterpret_cast<uint8_t*>(k.data()), k_bytes);
  const std::vector<int64_t> slots = fuzz_slots(in, rows, pool);
  const bool null_k = in.rarely(32), null_slots = in.rarely(32);
  ScaleMode mode = static_cast<ScaleMode>(in.byte() % 3);  // kFp32, kUe8m0, kFp32Divide
  if (in.rarely(32)) mode = static_cast<ScaleMode>(3 + in.byte() % 3);
  const bool bad_dtype = in.rarely(32);
  if (bad_dtype) dtype = static_cast<KDtype>(3 + in.byte() % 3);

  const bool valid = where.backend_ok && pool.valid() && n >= 0 && ld >= 128 && (n == 0 || (!null_k && !null_slots)) &&
                     static_cast<int>(mode) <= 2 && !bad_dtype &&
                     (n <= 0 || (!pool.declared_overlaps(k.data(), ((n - 1) * ld + 128) * element_bytes(dtype)) &&
                                 !pool.declared_overlaps(slots.data(), n * 8)));
  std::vector<uint8_t> expected = pool.bytes;
  const bool ran = run_checked(valid, [&] {
    quantize_and_store_k(where.exec, pool.view(), null_k ? nullptr : k.data(), n, ld,
                         null_slots ? nullptr : slots.data(), mode, dtype);
  });
  if (ran) reference::quantize_and_store_k(pool.view_of(expected), k.data(), n, ld, slots.data(), mode, dtype);
  expect_equal(pool.bytes, expected, "cache");
  return 0;
}
