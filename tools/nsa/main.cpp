// nsa: command-line front end of NSA Runtime.
//   nsa info                 version, build configuration, devices
//   nsa selftest             every op on every backend against the reference
//   nsa bench [options]      DeepSeek-V3.2 decode step (or prefill gather): baseline vs ours
// Exit codes: 0 ok, 1 runtime failure, 2 usage error.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include <exception>
#include <string>

#include "commands.h"
#include "nsa/indexer.h"
#include "nsa/version.h"

namespace {

using namespace nsa::cli;

void add_bench_options(CLI::App& cmd, BenchOptions& o) {
  cmd.add_option("--scenario", o.scenario, "decode: one speculative decode step; prefill: chunked-prefill K+S gather")
      ->check(CLI::IsMember({"decode", "prefill"}))
      ->capture_default_str();
  cmd.add_option("--device", o.device, "backend to run on (auto: cuda when a GPU exists, else cpu)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  cmd.add_option("--batch", o.batch, "requests per step (default: decode 64, on the CPU backend 2; prefill 8)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd.add_option("--context", o.context,
                 "max KV tokens per request (default: decode 32768, on the CPU backend 4096; prefill 16384)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd.add_option("--layers", o.layers, "layers per step (default 61; on the CPU backend: decode 1, prefill 16)")
      ->check(CLI::Range(int64_t{1}, int64_t{256}));
  cmd.add_option("--draft-steps", o.draft_steps, "speculative draft steps S (S-1 draft-decode backends)")
      ->check(CLI::Range(int64_t{1}, int64_t{16}))
      ->capture_default_str();
  cmd.add_option("--draft-tokens", o.draft_tokens,
                 "speculative draft tokens N (verify rows per request; the indexer takes at most 4)")
      ->check(CLI::Range(int64_t{1}, nsa::kIndexerMaxNextN))
      ->capture_default_str();
  cmd.add_option("--iters", o.iters,
                 "eager calls per host-time sample on CUDA (the CPU harness times >= 20 ms per sample)")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd.add_option("--cpu-threads", o.cpu_threads, "threads of the CPU backend (0 = all cores)")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  cmd.add_option("--seed", o.seed, "seed of the random inputs")->capture_default_str();
  cmd.add_option("--json", o.json_path, "write the results as JSON to FILE");
  cmd.add_option("--plot", o.plot_path, "write an SVG of step time vs batch size (a small sweep) to FILE.svg");
  cmd.add_option("--l2", o.l2,
                 "GPU timings with a warm L2 (calls back to back) or a cold one (L2 flushed between calls)")
      ->check(CLI::IsMember({"warm", "cold"}))
      ->capture_default_str();
  cmd.add_flag("!--no-progress", o.progress, "no live progress line (it is shown only on a terminal anyway)");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"nsa: NSA Runtime command-line tool (DeepSeek Sparse Attention runtime data path)", "nsa"};
  app.set_version_flag("--version", std::string("nsa ") + NSA_VERSION_STRING);
  app.require_subcommand(1, 1);

  CLI::App* info = app.add_subcommand("info", "version, build configuration and devices");

  SelftestOptions selftest_options;
  CLI::App* selftest =
      app.add_subcommand("selftest", "run every op on every backend against the reference; exit 0 if none fails");
  selftest->add_option("--seconds", selftest_options.seconds, "total time budget")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  selftest->add_option("--device", selftest_options.device, "backends to test")
      ->check(CLI::IsMember({"all", "cpu", "cuda"}))
      ->capture_default_str();
  selftest->add_option("--seed", selftest_options.seed, "seed of the random cases (0 = random, printed)");

  BenchOptions bench_options;
  CLI::App* bench = app.add_subcommand(
      "bench", "DeepSeek-V3.2 decode step (or prefill gather): upstream-style baseline vs nsa, verified, timed");
  add_bench_options(*bench, bench_options);

  // CLI11 reports an unknown first word only as "A subcommand is required"; name it instead.
  const std::string first = argc > 1 ? argv[1] : "";
  if (!first.empty() && first[0] != '-' && first != "info" && first != "selftest" && first != "bench") {
    fmt::print(stderr,
               "nsa: error: unknown subcommand '{}' (expected info, selftest or bench)\n"
               "Run with --help for more information.\n",
               argv[1]);
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints the message (and the --help hint); help/version exit 0, errors 2.
    const int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }

  try {
    if (*info) return run_info();
    if (*selftest) return run_selftest(selftest_options);
    if (*bench) return run_bench(bench_options);
  } catch (const UsageError& e) {
    fmt::print(stderr, "nsa: error: {}\nRun with --help for more information.\n", e.what());
    return kExitUsage;
  } catch (const std::exception& e) {
    fmt::print(stderr, "nsa: error: {}\n", e.what());
    return kExitFailure;
  }
  return kExitUsage;
}
