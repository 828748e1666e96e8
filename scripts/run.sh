#!/usr/bin/env bash
# The two jobs of the README on a fresh machine:
#   scripts/run.sh bench [nsa bench options]   build, then run the main job (`nsa bench`)
#   scripts/run.sh test                        build, then run every test (C++ via ctest, Python via pytest)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
job=${1:-}
[ $# -gt 0 ] && shift
build=${NSA_BUILD_DIR:-build}
jobs=${NSA_JOBS:-$(nproc)}

bash scripts/deps.sh
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$jobs"

case "$job" in
  bench)
    exec "$build/tools/nsa/nsa" bench "$@"
    ;;
  test)
    ctest --test-dir "$build" --output-on-failure -j "$jobs"
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
