#include "indexer_part.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <thread>

#include "host_data.h"

#if defined(NSA_WITH_CUDA)
#include <cuda_runtime.h>
#endif

namespace nsa {
namespace cli {

using support::Buffer;
using support::from_backend;
using support::to_backend;

namespace {

constexpr int64_t kH = kIndexerHeads, kD = kIndexerHeadDim, kP = IndexCacheLayout::kPageSize;
constexpr int64_t kPageBytes = IndexCacheLayout::kBytesPerPage;
constexpr int64_t kTokenBytes = kD + 4;  // fp8 K + fp32 scale
constexpr size_t kFillBlockBytes = size_t{64} << 20;
// indexer_topk today: paged_mqa_logits into the workspace, then topk_transform.
constexpr int64_t kOursCudaLaunches = 2;

// Bytes the distinct caches may take: half the free device memory (CUDA), 1 GiB (CPU).
size_t cache_budget(Backend b) {
#if defined(NSA_WITH_CUDA)
  if (b == Backend::kCuda) {
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess)
      throw Error(ErrorCode::kCudaError, "nsa bench: cudaMemGetInfo failed");
    return free_bytes / 2;
  }
#endif
  (void)b;
  return size_t{1} << 30;
}

// A cache of `pages` pages: the block rotated by `shift` pages (each layer's
// contents differ), then repeated, so preparing tens of GB of caches stays fast.
Buffer make_cache(Backend b, const std::vector<uint8_t>& block, int64_t pages, int64_t shift) {
  const int64_t block_pages = static_cast<int64_t>(block.size()) / kPageBytes;
  const size_t head = static_cast<size_t>(shift % block_pages * kPageBytes);
  Buffer cache(b, static_cast<size_t>(std::max<int64_t>(pages, 1) * kPageBytes));
  cache.upload(block.data() + head, block.size() - head);
  if (head > 0) cache.upload(block.data(), head, block.size() - head);
  for (int64_t p = block_pages; p < pages; p += block_pages) {
    const size_t n = static_cast<size_t>(std::min(block_pages, pages - p) * kPageBytes);
    uint8_t* dst = cache.as<uint8_t>() + p * kPageBytes;
#if defined(NSA_WITH_CUDA)
    if (b == Backend::kCuda) {  // device to device: tens of GB per run would take seconds from the host
      if (cudaMemcpy(dst, cache.data(), n, cudaMemcpyDeviceToDevice) != cudaSuccess)
        throw Error(ErrorCode::kCudaError, "nsa bench: filling an indexer cache failed");
      continue;
    }
#endif
    std::memcpy(dst, cache.data(), n);
  }
  return cache;
}

}  // namespace

IndexerPart::IndexerPart(const ScenarioConfig& c, const std::vector<int64_t>& prefix_lens, std::mt19937_64& rng)
    : c_(c) {
  const Backend b = c.backend;
  const int64_t bs = c.batch, n = c.draft_tokens;
  rows_ = bs * n;
  width_ = c.context + n;            // the captured width: every L_b <= context + N
  ld_ = (width_ + 255) / 256 * 256;  // DeepGEMM's row padding
  table_cols_ = (width_ + kP - 1) / kP;
  pages_ = bs * table_cols_;

  // L_b and the per-row windows (the MTP causal rule: row j sees L_b - N + 1 + j tokens).
  std::vector<int32_t> lens(static_cast<size_t>(bs));
  double tokens = 0;
  for (int64_t r = 0; r < bs; ++r) {
    lens[r] = static_cast<int32_t>(prefix_lens[r] + n);
    tokens += lens[r];
    for (int64_t j = 0; j < n; ++j)
      row_lens_.push_back(static_cast<int32_t>(std::clamp<int64_t>(lens[r] - n + 1 + j, 0, width_)));
  }
  cache_read_bytes_ = tokens * kTokenBytes * static_cast<double>(c.layers);

  // Compact page tables over shuffled pages, the same in every layer (each layer has its own cache).
  std::vector<int32_t> table(static_cast<size_t>(pages_));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  const auto q = support::random_fp8(rng, static_cast<size_t>(rows_ * kH * kD));
  std::vector<float> w(static_cast<size_t>(rows_ * kH));
  std::normal_distribution<float> wd(0.0f, 0.05f);
  for (auto& x : w) x = wd(rng);
  q_ = to_backend(b, q);
  weights_ = to_backend(b, w);
  lens_ = to_backend(b, lens);
  table_ = to_backend(b, table);

  // One cache per layer when they fit in the budget; otherwise as many as fit,
  // cycled over the layers (each far larger than L2 at engine sizes).
  const size_t cache_bytes = static_cast<size_t>(std::max<int64_t>(pages_, 1) * kPageBytes);
  const int64_t fit = static_cast<int64_t>(cache_budget(b) / cache_bytes);
  const int64_t distinct = std::max<int64_t>(1, std::min(c.layers, fit));
  const auto block =
      support::random_index_pages(rng, std::max<int64_t>(1, std::min<int64_t>(pages_, kFillBlockBytes / kPageBytes)));
  for (int64_t l = 0; l < distinct; ++l) caches_.push_back(make_cache(b, block, pages_, 97 * l));

  const size_t logits_bytes = static_cast<size_t>(rows_ * ld_) * sizeof(float);
  base_logits_ = Buffer(b, logits_bytes);
  ours_logits_ = Buffer(b, logits_bytes);
  const size_t out_bytes = static_cast<size_t>(c.layers * rows_ * c.topk) * sizeof(int32_t);
  base_out_ = Buffer(b, out_bytes);
  ours_out_ = Buffer(b, out_bytes);
  base_out_.fill(0xab);  // different poisons: a slot neither path wrote cannot compare equal
  ours_out_.fill(0xcd);
  sorter_ = std::make_unique<baseline_call::SortTopk>(b, rows_, ld_, row_lens_);
}

Exec IndexerPart::exec_on(cudaStream s) const {
  return c_.backend == Backend::kCpu ? Exec::cpu(c_.cpu_threads) : Exec::cuda(s);
}

PagedMqaLogitsArgs IndexerPart::logits_args(int64_t layer, float* logits) const {
  PagedMqaLogitsArgs a;
  a.q = q_.as<uint8_t>();
  a.weights = weights_.as<float>();
  a.batch = c_.batch;
  a.next_n = c_.draft_tokens;
  a.cache = ConstIndexCache(caches_[static_cast<size_t>(layer) % caches_.size()].as<uint8_t>(), pages_);
  a.context_lens = Indices(lens_.as<int32_t>());
  a.page_table = Indices(table_.as<int32_t>());
  a.table_cols = a.table_ld = table_cols_;
  a.logits = logits;
  a.width = width_;
  a.logits_ld = ld_;
  return a;
}

TopkArgs IndexerPart::topk_args(int64_t layer) const {
  TopkArgs t;
  t.scores = base_logits_.as<float>();
  t.rows = rows_;
  t.width = width_;
  t.score_ld = ld_;
  t.k = c_.topk;
  t.length_form = TopkLengths::kPerRequest;
  t.lengths = Indices(lens_.as<int32_t>());
  t.rows_per_request = c_.draft_tokens;
  t.transform = TopkTransform::kPaged64;
  t.table = Indices(table_.as<int32_t>());
  t.table_rows = c_.batch;
  t.table_cols = t.table_ld = table_cols_;
  t.out = base_out_.as<int32_t>() + layer * rows_ * c_.topk;
  t.out_ld = c_.topk;
  return t;
}

void IndexerPart::run_logits(cudaStream s, int64_t layer) const {
  paged_mqa_logits(exec_on(s), logits_args(layer, base_logits_.as<float>()));
}

void IndexerPart::run_sort_topk(cudaStream s, int64_t layer) const { sorter_->run(s, topk_args(layer)); }

void IndexerPart::run_ours(cudaStream s, int64_t layer) const {
  IndexerTopkArgs a;
  a.logits = logits_args(layer, ours_logits_.as<float>());
  a.k = c_.topk;
  a.out = ours_out_.as<int32_t>() + layer * rows_ * c_.topk;
  a.out_ld = c_.topk;
  indexer_topk(exec_on(s), a);
}

Part IndexerPart::make_part() {
  const bool cuda = c_.backend == Backend::kCuda;
  const int64_t layers = c_.layers;
  Part part;
  part.name = "indexer";
  part.detail = fmt::format(
      "{} layers x {} verify rows (bs*N) over L_b = {} tokens per layer on average, top-{} through the page "
      "table; {} distinct {:.1f} MB caches{}; GB/s counts the cache read, q, weights and the indices written",
      layers, rows_, static_cast<int64_t>(cache_read_bytes_ / kTokenBytes / layers / c_.batch), c_.topk, caches_.size(),
      static_cast<double>(pages_ * kPageBytes) / 1e6,
      static_cast<int64_t>(caches_.size()) < layers ? " cycled over the layers (memory budget)" : ", one per layer");
  part.bytes = cache_read_bytes_ +
               static_cast<double>(layers * rows_) * (kH * kD + kH * 4 + c_.topk * 4);  // + q, weights, indices
  part.per_graph = 1;
  const int64_t sort_launches = sorter_->launches();
  // Labels fit the table's 62-character column.
  const std::string sort_label = cuda ? "CUB segmented sort + take-k" : "std::stable_sort + transform";
  Path base{"baseline",
            fmt::format("logits to memory, then {} ({} per layer)", cuda ? "sort + take-k" : "sort", 1 + sort_launches),
            layers * (1 + sort_launches), [this, layers](cudaStream s) {
              for (int64_t l = 0; l < layers; ++l) {
                run_logits(s, l);
                run_sort_topk(s, l);
              }
            }};
  Path ours{"ours", fmt::format("nsa::indexer_topk ({} per layer)", cuda ? kOursCudaLaunches : 1),
            layers * (cuda ? kOursCudaLaunches : 1), [this, layers](cudaStream s) {
              for (int64_t l = 0; l < layers; ++l) run_ours(s, l);
            }};
  part.paths = {std::move(base), std::move(ours)};
  Path logits{"baseline logits", "paged_mqa_logits to memory (1 per layer)", layers, [this, layers](cudaStream s) {
                for (int64_t l = 0; l < layers; ++l) run_logits(s, l);
              }};
  Path topk{"baseline top-k", fmt::format("{} ({} per layer)", sort_label, sort_launches), layers * sort_launches,
            [this, layers](cudaStream s) {
              for (int64_t l = 0; l < layers; ++l) run_sort_topk(s, l);
            }};
  part.pieces = {std::move(logits), std::move(topk)};
  return part;
}

void IndexerPart::verify() const {
  const int64_t k = c_.topk, total_rows = c_.layers * rows_;
  auto base = from_backend<int32_t>(base_out_, static_cast<size_t>(total_rows * k));
  auto ours = from_backend<int32_t>(ours_out_, static_cast<size_t>(total_rows * k));
  // Sorting 2 x 2048 indices per row of every layer takes seconds on one core at engine sizes: split the rows.
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(std::thread::hardware_concurrency(), 16));
  std::vector<int64_t> first_bad(static_cast<size_t>(threads), total_rows);
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int64_t row = t; row < total_rows; row += threads) {
        const auto bb = base.begin() + static_cast<std::ptrdiff_t>(row * k);
        const auto ob = ours.begin() + static_cast<std::ptrdiff_t>(row * k);
        std::sort(bb, bb + k);
        std::sort(ob, ob + k);
        if (!std::equal(bb, bb + k, ob)) {
          first_bad[static_cast<size_t>(t)] = row;
          return;
        }
      }
    });
  for (auto& th : pool) th.join();
  const int64_t row = *std::min_element(first_bad.begin(), first_bad.end());
  if (row == total_rows) return;
  const auto bb = base.begin() + static_cast<std::ptrdiff_t>(row * k);
  const auto diff = std::mismatch(bb, bb + k, ours.begin() + static_cast<std::ptrdiff_t>(row * k));
  throw VerificationError(
      fmt::format("verification failed: indexer_topk layer {} row {}: selected set differs from the baseline's "
                  "(sorted slot {}: {} vs baseline {})",
                  row / rows_, row % rows_, diff.first - bb, *diff.second, *diff.first));
}

}  // namespace cli
}  // namespace nsa
