// The decode-step scenario of `nsa bench` (DeepSeek-V3.2 with MTP speculative
// decoding). Per step:
//   metadata  S-1 draft-decode backends (DECODE), TARGET_VERIFY, DRAFT_EXTEND,
//             each into its own captured graph buffers (docs/spec/metadata.md §5, §7);
//   store     per layer, quantize + store the indexer keys of the bs*N verify
//             tokens into that layer's paged cache (docs/spec/index-cache.md §4.1);
//   indexer   per layer, the top-k KV indices of the bs*N verify rows over that
//             layer's paged indexer cache (indexer_part.h).
// Paths: baseline = precomputed sources copied field by field into every
// destination / quantize then SetKAndS / logits, then a sort-based top-k and
// the transform; fused copy = nsa::copy_metadata of the same sources; ours =
// nsa::build_metadata from the raw inputs / the fused quantize_and_store_k /
// nsa::indexer_topk.
#include <fmt/format.h>
#include <algorithm>
#include <array>
#include <numeric>
#include <random>

#include "baseline_calls.h"
#include "host_data.h"
#include "indexer_part.h"
#include "metadata_dests.h"
#include "metadata_host.h"
#include "nsa/index_cache.h"
#include "nsa/metadata.h"
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
using support::kCacheSeqlens;
using support::kCuSeqlensK;
using support::kFlashmlaNumSplits;
using support::kNsaCacheSeqlens;
using support::kNsaCuSeqlensK;
using support::kPageTable1;
using support::kRealPageTable;
using support::kSeqlensExpanded;
using L = IndexCacheLayout;

// ------------------------------------------------------------------ destinations

using support::MetadataDests;
using support::MetadataDestShape;

// The destination sets of one mode for one path (one backend's captured
// buffers each) and their table for the fused ops. Random contents, except
// element 0 of the cumulative arrays: 0, as written at capture. The same
// `seed` gives the same contents (every path starts from the same bytes).
std::unique_ptr<MetadataDests> path_dests(Backend b, const MetadataDestShape& shape, int64_t count, uint64_t seed) {
  auto dests = std::make_unique<MetadataDests>(b, std::vector<MetadataDestShape>(count, shape));  // no host mirror
  std::mt19937_64 rng(seed);
  const int32_t zero = 0;
  for (int64_t d = 0; d < count; ++d) {
    for (int f = 0; f < kMetadataFieldCount; ++f) {
      if (!dests->present(d, f)) continue;
      const std::vector<uint8_t> bytes = random_bytes(rng, dests->buffer(d, f).bytes());
      dests->write(d, f, bytes.data(), bytes.size());
    }
    dests->write(d, kCuSeqlensK, &zero, sizeof zero);
    dests->write(d, kNsaCuSeqlensK, &zero, sizeof zero);
  }
  return dests;
}

// ------------------------------------------------------------------ one mode

struct ModeWork {
  MetadataConfig config;
  HostMetadata host;  // the precomputed sources and the rows' defined lengths
  std::array<Buffer, kMetadataFieldCount> src;
  MetadataSources sources;
  MetadataInputs inputs;
  std::unique_ptr<MetadataDests> baseline, fused, ours;
  int64_t dest_count = 0;
};

// ------------------------------------------------------------------ the scenario

class DecodeScenario : public Scenario {
 public:
  explicit DecodeScenario(const ScenarioConfig& c) : c_(c), rng_(c.seed) {
    make_inputs();
    const int64_t decode_backends = c_.draft_steps - 1;
    if (decode_backends > 0) add_mode(ForwardMode::kDecode, decode_backends);
    add_mode(ForwardMode::kTargetVerify, 1);
    add_mode(ForwardMode::kDraftExtend, 1);
    make_metadata_part();
    make_store_part();
    indexer_ = std::make_unique<IndexerPart>(c_, seq_lens_, rng_);
    parts_.push_back(indexer_->make_part());
  }

  std::vector<Part>& parts() override { return parts_; }

  void verify() override {
    for (auto& part : parts_)
      for (auto& path : part.paths) path.run(nullptr);
    support::synchronize(c_.backend);
    verify_metadata();
    verify_store();
    indexer_->verify();
  }

  double floor_bytes() const override { return indexer_->cache_read_bytes(); }

