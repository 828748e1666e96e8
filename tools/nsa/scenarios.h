// The two scenarios of `nsa bench`, prepared on one backend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "bench_types.h"

namespace nsa {
namespace cli {

struct ScenarioConfig {
  Backend backend = Backend::kCpu;
  int cpu_threads = 0;
  int64_t batch = 64;
  int64_t context = 32768;  // max KV tokens per request; lengths are uniform in [3/4 context, context]
  int64_t layers = 61;
  int64_t draft_steps = 3;   // S: S-1 draft-decode backends
  int64_t draft_tokens = 4;  // N
  int64_t topk = 2048;
  int64_t page_size = 64;
  int64_t flashmla_tile_ints = 66 * 8;  // [num_sm_parts, 8] on a 132-SM H100 (docs/spec/metadata.md §8)
  uint64_t seed = 1;
};

// One speculative decode step (DeepSeek-V3.2 MTP): metadata of the S-1 draft-decode
// backends (DECODE), TARGET_VERIFY and DRAFT_EXTEND, then per layer the quantize +
// store of the bs*N verify tokens' indexer keys and the indexer's top-k of those
// bs*N rows over the layer's cache (floor_bytes: that cache read).
std::unique_ptr<Scenario> make_decode_scenario(const ScenarioConfig& config);

// One chunked-prefill step: per layer, gather K and scales of `batch` requests of up to
// `context` tokens from the paged indexer cache.
std::unique_ptr<Scenario> make_prefill_scenario(const ScenarioConfig& config);

}  // namespace cli
}  // namespace nsa
