// Host precompute of the metadata sources of one forward mode, as SGLang's
// _precompute_replay_metadata produces them before its copies (spec
// docs/spec/metadata.md §4 and §6.1): contiguous arrays, page tables as wide as the
// batch maximum. The unfused baseline copies these into every destination;
// they are computed once per step, outside the timed region (which favours
// the baseline). Plain loops that follow the spec formulas.
#pragma once

#include <cstdint>
#include <vector>

#include "nsa/metadata.h"

namespace nsa {
namespace cli {

struct MetadataProblem {
  ForwardMode mode = ForwardMode::kDecode;
  int64_t batch = 0;
  int64_t draft_tokens = 1;  // N
  int64_t topk = 2048;
  int64_t page_size = 64;
  std::vector<int64_t> seq_lens;                       // [bs]
  std::vector<int64_t> req_pool_indices;               // [bs]
  std::vector<int32_t> extend_lens;                    // [bs], DRAFT_EXTEND only
  const std::vector<int32_t>* req_to_token = nullptr;  // [rows, cols]
  int64_t req_to_token_cols = 0;
};

struct HostMetadata {
  MetadataCopyShape shape;
  int64_t rows = 0;        // R (= E)
  int64_t table_cols = 0;  // columns of the page_table_1 source (max_len or max_seqlen_k)
  int64_t real_cols = 0;   // columns of the real_page_table source
  std::vector<int32_t> cache_seqlens, cu_seqlens_k, page_table_1, seqlens_expanded, nsa_cache_seqlens, nsa_cu_seqlens_k,
      real_page_table;
  std::vector<int64_t> row_length;  // L of the request owning each row: defined page_table_1 columns
};

HostMetadata precompute_metadata(const MetadataProblem& p);

}  // namespace cli
}  // namespace nsa