 private:
  Exec exec_on(cudaStream s) const { return c_.backend == Backend::kCpu ? Exec::cpu(c_.cpu_threads) : Exec::cuda(s); }

  // Request pool: page-aligned req_to_token rows over shuffled pages; live lengths
  // uniform in [3/4 context, context]; accept lengths uniform in [1, N].
  void make_inputs() {
    const int64_t bs = c_.batch, n = c_.draft_tokens, p = c_.page_size;
    width_ = c_.context + 4 + n;  // req_to_token row width (SGLang: context_len + 4 + N)
    pool_rows_ = bs + 8;
    const int64_t pages_per_row = (width_ + p - 1) / p;
    std::vector<int64_t> page_ids(static_cast<size_t>(pool_rows_ * pages_per_row));
    std::iota(page_ids.begin(), page_ids.end(), 1);  // page 0 is SGLang's dummy page
    std::shuffle(page_ids.begin(), page_ids.end(), rng_);
    req_to_token_.resize(static_cast<size_t>(pool_rows_ * width_));
    for (int64_t r = 0; r < pool_rows_; ++r)
      for (int64_t t = 0; t < width_; ++t)
        req_to_token_[r * width_ + t] = static_cast<int32_t>(page_ids[r * pages_per_row + t / p] * p + t % p);
    std::vector<int64_t> rows(pool_rows_);
    std::iota(rows.begin(), rows.end(), 0);
    std::shuffle(rows.begin(), rows.end(), rng_);
    rpi_.assign(rows.begin(), rows.begin() + bs);
    seq_lens_ = random_ints<int64_t>(rng_, bs, std::max<int64_t>(1, c_.context * 3 / 4), c_.context);
    extend_lens_ = random_ints<int32_t>(rng_, bs, 1, n);
    de_seq_lens_.resize(bs);
    for (int64_t b = 0; b < bs; ++b) de_seq_lens_[b] = seq_lens_[b] + extend_lens_[b];
    tile_ = random_ints<int32_t>(rng_, c_.flashmla_tile_ints, 1, 1 << 20);

    r2t_dev_ = to_backend(c_.backend, req_to_token_);
    rpi_dev_ = to_backend(c_.backend, rpi_);
    seq_dev_ = to_backend(c_.backend, seq_lens_);
    de_seq_dev_ = to_backend(c_.backend, de_seq_lens_);
    extend_dev_ = to_backend(c_.backend, extend_lens_);
    tile_dev_ = to_backend(c_.backend, tile_);
  }

