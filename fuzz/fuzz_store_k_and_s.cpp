// libFuzzer target: store_k_and_s on the CPU against the reference.
// Fuzzed: pool, n, row stride, fp8 bytes and raw scale bits, slots with
// padding, null pointers and the backend.
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
  const int64_t rows = n > 0 ? n : 0;
  const int64_t row_bytes = ld >= 128 ? ld : 128;

  std::vector<uint8_t> k = bytes_from(in, static_cast<size_t>(rows * row_bytes) + 1);
  const std::vector<uint8_t> s_bytes = bytes_from(in, static_cast<size_t>(rows * 4));
  std::vector<float> scale(static_cast<size_t>(rows) + 1);
  copy_into(scale.data(), s_bytes);
  const std::vector<int64_t> slots = fuzz_slots(in, rows, pool);
  const bool null_k = in.rarely(32), null_scale = in.rarely(32), null_slots = in.rarely(32);

  const bool valid =
      where.backend_ok && pool.valid() && n >= 0 && ld >= 128 && (n == 0 || (!null_k && !null_scale && !null_slots)) &&
      (n <= 0 || (!pool.declared_overlaps(k.data(), (n - 1) * ld + 128) &&
                  !pool.declared_overlaps(scale.data(), n * 4) && !pool.declared_overlaps(slots.data(), n * 8)));
  std::vector<uint8_t> expected = pool.bytes;
  const bool ran = run_checked(valid, [&] {
    store_k_and_s(where.exec, pool.view(), null_k ? nullptr : k.data(), n, ld, null_scale ? nullptr : scale.data(),
                  null_slots ? nullptr : slots.data());
  });
  if (ran) reference::store_k_and_s(pool.view_of(expected), k.data(), n, ld, scale.data(), slots.data());
  expect_equal(pool.bytes, expected, "cache");
  return 0;
}
