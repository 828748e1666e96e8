// topk_transform on every backend against the plain reference
// (src/reference/topk.cpp): exact sets on 100% of rows, poisoned outputs
// checked in full (slots past K untouched), every pitfall of the top-k facts
// sheet as a named test (P1..P17; P12 and P15 concern the paged-MQA schedule
// and the fused logits, not this op), and every validation path.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "nsa/detail/topk_math.h"
#include "nsa/topk.h"
#include "reference/topk.h"
#include "test_util.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace test {

#if defined(NSA_WITH_CUDA)
// topk_test_kernels.cu: the CUDA launcher with the CTAs per row forced
// (1, or a cluster size 2..16 where topk_cluster_usable says so).
bool topk_cluster_usable(int cluster, ScoreType type);
cudaError_t topk_transform_with_cluster(const TopkArgs& a, int cluster, cudaStream_t stream);
#endif

namespace {

constexpr int32_t kOutPoison = static_cast<int32_t>(0xA5A5A5A5u);
const int64_t kKs[] = {512, 1024, 2048};

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t float_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

// One call: host-side description. Index arrays are stored as int64 and
// handed to the op as int32 or int64 (idx64).
struct TopkCase {
  ScoreType type = ScoreType::kFloat32;
  int64_t rows = 0, width = 0, ld = 0, k = 2048;
  std::vector<float> scores;  // [rows * ld]; for bf16 converted on upload
  TopkLengths form = TopkLengths::kPerRow;
  std::vector<int64_t> lengths;
  int64_t n = 1;
  std::vector<int64_t> row_starts, row_to_request, offsets, table;  // empty = absent
  TopkTransform transform = TopkTransform::kRaw;
  int64_t table_rows = 0, table_cols = 0, table_ld = 0;
  bool idx64 = false;
  int64_t out_pad = 5;  // slots past k per output row (must stay poisoned)
  bool with_raw = true;
  TopkOrder order = TopkOrder::kAny;
  int64_t score_offset = 0;  // scores pointer = buffer - score_offset elements (int64 offsets test)
};

// Host array of the case's index values in the chosen width.
struct HostIndices {
  std::vector<int32_t> v32;
  std::vector<int64_t> v64;
  HostIndices(const std::vector<int64_t>& v, bool idx64) {
    if (idx64) v64 = v;
    else v32.assign(v.begin(), v.end());
  }
  Indices view() const {
    if (!v64.empty()) return Indices(v64.data());
    if (!v32.empty()) return Indices(v32.data());
    return Indices();
  }
  support::Buffer upload(Backend b) const { return v64.empty() ? to_backend(b, v32) : to_backend(b, v64); }
};

// Everything the op wrote: out and out_raw, each [rows, k + pad].
struct TopkResult {
  std::vector<int32_t> out, raw;
};

class Runner {
 public:
  Runner(Backend b, const TopkCase& c)
      : b_(b),
        c_(c),
        lens_(c.lengths, c.idx64),
        starts_(c.row_starts, c.idx64),
        rtr_(c.row_to_request, c.idx64),
        offs_(c.offsets, c.idx64),
        table_(c.table, c.idx64) {
    host_ = make_args(c, nullptr);
    if (c.type == ScoreType::kFloat32) {
      scores_dev_ = to_backend(b, c.scores);
    } else {
      bf16_.resize(c.scores.size());
      for (size_t i = 0; i < c.scores.size(); ++i) bf16_[i] = float_bf16(c.scores[i]);
      scores_dev_ = to_backend(b, bf16_);
    }
    host_.scores = c.type == ScoreType::kFloat32 ? static_cast<const void*>(c.scores.data() - c.score_offset)
                                                 : static_cast<const void*>(bf16_.data() - c.score_offset);
    host_.lengths = lens_.view();
    host_.row_starts = starts_.view();
    host_.row_to_request = rtr_.view();
    host_.offsets = offs_.view();
    host_.table = table_.view();
    lens_dev_ = lens_.upload(b);
    starts_dev_ = starts_.upload(b);
    rtr_dev_ = rtr_.upload(b);
    offs_dev_ = offs_.upload(b);
    table_dev_ = table_.upload(b);
    const size_t out_elems = static_cast<size_t>(std::max<int64_t>(1, c.rows * (c.k + c.out_pad)));
    const std::vector<int32_t> poison(out_elems, kOutPoison);
    out_dev_ = to_backend(b, poison);
    raw_dev_ = to_backend(b, poison);
    dev_ = host_;
    const size_t elem = c.type == ScoreType::kFloat32 ? 4 : 2;
    dev_.scores = static_cast<const uint8_t*>(scores_dev_.data()) - c.score_offset * static_cast<int64_t>(elem);
    auto pick = [](const support::Buffer& buf, const Indices& h) {
      return h.data ? Indices(buf.data(), h.type) : Indices();
    };
    dev_.lengths = pick(lens_dev_, host_.lengths);
    dev_.row_starts = pick(starts_dev_, host_.row_starts);
    dev_.row_to_request = pick(rtr_dev_, host_.row_to_request);
    dev_.offsets = pick(offs_dev_, host_.offsets);
    dev_.table = pick(table_dev_, host_.table);
    dev_.out = out_dev_.as<int32_t>();
    dev_.out_raw = c.with_raw ? raw_dev_.as<int32_t>() : nullptr;
  }

  const TopkArgs& device_args() const { return dev_; }
  support::Buffer& lengths_buffer() { return lens_dev_; }

  // Poisons both outputs again (before another call on the same inputs).
  void poison() {
    const std::vector<int32_t> p(static_cast<size_t>(std::max<int64_t>(1, c_.rows * (c_.k + c_.out_pad))), kOutPoison);
    out_dev_.upload(p);
    raw_dev_.upload(p);
  }

  void run(const Exec& exec) { topk_transform(exec, dev_); }

  TopkResult result() const {
    support::synchronize(b_);
    const size_t n = static_cast<size_t>(std::max<int64_t>(1, c_.rows * (c_.k + c_.out_pad)));
    return {support::from_backend<int32_t>(out_dev_, n), support::from_backend<int32_t>(raw_dev_, n)};
  }

  // The reference on the host views, into poisoned arrays of the same shape.
  TopkResult expected() const {
    const size_t n = static_cast<size_t>(std::max<int64_t>(1, c_.rows * (c_.k + c_.out_pad)));
    TopkResult e{std::vector<int32_t>(n, kOutPoison), std::vector<int32_t>(n, kOutPoison)};
    TopkArgs a = host_;
    a.out = e.out.data();
    a.out_raw = c_.with_raw ? e.raw.data() : nullptr;
    reference::topk_transform(a);
    return e;
  }

 private:
  static TopkArgs make_args(const TopkCase& c, const void* scores) {
    TopkArgs a;
    a.scores = scores;
    a.score_type = c.type;
    a.rows = c.rows;
    a.width = c.width;
    a.score_ld = c.ld;
    a.k = c.k;
    a.length_form = c.form;
    a.rows_per_request = c.n;
    a.transform = c.transform;
    a.table_rows = c.table_rows;
    a.table_cols = c.table_cols;
    a.table_ld = c.table_ld;
    a.out_ld = c.k + c.out_pad;
    a.out_raw_ld = c.k + c.out_pad;
    a.order = c.order;
    return a;
  }

  Backend b_;
  const TopkCase& c_;
  HostIndices lens_, starts_, rtr_, offs_, table_;
  std::vector<uint16_t> bf16_;
  TopkArgs host_, dev_;
  support::Buffer scores_dev_, lens_dev_, starts_dev_, rtr_dev_, offs_dev_, table_dev_, out_dev_, raw_dev_;
};

#if defined(NSA_WITH_CUDA)
// One call of a Runner (or any enqueue on a stream) captured into a CUDA
// graph on its own stream; a failing CUDA call throws (gtest reports it as a
// failure of the test).
class CapturedCall {
 public:
  explicit CapturedCall(Runner& run) : CapturedCall([&](cudaStream_t s) { run.run(Exec::cuda(s)); }) {}
  explicit CapturedCall(const std::function<void(cudaStream_t)>& enqueue) {
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    enqueue(stream_);
    check(cudaStreamEndCapture(stream_, &graph_));
    check(cudaGraphInstantiate(&exec_, graph_, 0));
  }
  ~CapturedCall() {
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (graph_) (void)cudaGraphDestroy(graph_);
    if (stream_) (void)cudaStreamDestroy(stream_);
  }
  CapturedCall(const CapturedCall&) = delete;
  CapturedCall& operator=(const CapturedCall&) = delete;
  void replay() {
    check(cudaGraphLaunch(exec_, stream_));
    check(cudaStreamSynchronize(stream_));
  }
  static void check(cudaError_t e) {
    if (e != cudaSuccess) throw std::runtime_error(std::string("CUDA: ") + cudaGetErrorString(e));
  }

