#!/usr/bin/env bash
# Builds everything the GPU check needs on a machine without a GPU (nvcc and
# GoogleTest here; the GPU machine has neither GoogleTest nor network), with
# the CUDA runtime linked statically, into build-gpu/ and records the commit.
# Carry build-gpu to the GPU machine and run scripts/gpu-check.sh there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build="${1:-$root/build-gpu}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DNSA_CUDA=ON -DNSA_BUILD_PYTHON=OFF >/dev/null
cmake --build "$build" -j "$(nproc)"
git -C "$root" rev-parse HEAD >"$build/COMMIT"
git -C "$root" diff --quiet HEAD || echo "$(cat "$build/COMMIT")+uncommitted" >"$build/COMMIT"
echo "built $build for commit $(cat "$build/COMMIT")"
