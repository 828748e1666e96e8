// Checked mode (issue 6): invalid device-resident values are reported, never
// acted on.
//   CUDA (tests named *_cuda, skipped without a GPU): one planted violation
//   among valid values; the valid rows equal the reference, the invalid row's
//   destination bytes keep their poison (buffers compared whole), and the
//   DeviceError names the op, argument, row and value. Valid inputs record
//   nothing and give the unchecked bytes; a captured checked graph reports a
//   violation planted between replays.
//   CPU (always validates): every planted violation throws kInvalidArgument
//   naming the argument and the value, and nothing is written.
#include <cstring>
#include <numeric>
#include <optional>

#include "metadata_dests.h"
#include "nsa/index_cache.h"
#include "nsa/metadata.h"
#include "reference/index_cache.h"
#include "test_util.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace test {
namespace {

using L = IndexCacheLayout;
constexpr int64_t kPages = 40;

// A poisoned pool on `b`, mirrored on the host.
struct Pool {
  std::vector<uint8_t> host;
  support::Buffer dev;
  Pool(Backend b, std::mt19937_64& rng)
      : host(random_bytes(rng, static_cast<size_t>(kPages * L::kBytesPerPage))), dev(to_backend(b, host)) {}
  IndexCache view() const { return {dev.as<uint8_t>(), kPages}; }
  IndexCache host_view() { return {host.data(), kPages}; }
};

std::vector<int64_t> distinct_slots(std::mt19937_64& rng, int64_t n) {
  std::vector<int64_t> all(static_cast<size_t>(kPages * L::kPageSize));
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int64_t> s(all.begin(), all.begin() + n);
  for (int64_t t = 5; t < n; t += 11) s[static_cast<size_t>(t)] = -1;  // padding stays legal
  return s;
}

// A device DeviceError and the checked exec that records into it (CUDA only).
struct Checked {
  support::Buffer error{Backend::kCuda, sizeof(DeviceError)};
  Exec exec = Exec::cuda().with_checks(error.as<DeviceError>());
  Checked() { reset_device_error(exec); }
  DeviceError read() const { return read_device_error(exec); }
};

void expect_error(const DeviceError& e, OpId op, ArgId arg, int64_t row, int64_t value) {
  EXPECT_EQ(e.code, 1) << describe(e);
  EXPECT_EQ(e.op, static_cast<int32_t>(op)) << describe(e);
  EXPECT_EQ(e.arg, static_cast<int32_t>(arg)) << describe(e);
  EXPECT_EQ(e.row, row) << describe(e);
  EXPECT_EQ(e.value, value) << describe(e);
}

#define NSA_SKIP_WITHOUT_GPU() NSA_SKIP_WITHOUT_BACKEND(::nsa::Backend::kCuda)

// ------------------------------------ stores (CUDA) ------------------------------------

std::vector<uint16_t> bf16_rows(std::mt19937_64& rng, int64_t n) {
  std::vector<uint16_t> k(static_cast<size_t>(n * 128));
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (auto& h : k) {
    const float f = normal(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    h = static_cast<uint16_t>(u >> 16);
  }
  return k;
}

TEST(CheckedMode, QuantizeAndStoreSlotPastPool_cuda) {
  NSA_SKIP_WITHOUT_GPU();
  auto rng = make_rng(200);
  Pool pool(Backend::kCuda, rng);
  const int64_t n = 300, bad_token = 137, bad_slot = kPages * L::kPageSize + 3;
  auto slots = distinct_slots(rng, n);
  const auto k = bf16_rows(rng, n);
  slots[bad_token] = bad_slot;
  auto k_dev = to_backend(Backend::kCuda, k);
  auto s_dev = to_backend(Backend::kCuda, slots);
  Checked chk;
  quantize_and_store_k(chk.exec, pool.view(), k_dev.as<uint16_t>(), n, 128, s_dev.as<int64_t>(), ScaleMode::kUe8m0);
  expect_error(chk.read(), OpId::kQuantizeAndStoreK, ArgId::kSlots, bad_token, bad_slot);
  slots[bad_token] = -1;  // the reference skips it: the invalid token writes nothing
  reference::quantize_and_store_k(pool.host_view(), k.data(), n, 128, slots.data(), ScaleMode::kUe8m0);
  NSA_EXPECT_BYTES_EQ(pool.dev.to_host(), pool.host);

  reset_device_error(chk.exec);
  EXPECT_EQ(chk.read().code, 0);
}

TEST(CheckedMode, StoreKAndSSlotPastPool_cuda) {
  NSA_SKIP_WITHOUT_GPU();
  auto rng = make_rng(201);
  Pool pool(Backend::kCuda, rng);
  const int64_t n = 97, bad_token = 96, bad_slot = int64_t{1} << 40;
  auto slots = distinct_slots(rng, n);
  const auto k = random_bytes(rng, static_cast<size_t>(n * 136));
  std::vector<float> scale(static_cast<size_t>(n), 0.25f);
  slots[bad_token] = bad_slot;
  auto k_dev = to_backend(Backend::kCuda, k);
  auto sc_dev = to_backend(Backend::kCuda, scale);
  auto s_dev = to_backend(Backend::kCuda, slots);
  Checked chk;
  store_k_and_s(chk.exec, pool.view(), k_dev.as<uint8_t>(), n, 136, sc_dev.as<float>(), s_dev.as<int64_t>());
  expect_error(chk.read(), OpId::kStoreKAndS, ArgId::kSlots, bad_token, bad_slot);
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
  Pool pool(Backend::kCuda, rng);
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
  Checked chk;
  const Indices view(static_cast<const IdxT*>(ids_dev.data()));
  gather_k(chk.exec, pool.view(), length, view, out_k.as<uint8_t>());
  expect_error(chk.read(), OpId::kGatherK, ArgId::kPageIds, bad_pos, bad_id);
  reset_device_error(chk.exec);
  gather_s(chk.exec, pool.view(), length, view, out_s.as<float>());
  expect_error(chk.read(), OpId::kGatherS, ArgId::kPageIds, bad_pos, bad_id);
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
  Checked chk;
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
    pool_.emplace(Backend::kCuda, rng);
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
  expect_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kPageTable, 3, kPages + 210);
  run.plant_value = -1;
  expect_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kPageTable, 3, -1);
}