 private:
  cudaStream_t stream_ = nullptr;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};
#endif

// Row r of got vs expected: slots past k untouched (poison), the valid count
// and the -1 tail exact, the set exact; the order too in ascending mode (and
// for short rows, whose identity order is part of the contract).
void expect_rows_equal(const TopkCase& c, const TopkResult& got, const TopkResult& want, const std::string& what) {
  const int64_t ld = c.k + c.out_pad;
  int64_t bad_rows = 0;
  for (int64_t r = 0; r < c.rows && bad_rows < 5; ++r) {
    const auto row = [&](const std::vector<int32_t>& v) {
      return std::vector<int32_t>(v.begin() + r * ld, v.begin() + (r + 1) * ld);
    };
    auto g = row(got.out), w = row(want.out), gr = row(got.raw), wr = row(want.raw);
    const int64_t valid = std::count_if(wr.begin(), wr.begin() + c.k, [](int32_t x) { return x >= 0; });
    const bool exact_order = c.order == TopkOrder::kAscending || valid < c.k || !c.with_raw;
    if (!exact_order) {
      // Same set: sort raw indices with the outputs carried along.
      auto sort_pairs = [&](std::vector<int32_t>& raw, std::vector<int32_t>& out) {
        std::vector<std::pair<int32_t, int32_t>> p;
        for (int64_t s = 0; s < c.k; ++s) p.emplace_back(raw[s], out[s]);
        std::sort(p.begin(), p.end());
        for (int64_t s = 0; s < c.k; ++s) std::tie(raw[s], out[s]) = p[s];
      };
      sort_pairs(gr, g);
      sort_pairs(wr, w);
    }
    bool ok = g == w;
    if (c.with_raw) ok = ok && gr == wr;
    if (!ok) {
      ++bad_rows;
      int64_t s = 0;
      while (s < ld && g[s] == w[s] && (!c.with_raw || gr[s] == wr[s])) ++s;
      ADD_FAILURE() << what << ": row " << r << " differs first at slot " << s << " (valid " << valid << "): out "
                    << g[s] << " vs " << w[s] << ", raw " << gr[s] << " vs " << wr[s];
    }
  }
}

// Runs the case on the backend and compares with the reference.
void check_case(Backend b, const TopkCase& c, const std::string& what) {
  SCOPED_TRACE(what);
  Runner run(b, c);
  run.run(exec_for(b));
  expect_rows_equal(c, run.result(), run.expected(), what);
}

std::string describe(const TopkCase& c) {
  return ::testing::PrintToString(c.rows) + "x" + std::to_string(c.width) + " ld=" + std::to_string(c.ld) +
         " k=" + std::to_string(c.k) + " " + to_string(c.type) + " " + to_string(c.form) + " N=" + std::to_string(c.n) +
         " " + to_string(c.transform) + " " + to_string(c.order) + (c.idx64 ? " int64" : " int32");
}

// Scores: random normal values, so ties are rare but present after rounding.
std::vector<float> random_scores(std::mt19937_64& rng, int64_t rows, int64_t ld) {
  std::vector<float> v(static_cast<size_t>(rows * ld));
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (auto& x : v) x = d(rng);
  return v;
}

// Columns outside every row's window hold +NaN (the highest rank): a backend
// that reads one selects it and fails the comparison.
void poison_outside_windows(TopkCase& c) {
  for (int64_t r = 0; r < c.rows; ++r) {
    int64_t start = 0, len = 0;
    if (c.form == TopkLengths::kPerRequest) {
      len = c.lengths[static_cast<size_t>(r / c.n)] - c.n + 1 + r % c.n;
    } else {
      len = c.lengths[static_cast<size_t>(r)];
      if (!c.row_starts.empty()) start = std::clamp<int64_t>(c.row_starts[static_cast<size_t>(r)], 0, c.width);
    }
    len = std::clamp<int64_t>(len, 0, c.width - start);
    for (int64_t j = 0; j < c.ld; ++j)
      if (j < start || j >= start + len) c.scores[static_cast<size_t>(r * c.ld + j)] = bits_float(0x7fc00001u);
  }
}

// A ragged random table for `requests` rows of `cols` columns, entries in [0, pool).
std::vector<int64_t> random_table(std::mt19937_64& rng, int64_t requests, int64_t ld, int64_t pool) {
  std::vector<int64_t> t(static_cast<size_t>(std::max<int64_t>(1, requests * ld)));
  std::uniform_int_distribution<int64_t> d(0, pool - 1);
  for (auto& x : t) x = d(rng);
  return t;
}

// A plain decode case: rows x width fp32, per-row lengths, raw output.
TopkCase decode_case(std::mt19937_64& rng, int64_t rows, int64_t width, int64_t k, std::vector<int64_t> lengths) {
  TopkCase c;
  c.rows = rows;
  c.width = width;
  c.ld = width + 3;
  c.k = k;
  c.scores = random_scores(rng, rows, c.ld);
  c.lengths = std::move(lengths);
  poison_outside_windows(c);
  return c;
}

class TopkTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override { NSA_SKIP_WITHOUT_BACKEND(GetParam()); }
  Backend backend() const { return GetParam(); }
};

// ------------------------------- against the reference -------------------------------

TEST_P(TopkTest, MatchesReferenceEveryModeAndIndexType) {
  auto rng = make_rng(1);
  for (int64_t k : kKs) {
    for (int mode = 0; mode < 4; ++mode) {
      for (int variant = 0; variant < 4; ++variant) {
        const auto transform = static_cast<TopkTransform>(mode);
        TopkCase c;
        c.k = k;
        c.idx64 = variant & 1;
        c.order = variant & 2 ? TopkOrder::kAscending : TopkOrder::kAny;
        c.type = variant == 3 ? ScoreType::kBfloat16 : ScoreType::kFloat32;
        c.rows = 9;
        c.width = 3 * k + 37;
        c.ld = c.width + (variant & 1 ? 0 : 29);
        c.scores = random_scores(rng, c.rows, c.ld);
        c.lengths = {0, 1, k - 1, k, k + 1, c.width, c.width + 1, 2 * k + 5, -5};
        c.transform = transform;
        if (transform == TopkTransform::kPaged64 || transform == TopkTransform::kTokenTable) {
          c.table_rows = 4;
          c.table_cols = transform == TopkTransform::kPaged64 ? (c.width + 63) / 64 : c.width;
          c.table_ld = c.table_cols + 7;
          c.table =
              random_table(rng, c.table_rows, c.table_ld, transform == TopkTransform::kPaged64 ? 100000 : 1 << 30);
          c.row_to_request.resize(static_cast<size_t>(c.rows));
          for (auto& q : c.row_to_request) q = std::uniform_int_distribution<int64_t>(0, c.table_rows - 1)(rng);
        }
        if (transform == TopkTransform::kRaggedOffset) {
          c.offsets.resize(static_cast<size_t>(c.rows));
          for (auto& o : c.offsets) o = std::uniform_int_distribution<int64_t>(0, 1 << 24)(rng);
        }
        poison_outside_windows(c);
        check_case(backend(), c, describe(c));
      }
    }
  }
}

TEST_P(TopkTest, StridedOutputsWithoutRawAndOddK) {
  auto rng = make_rng(2);
  for (int64_t k : {1, 7, 100, 513, 2047}) {
    TopkCase c = decode_case(rng, 5, 3000, k, {2999, 3000, k, k + 1, 64});
    c.out_pad = 61;
    c.with_raw = false;
    check_case(backend(), c, describe(c));
  }
}

// ------------------------------------ pitfalls ------------------------------------

// P1: more than 16,384 (and more than 2048) scores in the coarse bin at the
// boundary: values that share their top bits and differ only in the low
// mantissa bits, and thousands of exact ties at the threshold.
TEST_P(TopkTest, P1_ThresholdBinOverflow) {
  auto rng = make_rng(3);
  for (int64_t k : kKs) {
    TopkCase c;
    c.k = k;
    c.rows = 3;
    c.width = c.ld = 40000;
    c.scores.resize(static_cast<size_t>(c.rows * c.ld));
    std::uniform_int_distribution<uint32_t> low(0, 1023);
    for (int64_t j = 0; j < c.ld; ++j) {
      c.scores[j] = bits_float(0x3f800000u + low(rng));                 // row 0: 40,000 values in one 2^10-wide bin
      c.scores[c.ld + j] = (j % 5 == 0) ? 2.0f : 1.5f;                  // row 1: 8,000 ties at the top
      c.scores[2 * c.ld + j] = bits_float(0x3f800000u + low(rng) % 3);  // row 2: three values, ~13,000 ties each
    }
    c.lengths = {c.width, c.width, c.width};
    check_case(backend(), c, "P1 k=" + std::to_string(k));
  }
}