  void add_mode(ForwardMode mode, int64_t dests) {
    const bool de = mode == ForwardMode::kDraftExtend;
    auto w = std::make_unique<ModeWork>();
    w->dest_count = dests;
    w->config = MetadataConfig{mode, c_.batch, c_.draft_tokens, c_.topk, c_.page_size};
    MetadataProblem p;
    p.mode = mode;
    p.batch = c_.batch;
    p.draft_tokens = c_.draft_tokens;
    p.topk = c_.topk;
    p.page_size = c_.page_size;
    p.seq_lens = de ? de_seq_lens_ : seq_lens_;
    p.req_pool_indices = rpi_;
    p.extend_lens = extend_lens_;
    p.req_to_token = &req_to_token_;
    p.req_to_token_cols = width_;
    w->host = precompute_metadata(p);

    const HostMetadata& h = w->host;
    const int64_t max_rows = mode == ForwardMode::kDecode ? c_.batch : c_.batch * c_.draft_tokens;
    // FlashMLA's num_splits comes from its own builder: opaque values, R + 1 of them used.
    const auto splits = random_ints<int32_t>(rng_, max_rows + 1, 1, 64);
    const Backend b = c_.backend;
    auto up = [&](int f, const std::vector<int32_t>& v) {
      if (!v.empty()) w->src[f] = to_backend(b, v);
    };
    up(kCacheSeqlens, h.cache_seqlens);
    up(kCuSeqlensK, h.cu_seqlens_k);
    up(kPageTable1, h.page_table_1);
    up(kSeqlensExpanded, h.seqlens_expanded);
    up(kNsaCacheSeqlens, h.nsa_cache_seqlens);
    up(kNsaCuSeqlensK, h.nsa_cu_seqlens_k);
    up(kRealPageTable, h.real_page_table);
    up(kFlashmlaNumSplits, splits);
    auto ptr = [&](int f) -> const int32_t* { return w->src[f].data() ? w->src[f].as<int32_t>() : nullptr; };
    MetadataSources& s = w->sources;
    s.cache_seqlens = ptr(kCacheSeqlens);
    s.cu_seqlens_k = ptr(kCuSeqlensK);
    s.page_table_1 = ptr(kPageTable1);
    s.page_table_1_ld = h.table_cols;
    s.seqlens_expanded = ptr(kSeqlensExpanded);
    s.nsa_cache_seqlens = ptr(kNsaCacheSeqlens);
    s.nsa_cu_seqlens_k = ptr(kNsaCuSeqlensK);
    s.real_page_table = ptr(kRealPageTable);
    s.real_page_table_cols = s.real_page_table_ld = h.real_cols;
    s.flashmla_num_splits = ptr(kFlashmlaNumSplits);
    s.flashmla_metadata = tile_dev_.as<int32_t>();
    s.flashmla_metadata_size = c_.flashmla_tile_ints;

    MetadataInputs& in = w->inputs;
    in.seq_lens = Indices((de ? de_seq_dev_ : seq_dev_).as<int64_t>());
    in.req_pool_indices = Indices(rpi_dev_.as<int64_t>());
    in.req_to_token = r2t_dev_.as<int32_t>();
    in.req_to_token_rows = pool_rows_;
    in.req_to_token_cols = in.req_to_token_ld = width_;
    if (de) in.extend_lens = Indices(extend_dev_.as<int32_t>());
    in.flashmla_num_splits = ptr(kFlashmlaNumSplits);
    in.flashmla_metadata = tile_dev_.as<int32_t>();
    in.flashmla_num_splits_size = max_rows + 1;
    in.flashmla_metadata_size = c_.flashmla_tile_ints;

    MetadataDestShape shape;  // every field but the paged-MQA schedule (no baseline writes it); no padding
    shape.max_batch = c_.batch;
    shape.max_rows = max_rows;
    shape.page_table_1_cols = width_;
    shape.real_page_table_cols = (width_ + c_.page_size - 1) / c_.page_size;
    shape.flashmla_metadata_size = c_.flashmla_tile_ints;
    // DECODE aliases seqlens_expanded to cache_seqlens upstream: no buffer of its own.
    if (mode == ForwardMode::kDecode) shape.fields &= ~metadata_field_bit(MetadataField::kSeqlensExpanded);
    shape.fields &= ~metadata_field_bit(MetadataField::kPagedMqaSchedule);
    const uint64_t seed = rng_();
    w->baseline = path_dests(b, shape, dests, seed);
    w->fused = path_dests(b, shape, dests, seed);
    w->ours = path_dests(b, shape, dests, seed);
    modes_.push_back(std::move(w));
  }

  // Bytes a destination must receive: the per-row defined region (docs/spec/metadata.md §5.6).
  static double defined_bytes(const ModeWork& w) {
    const HostMetadata& h = w.host;
    const int64_t p = w.config.page_size;
    double ints = 2.0 * h.shape.batch_size + 3.0 * h.rows + 2.0 + w.sources.flashmla_metadata_size;
    if (w.config.mode != ForwardMode::kDecode) ints += h.rows;
    for (int64_t len : h.row_length) ints += len + (len + p - 1) / p;
    return 4.0 * ints * w.dest_count;
  }

