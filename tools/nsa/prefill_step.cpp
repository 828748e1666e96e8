// The prefill scenario of `nsa bench`: a chunked-prefill step gathers, per
// layer, the indexer K and scales of every request's whole context from the
// paged cache into contiguous [T, 128] + [T] buffers (docs/spec/index-cache.md §4.4).
// Paths: baseline = one CTA per output token (SGLang PR #13812 style) / a
// per-token memcpy loop on CPU; ours = nsa::gather_k_and_s.
#include <fmt/format.h>
#include <algorithm>
#include <numeric>
#include <random>

#include "baseline_calls.h"
#include "host_data.h"
#include "nsa/index_cache.h"
#include "reference/index_cache.h"
#include "scenarios.h"

namespace nsa {
namespace cli {

using support::from_backend;
using support::random_bf16;
using support::random_bytes;
using support::random_ints;
using support::to_backend;

namespace {

using support::Buffer;
using L = IndexCacheLayout;

class PrefillScenario : public Scenario {
 public:
  explicit PrefillScenario(const ScenarioConfig& c) : c_(c), rng_(c.seed) {
    const int64_t bs = c_.batch;
    lens_ = random_ints<int64_t>(rng_, bs, std::max<int64_t>(1, c_.context * 3 / 4), c_.context);
    cu_.assign(bs + 1, 0);
    for (int64_t b = 0; b < bs; ++b) cu_[b + 1] = cu_[b] + lens_[b];
    total_ = cu_[bs];
    cols_ = (c_.context + L::kPageSize - 1) / L::kPageSize;
    // Each request owns distinct pages in shuffled order; every layer shares the page table.
    int64_t needed = 0;
    for (auto len : lens_) needed += (len + L::kPageSize - 1) / L::kPageSize;
    pool_pages_ = needed + 1;
    std::vector<int32_t> perm(needed);
    std::iota(perm.begin(), perm.end(), 1);
    std::shuffle(perm.begin(), perm.end(), rng_);
    table_.assign(static_cast<size_t>(bs * cols_), 0);
    for (int64_t b = 0, next = 0; b < bs; ++b)
      for (int64_t p = 0; p < (lens_[b] + L::kPageSize - 1) / L::kPageSize; ++p) table_[b * cols_ + p] = perm[next++];

    const Backend be = c_.backend;
    table_dev_ = to_backend(be, table_);
    lens_dev_ = to_backend(be, lens_);
    cu_dev_ = to_backend(be, cu_);
    for (int64_t l = 0; l < c_.layers; ++l) {
      auto image = random_bytes(rng_, static_cast<size_t>(pool_pages_ * L::kBytesPerPage));
      pools_.push_back(to_backend(be, image));
      if (l == c_.layers - 1) last_image_ = std::move(image);
    }
    // One output workspace per path, reused by every layer (as an engine does).
    ours_k_ = Buffer(be, static_cast<size_t>(total_ * L::kHeadDim));
    ours_s_ = Buffer(be, static_cast<size_t>(total_ * 4));
    base_k_ = Buffer(be, static_cast<size_t>(total_ * L::kHeadDim));
    base_s_ = Buffer(be, static_cast<size_t>(total_ * 4));

    Part part;
    part.name = "K+S gather";
    part.detail = fmt::format("{} layers x {} requests, {} tokens", c_.layers, bs, total_);
    part.bytes = 2.0 * 132.0 * static_cast<double>(total_ * c_.layers);
    part.per_graph = 1;
    Path base{"baseline",
              be == Backend::kCpu ? "per-token memcpy loop (1 per layer)" : "one CTA per token (1 per layer)",
              c_.layers, [this, be](cudaStream s) {
                for (int64_t l = 0; l < c_.layers; ++l)
                  baseline_call::gather_k_and_s_per_token(be, s, pools_[l].as<uint8_t>(), table_dev_.as<int32_t>(),
                                                          cols_, cu_dev_.as<int64_t>(), c_.batch, total_,
                                                          base_k_.as<uint8_t>(), base_s_.as<float>());
              }};
    Path ours{"ours", "nsa::gather_k_and_s (1 per layer)", c_.layers, [this](cudaStream s) {
                const Exec exec = c_.backend == Backend::kCpu ? Exec::cpu(c_.cpu_threads) : Exec::cuda(s);
                PagedBatch batch;
                batch.batch_size = c_.batch;
                batch.seq_lens = Indices(lens_dev_.as<int64_t>());
                batch.page_table = Indices(table_dev_.as<int32_t>());
                batch.table_cols = batch.table_ld = cols_;
                for (int64_t l = 0; l < c_.layers; ++l)
                  gather_k_and_s(exec, ConstIndexCache(pools_[l].as<uint8_t>(), pool_pages_), batch,
                                 ours_k_.as<uint8_t>(), ours_s_.as<float>(), total_);
              }};
    part.paths = {std::move(base), std::move(ours)};
    parts_.push_back(std::move(part));
  }

  std::vector<Part>& parts() override { return parts_; }

  // Ours and the baseline on poisoned workspaces (different poison), then against the reference.
  void verify() override {
    ours_k_.fill(0xA5);
    ours_s_.fill(0xA5);
    base_k_.fill(0x5A);
    base_s_.fill(0x5A);
    for (auto& path : parts_[0].paths) path.run(nullptr);
    support::synchronize(c_.backend);
    const auto ok = ours_k_.to_host(), os = ours_s_.to_host(), bk = base_k_.to_host(), bsc = base_s_.to_host();
    expect_equal_bytes("gather_k_and_s K", ok.data(), bk.data(), ok.size());
    expect_equal_bytes("gather_k_and_s scales", os.data(), bsc.data(), os.size());
    {  // the workspaces hold the last layer's rows: compare with the reference of that layer
      std::vector<uint8_t> ref_k(ok.size()), ref_s(os.size());
      PagedBatch host;
      host.batch_size = c_.batch;
      host.seq_lens = Indices(lens_.data());
      host.page_table = Indices(table_.data());
      host.table_cols = host.table_ld = cols_;
      reference::gather_k_and_s(ConstIndexCache(last_image_.data(), pool_pages_), host, ref_k.data(),
                                reinterpret_cast<float*>(ref_s.data()));
      expect_equal_bytes("gather_k_and_s K vs reference", ok.data(), ref_k.data(), ok.size());
      expect_equal_bytes("gather_k_and_s scales vs reference", os.data(), ref_s.data(), os.size());
    }
  }

 private:
  ScenarioConfig c_;
  std::mt19937_64 rng_;
  std::vector<Part> parts_;
  std::vector<int64_t> lens_, cu_;
  std::vector<int32_t> table_;
  int64_t total_ = 0, cols_ = 0, pool_pages_ = 0;
  std::vector<uint8_t> last_image_;
  Buffer table_dev_, lens_dev_, cu_dev_, ours_k_, ours_s_, base_k_, base_s_;
  std::vector<Buffer> pools_;
};

}  // namespace

std::unique_ptr<Scenario> make_prefill_scenario(const ScenarioConfig& config) {
  return std::make_unique<PrefillScenario>(config);
}

}  // namespace cli
}  // namespace nsa