// P2: exact-zero plateaus (ReLU): 99% and 99.9% zeros, nnz below, at and
// around K; the smallest zero indices fill the set, bit-exactly, every run.
TEST_P(TopkTest, P2_ZeroPlateau) {
  auto rng = make_rng(4);
  for (int64_t k : kKs) {
    const int64_t width = 32768;
    std::vector<int64_t> nnz = {width / 100, width / 1000, k - 1, k, k + 1, 0};
    TopkCase c;
    c.k = k;
    c.rows = static_cast<int64_t>(nnz.size());
    c.width = c.ld = width;
    c.scores.assign(static_cast<size_t>(c.rows * c.ld), 0.0f);
    for (int64_t r = 0; r < c.rows; ++r) {
      std::vector<int64_t> cols(static_cast<size_t>(width));
      std::iota(cols.begin(), cols.end(), 0);
      std::shuffle(cols.begin(), cols.end(), rng);
      for (int64_t i = 0; i < nnz[r]; ++i)
        c.scores[static_cast<size_t>(r * c.ld + cols[i])] = std::uniform_real_distribution<float>(1e-3f, 1.0f)(rng);
      if (r == 0) c.scores[static_cast<size_t>(r * c.ld + cols[width - 1])] = -0.0f;  // -0 ties with +0
    }
    c.lengths.assign(static_cast<size_t>(c.rows), width);
    c.order = TopkOrder::kAscending;
    SCOPED_TRACE("P2 k=" + std::to_string(k));
    Runner run(backend(), c);
    const TopkResult want = run.expected();
    for (int rep = 0; rep < 25; ++rep) {
      run.run(exec_for(backend()));
      const TopkResult got = run.result();
      expect_rows_equal(c, got, want, "replay " + std::to_string(rep));
      if (::testing::Test::HasFailure()) break;
    }
  }
}

// P3: -inf is legal and selectable; sentinels (-FLT_MAX, values below the
// fp16 range) must rank as what they are; widths not a multiple of 4 or 8.
TEST_P(TopkTest, P3_NegInfAndSentinels) {
  auto rng = make_rng(5);
  for (int64_t k : kKs) {
    for (int64_t width : {k + 1, k + 3, k + 7, 3 * k + 5}) {
      TopkCase c;
      c.k = k;
      c.rows = 4;
      c.width = width;
      c.ld = width;
      c.scores = random_scores(rng, c.rows, c.ld);
      for (int64_t j = 0; j < width; ++j) {
        if (j % 3 != 0) c.scores[j] = -INFINITY;  // row 0: a third finite
        c.scores[c.ld + j] = j % 2 ? -INFINITY : -std::numeric_limits<float>::max();
        c.scores[2 * c.ld + j] = j % 4 == 1 ? -70000.0f : -INFINITY;  // below fp16's -65504
        c.scores[3 * c.ld + j] = -INFINITY;                           // all -inf: the smallest indices
      }
      c.lengths = {width, width, width, width};
      for (int64_t r : {0, 1}) c.lengths[r] = width - r;  // odd lengths: tail handling
      c.order = TopkOrder::kAscending;
      check_case(backend(), c, "P3 k=" + std::to_string(k) + " width=" + std::to_string(width));
    }
  }
}

// P4: negative and garbage lengths from padded rows are clamped, never read
// as huge unsigned values; all-zero batches write only -1.
TEST_P(TopkTest, P4_NegativeAndGarbageLengths) {
  auto rng = make_rng(6);
  for (int64_t k : kKs) {
    for (bool idx64 : {false, true}) {
      const int64_t width = 2 * k + 100;
      std::vector<int64_t> lens = {-5,
                                   0,
                                   1,
                                   k - 1,
                                   k,
                                   k + 1,
                                   width,
                                   width + 1,
                                   std::numeric_limits<int32_t>::min(),
                                   std::numeric_limits<int32_t>::max()};
      if (idx64) lens.push_back(std::numeric_limits<int64_t>::max() / 2);
      TopkCase c = decode_case(rng, static_cast<int64_t>(lens.size()), width, k, lens);
      c.idx64 = idx64;
      check_case(backend(), c, "P4 k=" + std::to_string(k) + (idx64 ? " int64" : " int32"));
      TopkCase zeros = decode_case(rng, 7, width, k, std::vector<int64_t>(7, 0));
      check_case(backend(), zeros, "P4 all-zero lengths");
    }
  }
}

// P5: K larger than the physical width: select all, pad -1.
TEST_P(TopkTest, P5_KAboveWidth) {
  auto rng = make_rng(7);
  for (int64_t width : {1, 64, 2047, 2048}) {
    TopkCase c = decode_case(rng, 2, width, 2048, {width, 5000});
    check_case(backend(), c, "P5 width=" + std::to_string(width));
  }
}

// P6: lengths change between calls (CUDA: between replays of one captured
// graph whose width is far above the live lengths); results follow the live
// lengths, with no host-side decision frozen at capture.
TEST_P(TopkTest, P6_LengthsChangeUnderOneLaunchShape) {
  auto rng = make_rng(8);
  const int64_t width = 163840, k = 2048;
  TopkCase c = decode_case(rng, 2, width, k, {width, width});
  const std::vector<std::vector<int64_t>> live = {{1024, 160000}, {163840, 7}, {50000, 2049}, {0, 2048}};
  Runner run(backend(), c);
  auto set_lengths = [&](const std::vector<int64_t>& l) {
    std::vector<int32_t> v(l.begin(), l.end());
    run.lengths_buffer().upload(v);
  };
  auto check_live = [&](const std::vector<int64_t>& l, const std::string& what) {
    TopkCase e = c;
    e.lengths = l;
    Runner ref(Backend::kCpu, e);
    expect_rows_equal(e, run.result(), ref.expected(), what);
  };
#if defined(NSA_WITH_CUDA)
  if (backend() == Backend::kCuda) {
    CapturedCall graph(run);
    for (size_t i = 0; i < live.size(); ++i) {
      set_lengths(live[i]);
      graph.replay();
      check_live(live[i], "P6 replay " + std::to_string(i));
    }
    return;
  }
#endif
  for (size_t i = 0; i < live.size(); ++i) {
    set_lengths(live[i]);
    run.run(exec_for(backend()));
    check_live(live[i], "P6 call " + std::to_string(i));
  }
}

// P7: the only barriers between CTAs are those of one cluster (CUDA, few
// rows), whose CTAs the hardware schedules together, so concurrent work on
// other streams cannot deadlock it: two calls on two streams at once (the
// 3-row call runs a cluster per row on sm_90).
TEST_P(TopkTest, P7_ConcurrentStreams) {
  auto rng = make_rng(9);
  TopkCase a = decode_case(rng, 64, 20000, 2048, std::vector<int64_t>(64, 20000));
  TopkCase b = decode_case(rng, 3, 131072, 1024, {131072, 100000, 5});
  Runner ra(backend(), a), rb(backend(), b);
#if defined(NSA_WITH_CUDA)
  if (backend() == Backend::kCuda) {
    cudaStream_t s1 = nullptr, s2 = nullptr;
    ASSERT_EQ(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking), cudaSuccess);
    ASSERT_EQ(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking), cudaSuccess);
    for (int i = 0; i < 4; ++i) {
      ra.run(Exec::cuda(s1));
      rb.run(Exec::cuda(s2));
    }
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    (void)cudaStreamDestroy(s1);
    (void)cudaStreamDestroy(s2);
  }
#endif
  if (backend() == Backend::kCpu) {
    ra.run(Exec::cpu(2));
    rb.run(Exec::cpu(2));
  }
  expect_rows_equal(a, ra.result(), ra.expected(), "P7 stream 1");
  expect_rows_equal(b, rb.result(), rb.expected(), "P7 stream 2");
}

// P8: 64-bit offsets. Row 1 starts 2^32 + 64 elements after row 0 (row 0 is
// empty, so the pointer before the buffer is never dereferenced); page ids
// near 2^25 give outputs near 2^31, past it they are masked.
TEST_P(TopkTest, P8_Int64OffsetsAndLargePageIds) {
  auto rng = make_rng(10);
  const int64_t width = 6000, k = 2048;
  TopkCase c;
  c.rows = 2;
  c.width = width;
  c.ld = (int64_t{1} << 32) + 64;
  c.k = k;
  c.scores = random_scores(rng, 1, width);  // row 1 only
  c.score_offset = c.ld;
  c.lengths = {0, width};
  c.transform = TopkTransform::kPaged64;
  c.table_rows = 2;
  c.table_cols = (width + 63) / 64;
  c.table_ld = c.table_cols;
  c.table.assign(static_cast<size_t>(2 * c.table_ld), 0);
  for (int64_t p = 0; p < c.table_cols; ++p)
    c.table[static_cast<size_t>(c.table_ld + p)] = (int64_t{1} << 25) - 1 - p % 3 + (p % 5 == 0 ? 7 : 0);
  c.idx64 = true;
  check_case(backend(), c, "P8");
}

