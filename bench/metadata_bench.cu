// Metadata benchmark (not a test): per mode, batch size, destination count and
// context, the GPU time (CUDA-graph replay) and host time (eager enqueue) per
// call of
//   (a) the upstream-style unfused baseline: after the sources were computed
//       on the device once, one cudaMemcpyAsync / cudaMemcpy2DAsync per field
//       per destination (SGLang's per-backend copy chain, spec §6.1),
//   (b) copy_metadata (one launch for all destinations),
//   (c) build_metadata (one launch, computes everything from the inputs),
// next to the limits measured in the same run (empty kernel, D2D copy
// bandwidth). All three write identical bytes, checked before timing (and
// build_metadata against the reference where the buffers are small enough).
//
//   metadata_bench [--json FILE] [--quick]
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench_main.h"
#include "buffer.h"
#include "floor_kernels.h"
#include "host_data.h"
#include "metadata_baseline.h"
#include "metadata_dests.h"
#include "nsa/metadata.h"
#include "reference/metadata.h"
#include "timing.h"

using nsa::support::Buffer;
using json = nlohmann::json;

namespace {

constexpr int64_t kN = 4, kTopk = 2048, kPage = 64, kTiles = 66 * 8;

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Host data to device memory (the benchmarks measure the CUDA backend only).
template <class T>
Buffer upload(const std::vector<T>& v) {
  return nsa::support::to_backend(nsa::Backend::kCuda, v);
}

// `count` destination sets (the captured buffers of one backend each), every field present, zeroed.
nsa::support::MetadataDests make_dests(int64_t count, int64_t rows, int64_t pt_cols, int64_t pt_ld, int64_t rt_cols,
                                       int64_t rt_ld) {
  nsa::support::MetadataDestShape shape;
  shape.max_batch = shape.max_rows = rows;
  shape.page_table_1_cols = pt_cols;
  shape.page_table_1_ld = pt_ld;
  shape.real_page_table_cols = rt_cols;
  shape.real_page_table_ld = rt_ld;
  shape.flashmla_metadata_size = kTiles;
  return nsa::support::MetadataDests(nsa::Backend::kCuda, std::vector<nsa::support::MetadataDestShape>(count, shape),
                                     uint8_t{0});
}

struct Case {
  nsa::ForwardMode mode;
  int64_t bs, dests, ctx;
};

// Upstream claims for the fused 3-destination DECODE copy (issue 3), GPU us; 0 = none.
double upstream_us(const Case& c) {
  if (c.mode != nsa::ForwardMode::kDecode || c.dests != 3) return 0;
  if (c.bs == 1 && c.ctx == 4096) return 4.4;
  if (c.bs == 64 && c.ctx == 32768) return 14.0;
  if (c.bs == 256 && c.ctx == 32768) return 71.0;
  return 0;
}

json bench_case(const Case& c, const nsa::support::DeviceLimits& lim, std::mt19937_64& rng) {
  using nsa::ForwardMode;
  const bool decode = c.mode == ForwardMode::kDecode, verify = c.mode == ForwardMode::kTargetVerify;
  const int64_t bs = c.bs, R = decode ? bs : bs * kN;
  const int64_t kv = c.ctx;                         // every request's cache_seqlens
  const int64_t seq = verify ? kv - kN : kv;        // seq_lens (VERIFY adds N)
  const int64_t W = c.ctx + kN, ld = (W + 3) / 4 * 4;  // graph table width; 16-byte aligned rows
  const int64_t rt_cols = (W + kPage - 1) / kPage, kv_pages = (kv + kPage - 1) / kPage;
  const int64_t pool_rows = bs + 1;

  // Inputs.
  std::vector<int32_t> table(static_cast<size_t>(pool_rows * ld));
  std::uniform_int_distribution<int32_t> slot(0, 1 << 28);
  for (auto& x : table) x = slot(rng);
  std::vector<int64_t> seq_lens(bs, seq);
  std::vector<int32_t> rpi(bs), ext(bs, static_cast<int32_t>(kN));  // DRAFT_EXTEND v2: e_b = N
  for (int64_t b = 0; b < bs; ++b) rpi[b] = static_cast<int32_t>((b * 7 + 1) % pool_rows);
  std::vector<int32_t> splits(R + 1), tiles(kTiles);
  for (auto& x : splits) x = slot(rng) & 15;
  for (auto& x : tiles) x = slot(rng) & 1023;
  Buffer table_d = upload(table), seq_d = upload(seq_lens), rpi_d = upload(rpi), ext_d = upload(ext),
         splits_d = upload(splits), tiles_d = upload(tiles);

  const nsa::MetadataConfig cfg{c.mode, bs, kN, kTopk, kPage};
  nsa::MetadataInputs in;
  in.seq_lens = seq_d.as<int64_t>();
  in.req_pool_indices = rpi_d.as<int32_t>();
  if (c.mode == ForwardMode::kDraftExtend) in.extend_lens = ext_d.as<int32_t>();
  in.req_to_token = table_d.as<int32_t>();
  in.req_to_token_rows = pool_rows;
  in.req_to_token_cols = W;
  in.req_to_token_ld = ld;
  in.flashmla_num_splits = splits_d.as<int32_t>();
  in.flashmla_metadata = tiles_d.as<int32_t>();
  in.flashmla_num_splits_size = R + 1;
  in.flashmla_metadata_size = kTiles;

  // Sources of (a) and (b): computed on the device once, contiguous like SGLang's precompute
  // ([rows, max_len] with max_len = the batch maximum = kv).
  const auto src_dests = make_dests(1, R, kv, kv, kv_pages, kv_pages);
  const nsa::MetadataBuffers& src = src_dests.device(0);
  nsa::build_metadata(nsa::Exec::cuda(), cfg, in, src_dests.targets());
  nsa::MetadataSources s;
  s.cache_seqlens = src.cache_seqlens;
  s.cu_seqlens_k = src.cu_seqlens_k;
  s.page_table_1 = src.page_table_1;
  s.page_table_1_ld = kv;
  s.seqlens_expanded = decode ? nullptr : src.seqlens_expanded;
  s.nsa_cache_seqlens = src.nsa_cache_seqlens;
  s.nsa_cu_seqlens_k = src.nsa_cu_seqlens_k;
  s.real_page_table = src.real_page_table;
  s.real_page_table_cols = kv_pages;
  s.real_page_table_ld = kv_pages;
  s.flashmla_num_splits = src.flashmla_num_splits;
  s.flashmla_metadata = src.flashmla_metadata;
  s.flashmla_metadata_size = kTiles;
  const nsa::MetadataCopyShape shape{c.mode, bs, kv, kv, R};

  // Destinations.
  auto dst = make_dests(c.dests, R, W, ld, rt_cols, rt_cols);
  const auto& targets = dst.targets();
  nsa::support::synchronize(nsa::Backend::kCuda);

  auto build = [&](nsa::cudaStream st) { nsa::build_metadata(nsa::Exec::cuda(st), cfg, in, targets); };
  // Floor (bench/baselines/floor_kernels.h): page tables only, into scratch tables. Request b owns rows
  // [b * q, (b + 1) * q) in every mode here (DRAFT_EXTEND's e_b = N), which is the floor kernel's layout.
  std::vector<Buffer> floor_tables;
  nsa::baseline::FloorTables floor_dst;
  for (int64_t d = 0; d < c.dests && d < nsa::baseline::FloorTables::kMax; ++d) {
    floor_tables.emplace_back(nsa::Backend::kCuda, static_cast<size_t>(R * ld) * 4);
    floor_dst.table[floor_dst.count] = floor_tables.back().as<int32_t>();
    floor_dst.ld[floor_dst.count++] = ld;
  }
  auto floor = [&](nsa::cudaStream st) {
    cuda_check(nsa::baseline::page_table_floor(table_d.as<int32_t>(), ld, rpi_d.as<int32_t>(), bs, R / bs, kv,
                                               floor_dst, lim.sm_count, st),
               "page-table floor");
  };
  auto floor_vec16 = [&](nsa::cudaStream st) {
    cuda_check(nsa::baseline::page_table_floor_vec16(table_d.as<int32_t>(), ld, rpi_d.as<int32_t>(), bs, R / bs, kv,
                                                     floor_dst, lim.sm_count, st),
               "page-table floor (16-byte accesses)");
  };
  auto copy = [&](nsa::cudaStream st) { nsa::copy_metadata(nsa::Exec::cuda(st), shape, s, targets); };
  auto baseline = [&](nsa::cudaStream st) {  // bench/baselines: one copy per field per destination
    cuda_check(nsa::baseline::copy_metadata_per_field(shape, s, &dst.device(0), c.dests, st), "baseline copies");
  };

  // Verify: the three write the same bytes into zeroed destinations (DECODE's
  // seqlens_expanded is written by build only: it aliases cache_seqlens upstream).
  // Large cases compare the page tables of destination 0 only (host memory).
  constexpr int kPt = static_cast<int>(nsa::MetadataField::kPageTable1);
  constexpr int kReal = static_cast<int>(nsa::MetadataField::kRealPageTable);
  constexpr int kExp = static_cast<int>(nsa::MetadataField::kSeqlensExpanded);
  size_t dest_bytes = 0;
  for (int f = 0; f < nsa::kMetadataFieldCount; ++f) dest_bytes += dst.buffer(0, f).bytes();
  const bool all_tables = dest_bytes * c.dests <= (size_t{256} << 20);
  using Image = std::vector<std::vector<std::vector<uint8_t>>>;  // [destination][field] bytes
  auto image = [&](auto&& bytes_of) {
    Image all(static_cast<size_t>(c.dests));
    for (int64_t d = 0; d < c.dests; ++d) {
      for (int f = 0; f < nsa::kMetadataFieldCount; ++f)
        all[d].push_back(d > 0 && !all_tables && (f == kPt || f == kReal) ? std::vector<uint8_t>() : bytes_of(d, f));
    }
    return all;
  };
  auto run_and_download = [&](const nsa::support::Launch& fn) {
    dst.fill(0);
    fn(nullptr);
    nsa::support::synchronize(nsa::Backend::kCuda);
    return image([&](int64_t d, int f) { return dst.read(d, f); });
  };
  auto built = run_and_download(build);
  auto copied = run_and_download(copy);
  auto base = run_and_download(baseline);
  if (decode)
    for (auto* r : {&copied, &base})
      for (size_t d = 0; d < r->size(); ++d) (*r)[d][kExp] = built[d][kExp];
  bool ok = built == copied && built == base;
  bool ref_checked = false;
  if (ok && all_tables) {  // reference on a zeroed host mirror
    dst.fill(0);
    nsa::MetadataInputs hin = in;
    hin.seq_lens = seq_lens.data();
    hin.req_pool_indices = rpi.data();
    if (c.mode == ForwardMode::kDraftExtend) hin.extend_lens = ext.data();
    hin.req_to_token = table.data();
    hin.flashmla_num_splits = splits.data();
    hin.flashmla_metadata = tiles.data();
    nsa::reference::build_metadata(cfg, hin, dst.expected(), c.dests);
    ok = built == image([&](int64_t d, int f) { return dst.mirror(d, f); });
    ref_checked = true;
  }
  if (!ok) throw std::runtime_error(fmt::format("verification failed: mode {} bs {} D {} ctx {}", to_string(c.mode), bs,
                                                c.dests, c.ctx));

  // Bytes moved by build_metadata (read + written); the copy also reads its sources.
  const double small = 4.0 * (2 * bs + 3 * R + 2 * (R + 1));
  const double written = c.dests * (4.0 * R * kv + 4.0 * R * kv_pages + small + 4.0 * kTiles);
  const double build_bytes = 4.0 * bs * kv + written + 4.0 * (R + 1 + kTiles);
  const double copy_bytes = written + 4.0 * R * kv + 4.0 * R * kv_pages + small + 4.0 * kTiles;

  const double base_gpu = nsa::support::graph_time_us(baseline, 10);
  const double copy_gpu = nsa::support::graph_time_us(copy, 20);
  const double build_gpu = nsa::support::graph_time_us(build, 20);
  const double floor4_gpu = nsa::support::graph_time_us(floor, 20);
  const double floor16_gpu = nsa::support::graph_time_us(floor_vec16, 20);
  const double floor_gpu = std::min(floor4_gpu, floor16_gpu);
  const auto base_eager = nsa::support::eager_time(baseline, 50);
  const auto copy_eager = nsa::support::eager_time(copy, 200);
  const auto build_eager = nsa::support::eager_time(build, 200);
  const auto build_host = nsa::support::paired_host_time(build, 200);  // against an empty launch, interleaved
  const double gpu_target = 1.5 * (lim.empty_kernel_graph_us + build_bytes / (lim.copy_gbps * 1e3));
  const double host_target = 1.2 * build_host.empty_us;
  const double upstream = upstream_us(c);
  const bool gpu_met = build_gpu <= gpu_target && (upstream == 0 || build_gpu < upstream);
  const bool host_met = build_host.op_us <= host_target;
  fmt::print("{:<14} {:>4} {:>2} {:>6} | {:>8.2f} {:>7.2f} | {:>8.2f} {:>6.2f} | {:>8.2f} {:>6.2f} {:>6.2f}x {:>7.2f} "
             "{:>8.2f} {:>7} | {:>6} {:<6} {:<6}\n",
             to_string(c.mode), bs, c.dests, c.ctx, base_gpu, base_eager.host_us, copy_gpu, copy_eager.host_us,
             build_gpu, build_host.op_us, build_host.op_us / build_host.empty_us, floor_gpu, gpu_target,
             upstream > 0 ? fmt::format("{:.1f}", upstream) : "-",
             fmt::format("{:.0f}", build_bytes / build_gpu / 1e3),
             gpu_met ? "MET" : "MISSED", host_met ? "MET" : "MISSED");
  return json{{"mode", to_string(c.mode)},
              {"batch", bs},
              {"destinations", c.dests},
              {"context", c.ctx},
              {"rows", R},
              {"build_bytes_moved", build_bytes},
              {"copy_bytes_moved", copy_bytes},
              {"baseline_gpu_us", base_gpu},
              {"baseline_eager_gpu_us", base_eager.gpu_us},
              {"baseline_host_us", base_eager.host_us},
              {"copy_gpu_us", copy_gpu},
              {"copy_eager_gpu_us", copy_eager.gpu_us},
              {"copy_host_us", copy_eager.host_us},
              {"build_gpu_us", build_gpu},
              {"build_eager_gpu_us", build_eager.gpu_us},
              {"build_host_us", build_host.op_us},
              {"empty_launch_host_us_interleaved", build_host.empty_us},
              {"build_host_over_empty", build_host.op_us / build_host.empty_us},
              {"build_gbps", build_bytes / build_gpu / 1e3},
              {"page_table_floor_gpu_us", floor_gpu},
              {"page_table_floor_4byte_gpu_us", floor4_gpu},
              {"page_table_floor_16byte_gpu_us", floor16_gpu},
              {"build_gpu_target_us", gpu_target},
              {"build_host_target_us", host_target},
              {"upstream_fused_gpu_us", upstream},
              {"gpu_target_met", gpu_met},
              {"host_target_met", host_met},
              {"verified_equal_outputs", ok},
              {"verified_against_reference", ref_checked}};
}

}  // namespace