  void make_metadata_part() {
    Part part;
    part.name = "metadata";
    std::string modes;
    for (const auto& w : modes_) {
      part.bytes += 2.0 * defined_bytes(*w);  // read once + written, as a copy would
      modes += fmt::format("{}{} x{}", modes.empty() ? "" : ", ", to_string(w->config.mode), w->dest_count);
    }
    part.detail = modes +
                  " destination sets; GB/s counts each destination's bytes as read + written (what "
                  "copying them costs): a build that reads its inputs once for all destinations can pass 100%";
    part.per_graph = 10;
    const Backend b = c_.backend;

    Path base{"baseline",
              b == Backend::kCpu ? "precomputed, std::memcpy per field per destination"
                                 : "precomputed, cudaMemcpy(2D)Async per field per destination",
              0, nullptr};
    for (const auto& w : modes_)
      base.launches +=
          baseline_call::metadata_copies(w->host.shape, w->sources, w->baseline->devices().data(), w->dest_count);
    base.run = [this, b](cudaStream s) {
      for (const auto& w : modes_)
        baseline_call::copy_metadata_per_field(b, s, w->host.shape, w->sources, w->baseline->devices().data(),
                                               w->dest_count);
    };
    Path fused{"fused_copy", "precomputed, nsa::copy_metadata (1 per mode)", static_cast<int64_t>(modes_.size()),
               [this](cudaStream s) {
                 for (const auto& w : modes_) copy_metadata(exec_on(s), w->host.shape, w->sources, w->fused->targets());
               }};
    Path ours{"ours", "nsa::build_metadata from raw inputs (1 per mode)", static_cast<int64_t>(modes_.size()),
              [this](cudaStream s) {
                for (const auto& w : modes_) build_metadata(exec_on(s), w->config, w->inputs, w->ours->targets());
              }};
    part.paths = {std::move(base), std::move(fused), std::move(ours)};
    parts_.push_back(std::move(part));
  }

  // Per layer: the bs*N verify tokens, N consecutive slots per request inside two pages
  // owned by that request (the new tokens of a request are contiguous positions).
  void make_store_part() {
    const int64_t bs = c_.batch, n_tok = c_.batch * c_.draft_tokens;
    store_tokens_ = n_tok;
    pool_pages_ = 2 * bs + 1;
    std::vector<int64_t> owner_pages(bs);
    std::iota(owner_pages.begin(), owner_pages.end(), 0);
    std::shuffle(owner_pages.begin(), owner_pages.end(), rng_);
    std::vector<int64_t> slots;
    std::uniform_int_distribution<int64_t> start(0, L::kPageSize - 1);
    for (int64_t b = 0; b < bs; ++b) {
      const int64_t first = (1 + 2 * owner_pages[b]) * L::kPageSize + start(rng_);
      for (int64_t j = 0; j < c_.draft_tokens; ++j) slots.push_back(first + j);
    }
    slots_ = slots;
    k_host_ = random_bf16(rng_, c_.layers * n_tok, L::kHeadDim);
    const Backend b = c_.backend;
    slots_dev_ = to_backend(b, slots_);
    k_dev_ = to_backend(b, k_host_);
    stage_k_ = Buffer(b, static_cast<size_t>(n_tok * L::kHeadDim));
    stage_s_ = Buffer(b, static_cast<size_t>(n_tok * 4));
    for (int64_t l = 0; l < c_.layers; ++l) {
      auto image = random_bytes(rng_, static_cast<size_t>(pool_pages_ * L::kBytesPerPage));
      ours_pools_.push_back(to_backend(b, image));
      base_pools_.push_back(to_backend(b, image));
      if (l == 0) pool0_image_ = std::move(image);
    }

    Part part;
    part.name = "indexer K store";
    part.detail = fmt::format("{} layers x {} verify tokens (bs*N), fp32 scale", c_.layers, n_tok);
    part.bytes = (256.0 + 132.0 + 8.0) * static_cast<double>(n_tok * c_.layers);
    part.per_graph = 2;
    Path base{"baseline", "quantize into staging, then SetKAndS (2 per layer)", 2 * c_.layers, [this, b](cudaStream s) {
                for (int64_t l = 0; l < c_.layers; ++l) {
                  baseline_call::quantize_k(b, s, layer_k(l), store_tokens_, L::kHeadDim, false, stage_k_.as<uint8_t>(),
                                            stage_s_.as<float>());
                  baseline_call::set_k_and_s(b, s, base_pools_[l].as<uint8_t>(), stage_k_.as<uint8_t>(),
                                             stage_s_.as<float>(), slots_dev_.as<int64_t>(), store_tokens_);
                }
              }};
    Path ours{"ours", "nsa::quantize_and_store_k (1 per layer)", c_.layers, [this](cudaStream s) {
                for (int64_t l = 0; l < c_.layers; ++l)
                  quantize_and_store_k(exec_on(s), IndexCache{ours_pools_[l].as<uint8_t>(), pool_pages_}, layer_k(l),
                                       store_tokens_, L::kHeadDim, slots_dev_.as<int64_t>(), ScaleMode::kFp32);
              }};
    part.paths = {std::move(base), std::move(ours)};
    parts_.push_back(std::move(part));
  }

