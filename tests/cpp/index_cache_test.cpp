// Index-cache ops on every backend against the plain-loop reference
// (src/reference/index_cache.cpp), bit-exact, on fresh random data with
// poisoned outputs; plus the edges of docs/spec/index-cache.md §8 and every
// validation path. Then, each in its own section: checked mode (CUDA planted
// violations, CPU rejections), determinism across threads and streams, and
// the fuzzers' regressions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>

#include "determinism.h"
#include "nsa/index_cache.h"
#include "reference/index_cache.h"
#include "test_util.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>  // the captured checked graph
#endif

namespace nsa {
namespace test {
namespace {

using L = IndexCacheLayout;

// A pool of `pages` pages filled with random bytes, on the backend and mirrored on the host.
struct Pool {
  int64_t pages;
  std::vector<uint8_t> host;
  support::Buffer dev;
  Pool(Backend b, int64_t n, std::mt19937_64& rng)
      : pages(n), host(random_bytes(rng, static_cast<size_t>(n * L::kBytesPerPage))), dev(to_backend(b, host)) {}
  IndexCache view() const { return {dev.as<uint8_t>(), pages}; }
  IndexCache host_view() { return {host.data(), pages}; }
};

// Distinct random slots in [0, pages*64), including slot 0 and the last slot
// when n > 2, and every 7th entry -1 (padding) when asked. Distinct, because
// which of two rows with the same slot wins is unspecified.
std::vector<int64_t> random_slots(std::mt19937_64& rng, int64_t n, int64_t pages, bool with_padding) {
  const int64_t last = pages * L::kPageSize - 1;
  std::vector<int64_t> inner(static_cast<size_t>(last - 1));
  std::iota(inner.begin(), inner.end(), 1);  // 1 .. last-1
  std::shuffle(inner.begin(), inner.end(), rng);
  std::vector<int64_t> s;
  if (n > 2) s = {0, last};
  s.insert(s.end(), inner.begin(), inner.begin() + (n - static_cast<int64_t>(s.size())));
  std::shuffle(s.begin(), s.end(), rng);
  if (with_padding)
    for (int64_t t = 0; t < n; t += 7) s[static_cast<size_t>(t)] = -1;
  return s;
}

class IndexCacheTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { NSA_SKIP_WITHOUT_BACKEND(GetParam()); }
  Backend backend() const { return GetParam(); }
  Exec exec() const { return exec_for(GetParam()); }
  // quantize_and_store_k of k [n, 128] (row stride ld) at fresh distinct
  // slots of a poisoned pool, byte for byte against the reference.
  void expect_quantize_matches_reference(std::mt19937_64& rng, const std::vector<uint8_t>& k, KDtype dtype,
                                         ScaleMode mode, int64_t n, int64_t ld);
};

// ------------------------------- quantize_and_store_k -------------------------------

void run_quantize_case(Backend b, const Exec& exec, std::mt19937_64& rng, std::vector<uint16_t> k, int64_t n,
                       int64_t ld, int64_t pages, ScaleMode mode, bool padding) {
  Pool pool(b, pages, rng);
  const auto slots = random_slots(rng, n, pages, padding);
  auto k_dev = to_backend(b, k);
  auto slots_dev = to_backend(b, slots);
  quantize_and_store_k(exec, pool.view(), k_dev.as<uint16_t>(), n, ld, slots_dev.as<int64_t>(), mode);
  reference::quantize_and_store_k(pool.host_view(), k.data(), n, ld, slots.data(), mode);
  NSA_EXPECT_BYTES_EQ(pool.dev.to_host(), pool.host);
}

TEST_P(IndexCacheTest, QuantizeAndStoreMatchesReference) {
  auto rng = make_rng(1);
  for (ScaleMode mode : {ScaleMode::kFp32, ScaleMode::kUe8m0}) {
    for (int64_t n : {1, 2, 63, 64, 65, 513, 4097}) {
      for (int64_t ld : {128, 136, 131}) {  // 131: rows not 8-byte aligned (scalar load path)
        SCOPED_TRACE(::testing::Message() << "mode=" << to_string(mode) << " n=" << n << " ld=" << ld);
        const int64_t pages = n / 32 + 3;
        run_quantize_case(backend(), exec(), rng, random_bf16(rng, n, ld), n, ld, pages, mode, n > 3);
      }
    }
  }
}

// Hand-picked rows: zero, one dominant value, all below the 1e-4 floor,
// e4m3 rounding ties, amax/448 just above a power of two, fp8 subnormals,
// bf16 subnormals, NaN, +-Inf, huge values.
std::vector<uint16_t> special_rows() {
  auto bits = [](float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return static_cast<uint16_t>(u >> 16);
  };
  std::vector<std::vector<float>> rows;
  rows.push_back(std::vector<float>(128, 0.0f));
  std::vector<float> r(128, 0.001f);
  r[5] = -1000.0f;
  rows.push_back(r);
  rows.push_back(std::vector<float>(128, 3e-5f));
  r.assign(128, 0.0f);
  for (int d = 0; d < 128; ++d) r[d] = (d % 2 ? -1.f : 1.f) * (1.0f + 0.0625f * static_cast<float>(d % 16));
  r[0] = 448.0f;  // s = 1: every value with a 4th mantissa bit is an e4m3 tie
  rows.push_back(r);
  r.assign(128, 0.5f);
  r[7] = 448.0f * std::ldexp(1.0f + 1.0f / 128.0f, -10);  // amax/448 just above 2^-10 (bf16 granularity)
  rows.push_back(r);
  r.assign(128, 1e-3f);
  r[3] = 448.0f;  // others land in the e4m3 subnormal range
  rows.push_back(r);
  r.assign(128, std::ldexp(1.0f, -130));  // bf16 subnormals, below the floor
  rows.push_back(r);
  r.assign(128, 1.0f);
  r[1] = NAN;
  r[2] = -NAN;
  r[3] = INFINITY;
  r[4] = -INFINITY;
  r[5] = 2.0f;
  rows.push_back(r);
  r.assign(128, 3.0e38f);
  r[9] = -3.3e38f;
  rows.push_back(r);
  std::vector<uint16_t> out;
  for (auto& row : rows)
    for (float f : row) out.push_back(bits(f));
  return out;
}

TEST_P(IndexCacheTest, QuantizeSpecialValuesMatchReference) {
  auto rng = make_rng(2);
  const auto k = special_rows();
  const int64_t n = static_cast<int64_t>(k.size()) / 128;
  for (ScaleMode mode : {ScaleMode::kFp32, ScaleMode::kUe8m0}) {
    SCOPED_TRACE(to_string(mode));
    run_quantize_case(backend(), exec(), rng, k, n, 128, 4, mode, false);
  }
}

TEST_P(IndexCacheTest, QuantizeOnlyPaddingWritesNothing) {
  auto rng = make_rng(3);
  Pool pool(backend(), 3, rng);
  const int64_t n = 40;
  const auto k = random_bf16(rng, n, 128);
  std::vector<int64_t> slots(n, -1);
  auto k_dev = to_backend(backend(), k);
  auto s_dev = to_backend(backend(), slots);
  quantize_and_store_k(exec(), pool.view(), k_dev.as<uint16_t>(), n, 128, s_dev.as<int64_t>(), ScaleMode::kFp32);
  store_k_and_s(exec(), pool.view(), reinterpret_cast<const uint8_t*>(k_dev.data()), n, 128,
                reinterpret_cast<const float*>(k_dev.data()), s_dev.as<int64_t>());
  NSA_EXPECT_BYTES_EQ(pool.dev.to_host(), pool.host);
}

// ----------------------------------- store_k_and_s -----------------------------------

TEST_P(IndexCacheTest, StoreKAndSMatchesReference) {
  auto rng = make_rng(4);
  for (int64_t n : {1, 64, 65, 1000, 40000}) {  // 40000: a prefill-size store
    for (int64_t ld : {128, 160, 130}) {
      SCOPED_TRACE(::testing::Message() << "n=" << n << " ld=" << ld);
      const int64_t pages = n / 16 + 2;
      Pool pool(backend(), pages, rng);
      const auto k = random_bytes(rng, static_cast<size_t>(n * ld));
      std::vector<float> scale(static_cast<size_t>(n));
      for (auto& s : scale) s = std::uniform_real_distribution<float>(1e-7f, 10.0f)(rng);
      const auto slots = random_slots(rng, n, pages, true);
      auto k_dev = to_backend(backend(), k);
      auto sc_dev = to_backend(backend(), scale);
      auto sl_dev = to_backend(backend(), slots);
      store_k_and_s(exec(), pool.view(), k_dev.as<uint8_t>(), n, ld, sc_dev.as<float>(), sl_dev.as<int64_t>());
      reference::store_k_and_s(pool.host_view(), k.data(), n, ld, scale.data(), slots.data());
      NSA_EXPECT_BYTES_EQ(pool.dev.to_host(), pool.host);
    }
  }
}

// -------------------------------- gather_k / gather_s --------------------------------

template <class IdxT>
void run_single_gather(Backend b, const Exec& exec, std::mt19937_64& rng, int64_t length, int64_t pool_pages) {
  SCOPED_TRACE(::testing::Message() << "L=" << length << " index=" << sizeof(IdxT) * 8);
  Pool pool(b, pool_pages, rng);
  const int64_t pages = (length + 63) / 64;
  auto ids = random_ints<IdxT>(rng, static_cast<size_t>(pages), 0, pool_pages - 1);
  if (pages > 2) ids[1] = ids[0];  // a repeated page
  auto ids_dev = to_backend(b, ids);
  const int64_t slack = 70;  // rows past L must stay untouched
  auto poison_k = random_bytes(rng, static_cast<size_t>((length + slack) * 128));
  auto poison_s = random_bytes(rng, static_cast<size_t>((length + slack) * 4));
  auto out_k = to_backend(b, poison_k);
  auto out_s = to_backend(b, poison_s);
  gather_k(exec, pool.view(), length, static_cast<const IdxT*>(ids_dev.data()), out_k.as<uint8_t>());
  gather_s(exec, pool.view(), length, static_cast<const IdxT*>(ids_dev.data()), out_s.as<float>());
  reference::gather_k(pool.host_view(), length, ids.data(), poison_k.data());
  reference::gather_s(pool.host_view(), length, ids.data(), reinterpret_cast<float*>(poison_s.data()));
  NSA_EXPECT_BYTES_EQ(out_k.to_host(), poison_k);
  NSA_EXPECT_BYTES_EQ(out_s.to_host(), poison_s);
}

TEST_P(IndexCacheTest, GatherSingleSequenceMatchesReference) {
  auto rng = make_rng(5);
  for (int64_t length : {0, 1, 63, 64, 65, 100, 192, 320, 4097}) {
    run_single_gather<int32_t>(backend(), exec(), rng, length, 100);
    run_single_gather<int64_t>(backend(), exec(), rng, length, 100);
  }
}

TEST_P(IndexCacheTest, GatherSingleSequenceLongerThanGridLimit) {
  auto rng = make_rng(6);
  run_single_gather<int32_t>(backend(), exec(), rng, 131073, 2100);
  run_single_gather<int64_t>(backend(), exec(), rng, 163840, 2600);
}

// ---------------------------------- gather_k_and_s -----------------------------------

struct BatchCase {
  std::vector<int64_t> lens;
  int64_t cols;        // table columns (>= max pages)
  int64_t ld;          // table row stride
  int64_t extra_rows;  // capacity - sum L
  bool table64, lens64, cu_form;
};

void run_batch_gather(Backend b, const Exec& exec, std::mt19937_64& rng, const BatchCase& c, int64_t pool_pages) {
  const int64_t bs = static_cast<int64_t>(c.lens.size());
  const int64_t total = std::accumulate(c.lens.begin(), c.lens.end(), int64_t{0});
  SCOPED_TRACE(::testing::Message() << "B=" << bs << " T=" << total << " cols=" << c.cols << " ld=" << c.ld
                                    << " table64=" << c.table64 << " lens64=" << c.lens64 << " cu=" << c.cu_form);
  Pool pool(b, pool_pages, rng);
  // Columns past each row's pages hold ids far out of range: reading one would fault or mismatch.
  std::vector<int64_t> table(static_cast<size_t>(std::max<int64_t>(bs * c.ld, 1)), int64_t{2147483000});
  for (int64_t r = 0; r < bs; ++r)
    for (int64_t p = 0; p < (c.lens[r] + 63) / 64; ++p)
      table[static_cast<size_t>(r * c.ld + p)] = std::uniform_int_distribution<int64_t>(0, pool_pages - 1)(rng);
  if (bs >= 2 && c.lens[0] > 0 && c.lens[1] > 0) table[static_cast<size_t>(c.ld)] = table[0];  // shared prefix page
  std::vector<int64_t> cu(static_cast<size_t>(bs + 1), 0);
  for (int64_t r = 0; r < bs; ++r) cu[r + 1] = cu[r] + c.lens[r];

  auto narrow = [](const std::vector<int64_t>& v) { return std::vector<int32_t>(v.begin(), v.end()); };
  support::Buffer table_dev = c.table64 ? to_backend(b, table) : to_backend(b, narrow(table));
  const auto& len_src = c.cu_form ? cu : c.lens;
  support::Buffer lens_dev = c.lens64 ? to_backend(b, len_src) : to_backend(b, narrow(len_src));
  const IndexType tt = c.table64 ? IndexType::kInt64 : IndexType::kInt32;
  const IndexType lt = c.lens64 ? IndexType::kInt64 : IndexType::kInt32;

  PagedBatch batch;
  batch.batch_size = bs;
  (c.cu_form ? batch.cu_seq_lens : batch.seq_lens) = Indices(lens_dev.data(), lt);
  batch.page_table = Indices(table_dev.data(), tt);
  batch.table_cols = c.cols;
  batch.table_ld = c.ld;
  const int64_t cap = total + c.extra_rows;
  auto expect_k = random_bytes(rng, static_cast<size_t>(cap * 128));
  auto expect_s = random_bytes(rng, static_cast<size_t>(cap * 4));
  auto out_k = to_backend(b, expect_k);
  auto out_s = to_backend(b, expect_s);
  gather_k_and_s(exec, pool.view(), batch, out_k.as<uint8_t>(), out_s.as<float>(), cap);

  PagedBatch host_batch = batch;
  host_batch.seq_lens = c.cu_form ? Indices() : Indices(c.lens.data());
  host_batch.cu_seq_lens = c.cu_form ? Indices(cu.data()) : Indices();
  host_batch.page_table = Indices(table.data());
  reference::gather_k_and_s(pool.host_view(), host_batch, expect_k.data(), reinterpret_cast<float*>(expect_s.data()));
  NSA_EXPECT_BYTES_EQ(out_k.to_host(), expect_k);
  NSA_EXPECT_BYTES_EQ(out_s.to_host(), expect_s);
}

std::vector<int64_t> ragged_lengths(std::mt19937_64& rng, int64_t bs, int64_t max_len) {
  static const int64_t edges[] = {0, 1, 63, 64, 65, 127, 128, 129};
  std::vector<int64_t> v(static_cast<size_t>(bs));
  for (int64_t i = 0; i < bs; ++i)
    v[i] = (i % 3 == 0) ? edges[(i / 3) % 8] : std::uniform_int_distribution<int64_t>(0, max_len)(rng);
  if (bs > 2) v[static_cast<size_t>(bs - 1)] = 0;  // empty first (edges[0]) and last rows
  return v;
}

TEST_P(IndexCacheTest, GatherBatchMatchesReference) {
  auto rng = make_rng(7);
  for (int64_t bs : {0, 1, 3, 64, 300}) {
    for (int form = 0; form < 8; ++form) {
      BatchCase c;
      c.lens = ragged_lengths(rng, bs, bs > 64 ? 700 : 3000);
      int64_t max_pages = 0;
      for (auto l : c.lens) max_pages = std::max(max_pages, (l + 63) / 64);
      c.cols = max_pages + (form % 2) * 3;
      c.ld = c.cols + (form % 4 >= 2 ? 5 : 0);
      c.extra_rows = form % 2 ? 13 : 0;
      c.table64 = form & 1;
      c.lens64 = (form >> 1) & 1;
      c.cu_form = (form >> 2) & 1;
      run_batch_gather(backend(), exec(), rng, c, 200);
    }
  }
}

TEST_P(IndexCacheTest, GatherBatchSpecCaseU5) {
  auto rng = make_rng(8);
  // Upstream's unit-test shape: seq_lens [256,267,215,32,129] over a 5x5 table, 128 pages.
  BatchCase c{{256, 267, 215, 32, 129}, 5, 5, 4, false, true, false};
  run_batch_gather(backend(), exec(), rng, c, 128);
}

TEST_P(IndexCacheTest, GatherBatchLongContexts) {
  auto rng = make_rng(9);
  BatchCase one{{131073}, 2049, 2051, 64, false, false, false};
  run_batch_gather(backend(), exec(), rng, one, 2100);
  BatchCase many{{65537, 0, 70000, 1, 65535}, 1100, 1100, 0, true, true, true};
  run_batch_gather(backend(), exec(), rng, many, 1200);
}

// Pool beyond 4 GiB: slots and pages whose byte offsets pass 2^31 and 2^32,
// addressed through int32 page tables (the upstream overflow).
TEST_P(IndexCacheTest, PoolLargerThan4GiB) {
  const int64_t pages = 520000;  // 4.39 GB
  auto rng = make_rng(10);
  support::Buffer big(backend(), static_cast<size_t>(pages * L::kBytesPerPage));
  // Only the last pages are used: poison and mirror those.
  const int64_t tail_pages = 8, first = pages - tail_pages;
  const size_t tail_off = static_cast<size_t>(first * L::kBytesPerPage);
  auto tail = random_bytes(rng, static_cast<size_t>(tail_pages * L::kBytesPerPage));
  big.upload(tail.data(), tail.size(), tail_off);
  IndexCache cache{big.as<uint8_t>(), pages};
  IndexCache shadow{tail.data(), tail_pages};  // reference on the tail with shifted slots

  const int64_t n = 200;
  auto k = random_bf16(rng, n, 128);
  std::vector<int64_t> slots(n), shadow_slots(n);
  for (int64_t t = 0; t < n; ++t) {
    shadow_slots[t] = (t * 37) % (tail_pages * 64);
    slots[t] = shadow_slots[t] + first * 64;
  }
  ASSERT_GT(slots[0] * 132, int64_t{1} << 31);
  auto k_dev = to_backend(backend(), k);
  auto s_dev = to_backend(backend(), slots);
  quantize_and_store_k(exec(), cache, k_dev.as<uint16_t>(), n, 128, s_dev.as<int64_t>(), ScaleMode::kUe8m0);
  reference::quantize_and_store_k(shadow, k.data(), n, 128, shadow_slots.data(), ScaleMode::kUe8m0);
  std::vector<uint8_t> got(tail.size());
  big.download(got.data(), got.size(), tail_off);
  NSA_EXPECT_BYTES_EQ(got, tail);

  // Gather the tail pages back through an int32 table (two requests) and an int64 page list.
  std::vector<int32_t> table = {static_cast<int32_t>(pages - 1), static_cast<int32_t>(first),
                                static_cast<int32_t>(pages - 2), static_cast<int32_t>(first + 1)};
  std::vector<int32_t> shadow_table = {tail_pages - 1, 0, tail_pages - 2, 1};
  std::vector<int32_t> lens = {100, 65};
  auto t_dev = to_backend(backend(), table);
  auto l_dev = to_backend(backend(), lens);
  PagedBatch batch{2, Indices(l_dev.as<int32_t>()), Indices(), Indices(t_dev.as<int32_t>()), 2, 2};
  support::Buffer ok(backend(), 165 * 128), os(backend(), 165 * 4);
  gather_k_and_s(exec(), cache, batch, ok.as<uint8_t>(), os.as<float>(), 165);
  std::vector<uint8_t> ek(165 * 128), es(165 * 4);
  PagedBatch host_batch{2, Indices(lens.data()), Indices(), Indices(shadow_table.data()), 2, 2};
  reference::gather_k_and_s(shadow, host_batch, ek.data(), reinterpret_cast<float*>(es.data()));
  NSA_EXPECT_BYTES_EQ(ok.to_host(), ek);
  NSA_EXPECT_BYTES_EQ(os.to_host(), es);

  std::vector<int64_t> ids = {pages - 1, first + 3};
  std::vector<int64_t> shadow_ids = {tail_pages - 1, 3};
  auto i_dev = to_backend(backend(), ids);
  support::Buffer gk(backend(), 128 * 128), gs(backend(), 128 * 4);
  gather_k(exec(), cache, 128, i_dev.as<int64_t>(), gk.as<uint8_t>());
  gather_s(exec(), cache, 128, i_dev.as<int64_t>(), gs.as<float>());
  std::vector<uint8_t> egk(128 * 128), egs(128 * 4);
  reference::gather_k(shadow, 128, shadow_ids.data(), egk.data());
  reference::gather_s(shadow, 128, shadow_ids.data(), reinterpret_cast<float*>(egs.data()));
  NSA_EXPECT_BYTES_EQ(gk.to_host(), egk);
  NSA_EXPECT_BYTES_EQ(gs.to_host(), egs);
}

// ------------------------- page sizes, K dtypes, scale formulas -------------------------

// Raw K rows of `dtype`, finite, with magnitudes over many binades: bf16/fp16
// as random 16-bit patterns with a finite exponent (fp16 subnormals included),
// fp32 as normal values times one power of two in 2^[-30, 30] per row
// (full fp32 precision; within a row a normal spread, as real K rows have).
std::vector<uint8_t> random_k(std::mt19937_64& rng, KDtype dtype, int64_t n, int64_t ld) {
  std::vector<uint8_t> bytes(static_cast<size_t>(n * ld * element_bytes(dtype)));
  if (dtype == KDtype::kFp32) {
    std::vector<float> v(static_cast<size_t>(n * ld));
    std::normal_distribution<float> normal;
    for (int64_t t = 0; t < n; ++t) {
      const int e = std::uniform_int_distribution<int>(-30, 30)(rng);
      for (int64_t d = 0; d < ld; ++d) v[static_cast<size_t>(t * ld + d)] = std::ldexp(normal(rng), e);
    }
    std::memcpy(bytes.data(), v.data(), bytes.size());
  } else {
    std::vector<uint16_t> v(static_cast<size_t>(n * ld));
    const uint16_t exp_mask = dtype == KDtype::kBf16 ? 0x7f80 : 0x7c00;
    for (auto& h : v) {
      do h = static_cast<uint16_t>(rng());
      while ((h & exp_mask) == exp_mask);
    }
    std::memcpy(bytes.data(), v.data(), bytes.size());
  }
  return bytes;
}

// A pool of `pages` pages of `page_size` tokens.
struct PagedPool {
  int64_t pages, page_size;
  std::vector<uint8_t> host;
  support::Buffer dev;
  PagedPool(Backend b, int64_t n, int64_t p, std::mt19937_64& rng)
      : pages(n),
        page_size(p),
        host(random_bytes(rng, static_cast<size_t>(n * L::bytes_per_page(p)))),
        dev(to_backend(b, host)) {}
  IndexCache view() { return {dev.as<uint8_t>(), pages, page_size}; }
  IndexCache host_view() { return {host.data(), pages, page_size}; }
};

// n distinct slots in [0, slot_count), entries first_pad, first_pad + pad_every, ... -1 (padding).
std::vector<int64_t> distinct_slots(std::mt19937_64& rng, int64_t n, int64_t slot_count, int64_t first_pad = 3,
                                    int64_t pad_every = 7) {
  std::vector<int64_t> all(static_cast<size_t>(slot_count));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(static_cast<size_t>(n));
  for (int64_t t = first_pad; t < n; t += pad_every) all[static_cast<size_t>(t)] = -1;
  return all;
}

void IndexCacheTest::expect_quantize_matches_reference(std::mt19937_64& rng, const std::vector<uint8_t>& k,
                                                       KDtype dtype, ScaleMode mode, int64_t n, int64_t ld) {
  const int64_t pages = n / 32 + 3;
  PagedPool pool(backend(), pages, 64, rng);
  const auto slots = distinct_slots(rng, n, pages * 64);
  auto k_dev = to_backend(backend(), k);
  auto slots_dev = to_backend(backend(), slots);
  quantize_and_store_k(exec(), pool.view(), k_dev.data(), n, ld, slots_dev.as<int64_t>(), mode, dtype);
  reference::quantize_and_store_k(pool.host_view(), k.data(), n, ld, slots.data(), mode, dtype);
  NSA_EXPECT_BYTES_EQ(pool.dev.to_host(), pool.host);
}

TEST_P(IndexCacheTest, QuantizeEveryDtypeAndScaleModeMatchesReference) {
  auto rng = make_rng(20);
  for (KDtype dtype : {KDtype::kBf16, KDtype::kFp16, KDtype::kFp32}) {
    for (ScaleMode mode : {ScaleMode::kFp32, ScaleMode::kFp32Divide, ScaleMode::kUe8m0}) {
      for (int64_t n : {1, 65, 1000}) {
        for (int64_t ld : {128, 136, 131}) {  // 131: rows not 16-byte aligned (element load path)
          SCOPED_TRACE(::testing::Message()
                       << to_string(dtype) << " " << to_string(mode) << " n=" << n << " ld=" << ld);
          expect_quantize_matches_reference(rng, random_k(rng, dtype, n, ld), dtype, mode, n, ld);
        }
      }
    }
  }
}

// NaN (both signs, quiet and signalling) and +-Inf planted among otherwise
// finite elements: on the GPU a lane whose elements are all finite skips the
// NaN fix-up and takes its amax from an integer max (quantize_lane), so each
// planted value must still give the reference's bytes, the NaN sign kept and
// Inf left out of the scale, in whichever lane it falls. 40,000 tokens pass
// one wave of the narrow store shape on every supported GPU (the wide shape
// runs too); tokens of only NaN or only Inf are included.
std::vector<uint8_t> k_with_nan_and_inf(std::mt19937_64& rng, KDtype dtype, int64_t n, int64_t ld) {
  auto k = random_k(rng, dtype, n, ld);
  const int64_t eb = element_bytes(dtype);
  // +qNaN, -qNaN, +sNaN (payload 1), +Inf, -Inf.
  const uint32_t bf16[] = {0x7fc0, 0xffc0, 0x7f81, 0x7f80, 0xff80};
  const uint32_t fp16[] = {0x7e00, 0xfe00, 0x7c01, 0x7c00, 0xfc00};
  const uint32_t fp32[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7f800000u, 0xff800000u};
  const uint32_t* special = dtype == KDtype::kBf16 ? bf16 : (dtype == KDtype::kFp16 ? fp16 : fp32);
  auto plant = [&](int64_t t, int64_t d, uint32_t bits) {
    const size_t at = static_cast<size_t>((t * ld + d) * eb);
    if (eb == 4) std::memcpy(&k[at], &bits, 4);
    else {
      const uint16_t h = static_cast<uint16_t>(bits);
      std::memcpy(&k[at], &h, 2);
    }
  };
  std::uniform_int_distribution<int> which(0, 4), count(1, 3), dim(0, 127), per(0, 3);
  for (int64_t t = 0; t < n; ++t) {
    if (per(rng) != 0) continue;  // a quarter of the tokens
    for (int c = count(rng); c > 0; --c) plant(t, dim(rng), special[which(rng)]);
  }
  for (int64_t d = 0; d < 128; ++d) {
    plant(0, d, special[d % 3]);          // only NaN
    plant(n - 1, d, special[3 + d % 2]);  // only Inf
  }
  return k;
}

TEST_P(IndexCacheTest, QuantizeNanAndInfAmongFiniteValuesMatchesReference) {
  auto rng = make_rng(23);
  const std::pair<int64_t, int64_t> sizes[] = {{1000, 128}, {1000, 131}, {40000, 128}};  // (n, ld)
  for (KDtype dtype : {KDtype::kBf16, KDtype::kFp16, KDtype::kFp32}) {
    for (ScaleMode mode : {ScaleMode::kFp32, ScaleMode::kFp32Divide, ScaleMode::kUe8m0}) {
      for (const auto& [n, ld] : sizes) {
        SCOPED_TRACE(::testing::Message() << to_string(dtype) << " " << to_string(mode) << " n=" << n << " ld=" << ld);
        expect_quantize_matches_reference(rng, k_with_nan_and_inf(rng, dtype, n, ld), dtype, mode, n, ld);
      }
    }
  }
}

// The two plain formulas are really different (about 1 byte in 2000 on random
// bf16 rows, whose short mantissas make exact e4m3 ties common; full-precision
// fp32 rows almost never hit one) and each backend follows the one asked for.
TEST_P(IndexCacheTest, MultiplyAndDivideFormulasDifferOnTies) {
  auto rng = make_rng(21);
  const int64_t n = 4096;
  const auto k = random_k(rng, KDtype::kBf16, n, 128);
  std::vector<int64_t> slots(static_cast<size_t>(n));
  std::iota(slots.begin(), slots.end(), 0);
  auto k_dev = to_backend(backend(), k);
  auto slots_dev = to_backend(backend(), slots);
  PagedPool mul(backend(), n / 64, 64, rng), div(backend(), n / 64, 64, rng);
  quantize_and_store_k(exec(), mul.view(), k_dev.data(), n, 128, slots_dev.as<int64_t>(), ScaleMode::kFp32);
  quantize_and_store_k(exec(), div.view(), k_dev.data(), n, 128, slots_dev.as<int64_t>(), ScaleMode::kFp32Divide);
  const auto a = mul.dev.to_host(), b = div.dev.to_host();
  int64_t differ = 0;
  for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
  EXPECT_GT(differ, 0);
  EXPECT_LT(differ, static_cast<int64_t>(a.size() / 100));
}

TEST_P(IndexCacheTest, EveryOpAtEveryPageSizeMatchesReference) {
  auto rng = make_rng(22);
  for (int64_t P : {16, 32, 64, 128, 256}) {
    SCOPED_TRACE(::testing::Message() << "page_size=" << P);
    const int64_t pages = 12;
    PagedPool pool(backend(), pages, P, rng);
    // Stores (slot 0 and the last slot of the pool included).
    const int64_t n = 3 * P + 5;
    auto slots = distinct_slots(rng, n, pages * P);
    // Two tokens on one slot would race on the GPU: where the shuffle put slot
    // 0 or the last slot elsewhere, that token becomes padding.
    for (size_t t = 2; t < slots.size(); ++t)
      if (slots[t] == 0 || slots[t] == pages * P - 1) slots[t] = -1;
    slots[0] = 0;
    slots[1] = pages * P - 1;
    auto slots_dev = to_backend(backend(), slots);
    for (ScaleMode mode : {ScaleMode::kFp32, ScaleMode::kUe8m0, ScaleMode::kFp32Divide}) {
      const auto k = random_k(rng, KDtype::kBf16, n, 128);
      auto k_dev = to_backend(backend(), k);
      quantize_and_store_k(exec(), pool.view(), k_dev.data(), n, 128, slots_dev.as<int64_t>(), mode);
      reference::quantize_and_store_k(pool.host_view(), k.data(), n, 128, slots.data(), mode);
      NSA_EXPECT_BYTES_EQ(pool.dev.to_host(), pool.host);
    }
    const auto k8 = random_bytes(rng, static_cast<size_t>(n * 128));
    std::vector<float> scale(static_cast<size_t>(n));
    for (auto& x : scale) x = std::uniform_real_distribution<float>(1e-7f, 10.0f)(rng);
    auto k8_dev = to_backend(backend(), k8);
    auto sc_dev = to_backend(backend(), scale);
    store_k_and_s(exec(), pool.view(), k8_dev.as<uint8_t>(), n, 128, sc_dev.as<float>(), slots_dev.as<int64_t>());
    reference::store_k_and_s(pool.host_view(), k8.data(), n, 128, scale.data(), slots.data());
    NSA_EXPECT_BYTES_EQ(pool.dev.to_host(), pool.host);

    // Single-sequence gathers: partial pages, repeated pages; rows past L untouched.
    for (int64_t length : {int64_t{1}, P - 1, P, P + 1, 5 * P + 3}) {
      const int64_t np = (length + P - 1) / P;
      auto ids = random_ints<int32_t>(rng, static_cast<size_t>(np), 0, static_cast<int32_t>(pages - 1));
      auto ids_dev = to_backend(backend(), ids);
      auto expect_k = random_bytes(rng, static_cast<size_t>((length + 9) * 128));
      auto expect_s = random_bytes(rng, static_cast<size_t>((length + 9) * 4));
      auto out_k = to_backend(backend(), expect_k);
      auto out_s = to_backend(backend(), expect_s);
      gather_k(exec(), pool.view(), length, ids_dev.as<int32_t>(), out_k.as<uint8_t>());
      gather_s(exec(), pool.view(), length, ids_dev.as<int32_t>(), out_s.as<float>());
      reference::gather_k(pool.host_view(), length, ids.data(), expect_k.data());
      reference::gather_s(pool.host_view(), length, ids.data(), reinterpret_cast<float*>(expect_s.data()));
      NSA_EXPECT_BYTES_EQ(out_k.to_host(), expect_k);
      NSA_EXPECT_BYTES_EQ(out_s.to_host(), expect_s);
    }

    // Batched gather, both length forms, a strided int64 table.
    const std::vector<int64_t> lens = {0, 1, P + 3, 2 * P, 5, 4 * P};
    const int64_t bs = static_cast<int64_t>(lens.size()), cols = 4, ld = 6;
    std::vector<int64_t> table(static_cast<size_t>(bs * ld), int64_t{1} << 40);  // unused entries: out of range
    std::vector<int64_t> cu(static_cast<size_t>(bs + 1), 0);
    for (int64_t r = 0; r < bs; ++r) {
      for (int64_t p = 0; p < (lens[r] + P - 1) / P; ++p)
        table[static_cast<size_t>(r * ld + p)] = std::uniform_int_distribution<int64_t>(0, pages - 1)(rng);
      cu[r + 1] = cu[r] + lens[r];
    }
    auto table_dev = to_backend(backend(), table);
    for (bool cu_form : {false, true}) {
      auto lens_dev = to_backend(backend(), cu_form ? cu : lens);
      PagedBatch batch;
      batch.batch_size = bs;
      (cu_form ? batch.cu_seq_lens : batch.seq_lens) = Indices(lens_dev.as<int64_t>());
      batch.page_table = Indices(table_dev.as<int64_t>());
      batch.table_cols = cols;
      batch.table_ld = ld;
      const int64_t cap = cu.back() + 7;
      auto expect_k = random_bytes(rng, static_cast<size_t>(cap * 128));
      auto expect_s = random_bytes(rng, static_cast<size_t>(cap * 4));
      auto out_k = to_backend(backend(), expect_k);
      auto out_s = to_backend(backend(), expect_s);
      gather_k_and_s(exec(), pool.view(), batch, out_k.as<uint8_t>(), out_s.as<float>(), cap);
      PagedBatch host = batch;
      host.seq_lens = cu_form ? Indices() : Indices(lens.data());
      host.cu_seq_lens = cu_form ? Indices(cu.data()) : Indices();
      host.page_table = Indices(table.data());
      reference::gather_k_and_s(pool.host_view(), host, expect_k.data(), reinterpret_cast<float*>(expect_s.data()));
      NSA_EXPECT_BYTES_EQ(out_k.to_host(), expect_k);
      NSA_EXPECT_BYTES_EQ(out_s.to_host(), expect_s);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, IndexCacheTest, ::testing::ValuesIn(all_backends()), backend_name);

// ------------------------------------ validation ------------------------------------

TEST(IndexCacheValidation, EveryCheckNamesItsArgumentAndWritesNothing) {
  auto rng = make_rng(11);
  const Exec cpu = Exec::cpu();
  std::vector<uint8_t> pool = random_bytes(rng, 2 * 8448);
  const auto pool_before = pool;
  IndexCache cache{pool.data(), 2};
  std::vector<uint16_t> k(2 * 128, 0x3f80);
  std::vector<uint8_t> k8(2 * 128, 1);
  std::vector<float> sc(2, 1.0f);
  std::vector<int64_t> slots = {0, 5};
  std::vector<int32_t> ids = {1, 0}, lens = {3, 4};
  std::vector<uint8_t> out_k(8 * 128, kPoison);
  std::vector<float> out_s(8, 0.5f);
  const auto out_k_before = out_k;

  expect_invalid(
      [&] {
        quantize_and_store_k(cpu, {nullptr, 2}, k.data(), 2, 128, slots.data(), ScaleMode::kFp32);
      },
      "cache.data");
  expect_invalid(
      [&] {
        quantize_and_store_k(cpu, {pool.data(), 0}, k.data(), 2, 128, slots.data(), ScaleMode::kFp32);
      },
      "cache.num_pages");
  expect_invalid(
      [&] {
        quantize_and_store_k(cpu, {pool.data(), int64_t{1} << 62}, k.data(), 2, 128, slots.data(), ScaleMode::kFp32);
      },
      "cache.num_pages");
  expect_invalid([&] { quantize_and_store_k(cpu, cache, k.data(), -1, 128, slots.data(), ScaleMode::kFp32); }, "'n'");
  expect_invalid([&] { quantize_and_store_k(cpu, cache, k.data(), 2, 127, slots.data(), ScaleMode::kFp32); }, "k_ld");
  expect_invalid([&] { quantize_and_store_k(cpu, cache, nullptr, 2, 128, slots.data(), ScaleMode::kFp32); }, "'k'");
  expect_invalid([&] { quantize_and_store_k(cpu, cache, k.data(), 2, 128, nullptr, ScaleMode::kFp32); }, "slots");
  expect_invalid([&] { quantize_and_store_k(cpu, cache, k.data(), 2, 128, slots.data(), static_cast<ScaleMode>(7)); },
                 "mode");
  expect_invalid(
      [&] {
        quantize_and_store_k(Exec{Backend::kCpu, nullptr, -2}, cache, k.data(), 2, 128, slots.data(), ScaleMode::kFp32);
      },
      "cpu_threads");
  expect_invalid([&] { store_k_and_s(cpu, cache, k8.data(), 2, 100, sc.data(), slots.data()); }, "k_ld");
  expect_invalid([&] { store_k_and_s(cpu, cache, k8.data(), 2, 128, nullptr, slots.data()); }, "scale");
  expect_invalid([&] { store_k_and_s(cpu, cache, k8.data(), 2, 128, sc.data(), nullptr); }, "slots");
  expect_invalid([&] { store_k_and_s(cpu, cache, nullptr, 2, 128, sc.data(), slots.data()); }, "'k'");
  expect_invalid([&] { gather_k(cpu, cache, -1, ids.data(), out_k.data()); }, "length");
  expect_invalid([&] { gather_k(cpu, cache, 5, Indices(), out_k.data()); }, "page_ids");
  expect_invalid([&] { gather_k(cpu, cache, 5, ids.data(), nullptr); }, "out_k");
  expect_invalid([&] { gather_s(cpu, cache, 5, ids.data(), nullptr); }, "out_s");

  PagedBatch good{2, Indices(lens.data()), Indices(), Indices(ids.data()), 1, 1};
  auto with = [&](auto mutate) {
    PagedBatch b = good;
    mutate(b);
    return b;
  };
  expect_invalid(
      [&] {
        gather_k_and_s(cpu, cache, with([](PagedBatch& b) { b.batch_size = -1; }), out_k.data(), out_s.data(), 8);
      },
      "batch.batch_size");
  expect_invalid(
      [&] {
        gather_k_and_s(cpu, cache, with([](PagedBatch& b) { b.seq_lens = Indices(); }), out_k.data(), out_s.data(), 8);
      },
      "batch.seq_lens/batch.cu_seq_lens");
  expect_invalid(
      [&] {
        gather_k_and_s(cpu, cache, with([&](PagedBatch& b) { b.cu_seq_lens = Indices(lens.data()); }), out_k.data(),
                       out_s.data(), 8);
      },
      "batch.seq_lens/batch.cu_seq_lens");
  expect_invalid(
      [&] {
        gather_k_and_s(cpu, cache, with([](PagedBatch& b) { b.page_table = Indices(); }), out_k.data(), out_s.data(),
                       8);
      },
      "batch.page_table");
  expect_invalid(
      [&] {
        gather_k_and_s(cpu, cache, with([](PagedBatch& b) { b.table_cols = -1; }), out_k.data(), out_s.data(), 8);
      },
      "batch.table_cols");
  expect_invalid(
      [&] { gather_k_and_s(cpu, cache, with([](PagedBatch& b) { b.table_ld = 0; }), out_k.data(), out_s.data(), 8); },
      "batch.table_ld");
  expect_invalid([&] { gather_k_and_s(cpu, cache, good, out_k.data(), out_s.data(), -1); }, "out_capacity");
  expect_invalid([&] { gather_k_and_s(cpu, cache, good, nullptr, out_s.data(), 8); }, "out_k");
  expect_invalid([&] { gather_k_and_s(cpu, cache, good, out_k.data(), nullptr, 8); }, "out_s");
  if (!cuda_built()) {
    expect_invalid([&] { gather_k(Exec::cuda(), cache, 5, ids.data(), out_k.data()); }, "cuda",
                   ErrorCode::kUnsupported);
  } else {
    // Alignment is checked on the host, before any device access.
    expect_invalid([&] { gather_k(Exec::cuda(), {pool.data() + 1, 1}, 5, ids.data(), out_k.data()); }, "cache.data");
    expect_invalid([&] { gather_k(Exec::cuda(), cache, 5, ids.data(), out_k.data() + 1); }, "out_k");
  }
  for (int64_t bad_page : {0, 8, 48, 65, 512}) {
    expect_invalid([&] { gather_k(cpu, {pool.data(), 2, bad_page}, 5, ids.data(), out_k.data()); }, "cache.page_size");
    expect_invalid(
        [&] {
          quantize_and_store_k(cpu, {pool.data(), 2, bad_page}, k.data(), 2, 128, slots.data(), ScaleMode::kFp32);
        },
        "cache.page_size");
  }
  expect_invalid(
      [&] {
        quantize_and_store_k(cpu, cache, k.data(), 2, 128, slots.data(), ScaleMode::kFp32, static_cast<KDtype>(9));
      },
      "k_dtype");
  EXPECT_EQ(pool, pool_before);
  EXPECT_EQ(out_k, out_k_before);
  for (float s : out_s) EXPECT_EQ(s, 0.5f);

  // Empty work is valid with null pointers (torch gives null data for empty tensors).
  quantize_and_store_k(cpu, cache, nullptr, 0, 128, nullptr, ScaleMode::kFp32);
  gather_k(cpu, cache, 0, Indices(), nullptr);
  gather_k_and_s(cpu, cache, PagedBatch{}, nullptr, nullptr, 0);
  EXPECT_EQ(pool, pool_before);
}

// No output may share a byte with an input or another output of the call
// (issue: out_s laid over seq_lens, K rows inside the cache, ...). Rejected
// on the host before anything is written; the message names both arguments.
TEST(IndexCacheValidation, OutputsOverlappingInputsOrEachOtherAreRejected) {
  auto rng = make_rng(12);
  const Exec cpu = Exec::cpu();
  std::vector<uint8_t> pool = random_bytes(rng, 4 * 8448);
  const auto pool_before = pool;
  IndexCache cache{pool.data(), 4};
  std::vector<int64_t> slots = {100, 101};
  std::vector<float> scale = {1.0f, 2.0f};
  std::vector<int32_t> ids = {1, 0};
  // K rows inside the cache they are written into
  expect_invalid([&] { store_k_and_s(cpu, cache, pool.data(), 2, 128, scale.data(), slots.data()); },
                 "argument 'cache': expected no overlap with 'k'");
  expect_invalid([&] { quantize_and_store_k(cpu, cache, pool.data() + 8448, 2, 128, slots.data(), ScaleMode::kFp32); },
                 "argument 'cache': expected no overlap with 'k'");
  expect_invalid(
      [&] {
        store_k_and_s(cpu, cache, pool.data() + 20000, 2, 128, reinterpret_cast<float*>(pool.data() + 30000),
                      slots.data());
      },
      "argument 'cache': expected no overlap with 'k'");
  // slots or scales inside the cache
  std::vector<uint8_t> k8(256, 1);
  expect_invalid(
      [&] { store_k_and_s(cpu, cache, k8.data(), 2, 128, reinterpret_cast<float*>(pool.data() + 8192), slots.data()); },
      "no overlap with 'scale'");
  expect_invalid(
      [&] { store_k_and_s(cpu, cache, k8.data(), 2, 128, scale.data(), reinterpret_cast<int64_t*>(pool.data() + 16)); },
      "no overlap with 'slots'");
  EXPECT_EQ(pool, pool_before);

  // gathers: outputs on the cache, on the page list, on the lengths, on each other
  std::vector<uint8_t> scratch(64 * 1024, kPoison);
  const auto scratch_before = scratch;
  expect_invalid([&] { gather_k(cpu, cache, 10, ids.data(), pool.data() + 8448 * 3); },
                 "argument 'out_k': expected no overlap with 'cache'");
  expect_invalid([&] { gather_s(cpu, cache, 10, ids.data(), reinterpret_cast<float*>(pool.data())); },
                 "argument 'out_s': expected no overlap with 'cache'");
  auto* ids_in_scratch = reinterpret_cast<int32_t*>(scratch.data() + 64);
  expect_invalid([&] { gather_k(cpu, cache, 10, Indices(ids_in_scratch), scratch.data()); },
                 "argument 'out_k': expected no overlap with 'page_ids'");
  // seq_lens and page_table hold valid values, so only the overlap can fail
  auto* lens = reinterpret_cast<int64_t*>(scratch.data() + 40000);
  auto* table = reinterpret_cast<int32_t*>(scratch.data() + 40100);
  const int64_t lens_v[2] = {3, 4};
  const int32_t table_v[2] = {1, 0};
  std::memcpy(lens, lens_v, sizeof lens_v);
  std::memcpy(table, table_v, sizeof table_v);
  const auto scratch_set = scratch;
  PagedBatch batch{2, Indices(lens), Indices(), Indices(table), 1, 1};
  uint8_t* out_k = scratch.data();
  float* out_s = reinterpret_cast<float*>(scratch.data() + 8 * 128);
  gather_k_and_s(cpu, cache, batch, out_k, out_s, 7);  // disjoint: fine
  scratch = scratch_set;
  expect_invalid([&] { gather_k_and_s(cpu, cache, batch, out_k, reinterpret_cast<float*>(scratch.data() + 39992), 7); },
                 "argument 'out_s': expected no overlap with 'batch.seq_lens'");
  expect_invalid([&] { gather_k_and_s(cpu, cache, batch, scratch.data() + 40000 - 7 * 128 + 128, out_s, 7); },
                 "argument 'out_k': expected no overlap with 'batch.seq_lens'");
  expect_invalid([&] { gather_k_and_s(cpu, cache, batch, scratch.data() + 39900, out_s, 7); },
                 "no overlap with 'batch");
  expect_invalid(
      [&] { gather_k_and_s(cpu, cache, batch, out_k, reinterpret_cast<float*>(scratch.data() + 6 * 128), 7); },
      "argument 'out_k': expected no overlap with 'out_s'");
  expect_invalid([&] { gather_k_and_s(cpu, cache, batch, out_k, reinterpret_cast<float*>(pool.data() + 8192), 7); },
                 "argument 'out_s': expected no overlap with 'cache'");
  EXPECT_EQ(scratch, scratch_set);
  EXPECT_EQ(pool, pool_before);
  (void)scratch_before;
  // Inputs may share memory: reading twice is harmless.
  std::vector<uint8_t> both(2 * 128 + 8, 3);
  std::vector<int64_t> free_slots = {200, -1};
  store_k_and_s(cpu, cache, both.data(), 2, 128, reinterpret_cast<float*>(both.data() + 4), free_slots.data());
}

TEST(IndexCacheLayoutTest, SpecWorkedExamples) {
  // docs/spec/index-cache.md §2 worked examples.
  EXPECT_EQ(L::k_offset(0), 0);
  EXPECT_EQ(L::scale_offset(0), 8192);
  EXPECT_EQ(L::k_offset(63), 8064);
  EXPECT_EQ(L::scale_offset(63), 8444);
  EXPECT_EQ(L::k_offset(64), 8448);
  EXPECT_EQ(L::scale_offset(64), 16640);
  EXPECT_EQ(L::k_offset(200), 26368);
  EXPECT_EQ(L::scale_offset(200), 33568);
  EXPECT_EQ(L::k_offset(4100), 541184);
  EXPECT_EQ(L::scale_offset(4100), 548880);
  EXPECT_EQ(L::k_offset(16268816), int64_t{2147483648});
  EXPECT_EQ(L::scale_offset(16268816), int64_t{2147489856});
}

// ====================================================================================
// Checked mode: invalid device-resident values are reported, never acted on.
//   CUDA (tests named *_cuda, skipped without a GPU): one planted violation
//   among valid values; the valid rows equal the reference, the invalid row's
//   destination bytes keep their poison (buffers compared whole), and the
//   DeviceError names the op, argument, row and value. Valid inputs record
//   nothing and give the unchecked bytes; a captured checked graph reports a
//   violation planted between replays.
//   CPU (always validates): every planted violation throws kInvalidArgument
//   naming the argument and the value, and nothing is written.
// ====================================================================================
namespace checked {

constexpr int64_t kPages = 40;

#define NSA_SKIP_WITHOUT_GPU() NSA_SKIP_WITHOUT_BACKEND(::nsa::Backend::kCuda)

// ------------------------------------ stores (CUDA) ------------------------------------

TEST(CheckedMode, QuantizeAndStoreSlotPastPool_cuda) {
  NSA_SKIP_WITHOUT_GPU();
  auto rng = make_rng(200);
  Pool pool(Backend::kCuda, kPages, rng);
  const int64_t n = 300, bad_token = 137, bad_slot = kPages * L::kPageSize + 3;
  auto slots = distinct_slots(rng, n, kPages * L::kPageSize, 5, 11);
  const auto k = random_bf16(rng, n, 128);
  slots[bad_token] = bad_slot;
  auto k_dev = to_backend(Backend::kCuda, k);
  auto s_dev = to_backend(Backend::kCuda, slots);
  CheckedCuda chk;
  quantize_and_store_k(chk.exec, pool.view(), k_dev.as<uint16_t>(), n, 128, s_dev.as<int64_t>(), ScaleMode::kUe8m0);
  expect_device_error(chk.read(), OpId::kQuantizeAndStoreK, ArgId::kSlots, bad_token, bad_slot);
  slots[bad_token] = -1;  // the reference skips it: the invalid token writes nothing
  reference::quantize_and_store_k(pool.host_view(), k.data(), n, 128, slots.data(), ScaleMode::kUe8m0);
  NSA_EXPECT_BYTES_EQ(pool.dev.to_host(), pool.host);

  reset_device_error(chk.exec);
  EXPECT_EQ(chk.read().code, 0);
}

TEST(CheckedMode, StoreKAndSSlotPastPool_cuda) {
  NSA_SKIP_WITHOUT_GPU();
  auto rng = make_rng(201);
  Pool pool(Backend::kCuda, kPages, rng);
  const int64_t n = 97, bad_token = 96, bad_slot = int64_t{1} << 40;
  auto slots = distinct_slots(rng, n, kPages * L::kPageSize, 5, 11);
  const auto k = random_bytes(rng, static_cast<size_t>(n * 136));
  std::vector<float> scale(static_cast<size_t>(n), 0.25f);
  slots[bad_token] = bad_slot;
  auto k_dev = to_backend(Backend::kCuda, k);
  auto sc_dev = to_backend(Backend::kCuda, scale);
  auto s_dev = to_backend(Backend::kCuda, slots);
  CheckedCuda chk;
  store_k_and_s(chk.exec, pool.view(), k_dev.as<uint8_t>(), n, 136, sc_dev.as<float>(), s_dev.as<int64_t>());
  expect_device_error(chk.read(), OpId::kStoreKAndS, ArgId::kSlots, bad_token, bad_slot);
  slots[bad_token] = -1;
  reference::store_k_and_s(pool.host_view(), k.data(), n, 136, scale.data(), slots.data());
  NSA_EXPECT_BYTES_EQ(pool.dev.to_host(), pool.host);
}

// -------------------------------- gather_k / gather_s (CUDA) --------------------------------

// gather_k and gather_s of `length` tokens with page_ids[bad_pos] = bad_id:
// the rows of that page keep their poison, every other row equals the reference.
template <class IdxT>
void run_single_gather_case(int64_t length, int64_t bad_pos, int64_t bad_id, uint64_t salt) {
  SCOPED_TRACE(::testing::Message() << "L=" << length << " bad page " << bad_id << " at " << bad_pos);
  auto rng = make_rng(salt);
  Pool pool(Backend::kCuda, kPages, rng);
  const int64_t pages = (length + 63) / 64;
  auto ids = random_ints<IdxT>(rng, static_cast<size_t>(pages), 0, kPages - 1);
  const auto poison_k = random_bytes(rng, static_cast<size_t>(length * 128));
  const auto poison_s = random_bytes(rng, static_cast<size_t>(length * 4));
  auto expect_k = poison_k, expect_s = poison_s;
  reference::gather_k(pool.host_view(), length, ids.data(), expect_k.data());
  reference::gather_s(pool.host_view(), length, ids.data(), reinterpret_cast<float*>(expect_s.data()));
  const int64_t row0 = bad_pos * 64, rows = std::min<int64_t>(64, length - row0);
  std::memcpy(expect_k.data() + row0 * 128, poison_k.data() + row0 * 128, static_cast<size_t>(rows * 128));
  std::memcpy(expect_s.data() + row0 * 4, poison_s.data() + row0 * 4, static_cast<size_t>(rows * 4));
  ids[static_cast<size_t>(bad_pos)] = static_cast<IdxT>(bad_id);

  auto ids_dev = to_backend(Backend::kCuda, ids);
  auto out_k = to_backend(Backend::kCuda, poison_k);
  auto out_s = to_backend(Backend::kCuda, poison_s);
  CheckedCuda chk;
  const Indices view(static_cast<const IdxT*>(ids_dev.data()));
  gather_k(chk.exec, pool.view(), length, view, out_k.as<uint8_t>());
  expect_device_error(chk.read(), OpId::kGatherK, ArgId::kPageIds, bad_pos, bad_id);
  reset_device_error(chk.exec);
  gather_s(chk.exec, pool.view(), length, view, out_s.as<float>());
  expect_device_error(chk.read(), OpId::kGatherS, ArgId::kPageIds, bad_pos, bad_id);
  NSA_EXPECT_BYTES_EQ(out_k.to_host(), expect_k);
  NSA_EXPECT_BYTES_EQ(out_s.to_host(), expect_s);
}

TEST(CheckedMode, GatherSinglePageIdOutOfRange_cuda) {
  NSA_SKIP_WITHOUT_GPU();
  run_single_gather_case<int32_t>(300, 2, kPages, 202);
  run_single_gather_case<int64_t>(300, 4, -7, 203);                       // partial last page
  run_single_gather_case<int64_t>(64 * 700, 650, int64_t{1} << 33, 204);  // a later grid-stride item
}

// ----------------------------------- gather_k_and_s (CUDA) -----------------------------------

constexpr int64_t kCols = 4, kLd = 6;  // 64 * kCols = 256 tokens per request at most

// One batch as the host sees it: table [bs, kLd] (columns past each request's
// pages hold ids far out of range: never read, never reported).
struct Batch {
  std::vector<int64_t> lens;  // claimed lengths (may be invalid)
  std::vector<int64_t> table;
  Batch(std::mt19937_64& rng, std::vector<int64_t> l) : lens(std::move(l)) {
    table.assign(lens.size() * kLd, int64_t{2147483000});
    for (size_t r = 0; r < lens.size(); ++r)
      for (int64_t p = 0; p < kCols; ++p) {
        const int64_t needed = (std::max<int64_t>(lens[r], 0) + 63) / 64;
        if (p < needed) table[r * kLd + p] = std::uniform_int_distribution<int64_t>(0, kPages - 1)(rng);
      }
  }
  std::vector<int64_t> cu() const {
    std::vector<int64_t> c(lens.size() + 1, 0);
    for (size_t r = 0; r < lens.size(); ++r) c[r + 1] = c[r] + lens[r];
    return c;
  }
};

// Expected output: the poison, overwritten with the reference gather of each
// request in `written` at its row offset in `starts`, rows [0, capacity)
// only, except the page (skip_request, skip_col) whose id was planted.
struct Expected {
  std::vector<uint8_t> k, s;
};
Expected expected_rows(Pool& pool, const Batch& b, const std::vector<int64_t>& starts, const std::vector<bool>& written,
                       const std::vector<uint8_t>& poison_k, const std::vector<uint8_t>& poison_s, int64_t capacity,
                       int64_t skip_request, int64_t skip_col) {
  Expected e{poison_k, poison_s};
  for (size_t r = 0; r < b.lens.size(); ++r) {
    if (!written[r]) continue;
    const int64_t len = b.lens[r];
    std::vector<uint8_t> k(static_cast<size_t>(len * 128));
    std::vector<float> s(static_cast<size_t>(len));
    reference::gather_k(pool.host_view(), len, b.table.data() + r * kLd, k.data());
    reference::gather_s(pool.host_view(), len, b.table.data() + r * kLd, s.data());
    for (int64_t t = 0; t < len; ++t) {
      const int64_t row = starts[r] + t;
      if (row < 0 || row >= capacity) continue;
      if (static_cast<int64_t>(r) == skip_request && t / 64 == skip_col) continue;
      std::memcpy(e.k.data() + row * 128, k.data() + t * 128, 128);
      std::memcpy(e.s.data() + row * 4, s.data() + t, 4);
    }
  }
  return e;
}

// One checked gather_k_and_s. `batch` holds valid page ids; `plant_at` (an
// index into the table, or -1) receives `plant_value` on the device only.
struct BatchRun {
  std::vector<int64_t> lens_passed;  // seq_lens or cu_seq_lens, as the kernel sees them
  bool cu_form = false;
  int64_t capacity = 0;
  int64_t out_rows = 0;  // allocated (poisoned) rows, >= capacity
  int64_t plant_at = -1, plant_value = 0;
  std::vector<int64_t> starts;  // expected first row of each request
  std::vector<bool> written;    // expected: which requests write rows
};

DeviceError run_batch(Pool& pool, const Batch& b, const BatchRun& run, std::mt19937_64& rng) {
  std::vector<int64_t> table = b.table;
  if (run.plant_at >= 0) table[static_cast<size_t>(run.plant_at)] = run.plant_value;
  auto table_dev = to_backend(Backend::kCuda, table);
  auto lens_dev = to_backend(Backend::kCuda, run.lens_passed);
  PagedBatch batch;
  batch.batch_size = static_cast<int64_t>(b.lens.size());
  (run.cu_form ? batch.cu_seq_lens : batch.seq_lens) = Indices(lens_dev.as<int64_t>());
  batch.page_table = Indices(table_dev.as<int64_t>());
  batch.table_cols = kCols;
  batch.table_ld = kLd;
  const auto poison_k = random_bytes(rng, static_cast<size_t>(run.out_rows * 128));
  const auto poison_s = random_bytes(rng, static_cast<size_t>(run.out_rows * 4));
  auto out_k = to_backend(Backend::kCuda, poison_k);
  auto out_s = to_backend(Backend::kCuda, poison_s);
  CheckedCuda chk;
  gather_k_and_s(chk.exec, pool.view(), batch, out_k.as<uint8_t>(), out_s.as<float>(), run.capacity);
  const DeviceError e = chk.read();
  const int64_t skip_r = run.plant_at >= 0 ? run.plant_at / kLd : -1,
                skip_c = run.plant_at >= 0 ? run.plant_at % kLd : -1;
  const Expected want =
      expected_rows(pool, b, run.starts, run.written, poison_k, poison_s, run.capacity, skip_r, skip_c);
  NSA_EXPECT_BYTES_EQ(out_k.to_host(), want.k);
  NSA_EXPECT_BYTES_EQ(out_s.to_host(), want.s);
  return e;
}

class CheckedGatherBatch : public ::testing::Test {
 protected:
  void SetUp() override {
    NSA_SKIP_WITHOUT_GPU();
    pool_.emplace(Backend::kCuda, kPages, rng);
  }
  std::mt19937_64 rng = make_rng(205);
  std::optional<Pool> pool_;  // device memory: created only when a GPU is there
  Pool& pool() { return *pool_; }
};

TEST_F(CheckedGatherBatch, PageTableOutOfRange_cuda) {
  const Batch b(rng, {100, 200, 0, 130});
  BatchRun run{b.lens, false, 430, 440};
  run.plant_at = 3 * kLd + 1;  // request 3, tokens 64..127 -> rows 364..427 stay poisoned
  run.plant_value = kPages + 210;
  run.starts = {0, 100, 300, 300};
  run.written = {true, true, true, true};
  expect_device_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kPageTable, 3, kPages + 210);
  run.plant_value = -1;
  expect_device_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kPageTable, 3, -1);
}

TEST_F(CheckedGatherBatch, SeqLenOverTableWidth_cuda) {
  // Request 1 claims 300 > 64 * 4 tokens: its rows [100, 400) stay poisoned;
  // request 2 still starts at row 400 (offsets follow the claimed lengths).
  Batch b(rng, {100, 300, 50});
  BatchRun run{b.lens, false, 450, 460};
  run.starts = {0, 100, 400};
  run.written = {true, false, true};
  expect_device_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kSeqLens, 1, 300);
}

TEST_F(CheckedGatherBatch, NegativeSeqLen_cuda) {
  Batch b(rng, {100, 50, -5});
  BatchRun run{b.lens, false, 150, 160};
  run.starts = {0, 100, 150};
  run.written = {true, true, false};
  expect_device_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kSeqLens, 2, -5);
}

TEST_F(CheckedGatherBatch, CuSeqLensDecreasing_cuda) {
  Batch b(rng, {100, 50, -10});  // cu = {0, 100, 150, 140}
  BatchRun run{b.cu(), true, 150, 160};
  run.starts = {0, 100, 150};
  run.written = {true, true, false};
  expect_device_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kCuSeqLens, 3, 140);
}

