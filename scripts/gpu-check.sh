#!/usr/bin/env bash
# GPU check: the only producer of docs/gpu-report.md.
#
# On a machine with an NVIDIA GPU it runs every C++ test binary, the GPU tests
# again under compute-sanitizer (memcheck, racecheck, initcheck, synccheck),
# the CLI self-test, the Python tests (when the extension was built), the
# benchmarks and `nsa bench`, the staged wheel's install and selftest (when
# there is one), then writes the report from the logs and JSON.
#
#   scripts/gpu-check.sh [--build-dir DIR] [--results DIR] [--report FILE] [--phase all|tests|sanitizers|rest]
#
# --phase splits one check over shorter commands on the same machine and
# results folder: `tests` runs the C++ tests and the sanitizers (only the tools
# in $NSA_SANITIZERS when set, none when it is "none"; only the test binaries named in
# $NSA_SANITIZER_BINARIES when set, and the gtest filter $NSA_SANITIZER_FILTER instead
# of each binary's GPU tests when set), `sanitizers` the sanitizers alone (for the
# tools a first `tests` command left out), `rest` the CLI, benchmarks (only
# those whose name matches the regex $NSA_BENCHES when set) and Python
# tests and then writes the report of all of them ($NSA_REST_STEPS, a list
# of cli, benches, python and wheel, runs only those; the results of an
# earlier command in the same results folder stay in the report). A
# complete check takes longer than one 10-minute device command (on an H100: about 2 minutes of
# tests, 1 of memcheck, 4 of racecheck, initcheck and synccheck not yet timed,
# 4 of the rest): run, at once one after the other on the same warm machine,
#   NSA_SANITIZERS="memcheck racecheck" gpu-check.sh --phase tests
#   NSA_SANITIZERS="initcheck synccheck" gpu-check.sh --phase sanitizers
#   gpu-check.sh --phase rest
# (Commands whose results land in different folders, e.g. one per device
# command: `scripts/gpu_report.py FOLDER1 FOLDER2 ...` writes one report of
# them, in command order.)
#
# The build folder may come from another machine (scripts/build-for-gpu.sh
# builds one with a static CUDA runtime and records the commit in it); without
# one the script configures and builds here (needs GoogleTest).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-gpu"
results="${OUT:-$root/gpu-results}"
report="$root/docs/gpu-report.md"
phase=all
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build=$2; shift 2 ;;
    --results) results=$2; shift 2 ;;
    --report) report=$2; shift 2 ;;
    --phase) phase=$2; shift 2 ;;
    *) echo "usage: $0 [--build-dir DIR] [--results DIR] [--report FILE] [--phase all|tests|sanitizers|rest]" >&2; exit 2 ;;
  esac
done
case "$phase" in all | tests | sanitizers | rest) ;; *) echo "gpu-check: --phase all, tests, sanitizers or rest" >&2; exit 2 ;; esac
# The sanitizer tools of this command, checked before anything runs (an
# unknown name was once passed to compute-sanitizer as a tool and failed there).
sanitizers=${NSA_SANITIZERS:-memcheck racecheck initcheck synccheck}
[ "$sanitizers" != none ] || sanitizers=""
for tool in $sanitizers; do
  case "$tool" in memcheck | racecheck | initcheck | synccheck) ;; *) echo "gpu-check: NSA_SANITIZERS takes memcheck, racecheck, initcheck, synccheck or none; got $tool" >&2; exit 2 ;; esac
done
mkdir -p "$results"
log() { echo "[gpu-check $(date +%H:%M:%S)] $*"; }

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU visible (nvidia-smi failed); nothing to check" >&2
  exit 1
fi

# A folder staged by scripts/build-for-gpu.sh (it writes COMMIT), or any
# folder holding a test binary, is prebuilt: it runs as it is, even when it
# holds only some of the binaries (a run limited to one op). Anything else is
# configured and built here.
prebuilt=0
[ -f "$build/COMMIT" ] && prebuilt=1
ls "$build"/tests/cpp/*_test >/dev/null 2>&1 && prebuilt=1
if [ "$prebuilt" = 0 ]; then
  log "no prebuilt binaries in $build: configuring and building"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >"$results/build.log" 2>&1 &&
    cmake --build "$build" -j >>"$results/build.log" 2>&1 || { echo "build failed, see $results/build.log" >&2; exit 1; }
fi

# Facts about the machine and the code under test.
[ "$phase" = rest ] || {
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit=$(cat "$build/COMMIT" 2>/dev/null || git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | head -1 | sed 's/^/gpu=/'
  nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1 | sed 's/^/gpu_uuid=/'  # which machine, when commands span several
  echo "cuda_runtime=$(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9.]*\).*/\1/p' | head -1)"
  echo "sanitizer=$(compute-sanitizer --version 2>/dev/null | grep -o 'Version [^ ]*' | head -1)"
  echo "sanitizer_tools=memcheck racecheck initcheck synccheck"  # a complete check: the report flags any not run
} >"$results/facts.txt"
if [ "$phase" = rest ]; then  # the commit of this phase's binaries, when a later build ran it
  rest_commit=$(cat "$build/COMMIT" 2>/dev/null || echo unknown)
  grep -q "^commit=$rest_commit\$" "$results/facts.txt" || echo "commit_rest=$rest_commit" >>"$results/facts.txt"
  grep -q "^gpu_uuid=" "$results/facts.txt" ||
    nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1 | sed 's/^/gpu_uuid=/' >>"$results/facts.txt"
