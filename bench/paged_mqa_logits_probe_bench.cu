// Where a CTA of the wgmma paged_mqa_logits kernel spends its time (not a
// test: the input to the next change of the kernel). On an H200 the kernel
// reached 0.31-0.68 of a same-traffic copy at N = 1 and 0.20-0.41 at N = 4
// (docs/gpu-report.md of 5882a69); this says whether a CTA mostly waits for
// its first tile (a chain of dependent loads: L_b, the page table, K), for
// later tiles (bandwidth), or computes (wgmma and the epilogue), and how
// many CTAs an SM actually holds.
//
// This program compiles its own copy of the kernel of
// nsa/cuda/indexer_wgmma.cuh with NSA_MQA_PROBE_MARK defined: thread 0 of
// every CTA records clock64() at its start and end and when each tile has
// landed and has been scored (right after the CTA barriers), plus
// %globaltimer at start and end and its SM. It launches that copy directly
// (never the library's launchers, whose inline host code may be the
// library's copy) and checks its logits against the library's, bit for bit,
// before measuring.
//
// Per case (B, context, N, columns per CTA): one eager call after a 512 MB
// memset (cold L2; the median GPU time of three), and over the CTAs with a
// visible token of the last call, the mean of: the CTA's lifetime, the wait
// for tile 0 (from its start: L_b, the page table and the first K bytes),
// the wait for each later tile, the time to score a tile, and the tail
// (stores of the -inf columns), in microseconds at the clock the SMs ran
// (clock64 cycles over %globaltimer time, summed over the CTAs); then the
// CTAs resident per SM on average (the sum of lifetimes over the kernel's
// span and the SMs that ran a CTA). The run fails if no CTA recorded its end
// (the marks would then describe nothing).
//
// Built seven times: the library's kernel, variants that leave a part of it
// out (NSA_MQA_PROBE_DROP, see nsa/cuda/indexer_wgmma.cuh): _noscore, _noq,
// _loads (nothing but the tile loads and their waits) and _nohead (the
// scores without their head sum), _two (the N = 1 instance for two CTAs per
// SM, where the default build times the one for three: NSA_MQA_PROBE_N1_CTAS;
// logits must match), and _narrow, which scores a
// pass of two rows with two m64n64k32 per k step as the library did before
// its m64n128k32 (NSA_MQA_PROBE_NARROW_MMA), so one run shows what each
// part adds to a CTA's life next to the floors.
//
//   paged_mqa_logits_probe[_noscore|_noq|_loads|_nohead|_two|_narrow]_bench [--json FILE] [--quick]
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

// Per CTA: clock64 at start, end, then (ready, scored) for the first
// kProbeTiles tiles; clock64 when the last tile was scored and how many
// tiles it scored (any count: the tail is measured from there);
// %globaltimer at start and end (the kernel's span, and the SM clock's real
// rate: clock64 cycles over globaltimer ns); the SM id. The start values and
// the marks pointer are read into registers by NSA_MQA_PROBE_BEGIN, so no
// stamp waits for a load (a stall of warp 0 would hold the CTA's barriers
// and lengthen the very wait it measures).
constexpr int kProbeTiles = 32;
constexpr int kClockSlots = 2 + 2 * kProbeTiles;
constexpr int kLastScored = kClockSlots, kTileCount = kClockSlots + 1;
constexpr int kStartNs = kClockSlots + 2, kEndNs = kClockSlots + 3, kSm = kClockSlots + 4;
constexpr int kSlots = kClockSlots + 5;
__device__ long long* g_mqa_marks = nullptr;
struct MqaProbe {
  long long* marks;
  long long start, start_ns;
  unsigned sm;
};
__device__ __forceinline__ long long global_ns() {
  unsigned long long ns = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return static_cast<long long>(ns);
}
__device__ __forceinline__ MqaProbe mqa_probe_begin() {
  MqaProbe p{g_mqa_marks, clock64(), global_ns(), 0u};
  asm volatile("mov.u32 %0, %%smid;" : "=r"(p.sm));
  return p;
}
__device__ __forceinline__ void mqa_probe_mark(const MqaProbe& probe, int slot) {
  if (threadIdx.x != 0) return;
  const long long now = clock64();
  if (probe.marks == nullptr) return;
  long long* const cta = probe.marks + static_cast<int64_t>(blockIdx.x) * kSlots;
  if (slot < kClockSlots) cta[slot] = now;
  if (slot >= 3 && slot % 2 == 1) {  // tile (slot - 3) / 2 scored
    cta[kLastScored] = now;
    cta[kTileCount] = (slot - 3) / 2 + 1;
  }
  if (slot == 1) {  // the end: also the start values and the global clock
    cta[0] = probe.start;
    cta[kStartNs] = probe.start_ns;
    cta[kEndNs] = global_ns();
    cta[kSm] = probe.sm;
  }
}
#define NSA_MQA_PROBE_BEGIN() const MqaProbe mqa_probe = ::mqa_probe_begin()
#define NSA_MQA_PROBE_MARK(slot) ::mqa_probe_mark(mqa_probe, slot)