// P9: MTP causal lengths len = max(0, L - N + 1 + j), per-request lengths,
// table per request (row r -> request r / N), checked against the rule.
TEST_P(TopkTest, P9_MtpCausalLengths) {
  auto rng = make_rng(11);
  for (int64_t k : kKs) {
    for (int64_t n : {1, 2, 3, 4}) {
      const std::vector<int64_t> ls = {n - 1, n, n + 1, k + n - 1, k + n, 3 * k + 11, 0};
      TopkCase c;
      c.k = k;
      c.form = TopkLengths::kPerRequest;
      c.n = n;
      c.rows = static_cast<int64_t>(ls.size()) * n;
      c.width = 3 * k + 11;
      c.ld = c.width + 1;
      c.scores = random_scores(rng, c.rows, c.ld);
      c.lengths = ls;
      c.transform = TopkTransform::kPaged64;
      c.table_rows = static_cast<int64_t>(ls.size());
      c.table_cols = (c.width + 63) / 64;
      c.table_ld = c.table_cols;
      c.table = random_table(rng, c.table_rows, c.table_ld, 50000);
      poison_outside_windows(c);
      check_case(backend(), c, "P9 k=" + std::to_string(k) + " N=" + std::to_string(n));
      // The rule itself, on the reference's valid counts.
      Runner run(Backend::kCpu, c);
      const TopkResult e = run.expected();
      for (int64_t r = 0; r < c.rows; ++r) {
        const int64_t len = std::max<int64_t>(0, ls[r / n] - n + 1 + r % n);
        const int64_t valid = std::count_if(e.raw.begin() + r * (k + c.out_pad),
                                            e.raw.begin() + r * (k + c.out_pad) + k, [](int32_t x) { return x >= 0; });
        EXPECT_EQ(valid, std::min(len, k)) << "row " << r;
      }
    }
  }
}

// P10: ragged prefill: windows [ks, ks + len) with nonzero ks, raw indices
// relative to ks, the page table indexed by the raw index (SGLang's pt_start
// = 0), P=64 and P=1, plus the ragged-offset transform.
TEST_P(TopkTest, P10_RaggedPrefillRowStarts) {
  auto rng = make_rng(12);
  for (int64_t k : kKs) {
    for (int mode : {1, 2, 3}) {
      // Two requests of KV lengths 3k+5 and 2k+1 with 3 and 2 extend tokens.
      const std::vector<int64_t> kv = {3 * k + 5, 2 * k + 1}, ext = {3, 2};
      TopkCase c;
      c.k = k;
      c.width = kv[0] + kv[1];
      c.ld = c.width;
      for (size_t i = 0, ks = 0; i < kv.size(); ks += kv[i], ++i) {
        for (int64_t j = 0; j < ext[i]; ++j) {
          c.row_starts.push_back(static_cast<int64_t>(ks));
          c.lengths.push_back(kv[i] - ext[i] + 1 + j);
          c.row_to_request.push_back(static_cast<int64_t>(i));
          c.offsets.push_back(static_cast<int64_t>(ks));
        }
      }
      c.rows = static_cast<int64_t>(c.lengths.size());
      c.scores = random_scores(rng, c.rows, c.ld);
      c.transform = static_cast<TopkTransform>(mode);
      if (mode != 3) c.offsets.clear();
      if (mode == 1 || mode == 2) {
        c.table_rows = 2;
        c.table_cols = mode == 1 ? (kv[0] + 63) / 64 : kv[0];
        c.table_ld = c.table_cols + 1;
        c.table = random_table(rng, 2, c.table_ld, 1 << 20);
      }
      poison_outside_windows(c);
      check_case(backend(), c, "P10 k=" + std::to_string(k) + " " + to_string(c.transform));
    }
  }
}

// P11: stale and -1 table entries: -1 inside the live pages masks those
// slots; entries past the live pages are never used (they hold -1 or huge
// values); a row whose request is outside the table is all -1 after the
// transform (raw indices still written).
TEST_P(TopkTest, P11_StaleTableEntries) {
  auto rng = make_rng(13);
  for (int64_t k : kKs) {
    const int64_t width = 2 * k + 200;
    TopkCase c = decode_case(rng, 4, width, k, {width, width - 70, 100, width});
    c.transform = TopkTransform::kPaged64;
    c.table_rows = 3;
    c.table_cols = (width + 63) / 64 + 4;
    c.table_ld = c.table_cols;
    c.table = random_table(rng, 3, c.table_ld, 1000);
    for (int64_t q = 0; q < 3; ++q)
      for (int64_t p = (width + 63) / 64; p < c.table_cols; ++p)
        c.table[static_cast<size_t>(q * c.table_ld + p)] = p % 2 ? -1 : std::numeric_limits<int32_t>::max();
    c.table[3] = -1;                  // a padding page inside request 0's live range
    c.row_to_request = {0, 1, 2, 3};  // row 3: request past the table
    check_case(backend(), c, "P11 k=" + std::to_string(k));
  }
}

// P13: cross-run and cross-thread-count determinism: ascending mode gives
// identical bytes (CPU: 1 vs 2 threads; CUDA: two streams).
TEST_P(TopkTest, P13_AscendingBytesIdenticalAcrossRuns) {
  auto rng = make_rng(14);
  TopkCase c = decode_case(rng, 16, 40000, 2048, std::vector<int64_t>(16, 40000));
  for (size_t i = 0; i < c.scores.size(); i += 3) c.scores[i] = 0.0f;  // many ties
  c.order = TopkOrder::kAscending;
  Runner r1(backend(), c), r2(backend(), c);
  r1.run(backend() == Backend::kCpu ? Exec::cpu(1) : Exec::cuda());
  r2.run(backend() == Backend::kCpu ? Exec::cpu(2) : Exec::cuda());
  const TopkResult a = r1.result(), b = r2.result();
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.raw, b.raw);
  expect_rows_equal(c, a, r1.expected(), "P13");
}

// P14: NaN in a row: the count stays exact, no out-of-window index, and NaN
// ranks as documented (+NaN above +inf, -NaN below -inf).
TEST_P(TopkTest, P14_NaN) {
  auto rng = make_rng(15);
  for (int64_t k : kKs) {
    TopkCase c = decode_case(rng, 4, 3 * k, k, {3 * k, 3 * k, 3 * k, 3 * k - 1});
    for (int64_t j = 0; j < 3 * k; j += 7) c.scores[j] = NAN;          // row 0: +NaN sprinkled
    for (int64_t j = 0; j < 3 * k; j += 2) c.scores[c.ld + j] = -NAN;  // row 1: -NaN half
    for (int64_t j = 0; j < 3 * k; ++j) c.scores[2 * c.ld + j] = bits_float(0x7f800001u + (j % 5));  // all NaN payloads
    c.scores[3 * c.ld + 5] = INFINITY;
    c.scores[3 * c.ld + 6] = NAN;
    check_case(backend(), c, "P14 k=" + std::to_string(k));
  }
}

// P16: short rows are the identity 0..len-1 then -1, exact bytes in any mode.
TEST_P(TopkTest, P16_ShortRowIdentity) {
  auto rng = make_rng(16);
  for (int64_t k : kKs) {
    TopkCase c = decode_case(rng, 5, k + 10, k, {0, 1, 63, k - 1, k});
    c.order = TopkOrder::kAny;
    Runner run(backend(), c);
    run.run(exec_for(backend()));
    const TopkResult got = run.result();
    for (int64_t r = 0; r < c.rows; ++r) {
      const int64_t len = c.lengths[r];
      for (int64_t s = 0; s < k + c.out_pad; ++s) {
        const int32_t want = s < len ? static_cast<int32_t>(s) : (s < k ? -1 : kOutPoison);
        ASSERT_EQ(got.out[r * (k + c.out_pad) + s], want) << "row " << r << " slot " << s;
      }
    }
  }
}

// P17: runtime K: every K from a list in one process, including non-powers of two.
TEST_P(TopkTest, P17_RuntimeK) {
  auto rng = make_rng(17);
  for (int64_t k : {512, 1024, 2048, 1, 2, 31, 1000, 1500}) {
    TopkCase c = decode_case(rng, 3, 9000, k, {9000, 8191, 4097});
    check_case(backend(), c, "P17 k=" + std::to_string(k));
  }
}

// `rows` rows of `width` zeros (row stride width + 1) for a case to fill.
TopkCase zero_rows_case(int64_t k, int64_t rows, int64_t width) {
  TopkCase c;
  c.k = k;
  c.rows = rows;
  c.width = width;
  c.ld = width + 1;
  c.scores.assign(static_cast<size_t>(c.rows * c.ld), 0.0f);
  return c;
}