TEST_F(CheckedGatherBatch, CuSeqLensStepOverTableWidth_cuda) {
  Batch b(rng, {100, 300, 50});  // cu = {0, 100, 400, 450}
  BatchRun run{b.cu(), true, 450, 460};
  run.starts = {0, 100, 400};
  run.written = {true, false, true};
  expect_device_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kCuSeqLens, 2, 400);
}

TEST_F(CheckedGatherBatch, CuSeqLensNotStartingAtZero_cuda) {
  Batch b(rng, {100, 50});
  BatchRun run{{5, 105, 155}, true, 160, 160};
  run.starts = {0, 100};
  run.written = {false, false};  // ambiguous rows: nothing is written at all
  expect_device_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kCuSeqLens, 0, 5);
}

TEST_F(CheckedGatherBatch, SumOverCapacity_cuda) {
  // 100 + 200 + 60 = 360 rows into 320: rows [320, 360) are not written (the
  // buffer has 370 poisoned rows); request 2, the first to cross, is reported.
  Batch b(rng, {100, 200, 60});
  BatchRun run{b.lens, false, 320, 370};
  run.starts = {0, 100, 300};
  run.written = {true, true, true};
  expect_device_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kOutCapacity, 2, 360);
  BatchRun cu_run = run;
  cu_run.lens_passed = b.cu();
  cu_run.cu_form = true;
  expect_device_error(run_batch(pool(), b, cu_run, rng), OpId::kGatherKAndS, ArgId::kOutCapacity, 2, 360);
}

