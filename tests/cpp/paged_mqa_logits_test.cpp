// paged_mqa_logits on every backend against the plain reference
// (src/reference/indexer.cpp). The CPU backend must give the reference's
// bits (same formula, same head-sum order, exact s_h); the CUDA backend
// (tensor cores accumulate s_h in their own order) must agree to DeepGEMM's
// calc_diff < 1e-3 with the dequantized fp64 formula, put -inf exactly where
// the reference does, and be bit-stable across runs and graph replays.
// Outputs are poisoned; columns past width must stay poisoned. The pitfalls
// of the indexer facts sheet that concern logits are named tests (P2, P3,
// P4, P8, P9, P11, P13, P15). Every test of the fixture also runs each
// CUDA kernel by name under the same CUDA rules: the sm_90a wgmma kernel
// (MqaLogitsKernel::kWgmma, instances *_wgmma), its persistent schedule
// (kWgmmaPersistent, *_wgmma_persistent; also compared with kWgmma bit for
// bit on many requests) and the mma.sync kernel (*_mma); the sm_90a ones
// skip, visibly, on any device that is not compute 9.0.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "nsa/indexer.h"
#include "reference/index_cache.h"
#include "reference/indexer.h"
#include "reference/topk.h"
#include "test_util.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace test {
namespace {

constexpr uint32_t kPoisonBits = 0x7fa5a5a5u;  // a NaN no backend computes
constexpr int64_t kH = kIndexerHeads, kD = kIndexerHeadDim;

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// One call: host-side description.
struct LogitsCase {
  int64_t batch = 1, n = 1, page_size = 64, num_pages = 0;
  std::vector<int64_t> lens;   // [batch]
  std::vector<int64_t> table;  // [batch * table_ld]
  int64_t table_cols = 0, table_ld = 0;
  int64_t width = 0, ld = 0;
  bool idx64 = false;
  int64_t page_base = 0;  // table entries are offset by this many pages (cache pointer moved back: P8)
  std::vector<uint8_t> q, cache;
  std::vector<float> weights;
};

// e4m3 codes of normal values (never NaN); K rows carry random positive scales.
std::vector<uint8_t> random_fp8(std::mt19937_64& rng, size_t n, float sigma) {
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<uint8_t> v(n);
  for (auto& x : v) x = reference::float_to_e4m3(d(rng));
  return v;
}

// A random case: lengths, a table of distinct-ish random pages with `slack`
// extra columns, random q / K / scales / weights. pool_pages > 0: the cache
// holds only that many pages, which the table entries repeat.
LogitsCase make_case(std::mt19937_64& rng, int64_t n, std::vector<int64_t> lens, int64_t width, int64_t page_size,
                     bool idx64, int64_t pool_pages = 0) {
  LogitsCase c;
  c.batch = static_cast<int64_t>(lens.size());
  c.n = n;
  c.page_size = page_size;
  c.lens = std::move(lens);
  int64_t max_len = 1;
  for (int64_t L : c.lens) max_len = std::max(max_len, L);
  c.table_cols = (max_len + page_size - 1) / page_size + 1;
  c.table_ld = c.table_cols + 3;
  c.num_pages = pool_pages > 0 ? pool_pages : c.batch * c.table_cols + 2;
  c.table = random_ints<int64_t>(rng, static_cast<size_t>(c.batch * c.table_ld), 0, c.num_pages - 1);
  c.width = width;
  c.ld = width + 5;
  c.idx64 = idx64;
  c.q = random_fp8(rng, static_cast<size_t>(c.batch * n * kH * kD), 40.0f);
  const int64_t page_bytes = page_size * (kD + 4);
  c.cache = random_fp8(rng, static_cast<size_t>(c.num_pages * page_bytes), 40.0f);
  std::uniform_real_distribution<float> log_scale(-10.0f, -4.0f);
  for (int64_t p = 0; p < c.num_pages; ++p)
    for (int64_t o = 0; o < page_size; ++o) {
      const float s = std::exp2(log_scale(rng));
      std::memcpy(&c.cache[static_cast<size_t>(p * page_bytes + page_size * kD + o * 4)], &s, 4);
    }
  std::normal_distribution<float> wd(0.0f, 0.05f);
  c.weights.resize(static_cast<size_t>(c.batch * n * kH));
  for (auto& w : c.weights) w = wd(rng);
  return c;
}

struct HostIdx {
  std::vector<int32_t> v32;
  std::vector<int64_t> v64;
  HostIdx(const std::vector<int64_t>& v, bool idx64) {
    if (idx64) v64 = v;
    else v32.assign(v.begin(), v.end());
  }
  Indices view() const { return v64.empty() ? Indices(v32.data()) : Indices(v64.data()); }
  support::Buffer upload(Backend b) const { return v64.empty() ? to_backend(b, v32) : to_backend(b, v64); }
};

class Runner {
 public:
  Runner(Backend b, const LogitsCase& c, MqaLogitsKernel kernel = MqaLogitsKernel::kAuto)
      : b_(b), c_(c), lens_(c.lens, c.idx64), table_(shifted(c), c.idx64) {
    const int64_t page_bytes = c.page_size * (kD + 4);
    host_.kernel = kernel;
    host_.q = c.q.data();
    host_.weights = c.weights.data();
    host_.batch = c.batch;
    host_.next_n = c.n;
    host_.cache = ConstIndexCache(c.cache.data() - c.page_base * page_bytes, c.num_pages + c.page_base);
    host_.page_size = c.page_size;
    host_.context_lens = lens_.view();
    host_.page_table = table_.view();
    host_.table_cols = c.table_cols;
    host_.table_ld = c.table_ld;
    host_.width = c.width;
    host_.logits_ld = c.ld;
    q_ = to_backend(b, c.q);
    w_ = to_backend(b, c.weights);
    cache_ = to_backend(b, c.cache);
    lens_dev_ = lens_.upload(b);
    table_dev_ = table_.upload(b);
    logits_ = support::Buffer(b, static_cast<size_t>(std::max<int64_t>(1, rows() * c.ld)) * 4);
    dev_ = host_;
    dev_.q = q_.as<uint8_t>();
    dev_.weights = w_.as<float>();
    dev_.cache.data = cache_.as<uint8_t>() - c.page_base * page_bytes;
    dev_.context_lens = Indices(lens_dev_.data(), host_.context_lens.type);
    dev_.page_table = Indices(table_dev_.data(), host_.page_table.type);
    dev_.logits = logits_.as<float>();
    poison();
  }