TEST_F(CheckedGatherBatch, SeqLenOverTableWidth_cuda) {
  // Request 1 claims 300 > 64 * 4 tokens: its rows [100, 400) stay poisoned;
  // request 2 still starts at row 400 (offsets follow the claimed lengths).
  Batch b(rng, {100, 300, 50});
  BatchRun run{b.lens, false, 450, 460};
  run.starts = {0, 100, 400};
  run.written = {true, false, true};
  expect_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kSeqLens, 1, 300);
}

TEST_F(CheckedGatherBatch, NegativeSeqLen_cuda) {
  Batch b(rng, {100, 50, -5});
  BatchRun run{b.lens, false, 150, 160};
  run.starts = {0, 100, 150};
  run.written = {true, true, false};
  expect_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kSeqLens, 2, -5);
}

TEST_F(CheckedGatherBatch, CuSeqLensDecreasing_cuda) {
  Batch b(rng, {100, 50, -10});  // cu = {0, 100, 150, 140}
  BatchRun run{b.cu(), true, 150, 160};
  run.starts = {0, 100, 150};
  run.written = {true, true, false};
  expect_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kCuSeqLens, 3, 140);
}

TEST_F(CheckedGatherBatch, CuSeqLensStepOverTableWidth_cuda) {
  Batch b(rng, {100, 300, 50});  // cu = {0, 100, 400, 450}
  BatchRun run{b.cu(), true, 450, 460};
  run.starts = {0, 100, 400};
  run.written = {true, false, true};
  expect_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kCuSeqLens, 2, 400);
}