#include "bench_main.h"
#include "buffer.h"
#include "floor_kernels.h"
#include "host_data.h"
#include "nsa/cuda/indexer_wgmma.cuh"
#include "nsa/indexer.h"
#include "paged_mqa_inputs.h"
#include "timing.h"

using nsa::bench::cuda_check;
using nsa::support::Buffer;
using json = nlohmann::json;

namespace {

// This binary's kernel, launched as the library's launcher does.
template <int N>
cudaError_t launch_n(const nsa::PagedMqaLogitsArgs& a, int64_t columns, cudaStream_t stream) {
  using namespace nsa::kernels;
  constexpr int kCtasPerSm = N == 1 ? NSA_MQA_PROBE_N1_CTAS : 2;
  const int64_t ctas_per_request = (a.width + columns - 1) / columns;
  return wg_launch_instance<N, kCtasPerSm>(a, ctas_per_request, columns, stream);
}

cudaError_t launch(const nsa::PagedMqaLogitsArgs& a, int64_t columns, cudaStream_t stream) {
  switch (a.next_n) {
    case 1: return launch_n<1>(a, columns, stream);
    case 2: return launch_n<2>(a, columns, stream);
    case 3: return launch_n<3>(a, columns, stream);
    default: return launch_n<4>(a, columns, stream);
  }
}

struct Case {
  int64_t batch, ctx, n, columns;
};

double mean(const std::vector<double>& v) {
  return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

json probe_case(const Case& c, std::mt19937_64& rng, int sm_count) {
  const std::string name = fmt::format("B={} ctx={}K N={} cols={}", c.batch, c.ctx / 1024, c.n, c.columns);
  const int64_t cols = c.ctx / nsa::bench::kP, pages = c.batch * cols;
  Buffer pool = nsa::bench::make_pool(rng, pages);
  std::vector<int32_t> table(static_cast<size_t>(pages));
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), rng);
  auto table_d = nsa::support::to_backend(nsa::Backend::kCuda, table);
  auto lens_d = nsa::support::to_backend(nsa::Backend::kCuda, std::vector<int32_t>(static_cast<size_t>(c.batch),
                                                                                   static_cast<int32_t>(c.ctx)));
  const int64_t q_bytes = c.batch * c.n * nsa::bench::kH * nsa::bench::kD;
  auto q_d = nsa::support::to_backend(nsa::Backend::kCuda, nsa::support::random_fp8(rng, static_cast<size_t>(q_bytes)));
  auto w_d = nsa::support::to_backend(nsa::Backend::kCuda,
                                      std::vector<float>(static_cast<size_t>(c.batch * c.n * nsa::bench::kH), 0.01f));
  Buffer logits(nsa::Backend::kCuda, static_cast<size_t>(c.batch * c.n * c.ctx * 4));
  nsa::PagedMqaLogitsArgs a =
      nsa::bench::device_args(q_d, w_d, c.batch, c.n, pool, pages, lens_d, table_d, cols, logits, c.ctx);
  a.kernel = nsa::MqaLogitsKernel::kWgmma;
  a.wgmma_chunk_columns = c.columns;