  int64_t rows() const { return c_.batch * c_.n; }
  const PagedMqaLogitsArgs& device_args() const { return dev_; }
  const PagedMqaLogitsArgs& host_args() const { return host_; }
  support::Buffer& lens_buffer() { return lens_dev_; }
  void set_wgmma_chunk_columns(int64_t columns) { host_.wgmma_chunk_columns = dev_.wgmma_chunk_columns = columns; }

  void poison() {
    const std::vector<uint32_t> p(static_cast<size_t>(std::max<int64_t>(1, rows() * c_.ld)), kPoisonBits);
    logits_.upload(p);
  }
  void run(const Exec& exec) { paged_mqa_logits(exec, dev_); }
  std::vector<float> result() const {
    support::synchronize(b_);
    return support::from_backend<float>(logits_, static_cast<size_t>(std::max<int64_t>(1, rows() * c_.ld)));
  }
  std::vector<float> expected() const {
    std::vector<float> e(static_cast<size_t>(std::max<int64_t>(1, rows() * c_.ld)));
    for (auto& x : e) std::memcpy(&x, &kPoisonBits, 4);
    PagedMqaLogitsArgs a = host_;
    a.logits = e.data();
    reference::paged_mqa_logits(a);
    return e;
  }

 private:
  static std::vector<int64_t> shifted(const LogitsCase& c) {
    std::vector<int64_t> t = c.table;
    for (auto& x : t)
      if (x >= 0) x += c.page_base;
    return t;
  }
  Backend b_;
  const LogitsCase& c_;
  HostIdx lens_, table_;
  PagedMqaLogitsArgs host_, dev_;
  support::Buffer q_, w_, cache_, lens_dev_, table_dev_, logits_;
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// got vs the reference: poison past width and -inf positions exact; the
// values bit-exact (CPU) or (CUDA) to calc_diff < 1e-3 per row against the
// dequantized fp64 formula and the fixed-order reference, for rows of at
// least kRowCalcDiffValues finite values, and every value within
// kMagnitudeTolerance of its magnitude (reference::paged_mqa_logit_magnitude)
// of the fp64 formula. A row of a few values is ill-conditioned for
// calc_diff: the weights have both signs, so a logit can be a near-cancelling
// sum of 64 terms, and the tensor cores sum the fp8 products with less than
// fp32 precision (on an H100 one P = 8, width = 1 row had calc_diff 0.059 on
// both wgmma schedules, while every row of 63 values and more passed). A
// wrong K row or scale moves a value by about its own size, which for these
// random inputs is of the order of 1% of its magnitude (an estimate: a sum
// of 64 x 128 terms of random sign against the sum of their sizes).
constexpr int64_t kRowCalcDiffValues = 32;
constexpr double kMagnitudeTolerance = 1e-3;

void expect_matches(Backend b, const Runner& run, const LogitsCase& c, const std::vector<float>& got,
                    const std::string& what) {
  SCOPED_TRACE(what);
  const std::vector<float> want = run.expected();
  if (b == Backend::kCpu) {
    for (size_t i = 0; i < want.size(); ++i)
      if (bits(got[i]) != bits(want[i])) {
        ADD_FAILURE() << "row " << static_cast<int64_t>(i) / c.ld << " col " << static_cast<int64_t>(i) % c.ld << ": "
                      << got[i] << " vs reference " << want[i];
        return;
      }
    return;
  }
  for (int64_t r = 0; r < run.rows(); ++r) {
    const float* g = &got[static_cast<size_t>(r * c.ld)];
    const float* w = &want[static_cast<size_t>(r * c.ld)];
    for (int64_t t = 0; t < c.ld; ++t) {
      const bool past = t >= c.width;
      if (past || std::isinf(w[t]) != std::isinf(g[t])) {
        if (bits(g[t]) != bits(w[t])) {
          ADD_FAILURE() << "row " << r << " col " << t << ": " << g[t] << " vs reference " << w[t];
          return;
        }
      }
    }
    std::vector<double> exact(static_cast<size_t>(c.width)), fixed(static_cast<size_t>(c.width));
    int64_t finite = 0;
    for (int64_t t = 0; t < c.width; ++t) {
      fixed[static_cast<size_t>(t)] = w[t];
      exact[static_cast<size_t>(t)] =
          std::isinf(w[t]) ? w[t] : reference::paged_mqa_logit_dequantized(run.host_args(), r, t);
      if (std::isinf(w[t])) continue;
      ++finite;
      const double bound = kMagnitudeTolerance * reference::paged_mqa_logit_magnitude(run.host_args(), r, t);
      if (!(std::fabs(g[t] - exact[static_cast<size_t>(t)]) <= bound)) {
        ADD_FAILURE() << "row " << r << " col " << t << ": " << g[t] << " vs fp64 " << exact[static_cast<size_t>(t)]
                      << ", more than " << bound << " apart";
        return;
      }
    }
    if (finite < kRowCalcDiffValues) continue;
    EXPECT_LT(reference::calc_diff(g, exact.data(), c.width), 1e-3) << "row " << r;
    EXPECT_LT(reference::calc_diff(g, fixed.data(), c.width), 1e-3) << "row " << r;
  }
}

void check_case(Backend b, MqaLogitsKernel kernel, const LogitsCase& c, const std::string& what) {
  Runner run(b, c, kernel);
  run.run(exec_for(b));
  const std::vector<float> first = run.result();
  expect_matches(b, run, c, first, what);
  run.poison();
  run.run(exec_for(b));
  EXPECT_TRUE(same_bits(first, run.result())) << what << ": second run differs";
}

// The current CUDA device is compute 9.0 (H100, H200): the wgmma kernel must run there.
bool cuda_device_is_sm90() {
#if defined(NSA_WITH_CUDA)
  int device = 0, major = 0, minor = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess && major == 9 &&
         minor == 0;
#else
  return false;
#endif
}

// A backend and, on CUDA, the kernel that runs the op.
struct Variant {
  Backend backend;
  MqaLogitsKernel kernel;
};

std::string variant_label(const Variant& v) {
  const char* kernel = v.kernel == MqaLogitsKernel::kWgmma             ? "_wgmma"
                       : v.kernel == MqaLogitsKernel::kWgmmaPersistent ? "_wgmma_persistent"
                       : v.kernel == MqaLogitsKernel::kMmaSync         ? "_mma"
                                                                       : "";
  return std::string(to_string(v.backend)) + kernel;
}
void PrintTo(const Variant& v, std::ostream* os) { *os << variant_label(v); }

std::vector<Variant> all_variants() {
  std::vector<Variant> v;
  // cpu, cuda: MqaLogitsKernel::kAuto (the library's pick); then each CUDA kernel by name.
  for (Backend b : all_backends()) v.push_back({b, MqaLogitsKernel::kAuto});
  v.push_back({Backend::kCuda, MqaLogitsKernel::kWgmma});
  v.push_back({Backend::kCuda, MqaLogitsKernel::kWgmmaPersistent});
  v.push_back({Backend::kCuda, MqaLogitsKernel::kMmaSync});
  return v;
}

std::string variant_name(const ::testing::TestParamInfo<Variant>& info) { return variant_label(info.param); }

class PagedMqaLogitsTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    NSA_SKIP_WITHOUT_BACKEND(backend());
    // On a compute 9.0 device the wgmma kernels must run (an exception is a failure).
    if (kernel() == MqaLogitsKernel::kWgmma && !cuda_device_is_sm90())
      GTEST_SKIP() << "MqaLogitsKernel::kWgmma needs a compute 9.0 (sm_90a) device: not run";
    if (kernel() == MqaLogitsKernel::kWgmmaPersistent && !cuda_device_is_sm90())
      GTEST_SKIP() << "MqaLogitsKernel::kWgmmaPersistent needs a compute 9.0 (sm_90a) device: not run";
  }
  Backend backend() const { return GetParam().backend; }
  MqaLogitsKernel kernel() const { return GetParam().kernel; }
  void check(const LogitsCase& c, const std::string& what) const { check_case(backend(), kernel(), c, what); }
};