// ------------------------- valid inputs: nothing recorded, same bytes -------------------------

TEST(CheckedMode, ValidInputsRecordNothingAndMatchUnchecked_cuda) {
  NSA_SKIP_WITHOUT_GPU();
  auto rng = make_rng(206);
  Pool checked_pool(Backend::kCuda, kPages, rng);
  support::Buffer plain_pool = to_backend(Backend::kCuda, checked_pool.host);
  const IndexCache plain_view{plain_pool.as<uint8_t>(), kPages};
  CheckedCuda chk;
  const Exec plain = Exec::cuda();
  const int64_t n = 200;
  const auto slots = distinct_slots(rng, n, kPages * L::kPageSize, 5, 11);
  const auto k = random_bf16(rng, n, 128);
  auto k_dev = to_backend(Backend::kCuda, k);
  auto s_dev = to_backend(Backend::kCuda, slots);
  quantize_and_store_k(chk.exec, checked_pool.view(), k_dev.as<uint16_t>(), n, 128, s_dev.as<int64_t>(),
                       ScaleMode::kFp32);
  quantize_and_store_k(plain, plain_view, k_dev.as<uint16_t>(), n, 128, s_dev.as<int64_t>(), ScaleMode::kFp32);
  const auto slots2 = distinct_slots(rng, n, kPages * L::kPageSize, 5, 11);
  auto s2_dev = to_backend(Backend::kCuda, slots2);
  const auto* k8 = reinterpret_cast<const uint8_t*>(k_dev.data());
  const auto* sc = reinterpret_cast<const float*>(k_dev.data());
  store_k_and_s(chk.exec, checked_pool.view(), k8, n, 256, sc, s2_dev.as<int64_t>());
  store_k_and_s(plain, plain_view, k8, n, 256, sc, s2_dev.as<int64_t>());
  EXPECT_EQ(chk.read().code, 0) << describe(chk.read());
  NSA_EXPECT_BYTES_EQ(checked_pool.dev.to_host(), plain_pool.to_host());

  // Gathers, with stale out-of-range ids in columns past each request's pages.
  const Batch b(rng, {100, 256, 0, 1, 64});
  const int64_t total = 421;
  auto table_dev = to_backend(Backend::kCuda, b.table);
  auto lens_dev = to_backend(Backend::kCuda, b.lens);
  auto cu_dev = to_backend(Backend::kCuda, b.cu());
  for (bool cu : {false, true}) {
    PagedBatch batch;
    batch.batch_size = 5;
    (cu ? batch.cu_seq_lens : batch.seq_lens) = Indices((cu ? cu_dev : lens_dev).as<int64_t>());
    batch.page_table = Indices(table_dev.as<int64_t>());
    batch.table_cols = kCols;
    batch.table_ld = kLd;
    support::Buffer ck(Backend::kCuda, total * 128), cs(Backend::kCuda, total * 4);
    support::Buffer pk(Backend::kCuda, total * 128), ps(Backend::kCuda, total * 4);
    for (auto* buf : {&ck, &cs, &pk, &ps}) buf->fill(kPoison);
    gather_k_and_s(chk.exec, plain_view, batch, ck.as<uint8_t>(), cs.as<float>(), total + 3);
    gather_k_and_s(plain, plain_view, batch, pk.as<uint8_t>(), ps.as<float>(), total + 3);
    EXPECT_EQ(chk.read().code, 0) << describe(chk.read());
    NSA_EXPECT_BYTES_EQ(ck.to_host(), pk.to_host());
    NSA_EXPECT_BYTES_EQ(cs.to_host(), ps.to_host());
  }
  support::Buffer ck(Backend::kCuda, 256 * 128), cs(Backend::kCuda, 256 * 4);
  support::Buffer pk(Backend::kCuda, 256 * 128), ps(Backend::kCuda, 256 * 4);
  const Indices ids(table_dev.as<int64_t>() + kLd);  // request 1: 256 tokens, 4 valid ids
  gather_k(chk.exec, plain_view, 256, ids, ck.as<uint8_t>());
  gather_s(chk.exec, plain_view, 256, ids, cs.as<float>());
  gather_k(plain, plain_view, 256, ids, pk.as<uint8_t>());
  gather_s(plain, plain_view, 256, ids, ps.as<float>());
  EXPECT_EQ(chk.read().code, 0) << describe(chk.read());
  NSA_EXPECT_BYTES_EQ(ck.to_host(), pk.to_host());
  NSA_EXPECT_BYTES_EQ(cs.to_host(), ps.to_host());
}

