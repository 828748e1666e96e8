#!/usr/bin/env bash
# The two jobs of the README on a fresh machine:
#   scripts/run.sh bench [nsa bench options]   build, then run the main job (`nsa bench`)
#   scripts/run.sh test                        check formatting (scripts/check-format.sh), build, then run every
#                                              test (C++ via ctest, the C++ tests again under ASan+UBSan, the
#                                              fuzzers, Python via pytest)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
job=${1:-}
[ $# -gt 0 ] && shift
build=${NSA_BUILD_DIR:-build}
jobs=${NSA_JOBS:-$(nproc)}

bash scripts/deps.sh
# Formatting first: a style slip fails CI in seconds, not after the build.
if [ "$job" = test ]; then bash scripts/check-format.sh; fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$jobs"

case "$job" in
  bench)
    exec "$build/tools/nsa/nsa" bench "$@"
    ;;
  test)
    ctest --test-dir "$build" --output-on-failure -j "$jobs"
    # The C++ tests again, CPU-only, under AddressSanitizer + UBSan (own build
    # dir; only the library, helpers and test binaries are built).
    asan=${NSA_ASAN_BUILD_DIR:-build-asan}
    cmake -S . -B "$asan" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNSA_CUDA=OFF -DNSA_SANITIZE=ON \
      -DNSA_BUILD_BENCH=OFF -DNSA_BUILD_CLI=OFF >/dev/null
    cmake --build "$asan" -j "$jobs"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 ctest --test-dir "$asan" --output-on-failure -j "$jobs"
    # libFuzzer targets of every public op, 8 s each on the committed corpus (fuzz/).
    NSA_JOBS=$jobs bash scripts/fuzz.sh "${NSA_FUZZ_SECONDS:-8}"
    # The Python package through its real installer, CPU-only here so CI does
    # not compile the CUDA code a second time (the C++ build above covers it).
    NSA_CUDA=OFF python3 -m pip install -q .
    tests/python/run.sh python3 -rs   # treats "no tests collected" (exit 5) as success
    ;;
  *)
    echo "usage: scripts/run.sh bench|test [args]" >&2
    exit 2
    ;;
esac