// Rows whose pass-1 bin (the top 12 bits of the K-th largest key) is taken
// whole, holds exactly a candidate capacity of the CUDA kernel (`capacity`
// keys), or one more: the routes of a row of `width` scores; row 4's
// candidates are settled by pass 2, row 1's are all one value. Every class of value is scattered over
// the row; the width is no multiple of 32 and row 5 is short, so split over
// 16 CTAs its last slices are empty.
TopkCase bin_route_case(std::mt19937_64& rng, int64_t k, int64_t width, uint32_t capacity) {
  TopkCase c = zero_rows_case(k, 6, width);
  std::uniform_real_distribution<float> low(0.0f, 0.5f);
  for (int64_t r = 0; r < c.rows; ++r) {
    std::vector<int64_t> cols(static_cast<size_t>(width));
    std::iota(cols.begin(), cols.end(), 0);
    std::shuffle(cols.begin(), cols.end(), rng);
    float* row = c.scores.data() + r * c.ld;
    size_t next = 0;
    auto put = [&](float v) { row[cols[next++]] = v; };
    if (r == 0) {  // K - 10 above a bin of exactly 10 ties at 2.0: the bin is taken whole
      for (int64_t j = 0; j < k - 10; ++j) put(3.0f + 1e-4f * static_cast<float>(j));
      for (int j = 0; j < 10; ++j) put(2.0f);
    } else if (r == 4) {  // K - 100 above 1024 keys of one pass-1 bin, each alone in its pass-2 bin
      for (int64_t j = 0; j < k - 100; ++j) put(8.0f + 1e-3f * static_cast<float>(j));
      for (uint32_t j = 0; j < 1024; ++j) put(bits_float(0x3f800000u + (j << 10)));
    } else if (r != 5) {  // K - 100 above a bin of capacity (rows 1, 3) or capacity + 1 (row 2) keys near 1.0
      for (int64_t j = 0; j < k - 100; ++j) put(8.0f + 1e-3f * static_cast<float>(j));
      const uint32_t in_bin = r == 2 ? capacity + 1 : capacity;
      // Row 3: three values tied; row 1: one value (pass 2 finds every key of the bin equal: no pass 3).
      for (uint32_t j = 0; j < in_bin; ++j) put(bits_float(0x3f800000u + (r == 3 ? j % 3 : r == 1 ? 7 : j)));
    }
    while (next < cols.size()) put(low(rng));
  }
  c.lengths.assign(static_cast<size_t>(c.rows), width);
  c.lengths[5] = k + 7;  // uniform scores; 16 slices of 32 keys or more: the last ones empty for K >= 512
  poison_outside_windows(c);
  c.order = TopkOrder::kAscending;
  return c;
}

// Rows within the shared-memory cache (topk_finish_cached): up to 4096
// candidates (kTopkCachedCandidates).
TopkCase cached_route_case(std::mt19937_64& rng, int64_t k) { return bin_route_case(rng, k, 20011, 4096); }

// Rows past the cache with one CTA (topk_finish_bitmaps): the candidates
// share the 32768-word cache with two bitmaps of ceil(70001 / 32) = 2188
// words each, which leaves (32768 - 2 * 2188) / 2 = 14196 for them; a larger
// bin takes the general path.
TopkCase uncached_route_case(std::mt19937_64& rng, int64_t k) { return bin_route_case(rng, k, 70001, 14196); }

// Rows split over a cluster whose pass-1 bin is uneven over the slices: 5000
// of its 5200 keys (near 1.0; K - 100 keys above them) lie in the row's
// first 8192 columns (row 0) or its last (row 1), so with 4 to 16 CTAs
// per row (cached slices of 32K or less) one CTA holds more of them than its
// candidate space (kTopkCachedCandidates = 4096) and refines over its whole
// slice, while the others collect theirs (each CTA decides for its slice).
TopkCase uneven_bin_case(std::mt19937_64& rng, int64_t k) {
  constexpr int64_t kWidth = 131072, kDense = 8192;
  TopkCase c = zero_rows_case(k, 2, kWidth);
  std::uniform_real_distribution<float> low(0.0f, 0.5f);
  for (int64_t r = 0; r < c.rows; ++r) {
    float* row = c.scores.data() + r * c.ld;
    const int64_t dense0 = r == 0 ? 0 : kWidth - kDense;
    std::vector<int64_t> dense(static_cast<size_t>(kDense)), rest;
    std::iota(dense.begin(), dense.end(), dense0);
    for (int64_t j = 0; j < kWidth; ++j)
      if (j < dense0 || j >= dense0 + kDense) rest.push_back(j);
    std::shuffle(dense.begin(), dense.end(), rng);
    std::shuffle(rest.begin(), rest.end(), rng);
    for (int64_t j = 0; j < kWidth; ++j) row[j] = low(rng);
    // The largest keys of the bin, those selected, are the dense slice's, in
    // threes of equal values: the cut among ties falls in the slice that
    // refines over its whole cache.
    size_t next = 0;
    for (uint32_t j = 0; j < 200; ++j) row[rest[next++]] = bits_float(0x3f800000u + j);
    for (uint32_t j = 0; j < 5000; ++j) row[dense[j]] = bits_float(0x3f800000u + 200 + j / 3);
    for (int64_t j = 0; j < k - 100; ++j) row[rest[next++]] = 8.0f + 1e-3f * static_cast<float>(j);
  }
  c.lengths.assign(static_cast<size_t>(c.rows), kWidth);
  poison_outside_windows(c);
  c.order = TopkOrder::kAscending;
  return c;
}

// The page-table transform on a case: a random table (int32 or int64
// entries, like every index array of the case) with a padding page (-1)
// every 97 entries, `missing` pages fewer than the widest row spans (their
// indices give -1) and the last row's request past the table. The CUDA
// kernel copies a slice's entries into shared memory ahead of the transform
// on the bitmap finishes; with the default launch on sm_90 the uncached
// cases below run in clusters (the cached finish per slice), and
// EveryClusterSizePagedTransform also forces one CTA per row (the bitmap
// finish of rows past the cache).
void use_page_table(std::mt19937_64& rng, TopkCase& c, bool idx64, int64_t missing) {
  c.transform = TopkTransform::kPaged64;
  c.idx64 = idx64;
  c.table_rows = c.rows - 1;
  c.table_cols = std::max<int64_t>(1, (c.width + 63) / 64 - missing);
  c.table_ld = c.table_cols + 3;
  c.table = random_table(rng, c.table_rows, c.table_ld, int64_t{1} << 24);
  for (size_t i = 0; i < c.table.size(); i += 97) c.table[i] = -1;
  c.row_to_request.resize(static_cast<size_t>(c.rows));
  std::iota(c.row_to_request.begin(), c.row_to_request.end(), 0);
}

TEST_P(TopkTest, PagedTransformOnEveryRoute) {
  auto rng = make_rng(31);
  for (int64_t k : {512, 2048}) {
    for (int variant = 0; variant < 2; ++variant) {
      const std::string name = " k=" + std::to_string(k) + (variant ? " int64, 5 pages missing" : " int32");
      TopkCase cached = cached_route_case(rng, k);
      use_page_table(rng, cached, variant == 1, variant ? 5 : 0);
      check_case(backend(), cached, "paged cached routes" + name);
      TopkCase uncached = uncached_route_case(rng, k);
      use_page_table(rng, uncached, variant == 1, variant ? 5 : 0);
      check_case(backend(), uncached, "paged uncached routes" + name);
    }
  }
}

TEST_P(TopkTest, CachedRowRoutes) {
  auto rng = make_rng(26);
  for (int64_t k : kKs) check_case(backend(), cached_route_case(rng, k), "cached routes k=" + std::to_string(k));
}

// With the launcher's choice (16 CTAs per row on sm_90: slices of 8K whose
// bin counts differ; one CTA per row elsewhere) and on the CPU.
TEST_P(TopkTest, UnevenBinRows) {
  auto rng = make_rng(44);
  check_case(backend(), uneven_bin_case(rng, 2048), "uneven bins");
}

TEST_P(TopkTest, UncachedRowRoutes) {
  auto rng = make_rng(28);
  for (int64_t k : kKs) {
    TopkCase c = uncached_route_case(rng, k);
    check_case(backend(), c, "uncached routes k=" + std::to_string(k));
    c.type = ScoreType::kBfloat16;  // 8 keys per 16-byte load: runs straddle bitmap words
    check_case(backend(), c, "uncached routes bf16 k=" + std::to_string(k));
  }
}

// Long rows (CUDA: rows past the shared-memory cache) and many rows.
TEST_P(TopkTest, LongRowsAndManyRows) {
  auto rng = make_rng(18);
  TopkCase longc = decode_case(rng, 3, 131072, 2048, {131072, 70001, 32769});
  check_case(backend(), longc, "long rows");
  TopkCase bf = longc;
  bf.type = ScoreType::kBfloat16;  // many ties after rounding to bf16
  check_case(backend(), bf, "long rows bf16");
  TopkCase many = decode_case(rng, 300, 4096, 512, std::vector<int64_t>(300, 4096));
  check_case(backend(), many, "300 rows");
}