TEST(CheckedMode, MisalignedErrorBufferIsRejected_cuda) {
  if (!cuda_built()) GTEST_SKIP() << "CUDA backend not built";
  std::vector<uint8_t> pool(8448), out(64 * 128);
  std::vector<int32_t> ids = {0};
  // Rejected on the host, before any device access (no GPU needed; the
  // addresses are never dereferenced).
  alignas(8) unsigned char raw[64];
  const Exec bad = Exec::cuda().with_checks(reinterpret_cast<DeviceError*>(raw + 4));
  try {
    gather_k(bad, {reinterpret_cast<const uint8_t*>(uintptr_t{4096}), 1}, 1, ids.data(),
             reinterpret_cast<uint8_t*>(uintptr_t{8192}));
    ADD_FAILURE() << "expected nsa::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find("exec.checked"), std::string::npos) << e.what();
  }
}

// --------------------------------- CUDA graph: replay, then read ---------------------------------

#if defined(NSA_WITH_CUDA)
TEST(CheckedMode, CapturedCheckedGatherReportsViolationPlantedBetweenReplays_cuda) {
  NSA_SKIP_WITHOUT_GPU();
  auto rng = make_rng(207);
  Pool pool(Backend::kCuda, kPages, rng);
  const Batch b(rng, {100, 200, 30});
  const int64_t total = 330;
  auto table_dev = to_backend(Backend::kCuda, b.table);
  auto lens_dev = to_backend(Backend::kCuda, b.lens);
  support::Buffer out_k(Backend::kCuda, total * 128), out_s(Backend::kCuda, total * 4);
  PagedBatch batch{3, Indices(lens_dev.as<int64_t>()), Indices(), Indices(table_dev.as<int64_t>()), kCols, kLd};

  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  support::Buffer err(Backend::kCuda, sizeof(DeviceError));
  const Exec exec = Exec::cuda(stream).with_checks(err.as<DeviceError>());
  reset_device_error(exec);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t graph_exec = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  gather_k_and_s(exec, pool.view(), batch, out_k.as<uint8_t>(), out_s.as<float>(), total);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&graph_exec, graph, 0), cudaSuccess);

  for (int i = 0; i < 3; ++i) ASSERT_EQ(cudaGraphLaunch(graph_exec, stream), cudaSuccess);
  EXPECT_EQ(read_device_error(exec).code, 0);

  std::vector<int64_t> planted = b.table;
  planted[2 * kLd] = kPages;  // request 2's only page
  table_dev.upload(planted);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the upload ran on the legacy stream
  for (int i = 0; i < 3; ++i) ASSERT_EQ(cudaGraphLaunch(graph_exec, stream), cudaSuccess);
  expect_device_error(read_device_error(exec), OpId::kGatherKAndS, ArgId::kPageTable, 2, kPages);
  // Rows of request 2 were not written by the planted replays: still what the valid replays wrote.
  std::vector<uint8_t> want_s(static_cast<size_t>(total * 4));
  reference::gather_s(pool.host_view(), 30, b.table.data() + 2 * kLd,
                      reinterpret_cast<float*>(want_s.data() + 300 * 4));
  std::vector<uint8_t> got_s = out_s.to_host();
  EXPECT_EQ(std::memcmp(got_s.data() + 300 * 4, want_s.data() + 300 * 4, 30 * 4), 0);

  reset_device_error(exec);
  EXPECT_EQ(read_device_error(exec).code, 0);
  cudaGraphExecDestroy(graph_exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}