// ------------------------------- against the reference -------------------------------

TEST_P(PagedMqaLogitsTest, EveryNextNLengthAndIndexType) {
  auto rng = make_rng(1);
  constexpr int64_t K = 2048;
  for (int64_t n = 1; n <= kIndexerMaxNextN; ++n) {
    const bool idx64 = n % 2 == 0;
    const int64_t wide = K + 70;  // not a multiple of the CUDA chunk
    LogitsCase c = make_case(rng, n, {0, 1, K - 1, K, K + 1, 300 + 37 * n}, wide, 64, idx64);
    check(c, "N=" + std::to_string(n) + (idx64 ? " int64" : " int32"));
  }
}

// Powers of two (a token's page column is a shift on CUDA; 8 .. 256 are
// the persistent schedule's TMA loads, 256 two copies per page) and other
// multiples of 4 (12 and 48: the division the kernels keep for them; 4, 12
// and 48 the persistent schedule's cp.async loads).
TEST_P(PagedMqaLogitsTest, PageSizesAndWidths) {
  auto rng = make_rng(2);
  for (int64_t p : {4, 8, 12, 16, 32, 48, 64, 128, 256}) {
    for (int64_t width : {1, 63, 64, 65, 700, 1100}) {
      LogitsCase c = make_case(rng, 2, {width + 20, width / 2 + 1, 5}, width, p, p == 32);
      check(c, "P=" + std::to_string(p) + " width=" + std::to_string(width));
    }
  }
}