  // The library's bits first, then this copy's (marks off); a variant that
  // drops part of the kernel (NSA_MQA_PROBE_DROP) cannot match them.
  nsa::paged_mqa_logits(nsa::Exec::cuda(), a);
  const auto want = logits.to_host();
  logits.fill(0xff);
  cuda_check(launch(a, c.columns, nullptr), "probe launch");
  cuda_check(cudaDeviceSynchronize(), "probe kernel");
  // _narrow's m64n64 rows need not round like the library's m64n128 pairs
  // (PTX does not promise it): it reports whether they do instead of failing.
  if (NSA_MQA_PROBE_DROP == 0) {
    const bool same = logits.to_host() == want;
    if (NSA_MQA_PROBE_NARROW_MMA)
      fmt::print("{}: logits {} the library's\n", name, same ? "bit-identical to" : "differ from");
    else if (!same) throw std::runtime_error(name + ": the probe's logits differ from the library's");
  }

  const int64_t ctas = c.batch * ((c.ctx + c.columns - 1) / c.columns);
  Buffer marks(nsa::Backend::kCuda, static_cast<size_t>(ctas * kSlots * 8));
  Buffer flush(nsa::Backend::kCuda, size_t{512} << 20);
  long long* marks_ptr = marks.as<long long>();
  cuda_check(cudaMemcpyToSymbol(g_mqa_marks, &marks_ptr, sizeof(marks_ptr)), "set the marks buffer");
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  cuda_check(cudaEventCreate(&e0), "cudaEventCreate");
  cuda_check(cudaEventCreate(&e1), "cudaEventCreate");
  // The median of three eager calls, each right after a 512 MB memset (L2
  // holds neither the pages nor the code) and `prepare` (not timed).
  int flushes = 0;
  const auto cold_us = [&](const char* what, auto&& prepare, auto&& launch_call) {
    std::vector<double> us;
    for (int rep = 0; rep < 3; ++rep) {
      cuda_check(cudaMemset(flush.data(), flushes++ & 0xff, flush.bytes()), "flush");
      prepare();
      cuda_check(cudaEventRecord(e0, nullptr), "cudaEventRecord");
      cuda_check(launch_call(), what);
      cuda_check(cudaEventRecord(e1, nullptr), "cudaEventRecord");
      cuda_check(cudaEventSynchronize(e1), what);
      float ms = 0;
      cuda_check(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
      us.push_back(ms * 1000.0);
    }
    std::sort(us.begin(), us.end());
    return us[1];
  };
  const auto no_prepare = [] {};
  const double gpu_us = cold_us(
      "probe kernel", [&] { cuda_check(cudaMemset(marks.data(), 0, marks.bytes()), "clear marks"); },
      [&] { return launch(a, c.columns, nullptr); });
  long long* none = nullptr;
  cuda_check(cudaMemcpyToSymbol(g_mqa_marks, &none, sizeof(none)), "clear the marks buffer");

  // The access pattern's floor, cold like the calls above: this table, then the pool in order.
  Buffer sink(nsa::Backend::kCuda, static_cast<size_t>(ctas * 4));
  std::vector<int32_t> in_order(table.size());
  std::iota(in_order.begin(), in_order.end(), 0);
  auto in_order_d = nsa::support::to_backend(nsa::Backend::kCuda, in_order);
  const auto floor_us = [&](const Buffer& t) {
    return cold_us("paged_read_floor", no_prepare, [&] {
      return nsa::baseline::paged_read_floor(pool.as<uint8_t>(), t.as<int32_t>(), cols, lens_d.as<int32_t>(), c.batch,
                                             c.ctx, c.columns, sink.as<unsigned>(), nullptr);
    });
  };
  // The same bytes landed in shared memory at the kernel's occupancy, 512 tokens per step.
  const auto async_us = [&](nsa::baseline::PagedAsyncFloor kind) {
    return cold_us("paged_async_floor", no_prepare, [&] {
      return nsa::baseline::paged_async_floor(kind, pool.as<uint8_t>(), table_d.as<int32_t>(), cols,
                                              lens_d.as<int32_t>(), c.batch, c.ctx, c.columns, nullptr);
    });
  };
  const double gather_us = floor_us(table_d), in_order_us = floor_us(in_order_d);
  const double cp_async_us = async_us(nsa::baseline::PagedAsyncFloor::kCpAsync);
  const double bulk_us = async_us(nsa::baseline::PagedAsyncFloor::kBulk);
  (void)cudaEventDestroy(e0);
  (void)cudaEventDestroy(e1);

  // Phases of the last call's CTAs that scored at least one tile, in SM
  // clock cycles, converted at the rate the SMs actually ran (cycles over
  // globaltimer ns of all CTAs; not the peak clock: the SMs may run slower).
  const auto m = nsa::support::from_backend<long long>(marks, static_cast<size_t>(ctas * kSlots));
  std::vector<double> life, first, later, score, tail;
  long long span_lo = 0, span_hi = 0;
  double cycles = 0, ns = 0;
  std::vector<bool> sm_seen;
  int64_t ended = 0;
  for (int64_t cta = 0; cta < ctas; ++cta) {
    const long long* k = &m[static_cast<size_t>(cta * kSlots)];
    if (k[1] == 0) continue;  // never reached its end mark
    ++ended;
    span_lo = span_lo == 0 ? k[kStartNs] : std::min(span_lo, k[kStartNs]);
    span_hi = std::max(span_hi, k[kEndNs]);
    cycles += static_cast<double>(k[1] - k[0]);
    ns += static_cast<double>(k[kEndNs] - k[kStartNs]);
    const auto sm = static_cast<size_t>(k[kSm]);
    if (sm >= sm_seen.size()) sm_seen.resize(sm + 1, false);
    sm_seen[sm] = true;
    const int tiles = static_cast<int>(k[kTileCount]);
    if (tiles == 0) continue;  // no tile: the -inf columns only
    life.push_back(static_cast<double>(k[1] - k[0]));
    first.push_back(static_cast<double>(k[2] - k[0]));
    for (int i = 0; i < std::min(tiles, kProbeTiles); ++i) {
      score.push_back(static_cast<double>(k[3 + 2 * i] - k[2 + 2 * i]));
      if (i > 0) later.push_back(static_cast<double>(k[2 + 2 * i] - k[1 + 2 * i]));
    }
    tail.push_back(static_cast<double>(k[1] - k[kLastScored]));
  }
  // No end mark at all: the marks went nowhere (the library's copy of the kernel ran).
  if (ended == 0) throw std::runtime_error(name + ": no CTA recorded its end; the probe's kernel did not run");
  const double mhz = ns > 0 ? cycles / ns * 1000.0 : 0.0;
  const auto us = [mhz](const std::vector<double>& v) { return mhz > 0 ? mean(v) / mhz : 0.0; };
  // CTAs resident per SM on average over the kernel's span, over the SMs that ran one.
  const auto sms_used = static_cast<double>(std::count(sm_seen.begin(), sm_seen.end(), true));
  const double span_ns = static_cast<double>(span_hi - span_lo);
  const double resident = span_ns > 0 ? ns / span_ns / std::min<double>(sms_used, sm_count) : 0.0;
  fmt::print(
      "{:<30} {:>6} {:>9.2f} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.2f} {:>6.0f} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.2f} "
      "{:>9.2f}\n",
      name, ctas, gpu_us, gather_us, in_order_us, cp_async_us, bulk_us, mhz, us(life), us(first), us(later), us(score),
      us(tail), resident);
  return json{{"case", name},
              {"batch", c.batch},
              {"ctx", c.ctx},
              {"next_n", c.n},
              {"chunk_columns", c.columns},
              {"ctas", ctas},
              {"gpu_us", gpu_us},
              {"page_gather_floor_us", gather_us},
              {"in_order_gather_floor_us", in_order_us},
              {"cp_async_floor_us", cp_async_us},
              {"bulk_copy_floor_us", bulk_us},
              {"sm_clock_mhz", mhz},
              {"sms_used", sms_used},
              {"cta_life_us", us(life)},
              {"first_tile_wait_us", us(first)},
              {"tile_wait_us", us(later)},
              {"tile_score_us", us(score)},
              {"tail_us", us(tail)},
              {"resident_ctas_per_sm", resident}};
}

}  // namespace