#endif

// ------------------------------- CPU: always validates, throws -------------------------------

TEST(CheckedModeCpu, StoresRejectSlotsPastPoolAndWriteNothing) {
  auto rng = make_rng(210);
  for (int threads : {1, 4}) {
    const Exec cpu = Exec::cpu(threads);
    Pool pool(Backend::kCpu, kPages, rng);
    const auto before = pool.host;
    const int64_t n = 2000;
    auto slots = distinct_slots(rng, n, kPages * L::kPageSize, 5, 11);
    const auto k = random_bf16(rng, n, 128);
    slots[1234] = kPages * L::kPageSize;
    expect_rejected([&] { quantize_and_store_k(cpu, pool.view(), k.data(), n, 128, slots.data(), ScaleMode::kFp32); },
                    "quantize_and_store_k", "slots", "2560 at token 1234");
    const auto* k8 = reinterpret_cast<const uint8_t*>(k.data());
    const auto* sc = reinterpret_cast<const float*>(k.data());
    expect_rejected([&] { store_k_and_s(cpu, pool.view(), k8, n, 256, sc, slots.data()); }, "store_k_and_s", "slots",
                    "2560 at token 1234");
    EXPECT_EQ(pool.dev.to_host(), before);
  }
}

TEST(CheckedModeCpu, SingleGathersRejectPageIdsOutOfRangeAndWriteNothing) {
  auto rng = make_rng(211);
  Pool pool(Backend::kCpu, kPages, rng);
  std::vector<int32_t> ids32 = {3, 1, 2, kPages, 0};
  std::vector<int64_t> ids64 = {3, 1, -2, 5, 0};
  std::vector<uint8_t> out_k(300 * 128, kPoison);
  std::vector<float> out_s(300, 0.5f);
  const Exec cpu = Exec::cpu();
  expect_rejected([&] { gather_k(cpu, pool.view(), 300, ids32.data(), out_k.data()); }, "gather_k", "page_ids",
                  "40 at position 3");
  expect_rejected([&] { gather_s(cpu, pool.view(), 300, ids64.data(), out_s.data()); }, "gather_s", "page_ids",
                  "-2 at position 2");
  for (uint8_t v : out_k) ASSERT_EQ(v, kPoison);
  for (float v : out_s) ASSERT_EQ(v, 0.5f);
  // Only the ids the length reads are checked: 192 tokens read ids [0, 3).
  gather_k(cpu, pool.view(), 192, ids32.data(), out_k.data());
}