INSTANTIATE_TEST_SUITE_P(Backends, TopkTest, ::testing::ValuesIn(all_backends()), backend_name);

// Repeatability over 25 CUDA graph replays (tie-heavy rows, any order mode):
// the same bytes every replay.
TEST(TopkCuda, GraphReplaysAreRepeatable) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
#if defined(NSA_WITH_CUDA)
  auto rng = make_rng(19);
  TopkCase c = decode_case(rng, 32, 32768, 2048, std::vector<int64_t>(32, 32768));
  for (size_t i = 0; i < c.scores.size(); ++i)
    if (i % 100 != 0) c.scores[i] = 0.0f;
  Runner run(Backend::kCuda, c);
  CapturedCall graph(run);
  const TopkResult want = run.expected();
  TopkResult first;
  for (int rep = 0; rep < 25; ++rep) {
    graph.replay();
    const TopkResult got = run.result();
    if (rep == 0) {
      first = got;
      expect_rows_equal(c, got, want, "replay 0");
    } else {
      ASSERT_EQ(got.out, first.out) << "replay " << rep;
      ASSERT_EQ(got.raw, first.raw) << "replay " << rep;
    }
  }
#endif
}

#if defined(NSA_WITH_CUDA)
// ------------------------------- CUDA cluster sizes -------------------------------

const int kClusterSizes[] = {1, 2, 4, 8, 16};

// Clusters must not silently fall back to one CTA per row where the device
// has them: sizes 2, 4 and 8 are portable on every sm_90+ part (16 is
// non-portable and may be refused).
TEST(TopkCuda, ClusterSizesUsableOnSm90) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  int device = 0, major = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  ASSERT_EQ(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device), cudaSuccess);
  if (major < 9) GTEST_SKIP() << "no thread-block clusters before sm_90";
  for (ScoreType type : {ScoreType::kFloat32, ScoreType::kBfloat16})
    for (int cluster : {2, 4, 8}) EXPECT_TRUE(topk_cluster_usable(cluster, type)) << cluster << " " << to_string(type);
  std::printf("cluster size 16: %s\n", topk_cluster_usable(16, ScoreType::kFloat32) ? "usable" : "refused");
}

// Ragged prefill rows: row r's window [starts[r], starts[r] + lengths[r])
// of a row `width` wide, the ragged-offset transform (offsets = starts),
// scores outside the windows poisoned.
TopkCase ragged_case(std::mt19937_64& rng, int64_t k, int64_t width, const std::vector<int64_t>& starts,
                     const std::vector<int64_t>& lengths) {
  TopkCase c;
  c.k = k;
  c.width = c.ld = width;
  c.row_starts = starts;
  c.lengths = lengths;
  c.rows = static_cast<int64_t>(lengths.size());
  c.offsets = starts;
  c.transform = TopkTransform::kRaggedOffset;
  c.scores = random_scores(rng, c.rows, c.ld);
  poison_outside_windows(c);
  return c;
}

// MTP rows: n per request of the given lengths (len = L - n + 1 + j), rows
// `width` wide with a padded stride, the paged-64 transform over a random
// table, scores past each row's length poisoned.
TopkCase mtp_case(std::mt19937_64& rng, int64_t k, int64_t n, const std::vector<int64_t>& lengths, int64_t width) {
  TopkCase c;
  c.k = k;
  c.form = TopkLengths::kPerRequest;
  c.n = n;
  c.lengths = lengths;
  c.rows = n * static_cast<int64_t>(lengths.size());
  c.width = width;
  c.ld = width + 1;
  c.scores = random_scores(rng, c.rows, c.ld);
  c.transform = TopkTransform::kPaged64;
  c.table_rows = static_cast<int64_t>(lengths.size());
  c.table_cols = (width + 63) / 64;
  c.table_ld = c.table_cols;
  c.table = random_table(rng, c.table_rows, c.table_ld, 50000);
  poison_outside_windows(c);
  return c;
}

// Tie-heavy rows: row r < nnz.size() holds exact zeros but nnz[r] random
// positive scores; the two rows after them are the P1 rows, every score in
// one coarse bin (then in three values); every length the width.
TopkCase tie_case(std::mt19937_64& rng, int64_t width, int64_t k, const std::vector<int64_t>& nnz) {
  TopkCase c;
  c.k = k;
  c.rows = static_cast<int64_t>(nnz.size()) + 2;
  c.width = c.ld = width;
  c.scores.assign(static_cast<size_t>(c.rows * c.ld), 0.0f);
  for (size_t r = 0; r < nnz.size(); ++r) {
    std::vector<int64_t> cols(static_cast<size_t>(width));
    std::iota(cols.begin(), cols.end(), 0);
    std::shuffle(cols.begin(), cols.end(), rng);
    for (int64_t i = 0; i < nnz[r]; ++i)
      c.scores[static_cast<size_t>(r * c.ld + cols[i])] = std::uniform_real_distribution<float>(1e-3f, 1.0f)(rng);
  }
  std::uniform_int_distribution<uint32_t> low(0, 1023);
  const int64_t p1 = static_cast<int64_t>(nnz.size());
  for (int64_t j = 0; j < width; ++j) {  // one coarse bin, then three values
    c.scores[static_cast<size_t>(p1 * c.ld + j)] = bits_float(0x3f800000u + low(rng));
    c.scores[static_cast<size_t>((p1 + 1) * c.ld + j)] = bits_float(0x3f800000u + low(rng) % 3);
  }
  c.lengths.assign(static_cast<size_t>(c.rows), width);
  return c;
}

// Runs the case once per usable CTA count per row on the same device inputs
// (outputs poisoned again each time) and compares each run with the
// reference, and byte for byte with one CTA per row (any order mode: the
// kernel's order does not depend on the cluster size).
void check_every_cluster(const TopkCase& c, const std::string& what) {
  SCOPED_TRACE(what);
  Runner run(Backend::kCuda, c);
  const TopkResult want = run.expected();
  TopkResult single;
  for (int cluster : kClusterSizes) {
    if (!topk_cluster_usable(cluster, c.type)) continue;
    const std::string name = what + ", " + std::to_string(cluster) + " CTAs per row";
    run.poison();
    ASSERT_EQ(topk_transform_with_cluster(run.device_args(), cluster, nullptr), cudaSuccess) << name;
    const TopkResult got = run.result();
    expect_rows_equal(c, got, want, name);
    if (cluster == 1) {
      single = got;
    } else {
      EXPECT_EQ(got.out, single.out) << name;
      EXPECT_EQ(got.raw, single.raw) << name;
    }
    if (::testing::Test::HasFailure()) return;
  }
}

// Every cluster size on rows just past one CTA's key cache (32768 scores),
// the shortest that a cluster splits (a shorter live row is selected by the
// cluster's first CTA alone: rows 0-2): the cluster code (DSMEM merges, the
// slot exchange, ties cut across slices) at a size the slower
// compute-sanitizer tools (racecheck, initcheck, synccheck) finish quickly;
// scripts/gpu-check.sh runs the long EveryClusterSize* cases under memcheck only.
TEST(TopkCuda, ClusterSplitJustPastTheCache) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(24);
  const int64_t k = 512, width = 33001;
  TopkCase c = decode_case(rng, 6, width, k, {k + 1, 9001, 32768, 32769, 33000, width});
  for (int64_t j = 0; j < width; ++j)  // row 5: exact zeros but every 97th column, so ties straddle slices
    if (j % 97 != 0) c.scores[static_cast<size_t>(5 * c.ld + j)] = 0.0f;
  c.order = TopkOrder::kAscending;
  check_every_cluster(c, "rows just past the cache");
}

// Lengths around K and around the slice boundaries: empty slices (2K + 5
// over 16 CTAs), odd lengths no cluster size divides, lengths just past
// C x 32K (the first slices past the shared-memory cache, the last one
// within it), clamped lengths; fp32 with the page-table transform and bf16.
TEST(TopkCuda, EveryClusterSizeMatchesReference) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(20);
  for (int64_t k : {512, 2048}) {
    const int64_t width = 140000;
    std::vector<int64_t> lens = {0, 1, k - 1, k, k + 1, 2 * k + 5, 12345, 65537, 99999, 131073, width, width + 1, -5};
    TopkCase c = decode_case(rng, static_cast<int64_t>(lens.size()), width, k, lens);
    c.transform = TopkTransform::kPaged64;
    c.table_rows = c.rows;
    c.table_cols = (width + 63) / 64;
    c.table_ld = c.table_cols;
    c.table = random_table(rng, c.table_rows, c.table_ld, 100000);
    check_every_cluster(c, "lengths k=" + std::to_string(k));
    c.type = ScoreType::kBfloat16;  // ties after rounding
    c.order = TopkOrder::kAscending;
    check_every_cluster(c, "lengths bf16 k=" + std::to_string(k));
  }
}