// Lengths around the CUDA tiles (128 tokens per stage, 64 per warpgroup of
// the wgmma kernel, 512-column chunks) for every N, widths that are no
// multiple of them, and page sizes other than 64 (8 and 256: the persistent
// schedule's TMA segments of one tile's 16 pages and of half a page).
TEST_P(PagedMqaLogitsTest, TileEdgeLengths) {
  auto rng = make_rng(14);
  for (int64_t n = 1; n <= kIndexerMaxNextN; ++n) {
    for (int64_t p : {8, 16, 64, 128, 256}) {
      LogitsCase c =
          make_case(rng, n, {63 + n - 1, 64 + n - 1, 65 + n - 1, 127, 128, 129, 511, 512, 513, 1025}, 1100, p, n == 3);
      check(c, "N=" + std::to_string(n) + " P=" + std::to_string(p));
    }
  }
}

TEST_P(PagedMqaLogitsTest, EmptyBatchAndZeroWidthWriteNothing) {
  auto rng = make_rng(3);
  LogitsCase c = make_case(rng, 2, {100, 7}, 0, 64, false);
  Runner run(backend(), c, kernel());
  run.run(exec_for(backend()));
  for (float x : run.result()) EXPECT_EQ(bits(x), kPoisonBits);
  PagedMqaLogitsArgs a = run.device_args();
  a.batch = 0;
  a.width = 64;
  a.logits_ld = 64;
  paged_mqa_logits(exec_for(backend()), a);
  for (float x : run.result()) EXPECT_EQ(bits(x), kPoisonBits);
}

// ------------------------------- pitfalls (indexer facts sheet §10) -------------------------------

// P2: keys whose 64 head dots are all <= 0 score exactly 0 on every backend.
TEST_P(PagedMqaLogitsTest, P2_ExactZeroPlateau) {
  auto rng = make_rng(4);
  LogitsCase c = make_case(rng, 2, {1500, 900}, 1536, 64, false);
  const int64_t page_bytes = c.page_size * (kD + 4);
  for (int64_t p = 0; p < c.num_pages; ++p)
    for (int64_t o = 0; o < c.page_size; o += 1)
      if ((p + o) % 4 != 0) std::memset(&c.cache[static_cast<size_t>(p * page_bytes + o * kD)], 0, kD);
  Runner run(backend(), c, kernel());
  run.run(exec_for(backend()));
  const auto got = run.result(), want = run.expected();
  int64_t zeros = 0;
  for (size_t i = 0; i < want.size(); ++i)
    if (want[i] == 0.0f) {
      ++zeros;
      EXPECT_EQ(got[i], 0.0f) << "index " << i;
    }
  EXPECT_GT(zeros, 1000);
  expect_matches(backend(), run, c, got, "plateau");
}

// P3 / P11: columns past a row's length, negative and out-of-pool table
// entries inside the length, and a table narrower than the length: -inf.
TEST_P(PagedMqaLogitsTest, P3_P11_MaskedColumnsAreMinusInf) {
  auto rng = make_rng(5);
  LogitsCase c = make_case(rng, 1, {1000, 1000, 600}, 1200, 64, false);
  c.table[0 * c.table_ld + 3] = -1;                // padding page inside request 0
  c.table[1 * c.table_ld + 5] = c.num_pages;       // out of the pool
  c.table[1 * c.table_ld + 6] = int64_t{1} << 30;  // garbage
  c.table_cols = 10;                               // request 0 and 1 need 16 columns: 640.. masked
  // Entries past a request's live pages are garbage and must never be used.
  for (int64_t col = 10; col < c.table_ld; ++col) c.table[2 * c.table_ld + col] = -7;
  Runner run(backend(), c, kernel());
  run.run(exec_for(backend()));
  const auto got = run.result();
  const float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(got[3 * 64], ninf);
  EXPECT_EQ(got[static_cast<size_t>(c.ld + 5 * 64 + 1)], ninf);
  EXPECT_EQ(got[static_cast<size_t>(c.ld + 6 * 64 + 2)], ninf);
  EXPECT_EQ(got[700], ninf);
  EXPECT_NE(got[2 * 64], ninf);
  expect_matches(backend(), run, c, got, "masked");
}