fi
cat "$results/facts.txt"

status=0
# A step runs in the background and the script waits for it, so a TERM or
# INT sent to this script (an outer time limit) stops the step too: `timeout`
# puts its command in a process group of its own, out of reach of a signal
# to the caller's group, and a test left running beside the next command's
# benchmarks once failed there. The stopped step is not recorded (the
# report says NOT FINISHED).
step_pid=""
stop_step() {
  [ -z "$step_pid" ] || { kill -TERM "$step_pid" 2>/dev/null; wait "$step_pid" 2>/dev/null; }
  log "stopped by a signal during a step"
  exit 143
}
trap stop_step TERM INT
run_step() {  # run_step NAME TIMEOUT_S CMD...   (logs to $results/NAME.log, records the exit code)
  local name=$1 limit=$2; shift 2
  log "$name"
  timeout "$limit" "$@" >"$results/$name.log" 2>&1 &
  step_pid=$!
  wait "$step_pid"
  local rc=$?
  step_pid=""
  echo "$name $rc" >>"$results/steps.txt"
  [ $rc -eq 0 ] || { status=1; log "$name FAILED (exit $rc)"; }
}
tests=$(ls "$build"/tests/cpp/*_test 2>/dev/null)
if [ "$phase" = all ] || [ "$phase" = tests ]; then
: >"$results/steps.txt"
: >"$results/skipped.txt"
for t in $tests; do
  n=$(basename "$t")
  run_step "test_$n" 300 "$t" --gtest_output="json:$results/test_$n.json"
done
fi

# Only the CUDA instances under the sanitizers (the CPU ones do not touch the
# GPU); binaries without GPU tests are skipped. memcheck covers every GPU test
# but the 100k-replay long runs (their kernels are memchecked by the other
# tests); the slower tools also skip the >4 GiB pool and the longest contexts.
gpu_filter='*/cuda:*/cuda_*:*Cuda*:*CUDA*:*Graph*:*_cuda'  # (cuda_*: the per-kernel instances, e.g. cuda_mma)
[ "$phase" = rest ] || for tool in $sanitizers; do
  for t in $tests; do
    n=$(basename "$t")
    # NSA_SANITIZER_BINARIES="a_test b_test": only those (split a long tool over commands).
    [ -z "${NSA_SANITIZER_BINARIES:-}" ] || [[ " $NSA_SANITIZER_BINARIES " == *" $n "* ]] || continue
    filter="$gpu_filter:-*LongRun*:*CpuOnly*"  # CpuOnly: tests of CPU-only builds (no CUDA call)
    [ "$tool" = memcheck ] || filter="$gpu_filter:-*LongRun*:*CpuOnly*:*4GiB*:*Long*:*Replay*"
    # topk_test under the slower tools: its TopkCuda cases only. racecheck
    # runs the 1024-thread top-k CTAs (16 of them per row in a cluster, which
    # the library picks for few rows) about 1000x slower than memcheck: one
    # Backends/TopkTest case took 92 s, an EveryClusterSize* case over 4
    # minutes. TopkCuda.ClusterSplitJustPastTheCache runs every CTA count per row
    # (1..16) on the shortest rows a cluster splits; memcheck runs every case.
    [ "$tool" = memcheck ] || [ "$n" != topk_test ] || filter="TopkCuda.*:-*EveryClusterSize*:*Replay*"
    # paged_mqa_logits_test under the slower tools: the wgmma kernels'
    # instances (/cuda is the automatic choice, one of them; the mma.sync
    # kernel is unchanged since its clean runs) and the PagedMqaLogitsCuda
    # cases. Its 48 GPU instances take 6-10 s each under racecheck (about 6
    # minutes on an H100: past one device command); run it alone with
    # NSA_SANITIZER_BINARIES=paged_mqa_logits_test.
    [ "$tool" = memcheck ] || [ "$n" != paged_mqa_logits_test ] ||
      filter="*/cuda_wgmma*:PagedMqaLogitsCuda.*:-*LongRun*:*CpuOnly*:*4GiB*:*Long*:*Replay*"
    # paged_mqa_logits_teams2_test (NSA_EXPERIMENT_BUILDS): only its persistent
    # schedule differs from paged_mqa_logits_test's, so every tool runs only that.
    [ "$n" != paged_mqa_logits_teams2_test ] ||
      filter="*/cuda_wgmma_persistent:PagedMqaLogitsCuda.*Persistent*:-*LongRun*:*CpuOnly*:*4GiB*:*Long*:*Replay*"
    # NSA_SANITIZER_FILTER: this gtest filter instead (a change limited to some tests, under a slow tool;
    # a binary with no test it matches is recorded as no-gpu-tests in skipped.txt).
    [ -z "${NSA_SANITIZER_FILTER:-}" ] || filter=$NSA_SANITIZER_FILTER
    listing=$("$t" --gtest_list_tests --gtest_filter="$filter")  # no pipe: a SIGPIPE must not skip a binary
    if ! grep -q '^  ' <<<"$listing"; then
      echo "sanitizer_${tool}_$n no-gpu-tests" >>"$results/skipped.txt"
      continue
    fi
    run_step "sanitizer_${tool}_$n" 420 compute-sanitizer --tool "$tool" --error-exitcode 86 \
      --print-limit 20 "$t" --gtest_filter="$filter"
  done
done

if [ "$phase" = tests ] || [ "$phase" = sanitizers ]; then
  log "phase $phase done (overall status $status); run --phase rest for the rest and the report"
  exit $status
fi

# Any whitespace between names; unset or empty: all four.
rest_steps=" $(echo ${NSA_REST_STEPS:-cli benches python wheel}) "
for step in $rest_steps; do
  case "$step" in cli | benches | python | wheel) ;; *) echo "gpu-check: NSA_REST_STEPS takes cli, benches, python, wheel; got $step" >&2; exit 2 ;; esac