TEST_F(CheckedGatherBatch, CuSeqLensNotStartingAtZero_cuda) {
  Batch b(rng, {100, 50});
  BatchRun run{{5, 105, 155}, true, 160, 160};
  run.starts = {0, 100};
  run.written = {false, false};  // ambiguous rows: nothing is written at all
  expect_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kCuSeqLens, 0, 5);
}

TEST_F(CheckedGatherBatch, SumOverCapacity_cuda) {
  // 100 + 200 + 60 = 360 rows into 320: rows [320, 360) are not written (the
  // buffer has 370 poisoned rows); request 2, the first to cross, is reported.
  Batch b(rng, {100, 200, 60});
  BatchRun run{b.lens, false, 320, 370};
  run.starts = {0, 100, 300};
  run.written = {true, true, true};
  expect_error(run_batch(pool(), b, run, rng), OpId::kGatherKAndS, ArgId::kOutCapacity, 2, 360);
  BatchRun cu_run = run;
  cu_run.lens_passed = b.cu();
  cu_run.cu_form = true;
  expect_error(run_batch(pool(), b, cu_run, rng), OpId::kGatherKAndS, ArgId::kOutCapacity, 2, 360);
}

// ------------------------- valid inputs: nothing recorded, same bytes -------------------------

TEST(CheckedMode, ValidInputsRecordNothingAndMatchUnchecked_cuda) {
  NSA_SKIP_WITHOUT_GPU();
  auto rng = make_rng(206);
  Pool checked_pool(Backend::kCuda, rng);
  support::Buffer plain_pool = to_backend(Backend::kCuda, checked_pool.host);
  const IndexCache plain_view{plain_pool.as<uint8_t>(), kPages};
  Checked chk;
  const Exec plain = Exec::cuda();
  const int64_t n = 200;
  const auto slots = distinct_slots(rng, n);
  const auto k = bf16_rows(rng, n);
  auto k_dev = to_backend(Backend::kCuda, k);
  auto s_dev = to_backend(Backend::kCuda, slots);
  quantize_and_store_k(chk.exec, checked_pool.view(), k_dev.as<uint16_t>(), n, 128, s_dev.as<int64_t>(),
                       ScaleMode::kFp32);
  quantize_and_store_k(plain, plain_view, k_dev.as<uint16_t>(), n, 128, s_dev.as<int64_t>(), ScaleMode::kFp32);
  const auto slots2 = distinct_slots(rng, n);
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
  Pool pool(Backend::kCuda, rng);
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
  expect_error(read_device_error(exec), OpId::kGatherKAndS, ArgId::kPageTable, 2, kPages);
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

// Throws kInvalidArgument whose message names the op, the argument and the offending value.
template <class Fn>
void expect_rejected(Fn&& fn, const std::string& op, const std::string& arg, const std::string& got) {
  try {
    fn();
    ADD_FAILURE() << "expected nsa::Error for " << arg << " = " << got;
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument) << what;
    EXPECT_NE(what.find("nsa::" + op + ":"), std::string::npos) << what;
    EXPECT_NE(what.find("argument '" + arg + "'"), std::string::npos) << what;
    EXPECT_NE(what.find("got " + got), std::string::npos) << what;
  }
}