// P4: negative, zero and huge lengths (clamped to 0 and to the width).
TEST_P(PagedMqaLogitsTest, P4_NegativeAndOversizedLengths) {
  auto rng = make_rng(6);
  LogitsCase c = make_case(rng, 3, {-5, 0, 2, 3, 4, 520}, 520, 64, true);
  c.lens[5] = int64_t{1} << 40;  // int64 only: read past width never happens (cut at width)
  c.table_cols = (520 + 63) / 64;
  Runner run(backend(), c, kernel());
  run.run(exec_for(backend()));
  expect_matches(backend(), run, c, run.result(), "lengths");
}

// P8: page ids past 2^31 / 8448 (byte offsets beyond 2^31, 64-bit arithmetic).
TEST_P(PagedMqaLogitsTest, P8_ByteOffsetsPast2To31) {
  auto rng = make_rng(7);
  LogitsCase c = make_case(rng, 2, {700, 333}, 800, 64, false);
  c.page_base = 300000;  // 300,000 * 8448 > 2^31
  check(c, "offsets");
}

// P9: MTP causal lengths, L in {N-1, N, N+1, K+N-1, K+N}.
TEST_P(PagedMqaLogitsTest, P9_MtpCausalLengths) {
  auto rng = make_rng(8);
  constexpr int64_t K = 2048;
  for (int64_t n = 1; n <= kIndexerMaxNextN; ++n) {
    LogitsCase c = make_case(rng, n, {n - 1, n, n + 1, K + n - 1, K + n}, K + 8, 64, false);
    Runner run(backend(), c, kernel());
    run.run(exec_for(backend()));
    const auto got = run.result();
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t j = 0; j < n; ++j) {
        const int64_t len = std::clamp<int64_t>(c.lens[static_cast<size_t>(b)] - n + 1 + j, 0, c.width);
        const float* row = &got[static_cast<size_t>((b * n + j) * c.ld)];
        if (len > 0) EXPECT_FALSE(std::isinf(row[len - 1])) << "b " << b << " j " << j;
        if (len < c.width) EXPECT_TRUE(std::isinf(row[len]) && row[len] < 0) << "b " << b << " j " << j;
      }
    expect_matches(backend(), run, c, got, "N=" + std::to_string(n));
  }
}

