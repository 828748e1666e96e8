// libFuzzer target: gather_k_and_s (ragged batch) on the CPU against the
// reference. Fuzzed: pool, batch size, seq_lens or cu_seq_lens (or both or
// neither), element types, table columns and row stride, lengths in
// [0, page_size * table_cols] (a device-value precondition), page ids, output
// capacity >= sum of lengths, null pointers and the backend.
#include "fuzz_cache.h"
#include "reference/index_cache.h"

using namespace nsa;
using namespace nsa::fuzz;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Input in(data, size);
  const Where where = pick_exec(in);
  FuzzPool pool(in);
  const int64_t bs = maybe_below(in, in.in(0, 6), 0);
  const int64_t reqs = bs > 0 ? bs : 0;
  const int64_t cols = maybe_below(in, in.in(0, 4), 0);
  const int64_t ld = maybe_below(in, (cols > 0 ? cols : 0) + in.in(0, 2), cols);
  const int64_t alloc_ld = ld > 0 ? ld : 0;

  // Lengths within the table's columns, the table with in-range page ids
  // (columns past each row's pages included: never read, but valid anyway).
  std::vector<int64_t> lens(static_cast<size_t>(reqs)), cu(1, 0), table(static_cast<size_t>(reqs * alloc_ld));
  int64_t total = 0;
  for (auto& l : lens) {
    l = cols > 0 ? in.in(0, pool.tokens() * cols) : 0;
    if (in.flag()) l = l % 3;  // many short requests too
    total += l;
    cu.push_back(total);
  }
  for (auto& p : table) p = in.byte() % pool.usable_pages();
  const int form = in.rarely(32) ? 2 + in.flag() : in.flag();  // 0 seq_lens, 1 cu, 2 both, 3 neither
  const IndexType len_type = pick_index_type(in), table_type = pick_index_type(in);
  const IndexArray seq_lens(len_type, lens), cu_seq_lens(len_type, cu), page_table(table_type, table);
  const bool null_table = in.rarely(32), null_k = in.rarely(32), null_s = in.rarely(32);
  const int64_t capacity = maybe_below(in, total + in.in(0, 3), 0);
  const int64_t rows = capacity > 0 ? capacity : 0;

  PagedBatch batch;
  batch.batch_size = bs;
  if (form == 0 || form == 2) batch.seq_lens = seq_lens.view();
  if (form == 1 || form == 2) batch.cu_seq_lens = cu_seq_lens.view();
  batch.page_table = page_table.view(null_table);
  batch.table_cols = cols;
  batch.table_ld = ld;

  const bool valid = where.backend_ok && pool.valid() && bs >= 0 && capacity >= 0 &&
                     (bs == 0 || ((form == 0 || form == 1) && !null_table && cols >= 0 && ld >= cols &&
                                  valid_index_type(len_type) && valid_index_type(table_type))) &&
                     (capacity == 0 || (!null_k && !null_s));
  const uint8_t poison = in.byte();
  std::vector<uint8_t> out_k(static_cast<size_t>(rows * 128) + 1, poison), want_k = out_k;
  std::vector<float> out_s(static_cast<size_t>(rows) + 1), want_s;
  // Outputs inside the declared pool are rejected (checked once the batch is non-empty).
  const bool overlaps =
      bs > 0 && (pool.declared_overlaps(out_k.data(), rows * 128) || pool.declared_overlaps(out_s.data(), rows * 4));
  std::memset(out_s.data(), poison, out_s.size() * 4);
  want_s = out_s;
  const bool ran = run_checked(valid && !overlaps, [&] {
    gather_k_and_s(where.exec, pool.view(), batch, null_k ? nullptr : out_k.data(), null_s ? nullptr : out_s.data(),
                   capacity);
  });
  if (ran && capacity > 0) reference::gather_k_and_s(pool.view(), batch, want_k.data(), want_s.data());
  expect_equal(out_k, want_k, "out_k");
  expect_equal(out_s.data(), want_s.data(), out_s.size() * 4, "out_s");
  return 0;
}