int main(int argc, char** argv) {
  return nsa::bench::run(
      "paged_mqa_logits_probe_bench", argc, argv, [](bool quick, const nsa::support::DeviceLimits& lim, json& report) {
        if (nsa::kernels::mqa_wgmma_available<nsa::kernels::paged_mqa_logits_wgmma_kernel<1>>() != cudaSuccess) {
          (void)cudaGetLastError();
          fmt::print(
              "paged_mqa_logits_probe_bench: the wgmma kernel needs a compute 9.0 device and an sm_90a "
              "build. Skipped.\n");
          return;
        }
        std::string kernel = NSA_MQA_PROBE_NARROW_MMA ? "the library's with two m64n64 wgmmas per pair of rows "
                                                        "(NSA_MQA_PROBE_NARROW_MMA; logits compared)"
                                                      : "the library's";
        kernel += fmt::format(", its N = 1 instance for {} CTAs per SM (NSA_MQA_PROBE_N1_CTAS)", NSA_MQA_PROBE_N1_CTAS);
        if (NSA_MQA_PROBE_DROP != 0) {
          std::vector<std::string> dropped;
          if (NSA_MQA_PROBE_DROP & 1) dropped.push_back("the scores");
          if (NSA_MQA_PROBE_DROP & 2) dropped.push_back("the q and weight loads");
          if (NSA_MQA_PROBE_DROP & 4) dropped.push_back("the -inf tail");
          if (NSA_MQA_PROBE_DROP & 8) dropped.push_back("the head sum");
          kernel = fmt::format("without {} (NSA_MQA_PROBE_DROP = {}; logits not checked)", fmt::join(dropped, ", "),
                               NSA_MQA_PROBE_DROP);
        }
        fmt::print("kernel: {}\n", kernel);
        report["probe_drop"] = NSA_MQA_PROBE_DROP;
        fmt::print(
            "wgmma paged_mqa_logits, per CTA (means over CTAs with a visible token; us at the SM clock the CTAs "
            "ran at, MHz), one cold-L2 call\n");
        fmt::print(
            "life: start to end; first: start to tile 0 landed; wait: each later tile; score: a tile's "
            "wgmma + epilogue; tail: -inf stores; per SM: CTAs resident on average\n"
            "gather: the same K and scale bytes read through the same table and nothing else (the access "
            "pattern's floor, us); in order: the same with the pool read in page order\n"
            "cp.async / bulk: the same bytes landed in shared memory at two CTAs per SM, 512 tokens per step, "
            "by the kernel's cp.async copies / by one bulk copy per page (whole pages, an mbarrier)\n\n");
        fmt::print("{:<30} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}\n", "case",
                   "CTAs", "GPU us", "gather", "in order", "cp.async", "bulk", "MHz", "life", "first", "wait", "score",
                   "tail", "per SM");
        std::vector<Case> cases = {{64, 32768, 1, 512},  {64, 32768, 1, 2048}, {64, 32768, 1, 4096},
                                   {64, 32768, 2, 1024}, {64, 32768, 4, 512},  {64, 32768, 4, 1024},
                                   {64, 32768, 4, 2048}, {8, 32768, 1, 512},   {8, 32768, 1, 2048},
                                   {8, 32768, 4, 512},   {1, 131072, 1, 512},  {64, 4096, 1, 512}};
        if (quick) cases.resize(1);
        std::mt19937_64 rng(20251205);
        for (const Case& c : cases) report["results"].push_back(probe_case(c, rng, lim.sm_count));
      });
}