// A CPU batch over the shared table shape; `lens` are passed as given.
struct CpuBatch {
  std::vector<int64_t> table, lens;
  bool cu = false;
  PagedBatch view() const {
    PagedBatch b;
    b.batch_size = static_cast<int64_t>(cu ? lens.size() - 1 : lens.size());
    (cu ? b.cu_seq_lens : b.seq_lens) = Indices(lens.data());
    b.page_table = Indices(table.data());
    b.table_cols = kCols;
    b.table_ld = kLd;
    return b;
  }
};

TEST(CheckedModeCpu, GatherBatchRejectsEachViolationAndWritesNothing) {
  auto rng = make_rng(212);
  Pool pool(Backend::kCpu, kPages, rng);
  const Batch valid(rng, {100, 200, 0, 130});  // stale out-of-range ids past each request's pages
  const int64_t rows = 440;
  std::vector<uint8_t> out_k(rows * 128, kPoison);
  std::vector<float> out_s(rows, 0.5f);
  auto run = [&](const CpuBatch& b, int64_t capacity) {
    gather_k_and_s(Exec::cpu(2), pool.view(), b.view(), out_k.data(), out_s.data(), capacity);
  };
  const std::string op = "gather_k_and_s";

  CpuBatch b{valid.table, valid.lens};
  b.table[3 * kLd + 1] = 250;
  expect_rejected([&] { run(b, 430); }, op, "batch.page_table", "250 at request 3, column 1");
  b.table[3 * kLd + 1] = -1;
  expect_rejected([&] { run(b, 430); }, op, "batch.page_table", "-1 at request 3, column 1");

  b = CpuBatch{valid.table, {100, 300, 0, 30}};
  expect_rejected([&] { run(b, 430); }, op, "batch.seq_lens", "300 at request 1");
  b.lens = {100, 200, -4, 130};
  expect_rejected([&] { run(b, 430); }, op, "batch.seq_lens", "-4 at request 2");
  b.lens = valid.lens;
  expect_rejected([&] { run(b, 429); }, op, "out_capacity", "429");

  b = CpuBatch{valid.table, {0, 100, 300, 290, 420}, true};  // step 2 decreases
  expect_rejected([&] { run(b, 430); }, op, "batch.cu_seq_lens", "cu_seq_lens[3] - cu_seq_lens[2] = 290 - 300");
  b.lens = {0, 100, 400, 400, 430};  // step 1 = 300 > 256
  expect_rejected([&] { run(b, 430); }, op, "batch.cu_seq_lens", "cu_seq_lens[2] - cu_seq_lens[1] = 400 - 100");
  b.lens = {7, 107, 307, 307, 437};
  expect_rejected([&] { run(b, 430); }, op, "batch.cu_seq_lens", "cu_seq_lens[0] = 7");
  b.lens = {0, 100, 300, 300, 430};
  expect_rejected([&] { run(b, 0); }, op, "out_capacity", "0");

  for (uint8_t v : out_k) ASSERT_EQ(v, kPoison);
  for (float v : out_s) ASSERT_EQ(v, 0.5f);
  run(b, 430);  // the valid batch, stale columns included, runs
  run(CpuBatch{valid.table, valid.lens}, 430);
}

}  // namespace checked

