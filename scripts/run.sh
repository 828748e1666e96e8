#!/usr/bin/env bash
# The two jobs of the README on a fresh machine:
#   scripts/run.sh bench [nsa bench options]   build, then run the main job (`nsa bench`); needs only the
#                                              C++ toolchain
#   scripts/run.sh test                        check formatting (scripts/check-format.sh), build, then run every test (C++ via ctest, the C++ tests again
#                                              under ASan+UBSan, the fuzzers, the Python package built and
#                                              installed into the virtual environment .venv (and its nsa
#                                              tool's selftest), its typing
#                                              stubs checked, Python via pytest)
# Both install what is missing first (scripts/deps.sh) and end with a one-line summary.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
job=${1:-}
[ $# -gt 0 ] && shift
case "$job" in bench | test) ;; *) echo "usage: scripts/run.sh bench|test [args]" >&2; exit 2 ;; esac
build=${NSA_BUILD_DIR:-build}
jobs=${NSA_JOBS:-$(nproc)}
export NSA_VENV=${NSA_VENV:-$root/.venv}

done_steps=()
step=deps
finish() {
  local rc=$?
  if [ $rc -eq 0 ]; then
    echo "run.sh $job: OK (${done_steps[*]})"
  else
    echo "run.sh $job: FAILED at step '$step' (exit $rc); passed before it: ${done_steps[*]:-none}" >&2
  fi
}
trap finish EXIT
ok() { done_steps+=("$step"); }

bash scripts/deps.sh "$job"
# CMake/Ninja from PyPI (when the distro's are too old) and the test job's Python.
[ -d "$NSA_VENV/bin" ] && export PATH="$NSA_VENV/bin:$PATH"
ok

# Formatting first: a style slip fails CI in seconds, not after the build.
if [ "$job" = test ]; then
  step=format
  bash scripts/check-format.sh
  ok
fi

# configure: the full log goes to <build>/configure.log; the project's own lines
# (CUDA on or off and why, architectures) are shown.
configure() {  # configure BUILD_DIR CMAKE_ARGS...
  local dir=$1; shift
  mkdir -p "$dir"
  if ! cmake -S . -B "$dir" -G Ninja "$@" >"$dir/configure.log" 2>&1; then
    cat "$dir/configure.log" >&2
    return 1
  fi
  grep -E '^-- nsa' "$dir/configure.log" || true
}

step=build
configure "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$jobs"
ok

case "$job" in
  bench)
    step="nsa bench"
    "$build/tools/nsa/nsa" bench "$@"
    ok
    ;;
  test)
    step=ctest
    ctest --test-dir "$build" --output-on-failure -j "$jobs"
    ok
    # The C++ tests again, CPU-only, under AddressSanitizer + UBSan (own build
    # dir; only the library, helpers and test binaries are built).
    step="ctest (ASan+UBSan)"
    asan=${NSA_ASAN_BUILD_DIR:-build-asan}
    configure "$asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNSA_CUDA=OFF -DNSA_SANITIZE=ON \
      -DNSA_BUILD_BENCH=OFF -DNSA_BUILD_CLI=OFF
    cmake --build "$asan" -j "$jobs"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 ctest --test-dir "$asan" --output-on-failure -j "$jobs"
    ok
    # libFuzzer targets of every public op, 8 s each on the committed corpus (fuzz/).
    step=fuzz
    NSA_JOBS=$jobs bash scripts/fuzz.sh "${NSA_FUZZ_SECONDS:-8}"
    ok
    # The Python package through its real installer, into the venv (never the
    # system interpreter), CPU-only here so CI does not compile the CUDA code a
    # second time (the C++ build above covers it).
    step="pip install"
    NSA_CUDA=OFF "$NSA_VENV/bin/python" -m pip install -q --disable-pip-version-check .
    ok
    # The package ships the nsa tool (its dependencies are installed above):
    # the installed copy checks itself, as a user of the wheel would.
    step="installed nsa selftest"
    "$NSA_VENV/bin/nsa" selftest
    ok
    step="stubs"
    "$NSA_VENV/bin/python" scripts/stubs.py --check
    ok
    step=pytest
    tests/python/run.sh "$NSA_VENV/bin/python" -rs   # treats "no tests collected" (exit 5) as success
    ok
    ;;
esac