done
rest() { [[ "$rest_steps" == *" $1 "* ]]; }

cli="$build/tools/nsa/nsa"
if rest cli && [ -x "$cli" ]; then
  run_step cli_info 60 "$cli" info
  run_step cli_selftest 300 "$cli" selftest
  run_step cli_bench 420 "$cli" bench --no-progress --json "$results/nsa_bench.json" --plot "$results/nsa_bench.svg"
  run_step cli_bench_prefill 300 "$cli" bench --no-progress --scenario prefill --json "$results/nsa_bench_prefill.json"
  run_step cli_bench_cold_l2 420 "$cli" bench --no-progress --l2 cold --json "$results/nsa_bench_cold_l2.json"
fi

if [ -n "${NSA_BENCHES:-}" ]; then  # a bad regex would skip every bench silently
  [[ "" =~ $NSA_BENCHES ]]
  [ $? -ne 2 ] || { echo "gpu-check: NSA_BENCHES is not a valid regular expression: $NSA_BENCHES" >&2; exit 2; }
fi
for b in "$build"/bench/*_bench; do
  rest benches && [ -x "$b" ] || continue
  n=$(basename "$b")
  [ -z "${NSA_BENCHES:-}" ] || [[ "$n" =~ $NSA_BENCHES ]] || continue
  run_step "bench_$n" 600 "$b" --json "$results/$n.json"  # metadata_bench's SGLang-shaped table allocates GBs per case
done
# Benches of earlier commits (scripts/build-for-gpu.sh, NSA_COMPARE_AT), each
# in --quick mode right after this build's, on this machine.
for b in "$build"/compare/*/*_bench; do
  rest benches && [ -x "$b" ] || continue
  n=$(basename "$b") at=$(basename "$(dirname "$b")")
  [ -z "${NSA_BENCHES:-}" ] || [[ "$n" =~ $NSA_BENCHES ]] || continue
  [ -x "$build/bench/$n" ] && run_step "bench_compare_this_$n" 300 "$build/bench/$n" --quick \
    --json "$results/compare_this_$n.json"
  run_step "bench_compare_${at}_$n" 300 "$b" --quick --json "$results/compare_${at}_$n.json"
done

# The Python package staged by scripts/build-for-gpu.sh (or any <build>/python from scripts/build-python.sh).
if rest python && ls "$build"/python/nsa/_nsa*.so >/dev/null 2>&1 && command -v python3 >/dev/null; then
  export PYTHONPATH="$build/python:${PYTHONPATH:-}"
  run_step python_tests 420 "$root/tests/python/run.sh" python3 -rs
  run_step python_overhead 300 python3 "$root/tests/python/bench_overhead.py" --out "$results/python_overhead.json"
fi

# The wheel staged by build-for-gpu.sh (NSA_GPU_WHEEL=1): installed into a
# fresh venv, its own nsa tool runs the selftest on this GPU.
for whl in "$build"/wheel/*.whl; do
  rest wheel && [ -f "$whl" ] && command -v python3 >/dev/null || continue
  run_step wheel_check 300 "$root/scripts/check-wheel.sh" "$whl" --python python3
done

# On a GPU machine a skipped GPU test is a failure (e.g. a driver too old for
# the CUDA runtime makes every device test skip).
skipped_gpu=$(cat "$results"/test_*.log 2>/dev/null | grep -cE '^\[  SKIPPED \] .*(/cuda|_cuda)' || true)
[ ! -f "$results/steps.txt" ] || sed -i '/^gpu_tests_skipped /d' "$results/steps.txt"  # one line after several rest commands
echo "gpu_tests_skipped $skipped_gpu" >>"$results/steps.txt"
[ "$skipped_gpu" -eq 0 ] || { status=1; log "$skipped_gpu GPU tests skipped on a GPU machine"; }

python3 "$root/scripts/gpu_report.py" "$results" >"$report"
log "report written to $report (overall status $status)"
exit $status
