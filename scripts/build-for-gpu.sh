#!/usr/bin/env bash
# Builds everything the GPU check needs on a machine without a GPU (nvcc and
# GoogleTest are here; the GPU machine has no GoogleTest and no network), with
# the CUDA runtime linked statically, then stages only the binaries into
# .gpu-bin/ (small enough to carry) with the commit they were built from.
#
#   scripts/build-for-gpu.sh [extra cmake -D options, for both builds]
#   e.g. -DCMAKE_CUDA_ARCHITECTURES=90a-real to build only what an H100/H200 runs
#   NSA_GPU_WHEEL=1 scripts/build-for-gpu.sh ...   also stages the wheel (see below)
#   NSA_COMPARE_AT="c017cf4 0a0395f" NSA_COMPARE_BENCHES=paged_mqa_logits_bench scripts/build-for-gpu.sh ...
#       also builds those benches at those commits (a temporary worktree each,
#       the same flags) into .gpu-bin/compare/<commit>/, which the GPU check
#       runs next to this build's (--quick, one machine, one command): a kernel
#       change is timed against its predecessor, not against an older report
#       from another card
# then, on the GPU machine:  scripts/gpu-check.sh --build-dir .gpu-bin
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="$root/build-gpu"
stage="$root/.gpu-bin"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DNSA_CUDA=ON -DNSA_EXPERIMENT_BUILDS=ON "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
rm -rf "$stage"
mkdir -p "$stage"
# Only executables the current build graph produces: a binary left in the
# build folder by an older tree (a renamed or merged test) must not be run.
(cd "$build" && ninja -t targets all | cut -d: -f1 | grep -E '^(tests|bench|tools)/' | while read -r f; do
   if [ -f "$f" ] && [ -x "$f" ]; then cp --parents "$f" "$stage"; fi
 done)
# The Python package for the GPU machine's interpreter (3.12 there; override with NSA_GPU_PYTHON).
gpu_python=${NSA_GPU_PYTHON:-/root/.pyenv/versions/3.12.1/bin/python3}
if [ -x "$gpu_python" ]; then
  "$root/scripts/build-python.sh" "$gpu_python" "$root/build-py312" "$@" >/dev/null
  mkdir -p "$stage/python" && cp -r "$root/build-py312/python/nsa" "$stage/python/nsa"
fi
# With NSA_GPU_WHEEL=1, also the wheel for that interpreter (scripts/build-wheel.sh,
# the default CUDA architectures), which gpu-check.sh installs into a fresh venv
# and runs `nsa selftest` from (scripts/check-wheel.sh).
if [ "${NSA_GPU_WHEEL:-0}" = 1 ] && [ -x "$gpu_python" ]; then
  wheel_venv="$root/build-wheel-venv"
  [ -x "$wheel_venv/bin/python" ] || "$gpu_python" -m venv "$wheel_venv"
  tag=$("$gpu_python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  NSA_VENV="$wheel_venv" "$root/scripts/build-wheel.sh" >/dev/null
  wheel=$(ls -t "$root"/dist/*-"$tag"-*.whl 2>/dev/null | head -1 || true)
  [ -n "$wheel" ] || { echo "build-for-gpu: scripts/build-wheel.sh made no $tag wheel in dist/" >&2; exit 1; }
  mkdir -p "$stage/wheel" && cp "$wheel" "$stage/wheel/"
fi
for at in ${NSA_COMPARE_AT:-}; do
  [ -n "${NSA_COMPARE_BENCHES:-}" ] || { echo "build-for-gpu: NSA_COMPARE_AT needs NSA_COMPARE_BENCHES" >&2; exit 2; }
  tree=$(mktemp -d)
  git -C "$root" worktree add --detach "$tree" "$at" >/dev/null
  (cmake -S "$tree" -B "$tree/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DNSA_CUDA=ON "$@" >/dev/null &&
    cmake --build "$tree/build" -j "$(nproc)" --target $NSA_COMPARE_BENCHES) || {
    git -C "$root" worktree remove --force "$tree"
    echo "build-for-gpu: building $NSA_COMPARE_BENCHES at $at failed" >&2
    exit 1
  }
  short=$(git -C "$root" rev-parse --short "$at")
  mkdir -p "$stage/compare/$short"
  for b in $NSA_COMPARE_BENCHES; do cp "$tree/build/bench/$b" "$stage/compare/$short/"; done
  git -C "$root" worktree remove --force "$tree"
done
commit=$(git -C "$root" rev-parse HEAD)
git -C "$root" diff --quiet HEAD || commit="$commit+uncommitted"
echo "$commit" >"$stage/COMMIT"
du -sh "$stage"
echo "staged $stage for commit $commit"