// P13 / P15: bit-identical across runs (check_case) and across graph replays
// with lengths changed between captures and replays (CUDA).
TEST_P(PagedMqaLogitsTest, P13_GraphReplayIsBitStable) {
  if (backend() != Backend::kCuda) GTEST_SKIP() << "CUDA graphs: CUDA only";
#if defined(NSA_WITH_CUDA)
  const Backend b = Backend::kCuda;
  auto rng = make_rng(9);
  LogitsCase c = make_case(rng, 2, {1800, 40, 1201}, 2000, 64, false);
  Runner run(b, c, kernel());
  cudaStream_t stream = nullptr;
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  run.run(Exec::cuda(stream));
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  // Replay with new lengths (the graph must read them on the device).
  c.lens = {1000, 1999, 3};
  const HostIdx lens(c.lens, false);
  run.lens_buffer().upload(lens.v32);
  std::vector<float> first;
  for (int rep = 0; rep < 3; ++rep) {
    run.poison();
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    const auto got = run.result();
    if (rep == 0) {
      first = got;
      Runner fresh(b, c, kernel());  // the reference sees the new lengths
      expect_matches(b, fresh, c, got, "replay");
    } else {
      EXPECT_TRUE(same_bits(first, got)) << "replay " << rep << " differs";
    }
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
#endif
}

// The CPU backend gives the same bits for any thread count.
TEST(PagedMqaLogitsCpu, ThreadCountDoesNotChangeBits) {
  auto rng = make_rng(10);
  LogitsCase c = make_case(rng, 2, {3000, 2500, 17}, 3072, 64, false);
  Runner run(Backend::kCpu, c);
  run.run(Exec::cpu(1));
  const auto one = run.result();
  run.poison();
  run.run(Exec::cpu(3));
  EXPECT_TRUE(same_bits(one, run.result()));
}

// ------------------------------- validation -------------------------------

TEST_P(PagedMqaLogitsTest, BadArgumentsThrowBeforeWriting) {
  auto rng = make_rng(11);
  LogitsCase c = make_case(rng, 2, {100, 50}, 128, 64, false);
  Runner run(backend(), c, kernel());
  const Exec e = exec_for(backend());
  auto expect_bad = [&](auto mutate, const std::string& arg) {
    PagedMqaLogitsArgs a = run.device_args();
    mutate(a);
    expect_invalid([&] { paged_mqa_logits(e, a); }, arg);
  };
  expect_bad([](PagedMqaLogitsArgs& a) { a.next_n = 0; }, "next_n");
  expect_bad([](PagedMqaLogitsArgs& a) { a.next_n = 5; }, "next_n");
  expect_bad([](PagedMqaLogitsArgs& a) { a.batch = -1; }, "batch");
  expect_bad([](PagedMqaLogitsArgs& a) { a.width = -1; }, "width");
  expect_bad([](PagedMqaLogitsArgs& a) { a.logits_ld = a.width - 1; }, "logits_ld");
  expect_bad([](PagedMqaLogitsArgs& a) { a.logits = nullptr; }, "logits");
  expect_bad([](PagedMqaLogitsArgs& a) { a.q = nullptr; }, "q");
  expect_bad([](PagedMqaLogitsArgs& a) { a.weights = nullptr; }, "weights");
  expect_bad([](PagedMqaLogitsArgs& a) { a.wgmma_chunk_columns = -512; }, "wgmma_chunk_columns");
  expect_bad([](PagedMqaLogitsArgs& a) { a.wgmma_chunk_columns = 700; }, "wgmma_chunk_columns");
  expect_bad([](PagedMqaLogitsArgs& a) { a.wgmma_chunk_columns = kIndexerMaxChunkColumns + 512; },
             "wgmma_chunk_columns");
  expect_bad([](PagedMqaLogitsArgs& a) { a.context_lens = Indices(); }, "context_lens");
  expect_bad([](PagedMqaLogitsArgs& a) { a.page_size = 6; }, "page_size");
  expect_bad([](PagedMqaLogitsArgs& a) { a.page_size = 0; }, "page_size");
  expect_bad([](PagedMqaLogitsArgs& a) { a.table_ld = a.table_cols - 1; }, "table_ld");
  expect_bad([](PagedMqaLogitsArgs& a) { a.table_cols = -1; }, "table_cols");
  expect_bad([](PagedMqaLogitsArgs& a) { a.page_table = Indices(); }, "page_table");
  expect_bad([](PagedMqaLogitsArgs& a) { a.cache.data = nullptr; }, "cache.data");
  expect_bad([](PagedMqaLogitsArgs& a) { a.cache.num_pages = -1; }, "cache.num_pages");
  expect_bad([](PagedMqaLogitsArgs& a) { a.kernel = static_cast<MqaLogitsKernel>(4); }, "kernel");
  expect_bad([](PagedMqaLogitsArgs& a) { a.kernel = static_cast<MqaLogitsKernel>(-1); }, "kernel");
  for (float x : run.result()) EXPECT_EQ(bits(x), kPoisonBits);
}

// The wgmma kernels named on a CUDA device that is not compute 9.0:
// kUnsupported naming the argument, nothing launched, nothing written.
TEST(PagedMqaLogitsCuda, WgmmaElsewhereIsUnsupported) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  if (cuda_device_is_sm90())
    GTEST_SKIP() << "compute 9.0 device: the wgmma kernels run (PagedMqaLogitsTest *_wgmma, *_wgmma_persistent)";
  auto rng = make_rng(15);
  LogitsCase c = make_case(rng, 2, {100, 50}, 128, 64, false);
  for (MqaLogitsKernel k : {MqaLogitsKernel::kWgmma, MqaLogitsKernel::kWgmmaPersistent}) {
    Runner run(Backend::kCuda, c, k);
    expect_invalid([&] { run.run(Exec::cuda()); }, "kernel", ErrorCode::kUnsupported);
    for (float x : run.result()) EXPECT_EQ(bits(x), kPoisonBits);
  }
}

// A wgmma test case: `requests` lengths alternating between random ones in
// [0, width + 100] and `edges` (tile and chunk edges, past the width), and
// every `unreadable_every`-th table entry unreadable (-inf inside the lengths).
LogitsCase edge_lengths_case(std::mt19937_64& rng, int64_t n, int64_t requests, int64_t width,
                             const std::vector<int64_t>& edges, int64_t pool_pages, size_t unreadable_every) {
  std::uniform_int_distribution<int64_t> any_len(0, width + 100);
  std::vector<int64_t> lens(static_cast<size_t>(requests));
  for (int64_t i = 0; i < requests; ++i)
    lens[static_cast<size_t>(i)] = i % 2 == 1 ? edges[static_cast<size_t>(i / 2) % edges.size()] : any_len(rng);
  LogitsCase c = make_case(rng, n, lens, width, 64, n % 2 == 0, pool_pages);
  for (size_t i = 0; i < c.table.size(); i += unreadable_every) c.table[i] = -1;
  return c;
}

// "" when got and want hold the same bits, else where they first differ.
std::string first_bit_difference(const std::vector<float>& got, const std::vector<float>& want, int64_t ld) {
  if (got.size() != want.size()) return "sizes differ";
  for (size_t i = 0; i < got.size(); ++i)
    if (bits(got[i]) != bits(want[i]))
      return "row " + std::to_string(static_cast<int64_t>(i) / ld) + " col " +
             std::to_string(static_cast<int64_t>(i) % ld) + ": " + std::to_string(got[i]) + " vs " +
             std::to_string(want[i]);
  return "";
}