int main(int argc, char** argv) {
  return nsa::bench::run("metadata_bench", argc, argv, [](bool quick, const nsa::support::DeviceLimits& lim, json& out) {
    std::mt19937_64 rng(4242);
    out["draft_tokens"] = kN;
    fmt::print("N = {}, page size {}, topk {}; GPU us per call as CUDA-graph replays, host us per eager call.\n", kN,
               kPage, kTopk);
    fmt::print("build targets: GPU <= 1.5 x (empty kernel + bytes / copy BW) and < upstream fused copy; "
               "host <= 1.2 x empty launch (build host time and 'x empty' from samples interleaved with empty "
               "launches; the empty launch alone: {:.2f} us)\n",
               lim.empty_launch_host_us);
    fmt::print("floor = page tables alone, the least work of a build (req_to_token row index, then its columns, into "
               "every destination; the faster of 4-byte and 16-byte accesses; bench/baselines/floor_kernels.h)\n");
    fmt::print("{:<14} {:>4} {:>2} {:>6} | {:>8} {:>7} | {:>8} {:>6} | {:>8} {:>6} {:>7} {:>7} {:>8} {:>7} | {:>6} "
               "{:<6} {:<6}\n",
               "mode", "bs", "D", "ctx", "base gpu", "host", "copy gpu", "host", "build", "host", "x empty", "floor",
               "target", "upstrm", "GB/s", "gpu", "host");
    std::vector<int64_t> batches = {1, 8, 64, 256}, dests = {1, 3, 4}, ctxs = {4096, 32768};
    if (quick) {
      batches = {1, 64};
      dests = {3};
    }
    for (auto mode : {nsa::ForwardMode::kDecode, nsa::ForwardMode::kTargetVerify, nsa::ForwardMode::kDraftExtend})
      for (int64_t ctx : ctxs)
        for (int64_t bs : batches)
          for (int64_t d : dests) out["results"].push_back(bench_case({mode, bs, d, ctx}, lim, rng));
  });
}
