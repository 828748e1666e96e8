// paged_mqa_logits: the lightning-indexer scores of DeepSeek Sparse Attention
// decode, read straight from the paged FP8 indexer-K cache (spec:
// docs/spec/indexer.md). The DeepGEMM fp8_paged_mqa_logits contract with
// native MTP rows (next_n <= 4, every K page read once for all rows) and
// explicit masking.
//
// For request b, query row j (score row r = b * N + j) and token t:
//
//   s_h      = sum_d q[b, j, h, d] * k[t, d]               (fp8 x fp8, exact)
//   logit    = kscale[t] * HEADSUM_h( w[r, h] * max(s_h, 0) )
//
// with HEADSUM the fixed order documented below, so the result is a pure
// function of the inputs: bit-identical on every run, stream and graph
// replay. Row r sees len_r = max(0, min(L_b - N + 1 + j, width)) tokens (the
// MTP causal rule); every other column in [0, width) is written -inf, and so
// is a visible token whose page cannot be read (its table column is past
// table_cols, or the entry is negative or >= num_pages). Columns past width
// are never written. The cache is read only for tokens < min(L_b, width), the
// table only for columns < min(table_cols, ceil(min(L_b, width) / page_size)).
//
// Head-sum order (HEADSUM). The 64 heads form 4 groups of 16 (h / 16). In
// group G, lane g (0..7) adds its two heads, p_g = w*relu(s) of head 16G+g
// plus w*relu(s) of head 16G+g+8 (each product rounded to fp32, no FMA); the
// group sum is ((p0+p1)+(p2+p3)) + ((p4+p5)+(p6+p7)); the head sum is
// (G0+G1)+(G2+G3); the logit is that times kscale. This is the order of the
// CUDA kernel's tensor-core fragments and the CPU backend copies it. s_h is
// exact on the CPU (every fp8 product and their sum are exact in fp64) and
// rounded once to fp32; the tensor cores accumulate s_h in fp32 in their own
// order, so CUDA agrees with the CPU to calc_diff < 1e-3, not bitwise.
//
// Never allocates; one CUDA launch whose grid is 1-D over (request, chunk of
// columns); no host decision depends on a device length, so a captured graph
// stays correct when the lengths change between replays.
#pragma once

#include <cstdint>

#include "nsa/common.h"
#include "nsa/index_cache.h"
#include "nsa/topk.h"

namespace nsa {

constexpr int64_t kIndexerHeads = 64;     // index_n_heads
constexpr int64_t kIndexerHeadDim = 128;  // index_head_dim: one fp8 byte per dimension
constexpr int64_t kIndexerMaxNextN = 4;   // query rows per request (decode + MTP drafts)
// PagedMqaLogitsArgs::wgmma_chunk_columns: a multiple of 512, at most this.
constexpr int64_t kIndexerMaxChunkColumns = 65536;

// The CUDA kernel of paged_mqa_logits (the CPU backend ignores it). The
// kernels have the same output contract and head-sum order; s_h of kMmaSync
// and of the wgmma kernels comes from different tensor-core instructions, so
// their logits agree to calc_diff < 1e-3, not bitwise (kWgmma and
// kWgmmaPersistent: bitwise). Each is bit-stable against itself, and kAuto picks the
// same one on every call on a given device and build.
enum class MqaLogitsKernel : int32_t {
  // The fastest kernel the device and build can run: kWgmma on a compute 9.0
  // device (H100, H200) with sm_90a SASS in the build, kMmaSync elsewhere.
  kAuto = 0,
  // The wgmma kernel (nsa/cuda/indexer_wgmma.cuh), sm_90a only: throws
  // kUnsupported on any other device or a build without sm_90a SASS.
  kWgmma = 1,
  // The mma.sync m16n8k32 kernel (nsa/cuda/indexer.cuh): every architecture.
  kMmaSync = 2,
  // A persistent, warp-specialized schedule of the wgmma kernel
  // (nsa/cuda/indexer_wgmma_persistent.cuh): one CTA per SM, loading warps
  // feeding scoring warps through an mbarrier ring, each CTA an equal share
  // of the tiles. The same logits as kWgmma, bit for bit; the same
  // availability (throws kUnsupported where kWgmma does). Opt-in: kAuto never
  // picks it (faster than kWgmma at 64 x 32K for N = 2 and 4, slower at N = 1
  // and on small grids, in direct bench runs: docs/performance.md).
  kWgmmaPersistent = 3,
};

struct PagedMqaLogitsArgs {
  // q: fp8 e4m3 [batch, next_n, 64, 128] contiguous (the q scale is folded into weights).
  const uint8_t* q = nullptr;
  // weights: fp32 [batch * next_n, 64] contiguous.
  const float* weights = nullptr;
  int64_t batch = 0;
  int64_t next_n = 1;  // N, 1 .. kIndexerMaxNextN