// 99% and 99.9% exact zeros (the smallest zero indices fill the set across
// slices), nnz around K; threshold bins past the candidate capacity (the
// re-read path of long slices); lengths not a multiple of any cluster size.
TEST(TopkCuda, EveryClusterSizeOnTies) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(21);
  for (int64_t k : {512, 2048}) {
    const int64_t width = 100003;
    const std::vector<int64_t> nnz = {width / 100, width / 1000, k - 1, k, k + 1, 0};
    TopkCase c = tie_case(rng, width, k, nnz);
    c.lengths[1] = width - 2;
    c.lengths[4] = 77777;
    c.order = TopkOrder::kAscending;
    check_every_cluster(c, "ties k=" + std::to_string(k));
  }
}

// -inf, -FLT_MAX and NaN rows (P3, P14) split over clusters, short and long.
TEST(TopkCuda, EveryClusterSizeOnInfAndNaN) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(22);
  for (int64_t width : {int64_t{3 * 2048 + 5}, int64_t{40001}}) {
    TopkCase c = decode_case(rng, 6, width, 2048, std::vector<int64_t>(6, width));
    for (int64_t j = 0; j < width; ++j) {
      if (j % 3 != 0) c.scores[static_cast<size_t>(j)] = -INFINITY;  // row 0: a third finite
      c.scores[static_cast<size_t>(c.ld + j)] = -INFINITY;           // row 1: all -inf
      c.scores[static_cast<size_t>(2 * c.ld + j)] = j % 2 ? -INFINITY : -std::numeric_limits<float>::max();
      if (j % 7 == 0) c.scores[static_cast<size_t>(3 * c.ld + j)] = NAN;                // row 3: +NaN sprinkled
      if (j % 2 == 0) c.scores[static_cast<size_t>(4 * c.ld + j)] = -NAN;               // row 4: -NaN half
      c.scores[static_cast<size_t>(5 * c.ld + j)] = bits_float(0x7f800001u + (j % 5));  // row 5: NaN payloads
    }
    c.lengths[0] = width - 1;
    c.order = TopkOrder::kAscending;
    check_every_cluster(c, "inf/NaN width=" + std::to_string(width));
  }
}

// The cached-row routes (CachedRowRoutes) at every cluster size: the
// candidate capacity is decided on the row-wide count, the bitmaps per slice.
TEST(TopkCuda, EveryClusterSizeOnCachedRoutes) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(27);
  for (int64_t k : {512, 2048}) check_every_cluster(cached_route_case(rng, k), "cached routes k=" + std::to_string(k));
}

// Slices of one cluster that choose differently between collecting the
// bin's candidates and refining over the whole slice (uneven_bin_case).
TEST(TopkCuda, EveryClusterSizeOnUnevenBins) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(43);
  for (int64_t k : {512, 2048}) check_every_cluster(uneven_bin_case(rng, k), "uneven bins k=" + std::to_string(k));
}

// The same for rows past the cache (topk_finish_bitmaps and the general path).
TEST(TopkCuda, EveryClusterSizeOnUncachedRoutes) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(29);
  for (int64_t k : {512, 2048})
    check_every_cluster(uncached_route_case(rng, k), "uncached routes k=" + std::to_string(k));
}

// The page-table transform at every cluster size: one CTA per row takes the
// bitmap finish of rows past the cache, clusters the cached finish of each
// slice (slices not aligned to pages). Tables 5 pages short, or far shorter
// than the row (a cluster's later slices lie wholly past the table), and
// int64 entries of a 128K row that exceed the shared memory set aside for
// them (one CTA: the transform reads the table itself).
TEST(TopkCuda, EveryClusterSizePagedTransform) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(32);
  TopkCase uncached = uncached_route_case(rng, 2048);
  use_page_table(rng, uncached, true, 5);
  check_every_cluster(uncached, "paged uncached routes, int64, 5 pages short");
  TopkCase short_table = uncached_route_case(rng, 2048);
  use_page_table(rng, short_table, false, (short_table.width + 63) / 64 - 100);
  check_every_cluster(short_table, "paged uncached routes, a 100-page table");
  TopkCase wide = decode_case(rng, 3, 131072, 2048, {131072, 100000, 131072});
  use_page_table(rng, wide, true, 0);
  check_every_cluster(wide, "paged 128K rows, int64 entries past the shared copy");
}

// Windows that do not start at column 0 (ragged prefill, ragged-offset
// transform) and MTP lengths derived per request, split over clusters.
TEST(TopkCuda, EveryClusterSizeOnWindows) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(23);
  const int64_t k = 2048;
  const TopkCase ragged = ragged_case(rng, k, 150001, {0, 3, 70001, 70001, 149000}, {70001, 65537, 80000, 79999, 5000});
  check_every_cluster(ragged, "ragged windows");
  const TopkCase mtp = mtp_case(rng, k, 4, {70001, 5000, 3}, 70001);
  check_every_cluster(mtp, "MTP N=4");
}

// Rows of at most 32K scores (one CTA per row by default) at the edges: widths
// 1, 63..65, around K, 4K, 8K, 16K and 32K (the key cache's size); lengths
// 0, 1, K - 1, K, K + 1, the width and past it, negative; fp32 with the
// page-table transform, bf16 in ascending mode with int64 indices; every
// cluster size on the same inputs.
TEST(TopkCuda, NarrowRowEdges) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(25);
  for (int64_t width : {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{65}, int64_t{2047}, int64_t{2049}, int64_t{4096},
                        int64_t{4097}, int64_t{8192}, int64_t{8193}, int64_t{16383}, int64_t{16384}, int64_t{16385},
                        int64_t{32767}, int64_t{32768}, int64_t{32769}}) {
    for (int64_t k : {int64_t{512}, int64_t{2048}}) {
      const std::vector<int64_t> lens = {0, 1, k - 1, k, k + 1, width - 1, width, width + 1, -5};
      TopkCase c = decode_case(rng, static_cast<int64_t>(lens.size()), width, k, lens);
      c.transform = TopkTransform::kPaged64;
      c.table_rows = c.rows;
      c.table_cols = (width + 63) / 64;
      c.table_ld = c.table_cols + 1;
      c.table = random_table(rng, c.table_rows, c.table_ld, 100000);
      const std::string what = "width " + std::to_string(width) + " k=" + std::to_string(k);
      check_every_cluster(c, what);
      c.type = ScoreType::kBfloat16;  // ties after rounding
      c.order = TopkOrder::kAscending;
      c.idx64 = true;
      check_every_cluster(c, what + " bf16 int64");
      if (::testing::Test::HasFailure()) return;
    }
  }
}

// Tie-heavy rows of 8000 and 16000 scores: exact-zero plateaus (the smallest
// zero indices fill the set, the cut among the ties inside one warp's chunk
// or at a chunk boundary), one coarse bin split to the last bit, nnz around K.
TEST(TopkCuda, NarrowRowTies) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(26);
  const int64_t k = 2048;
  for (int64_t width : {int64_t{8000}, int64_t{16000}}) {
    const std::vector<int64_t> nnz = {width / 100, k - 1, k, k + 1, 0, 5000};
    TopkCase c = tie_case(rng, width, k, nnz);
    c.lengths[1] = width - 2;
    c.lengths[5] = 7777;
    const std::string what = "narrow ties, width " + std::to_string(width);
    check_every_cluster(c, what);
    c.order = TopkOrder::kAscending;
    c.type = ScoreType::kBfloat16;
    check_every_cluster(c, what + " bf16");
  }
}

// Rows of at most 16K scores in windows (ragged prefill, the ragged-offset
// transform, a token table through row_to_request) and MTP lengths per request.
TEST(TopkCuda, NarrowRowWindows) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(27);
  const int64_t k = 2048;
  const TopkCase ragged =
      ragged_case(rng, k, 16384, {0, 3, 7001, 7001, 15000, 16384}, {9001, 6537, 9383, 2049, 5000, 10});
  check_every_cluster(ragged, "narrow ragged windows");
  TopkCase token = ragged;
  token.transform = TopkTransform::kTokenTable;
  token.row_to_request = {2, 0, 1, 1, 0, 2};
  token.table_rows = 3;
  token.table_cols = token.width;
  token.table_ld = token.width + 7;
  token.table = random_table(rng, token.table_rows, token.table_ld, 1 << 30);
  check_every_cluster(token, "narrow token table");
  const TopkCase mtp = mtp_case(rng, k, 4, {8192, 2050, 3, 8195}, 8192);
  check_every_cluster(mtp, "narrow MTP N=4");
}

