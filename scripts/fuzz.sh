#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, CPU-only, clang, ASan + UBSan) in
# build-fuzz and runs each for a fixed time on its seed corpus.
#   scripts/fuzz.sh [seconds per target, default 8] [target ...]
# A crash leaves its input in build-fuzz/artifacts/<target>/; replay it with
#   build-fuzz/fuzz/<target> build-fuzz/artifacts/<target>/crash-*
# New inputs found during the run go to build-fuzz/corpus/<target>/ (the
# committed seeds in fuzz/corpus/ are only read).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-8}
[ $# -gt 0 ] && shift
build=${NSA_FUZZ_BUILD_DIR:-build-fuzz}
jobs=${NSA_JOBS:-$(nproc)}
cxx=${NSA_FUZZ_CXX:-clang++}

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$cxx" \
  -DNSA_CUDA=OFF -DNSA_BUILD_FUZZERS=ON -DNSA_BUILD_TESTS=OFF -DNSA_BUILD_BENCH=OFF -DNSA_BUILD_CLI=OFF >/dev/null
cmake --build "$build" -j "$jobs" --target nsa_fuzzers

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=($(cd fuzz && ls fuzz_*.cpp | sed 's/\.cpp$//'))
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${targets[@]}"; do
  work="$build/corpus/$t" artifacts="$build/artifacts/$t"
  mkdir -p "$work" "$artifacts"
  echo "fuzz: $t for ${seconds}s"
  # -max_len keeps inputs small (every target bounds its sizes anyway);
  # the first corpus dir receives new inputs, the seeds are read-only.
  if ! "$build/fuzz/$t" -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$artifacts/" "$work" "fuzz/corpus/$t" >"$build/$t.log" 2>&1; then
    status=1
    echo "fuzz: $t FAILED, log $build/$t.log, inputs in $artifacts/"
    tail -n 40 "$build/$t.log"
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$build/$t.log" | tr '\n' ' ' | sed "s/^/fuzz: $t /; s/\$/\n/"
  fi
done
exit $status