// ====================================================================================
// Determinism (determinism.h). Slots are distinct: with repeated slots which
// row wins is unspecified (spec), so that case is not a determinism promise.
// ====================================================================================
namespace determinism {

// Sizes chosen so the CPU backend really splits the work over 4 threads
// (parallel_for keeps jobs under ~1 MiB per thread serial).
constexpr int64_t kPages = 300, kTokens = 16384;

TEST_P(DeterminismTest, QuantizeAndStoreK) {
  auto rng = make_rng(501);
  const int64_t ld = 136;
  const auto pool = random_bytes(rng, kPages * L::kBytesPerPage);
  const auto k_bytes = random_bytes(rng, kTokens * ld * 2);  // random bf16 bits: NaN, Inf, subnormals included
  std::vector<uint16_t> k(static_cast<size_t>(kTokens * ld));
  std::memcpy(k.data(), k_bytes.data(), k_bytes.size());
  const auto slots = distinct_slots(rng, kTokens, kPages * L::kPageSize, 0, 9);
  for (ScaleMode mode : {ScaleMode::kFp32, ScaleMode::kUe8m0}) {
    SCOPED_TRACE(to_string(mode));
    expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
      auto cache = to_backend(b, pool);
      auto k_dev = to_backend(b, k);
      auto slots_dev = to_backend(b, slots);
      fence(b);
      quantize_and_store_k(exec, {cache.as<uint8_t>(), kPages}, k_dev.as<uint16_t>(), kTokens, ld,
                           slots_dev.as<int64_t>(), mode);
      fence(b);
      return Outputs{cache.to_host()};
    });
  }
}