// The persistent schedule writes kWgmma's logits bit for bit (same loads,
// instructions and epilogue) where its CTAs walk many items: 300 requests x
// 4 chunks of a 2048-column width (more items than one wave of CTAs holds,
// so every CTA's pipeline crosses item and request boundaries), lengths at
// the tile and chunk edges (0, 1, 127 .. 513, 5000 > width, the width)
// between random ones, some unreadable table entries, N = 1..4.
TEST(PagedMqaLogitsCuda, WgmmaPersistentEqualsWgmmaBitwise) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  if (!cuda_device_is_sm90())
    GTEST_SKIP() << "MqaLogitsKernel::kWgmmaPersistent needs a compute 9.0 (sm_90a) device: not run";
  auto rng = make_rng(17);
  constexpr int64_t kWidth = 2048;
  for (int64_t n = 1; n <= kIndexerMaxNextN; ++n) {
    const LogitsCase c =
        edge_lengths_case(rng, n, 300, kWidth, {0, 1, 127, 128, 129, 511, 512, 513, 5000, kWidth}, 256, 97);
    Runner persistent(Backend::kCuda, c, MqaLogitsKernel::kWgmmaPersistent);
    Runner wgmma(Backend::kCuda, c, MqaLogitsKernel::kWgmma);
    persistent.run(Exec::cuda());
    wgmma.run(Exec::cuda());
    const std::string diff = first_bit_difference(persistent.result(), wgmma.result(), c.ld);
    EXPECT_EQ(diff, "") << "N=" << n << ": persistent vs wgmma";
  }
}

// Every chunk length of the wgmma kernel (columns of a request per CTA)
// gives the default's bits: a chunk covers whole 128-token tiles at the same
// columns, each token scored the same way; only the CTA running it and how
// many tiles share one pipeline and one q load change. Lengths around tile
// and chunk edges, a width that is no multiple of any chunk, unreadable
// pages, and a chunk wider than the width.
TEST(PagedMqaLogitsCuda, WgmmaChunkColumnsGiveTheSameBits) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  if (!cuda_device_is_sm90()) GTEST_SKIP() << "MqaLogitsKernel::kWgmma needs a compute 9.0 (sm_90a) device: not run";
  auto rng = make_rng(18);
  constexpr int64_t kWidth = 5000;
  for (int64_t n = 1; n <= kIndexerMaxNextN; ++n) {
    const LogitsCase c =
        edge_lengths_case(rng, n, 40, kWidth,
                          {0, 1, 127, 128, 129, 511, 512, 513, 1023, 1024, 1025, 2049, 4095, kWidth, kWidth + 9}, 512,
                          89);
    Runner run(Backend::kCuda, c, MqaLogitsKernel::kWgmma);
    run.run(Exec::cuda());
    const std::vector<float> want = run.result();
    for (int64_t columns :
         {int64_t{512}, int64_t{1024}, int64_t{2048}, int64_t{4096}, int64_t{8192}, kIndexerMaxChunkColumns}) {
      run.poison();  // every column must be written again
      run.set_wgmma_chunk_columns(columns);
      run.run(Exec::cuda());
      EXPECT_EQ(first_bit_difference(run.result(), want, c.ld), "")
          << "N=" << n << ", " << columns << " columns per CTA vs the default";
    }
  }
}

// At N = 1 a grid of at least two rounds of three CTAs per SM runs the
// kernel's three-CTA instance (wg_launch; smaller grids the two-CTA one).
// 1000 requests x 1024 columns in chunks of 512 are 2000 CTAs, past two
// rounds on every compute 9.0 part (at most 132 SMs x 3). Its logits must be
// the persistent schedule's bit for bit (that one is compared with the CPU
// on every fixture case), lengths at tile and chunk edges between random
// ones, some unreadable table entries.
TEST(PagedMqaLogitsCuda, WgmmaLargeGridInstanceEqualsPersistentBitwise) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  if (!cuda_device_is_sm90()) GTEST_SKIP() << "MqaLogitsKernel::kWgmma needs a compute 9.0 (sm_90a) device: not run";
  auto rng = make_rng(19);
  constexpr int64_t kWidth = 1024;
  const LogitsCase c =
      edge_lengths_case(rng, 1, 1000, kWidth, {0, 1, 127, 128, 129, 511, 512, 513, 1023, kWidth, 5000}, 1024, 101);
  Runner wgmma(Backend::kCuda, c, MqaLogitsKernel::kWgmma);
  wgmma.set_wgmma_chunk_columns(512);
  Runner persistent(Backend::kCuda, c, MqaLogitsKernel::kWgmmaPersistent);
  wgmma.run(Exec::cuda());
  persistent.run(Exec::cuda());
  EXPECT_EQ(first_bit_difference(wgmma.result(), persistent.result(), c.ld), "") << "wgmma (2000 CTAs) vs persistent";
}