// One captured launch per cluster size, replayed with live lengths that
// change between replays (the slices are decided on the device), then 25
// replays of tie-heavy rows that must give the same bytes.
TEST(TopkCuda, ClusterGraphReplaysFollowLiveLengths) {
  NSA_SKIP_WITHOUT_BACKEND(Backend::kCuda);
  auto rng = make_rng(24);
  const int64_t width = 163840, k = 2048;
  TopkCase c = decode_case(rng, 3, width, k, {width, width, width});
  for (size_t i = 0; i < c.scores.size(); ++i)
    if (i % 100 != 0) c.scores[i] = 0.0f;
  const std::vector<std::vector<int64_t>> live = {{163840, 1024, 65537},
                                                  {7, 131073, 2049},
                                                  {100003, 0, 2048},
                                                  {163840, 163840, 163840}};
  for (int cluster : kClusterSizes) {
    if (!topk_cluster_usable(cluster, c.type)) continue;
    const std::string name = std::to_string(cluster) + " CTAs per row";
    SCOPED_TRACE(name);
    Runner run(Backend::kCuda, c);
    CapturedCall graph(
        [&](cudaStream_t s) { CapturedCall::check(topk_transform_with_cluster(run.device_args(), cluster, s)); });
    for (size_t i = 0; i < live.size(); ++i) {
      std::vector<int32_t> v(live[i].begin(), live[i].end());
      run.lengths_buffer().upload(v);
      run.poison();
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);  // the uploads before the replay's stream reads them
      graph.replay();
      TopkCase e = c;
      e.lengths = live[i];
      Runner ref(Backend::kCpu, e);
      expect_rows_equal(e, run.result(), ref.expected(), name + ", replay " + std::to_string(i));
    }
    const TopkResult first = run.result();  // the last live lengths: every row full
    for (int rep = 0; rep < 25; ++rep) {
      run.poison();
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      graph.replay();
      const TopkResult got = run.result();
      ASSERT_EQ(got.out, first.out) << name << ", replay " << rep;
      ASSERT_EQ(got.raw, first.raw) << name << ", replay " << rep;
    }
  }
}
#endif

// ------------------------------------ reference ------------------------------------

TEST(TopkReference, ScoreOrder) {
  auto above = [](float a, float b) {
    uint32_t x, y;
    std::memcpy(&x, &a, 4);
    std::memcpy(&y, &b, 4);
    return reference::topk_score_above(x, y);
  };
  EXPECT_TRUE(above(1.0f, 0.5f));
  EXPECT_FALSE(above(0.0f, -0.0f));
  EXPECT_FALSE(above(-0.0f, 0.0f));
  EXPECT_TRUE(above(NAN, INFINITY));
  EXPECT_TRUE(above(-INFINITY, -NAN));
  EXPECT_TRUE(above(-INFINITY, -NAN));
  EXPECT_TRUE(above(-std::numeric_limits<float>::max(), -INFINITY));
}

// ------------------------------------ validation ------------------------------------

TEST(TopkValidation, EveryCheckNamesItsArgumentAndWritesNothing) {
  std::vector<float> scores(4 * 100, 1.0f);
  std::vector<int32_t> lens = {100, 50, 0, 3};
  std::vector<int32_t> table(4 * 2, 1);
  std::vector<int32_t> out(4 * 16, kOutPoison);
  const auto before = out;
  TopkArgs good;
  good.scores = scores.data();
  good.rows = 4;
  good.width = 100;
  good.score_ld = 100;
  good.k = 16;
  good.lengths = lens.data();
  good.out = out.data();
  good.out_ld = 16;
  const Exec cpu = Exec::cpu();
  auto with = [&](auto mutate) {
    TopkArgs a = good;
    mutate(a);
    return a;
  };
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.rows = -1; })); }, "rows");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.k = 0; })); }, "'k'");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.k = 2049; })); }, "'k'");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.score_type = static_cast<ScoreType>(5); })); },
                 "score_type");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.width = -1; })); }, "width");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.score_ld = 99; })); }, "score_ld");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.score_ld = int64_t{1} << 62; })); }, "score_ld");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.scores = nullptr; })); }, "scores");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.lengths = Indices(); })); }, "lengths");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.length_form = static_cast<TopkLengths>(9); })); },
                 "length_form");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.rows_per_request = 0; })); }, "rows_per_request");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.rows_per_request = 2; })); }, "rows_per_request");
  expect_invalid(
      [&] {
        topk_transform(cpu, with([&](TopkArgs& a) {
                         a.length_form = TopkLengths::kPerRequest;
                         a.row_starts = lens.data();
                       }));
      },
      "row_starts");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.transform = static_cast<TopkTransform>(7); })); },
                 "transform");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.transform = TopkTransform::kRaggedOffset; })); },
                 "offsets");
  expect_invalid(
      [&] {
        topk_transform(cpu, with([&](TopkArgs& a) {
                         a.transform = TopkTransform::kPaged64;
                         a.table_rows = 4;
                         a.table_cols = 2;
                         a.table_ld = 2;
                       }));
      },
      "table");
  expect_invalid(
      [&] {
        topk_transform(cpu, with([&](TopkArgs& a) {
                         a.transform = TopkTransform::kTokenTable;
                         a.table = table.data();
                         a.table_rows = 4;
                         a.table_cols = 2;
                         a.table_ld = 1;
                       }));
      },
      "table_ld");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.out = nullptr; })); }, "'out'");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.out_ld = 15; })); }, "out_ld");
  expect_invalid(
      [&] {
        topk_transform(cpu, with([&](TopkArgs& a) {
                         a.out_raw = out.data();
                         a.out_raw_ld = 3;
                       }));
      },
      "out_raw_ld");
  expect_invalid([&] { topk_transform(cpu, with([](TopkArgs& a) { a.order = static_cast<TopkOrder>(3); })); }, "order");
  expect_invalid([&] { topk_transform(Exec{Backend::kCpu, nullptr, -1}, good); }, "cpu_threads");
  if (!cuda_built()) {
    expect_invalid([&] { topk_transform(Exec::cuda(), good); }, "cuda", ErrorCode::kUnsupported);
  } else {
    expect_invalid(
        [&] {
          topk_transform(Exec::cuda(),
                         with([&](TopkArgs& a) { a.scores = reinterpret_cast<const uint8_t*>(scores.data()) + 1; }));
        },
        "scores");
  }
  EXPECT_EQ(out, before);

  // Empty work is valid with null pointers; width 0 writes only -1.
  topk_transform(cpu, with([](TopkArgs& a) {
                   a.rows = 0;
                   a.scores = nullptr;
                   a.lengths = Indices();
                   a.out = nullptr;
                 }));
  topk_transform(cpu, with([](TopkArgs& a) {
                   a.width = 0;
                   a.scores = nullptr;
                 }));
  for (int64_t i = 0; i < 4 * 16; ++i) EXPECT_EQ(out[i], -1);
}

// The order-preserving key every backend selects by (nsa/detail/topk_math.h):
// on a sample of bit patterns (every 4099th, plus the edges), keys order
// non-NaN scores as floats with -0 == +0, a NaN with the sign bit clear above
// +inf and one with it set below -inf, and no key is 0 (the padding of the
// CUDA sweeps' invalid lanes).
TEST(TopkKey, OrdersScoresAsTheContractSays) {
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x00000001u, 0x80000001u, 0x007fffffu, 0x807fffffu,
                                0x00800000u, 0x80800000u, 0x7f7fffffu, 0xff7fffffu, 0x7f800000u, 0xff800000u,
                                0x7f800001u, 0xff800001u, 0x7fc00000u, 0xffc00000u, 0x7fffffffu, 0xffffffffu};
  for (uint64_t b = 0; b <= 0xffffffffull; b += 4099) bits.push_back(static_cast<uint32_t>(b));
  auto value = [](uint32_t b) {
    float f;
    std::memcpy(&f, &b, sizeof f);
    return f;
  };
  std::vector<uint32_t> finite;  // and the infinities
  for (uint32_t b : bits) {
    const uint32_t key = detail::topk_key(b);
    EXPECT_NE(key, 0u) << std::hex << b;
    if (!std::isnan(value(b))) {
      finite.push_back(b);
    } else if (b >> 31) {
      EXPECT_LT(key, detail::topk_key(0xff800000u)) << std::hex << b;
    } else {
      EXPECT_GT(key, detail::topk_key(0x7f800000u)) << std::hex << b;
    }
  }
  std::sort(finite.begin(), finite.end(), [&](uint32_t a, uint32_t b) { return value(a) < value(b); });
  for (size_t i = 1; i < finite.size(); ++i) {
    const float lo = value(finite[i - 1]), hi = value(finite[i]);
    const uint32_t klo = detail::topk_key(finite[i - 1]), khi = detail::topk_key(finite[i]);
    if (lo < hi) EXPECT_LT(klo, khi) << std::hex << finite[i - 1] << " " << finite[i];
    else EXPECT_EQ(klo, khi) << std::hex << finite[i - 1] << " " << finite[i];  // equal values: +0 and -0
  }
  EXPECT_EQ(detail::topk_key(0x80000000u), detail::topk_key(0x00000000u));
}

}  // namespace
}  // namespace test
}  // namespace nsa