TEST_P(DeterminismTest, StoreKAndS) {
  auto rng = make_rng(502);
  const int64_t ld = 144;
  const auto pool = random_bytes(rng, kPages * L::kBytesPerPage);
  const auto k = random_bytes(rng, kTokens * ld);
  const auto scale = random_bytes(rng, kTokens * 4);
  const auto slots = distinct_slots(rng, kTokens, kPages * L::kPageSize, 0, 9);
  expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
    auto cache = to_backend(b, pool);
    auto k_dev = to_backend(b, k);
    auto s_dev = to_backend(b, scale);
    auto slots_dev = to_backend(b, slots);
    fence(b);
    store_k_and_s(exec, {cache.as<uint8_t>(), kPages}, k_dev.as<uint8_t>(), kTokens, ld, s_dev.as<float>(),
                  slots_dev.as<int64_t>());
    fence(b);
    return Outputs{cache.to_host()};
  });
}

TEST_P(DeterminismTest, GatherKAndGatherS) {
  auto rng = make_rng(503);
  const int64_t length = 2 * kTokens + 37;  // a partial last page
  const auto pool = random_bytes(rng, kPages * L::kBytesPerPage);
  const auto ids = random_ints<int32_t>(rng, static_cast<size_t>((length + 63) / 64), 0, kPages - 1);  // repeats too
  expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
    auto cache = to_backend(b, pool);
    auto ids_dev = to_backend(b, ids);
    support::Buffer out_k(b, length * 128 + 64), out_s(b, length * 4 + 64);
    out_k.fill(kPoison);
    out_s.fill(kPoison);
    fence(b);
    const ConstIndexCache view(cache.as<uint8_t>(), kPages);
    gather_k(exec, view, length, ids_dev.as<int32_t>(), out_k.as<uint8_t>());
    gather_s(exec, view, length, ids_dev.as<int32_t>(), out_s.as<float>());
    fence(b);
    return Outputs{out_k.to_host(), out_s.to_host()};
  });
}

TEST_P(DeterminismTest, GatherKAndSBatch) {
  auto rng = make_rng(504);
  const int64_t bs = 37, cols = 24, ld = cols + 3;
  std::vector<int64_t> lens = random_ints<int64_t>(rng, bs, 0, 64 * cols);
  lens[0] = 0;
  lens[1] = 1;
  lens[2] = 64 * cols;
  std::vector<int64_t> cu(1, 0);
  for (int64_t l : lens) cu.push_back(cu.back() + l);
  const int64_t capacity = cu.back() + 100;
  const auto pool = random_bytes(rng, kPages * L::kBytesPerPage);
  const auto table = random_ints<int64_t>(rng, static_cast<size_t>(bs * ld), 0, kPages - 1);
  for (bool cumulative : {false, true}) {
    SCOPED_TRACE(cumulative ? "cu_seq_lens" : "seq_lens");
    expect_deterministic(GetParam(), [&](Backend b, const Exec& exec) {
      auto cache = to_backend(b, pool);
      auto lens_dev = to_backend(b, cumulative ? cu : lens);
      auto table_dev = to_backend(b, table);
      support::Buffer out_k(b, capacity * 128), out_s(b, capacity * 4);
      out_k.fill(kPoison);
      out_s.fill(kPoison);
      fence(b);
      PagedBatch batch;
      batch.batch_size = bs;
      if (cumulative) batch.cu_seq_lens = lens_dev.as<int64_t>();
      else batch.seq_lens = lens_dev.as<int64_t>();
      batch.page_table = table_dev.as<int64_t>();
      batch.table_cols = cols;
      batch.table_ld = ld;
      gather_k_and_s(exec, ConstIndexCache(cache.as<uint8_t>(), kPages), batch, out_k.as<uint8_t>(), out_s.as<float>(),
                     capacity);
      fence(b);
      return Outputs{out_k.to_host(), out_s.to_host()};
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, DeterminismTest, ::testing::ValuesIn(all_backends()), backend_name);

}  // namespace determinism

// ====================================================================================
// Fuzz regressions (fuzz/): the smallest reproduction of each crash found, as
// a plain test that runs in every build.
// ====================================================================================

// fuzz_gather: an IndexType that is neither int32 nor int64 was not checked by
// the gathers; the CPU backend read the int32 page ids as int64 (heap overflow
// under ASan, a wild page id otherwise). Every index argument of the gathers
// must reject it before anything is read or written.
TEST(FuzzRegression, GatherRejectsInvalidIndexType) {
  std::vector<uint8_t> pool(2 * L::kBytesPerPage, 7);
  const ConstIndexCache cache(pool.data(), 2);
  const int32_t ids[2] = {1, 0};
  std::vector<uint8_t> out_k(128 * 100, kPoison);
  std::vector<float> out_s(100);
  std::memset(out_s.data(), kPoison, out_s.size() * 4);
  const auto k_before = out_k;
  const auto s_before = out_s;
  for (int bad : {0, 3, 5, 9}) {
    const Indices page_ids(ids, static_cast<IndexType>(bad));
    SCOPED_TRACE(::testing::Message() << "IndexType " << bad);
    EXPECT_THROW(gather_k(Exec::cpu(), cache, 100, page_ids, out_k.data()), Error);
    EXPECT_THROW(gather_s(Exec::cpu(), cache, 100, page_ids, out_s.data()), Error);

    const int32_t lens[2] = {70, 30}, cu[3] = {0, 70, 100};
    const int32_t table[4] = {1, 0, 0, 1};
    PagedBatch batch;
    batch.batch_size = 2;
    batch.table_cols = 2;
    batch.table_ld = 2;
    batch.seq_lens = Indices(lens, static_cast<IndexType>(bad));  // bad lengths
    batch.page_table = table;
    EXPECT_THROW(gather_k_and_s(Exec::cpu(), cache, batch, out_k.data(), out_s.data(), 100), Error);
    batch.seq_lens = Indices();
    batch.cu_seq_lens = Indices(cu, static_cast<IndexType>(bad));  // bad cumulative lengths
    EXPECT_THROW(gather_k_and_s(Exec::cpu(), cache, batch, out_k.data(), out_s.data(), 100), Error);
    batch.cu_seq_lens = cu;
    batch.page_table = Indices(table, static_cast<IndexType>(bad));  // bad page table
    EXPECT_THROW(gather_k_and_s(Exec::cpu(), cache, batch, out_k.data(), out_s.data(), 100), Error);
  }
  EXPECT_EQ(out_k, k_before);
  EXPECT_EQ(std::memcmp(out_s.data(), s_before.data(), out_s.size() * 4), 0);
}

}  // namespace
}  // namespace test
}  // namespace nsa