// kAuto is the wgmma kernel on a compute 9.0 device (this suite's builds
// carry sm_90a SASS) and the mma.sync kernel elsewhere: its logits are those
// of that kernel, bit for bit.
TEST(PagedMqaLogitsCuda, AutoIsWgmmaOnSm90AndMmaSyncElsewhere) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(16);
  LogitsCase c = make_case(rng, 3, {0, 700, 1500, 2100}, 2100, 64, false);
  Runner picked(Backend::kCuda, c, MqaLogitsKernel::kAuto);
  picked.run(Exec::cuda());
  const MqaLogitsKernel expected = cuda_device_is_sm90() ? MqaLogitsKernel::kWgmma : MqaLogitsKernel::kMmaSync;
  Runner named(Backend::kCuda, c, expected);
  named.run(Exec::cuda());
  EXPECT_TRUE(same_bits(picked.result(), named.result()))
      << "kAuto differs from " << (expected == MqaLogitsKernel::kWgmma ? "kWgmma" : "kMmaSync");
}

// ------------------------------- indexer_topk -------------------------------

// indexer_topk == topk_transform(paged_mqa_logits(...)) on the same backend,
// byte for byte; on the CPU also == the references composed.
TEST_P(PagedMqaLogitsTest, IndexerTopkEqualsLogitsThenTopk) {
  auto rng = make_rng(12);
  const std::pair<int64_t, int64_t> shapes[] = {{1, 2048}, {2, 512}, {4, 64}, {3, 100}};
  for (const auto& [n, k] : shapes) {
    {
      LogitsCase c = make_case(rng, n, {0, 5, k - 1, k + n, 2 * k + 100}, 2 * k + 128, 64, n == 2);
      c.table[1 * c.table_ld + 0] = -1;  // a padding page: its tokens are -inf and map to -1
      Runner run(backend(), c, kernel());
      const int64_t rows = run.rows(), ld = k + 3;
      const std::vector<int32_t> poison(static_cast<size_t>(rows * ld), -7);
      support::Buffer fused = to_backend(backend(), poison), fused_raw = to_backend(backend(), poison),
                      plain = to_backend(backend(), poison);
      IndexerTopkArgs x;
      x.logits = run.device_args();
      x.k = k;
      x.out = fused.as<int32_t>();
      x.out_ld = ld;
      x.out_raw = fused_raw.as<int32_t>();
      x.out_raw_ld = ld;
      x.order = TopkOrder::kAscending;
      indexer_topk(exec_for(backend()), x);
      // The two ops in turn.
      run.poison();
      run.run(exec_for(backend()));
      TopkArgs t;
      t.scores = x.logits.logits;
      t.rows = rows;
      t.width = c.width;
      t.score_ld = c.ld;
      t.k = k;
      t.length_form = TopkLengths::kPerRequest;
      t.lengths = x.logits.context_lens;
      t.rows_per_request = n;
      t.transform = TopkTransform::kPaged64;
      t.table = x.logits.page_table;
      t.table_rows = c.batch;
      t.table_cols = c.table_cols;
      t.table_ld = c.table_ld;
      t.out = plain.as<int32_t>();
      t.out_ld = ld;
      t.order = TopkOrder::kAscending;
      topk_transform(exec_for(backend()), t);
      support::synchronize(backend());
      const auto got = support::from_backend<int32_t>(fused, poison.size());
      EXPECT_EQ(got, support::from_backend<int32_t>(plain, poison.size())) << "N=" << n << " k=" << k;
      if (backend() == Backend::kCpu) {
        const std::vector<float> logits = run.expected();
        std::vector<int32_t> want = poison;
        TopkArgs h = t;
        h.scores = logits.data();
        h.lengths = run.host_args().context_lens;
        h.table = run.host_args().page_table;
        h.out = want.data();
        reference::topk_transform(h);
        EXPECT_EQ(got, want) << "N=" << n << " k=" << k;
      }
    }
  }
}

TEST_P(PagedMqaLogitsTest, IndexerTopkBadArgumentsThrowBeforeWriting) {
  auto rng = make_rng(13);
  LogitsCase c = make_case(rng, 1, {100, 50}, 128, 64, false);
  Runner run(backend(), c, kernel());
  support::Buffer out(backend(), 2 * 64 * 4);
  IndexerTopkArgs x;
  x.logits = run.device_args();
  x.k = 64;
  x.out = out.as<int32_t>();
  x.out_ld = 64;
  auto expect_bad = [&](auto mutate, const std::string& arg) {
    IndexerTopkArgs y = x;
    mutate(y);
    expect_invalid([&] { indexer_topk(exec_for(backend()), y); }, arg);
  };
  expect_bad([](IndexerTopkArgs& y) { y.k = 0; }, "k");
  expect_bad([](IndexerTopkArgs& y) { y.out_ld = 10; }, "out_ld");
  expect_bad([](IndexerTopkArgs& y) { y.out = nullptr; }, "out");
  expect_bad([](IndexerTopkArgs& y) { y.logits.page_size = 32; }, "page_size");
  expect_bad([](IndexerTopkArgs& y) { y.logits.next_n = 9; }, "next_n");
  for (float v : run.result()) EXPECT_EQ(bits(v), kPoisonBits);  // the workspace is untouched
}

INSTANTIATE_TEST_SUITE_P(Backends, PagedMqaLogitsTest, ::testing::ValuesIn(all_variants()), variant_name);

}  // namespace
}  // namespace test
}  // namespace nsa