  // The layer's cache. A page holds page_size tokens: page_size x 128 fp8 K
  // bytes, then page_size fp32 scales (page_size * 132 bytes; 64 = the
  // standard 8448-byte page). page_size is a multiple of 4.
  ConstIndexCache cache;
  int64_t page_size = IndexCacheLayout::kPageSize;

  // L_b: KV tokens of request b including the N new ones (device values,
  // int32 or int64; negative behaves as 0).
  Indices context_lens;
  // page_table: [batch, table_cols], row stride table_ld >= table_cols, unit column stride.
  Indices page_table;
  int64_t table_cols = 0;
  int64_t table_ld = 0;

  // logits: fp32 [batch * next_n, >= width] with row stride logits_ld >= width.
  float* logits = nullptr;
  int64_t width = 0;
  int64_t logits_ld = 0;

  MqaLogitsKernel kernel = MqaLogitsKernel::kAuto;

  // Columns of one request that each CTA of the wgmma kernel scores (kWgmma,
  // and kAuto where it picks kWgmma; the other kernels ignore it): 0 for the
  // library's choice (1024 or 512, from batch, width and the device's SM
  // count: the same for every replay of a graph), or a multiple of 512 up to
  // kIndexerMaxChunkColumns. A longer chunk loads q and the weights once for
  // more tokens and streams its tiles through one pipeline; a shorter one
  // makes more CTAs. A tuning knob for benchmarks: every value gives the same
  // logits, bit for bit.
  int64_t wgmma_chunk_columns = 0;
};

// Validates every host-visible argument (throws nsa::Error naming it before
// anything is written), then runs on the CPU or enqueues one CUDA launch on
// exec.stream. Exec::checked is ignored: no device value can be invalid
// (lengths are clamped, unreadable pages masked).
void paged_mqa_logits(const Exec& exec, const PagedMqaLogitsArgs& args);

// indexer_topk: the top-k KV indices of every query row, i.e. exactly
// topk_transform(paged_mqa_logits(...)) with per-request MTP lengths (L_b,
// N) and the 64-token page-table transform through the same page table.
// This first version is unfused: it writes the logits into the caller's
// workspace (logits.logits, [B*N, >= width], row stride logits.logits_ld)
// and runs topk_transform on them: two launches, the logits round trip
// included. The selected sets are identical to the two ops called in turn
// on the same backend (same bits in, same selection rule).
struct IndexerTopkArgs {
  PagedMqaLogitsArgs logits;  // page_size must be 64; logits.logits is the workspace
  int64_t k = kTopkMaxK;
  bool paged_output = true;  // false: raw token positions (TopkTransform::kRaw)
  int32_t* out = nullptr;    // int32 [B*N, >= k], row stride out_ld
  int64_t out_ld = 0;
  int32_t* out_raw = nullptr;  // optional raw positions, row stride out_raw_ld
  int64_t out_raw_ld = 0;
  TopkOrder order = TopkOrder::kAny;
};

// Validates every host-visible argument of both steps before anything is
// written, then runs them on exec (CPU, or two launches on exec.stream).
void indexer_topk(const Exec& exec, const IndexerTopkArgs& args);

}  // namespace nsa
