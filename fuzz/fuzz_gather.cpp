// libFuzzer target: gather_k and gather_s (one sequence) on the CPU against
// the reference. Fuzzed: pool, length (0..300 tokens, pages may repeat and
// come in any order), page-id element type, null pointers and the backend.
// Outputs start poisoned; bytes the op must not write have to stay poisoned.
#include "fuzz_cache.h"
#include "reference/index_cache.h"

using namespace nsa;
using namespace nsa::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const bool scales = in.flag();  // gather_s, else gather_k
  const Where where = pick_exec(in);
  FuzzPool pool(in);
  const int64_t length = maybe_below(in, in.in(0, 300), 0);
  const int64_t tokens = length > 0 ? length : 0;
  std::vector<int64_t> ids(static_cast<size_t>((tokens + pool.tokens() - 1) / pool.tokens()));
  for (auto& id : ids) id = in.byte() % pool.usable_pages();
  const IndexType type = pick_index_type(in);
  const IndexArray page_ids(type, ids);
  const bool null_ids = in.rarely(32), null_out = in.rarely(32);

  const uint8_t poison = in.byte();
  const size_t out_bytes = static_cast<size_t>(tokens) * (scales ? 4 : 128) + 4;
  std::vector<uint8_t> out(out_bytes, poison), expected(out_bytes, poison);
  const bool valid = where.backend_ok && pool.valid() && length >= 0 &&
                     (length == 0 || (!null_ids && !null_out && valid_index_type(type) &&
                                      !pool.declared_overlaps(out.data(), out_bytes - 4)));
  const std::vector<uint8_t> pool_before = pool.bytes;
  const bool ran = run_checked(valid, [&] {
    if (scales)
      gather_s(where.exec, pool.view(), length, page_ids.view(null_ids),
               null_out ? nullptr : reinterpret_cast<float*>(out.data()));
    else gather_k(where.exec, pool.view(), length, page_ids.view(null_ids), null_out ? nullptr : out.data());
  });
  if (ran) {
    if (scales) reference::gather_s(pool.view(), length, page_ids.view(), reinterpret_cast<float*>(expected.data()));
    else reference::gather_k(pool.view(), length, page_ids.view(), expected.data());
  }
  expect_equal(out, expected, scales ? "out_s" : "out_k");
  expect_equal(pool.bytes, pool_before, "cache (read-only)");
  return 0;
}