  const uint16_t* layer_k(int64_t l) const { return k_dev_.as<uint16_t>() + l * store_tokens_ * L::kHeadDim; }

  void verify_metadata() const {
    for (const auto& w : modes_) {
      const HostMetadata& h = w->host;
      const int64_t rows = h.rows, p = w->config.page_size;
      for (int64_t d = 0; d < w->dest_count; ++d) {
        const MetadataDests &base = *w->baseline, &fused = *w->fused, &ours = *w->ours;
        for (int f = 0; f < kMetadataFieldCount; ++f) {
          const size_t count = static_cast<size_t>(support::metadata_field_size(base.shape(d), f));
          if (!count) continue;
          const auto expect = base.read(d, f);
          const auto got_fused = fused.read(d, f);
          const auto got_ours = ours.read(d, f);
          const std::string where =
              fmt::format("{} destination {} {}", to_string(w->config.mode), d, kMetadataFields[f].name);
          // The fused copy writes exactly what the per-field copies write: every byte equal.
          expect_equal_bytes("copy_metadata " + where, got_fused.data(), expect.data(), count * 4);
          // build_metadata defines each row up to its own length (docs/spec/metadata.md §5.6).
          if (f == kPageTable1 || f == kRealPageTable) {
            const int64_t ld = f == kPageTable1 ? base.device(d).page_table_1_ld : base.device(d).real_page_table_ld;
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t len = f == kPageTable1 ? h.row_length[r] : (h.row_length[r] + p - 1) / p;
              expect_equal_bytes(fmt::format("build_metadata {} row {}", where, r), got_ours.data() + r * ld * 4,
                                 expect.data() + r * ld * 4, static_cast<size_t>(len) * 4);
            }
            continue;
          }
          size_t n = count;
          if (f == kCacheSeqlens) n = h.shape.batch_size;
          if (f == kCuSeqlensK) n = h.shape.batch_size + 1;
          if (f == kSeqlensExpanded || f == kNsaCacheSeqlens) n = rows;
          if (f == kNsaCuSeqlensK || f == kFlashmlaNumSplits) n = rows + 1;
          expect_equal_bytes("build_metadata " + where, got_ours.data(), expect.data(), n * 4);
        }
      }
    }
  }

  void verify_store() const {
    const size_t bytes = static_cast<size_t>(pool_pages_ * L::kBytesPerPage);
    for (int64_t l = 0; l < c_.layers; ++l) {
      const auto ours = ours_pools_[l].to_host();
      const auto base = base_pools_[l].to_host();
      expect_equal_bytes(fmt::format("quantize_and_store_k layer {}", l), ours.data(), base.data(), bytes);
      if (l == 0) {  // and both equal the plain-loop reference
        auto ref = pool0_image_;
        reference::quantize_and_store_k(IndexCache{ref.data(), pool_pages_}, k_host_.data(), store_tokens_, L::kHeadDim,
                                        slots_.data(), ScaleMode::kFp32);
        expect_equal_bytes("quantize_and_store_k layer 0 vs reference", ours.data(), ref.data(), bytes);
      }
    }
  }

  ScenarioConfig c_;
  std::mt19937_64 rng_;
  std::vector<Part> parts_;
  // Inputs.
  int64_t width_ = 0, pool_rows_ = 0;
  std::vector<int32_t> req_to_token_, extend_lens_, tile_;
  std::vector<int64_t> rpi_, seq_lens_, de_seq_lens_;
  Buffer r2t_dev_, rpi_dev_, seq_dev_, de_seq_dev_, extend_dev_, tile_dev_;
  std::vector<std::unique_ptr<ModeWork>> modes_;
  // Store.
  int64_t store_tokens_ = 0, pool_pages_ = 0;
  std::vector<int64_t> slots_;
  std::vector<uint16_t> k_host_;
  std::vector<uint8_t> pool0_image_;
  Buffer slots_dev_, k_dev_, stage_k_, stage_s_;
  std::vector<Buffer> ours_pools_, base_pools_;
  // Indexer.
  std::unique_ptr<IndexerPart> indexer_;
};

}  // namespace

std::unique_ptr<Scenario> make_decode_scenario(const ScenarioConfig& config) {
  return std::make_unique<DecodeScenario>(config);
}

}  // namespace cli
}  // namespace nsa