TEST(CheckedModeCpu, StoresRejectSlotsPastPoolAndWriteNothing) {
  auto rng = make_rng(210);
  for (int threads : {1, 4}) {
    const Exec cpu = Exec::cpu(threads);
    Pool pool(Backend::kCpu, rng);
    const auto before = pool.host;
    const int64_t n = 2000;
    auto slots = distinct_slots(rng, n);
    const auto k = bf16_rows(rng, n);
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
  Pool pool(Backend::kCpu, rng);
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
  Pool pool(Backend::kCpu, rng);
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

// ------------------------------- CPU: build_metadata preconditions -------------------------------

// A destination set of `rows` rows in host memory (page_table_1 and real_page_table widths given), poisoned.
support::MetadataDestShape cpu_dest(int64_t rows, int64_t pt_cols, int64_t real_cols) {
  support::MetadataDestShape s;
  s.max_batch = s.max_rows = rows;
  s.page_table_1_cols = pt_cols;
  s.real_page_table_cols = real_cols;
  s.fields = metadata_field_bit(MetadataField::kSeqlensExpanded) | metadata_field_bit(MetadataField::kRealPageTable);
  return s;
}

TEST(CheckedModeCpu, BuildMetadataRejectsEachViolationAndWritesNothing) {
  const int64_t N = 3;
  // Two destinations: the second has the narrower page_table_1 (40) and real_page_table (1 column of P = 64).
  const support::MetadataDests dests(Backend::kCpu, {cpu_dest(8 * N, 80, 2), cpu_dest(8 * N, 40, 1)}, kPoison);
  const Exec cpu = Exec::cpu();
  const MetadataTargets& targets = dests.targets();
  std::vector<int32_t> req_to_token(4 * 80, 9);
  std::vector<int32_t> seq = {10, 37, 0}, rpi = {3, 0, 1}, ext = {1, 3, 0};
  MetadataInputs in;
  in.seq_lens = seq.data();
  in.req_pool_indices = rpi.data();
  in.req_to_token = req_to_token.data();
  in.req_to_token_rows = 4;
  in.req_to_token_cols = 50;
  in.req_to_token_ld = 80;
  auto build = [&](ForwardMode mode, const MetadataInputs& i) {
    build_metadata(cpu, MetadataConfig{mode, 3, N, 2048, 64}, i, targets);
  };
  const std::string op = "build_metadata";

  seq = {10, 41, 0};  // over the narrow destination's 40 columns
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.seq_lens", "41 at request 1");
  seq = {10, 38, 0};  // + N = 41 in TARGET_VERIFY
  expect_rejected([&] { build(ForwardMode::kTargetVerify, in); }, op, "inputs.seq_lens (+ draft_tokens)",
                  "41 at request 1");
  seq = {10, -1, 0};
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.seq_lens", "-1 at request 1");
  seq = {10, 37, 0};
  in.req_to_token_cols = 30;  // cache length over the source rows
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.seq_lens", "37 at request 1");
  in.req_to_token_cols = 50;
  rpi = {3, 4, 1};
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.req_pool_indices", "4 at request 1");
  rpi = {3, 0, -1};  // checked even for an empty request
  expect_rejected([&] { build(ForwardMode::kDecode, in); }, op, "inputs.req_pool_indices", "-1 at request 2");
  rpi = {3, 0, 1};
  MetadataInputs ex = in;
  ex.extend_lens = ext.data();
  ext = {1, 4, 0};  // > N
  expect_rejected([&] { build(ForwardMode::kDraftExtend, ex); }, op, "inputs.extend_lens", "4 at request 1");
  ext = {-1, 3, 0};
  expect_rejected([&] { build(ForwardMode::kDraftExtend, ex); }, op, "inputs.extend_lens", "-1 at request 0");
  ext = {1, 3, 0};
  EXPECT_TRUE(dests.matches());  // both still poison

  // real_page_table: the narrow destination holds 1 page of 64 tokens; a 33-column page table holds 65.
  support::MetadataDestShape real_shape = cpu_dest(3, 70, 1);
  real_shape.page_table_1_ld = 80;
  const support::MetadataDests real_short(Backend::kCpu, {real_shape}, kPoison);
  const MetadataTargets& one = real_short.targets();
  seq = {10, 65, 0};
  MetadataInputs long_rows = in;
  long_rows.req_to_token_cols = 80;
  expect_rejected(
      [&] {
        build_metadata(cpu, MetadataConfig{ForwardMode::kDecode, 3, 1, 2048, 64}, long_rows, one);
      },
      op, "inputs.seq_lens", "65 at request 1 (2 pages)");
  EXPECT_TRUE(real_short.matches());

  seq = {10, 37, 0};  // valid: all three modes run
  build(ForwardMode::kDecode, in);
  build(ForwardMode::kTargetVerify, in);
  build(ForwardMode::kDraftExtend, ex);
  EXPECT_FALSE(dests.matches());
}

}  // namespace
}  // namespace test
}  // namespace nsa
