// The lightning-indexer part of the decode step of `nsa bench`: per layer, the
// top-k KV indices (64-token page-table transform) of the bs*N verify rows
// over that layer's paged FP8 indexer-K cache.
//   baseline  nsa::paged_mqa_logits into an fp32 logits buffer, then the
//             sort-based top-k + transform baseline (bench/baselines/topk_baseline.h):
//             logits written, sorted, selected and transformed in separate
//             passes, shaped like engines today;
//   ours      nsa::indexer_topk (its logits workspace included).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "baseline_calls.h"
#include "bench_types.h"
#include "buffer.h"
#include "nsa/indexer.h"
#include "scenarios.h"

namespace nsa {
namespace cli {

class IndexerPart {
 public:
  // prefix_lens: the requests' cached lengths before the step; request b
  // reads L_b = prefix_lens[b] + N tokens (its N verify tokens included).
  IndexerPart(const ScenarioConfig& c, const std::vector<int64_t>& prefix_lens, std::mt19937_64& rng);

  // The part: paths baseline and ours, and the baseline's two passes as pieces.
  Part make_part();
  // Runs after every path ran once: the selected sets of ours equal the
  // baseline's in every layer, row by row (order-insensitive).
  void verify() const;
  // K + scale bytes of every visible cached token, read once per layer per step.
  double cache_read_bytes() const { return cache_read_bytes_; }

 private:
  void run_logits(cudaStream s, int64_t layer) const;
  void run_sort_topk(cudaStream s, int64_t layer) const;
  void run_ours(cudaStream s, int64_t layer) const;
  PagedMqaLogitsArgs logits_args(int64_t layer, float* logits) const;
  TopkArgs topk_args(int64_t layer) const;
  Exec exec_on(cudaStream s) const;

  ScenarioConfig c_;
  int64_t rows_ = 0, width_ = 0, ld_ = 0, table_cols_ = 0, pages_ = 0;
  double cache_read_bytes_ = 0;
  std::vector<int32_t> row_lens_;
  support::Buffer q_, weights_, lens_, table_;
  std::vector<support::Buffer> caches_;  // distinct caches, cycled over the layers
  support::Buffer base_logits_, ours_logits_, base_out_, ours_out_;
  std::unique_ptr<baseline_call::SortTopk> sorter_;
};

}  // namespace cli
}  // namespace nsa
