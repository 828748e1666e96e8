#!/usr/bin/env bash
# Installs what building and testing NSA Runtime needs on a Debian/Ubuntu
# machine, skipping what is already there. nvcc is optional: without it the
# build is CPU-only and the GPU tests report themselves as skipped.
set -euo pipefail
need_apt=()
# clang + libclang-rt-14-dev: the libFuzzer targets (scripts/fuzz.sh); libasan/libubsan come with g++.
# clang-format: scripts/check-format.sh (Debian 12's is version 14, the one .clang-format is tuned for).
for pkg in cmake ninja-build g++ libgtest-dev libcli11-dev nlohmann-json3-dev libfmt-dev python3-pip \
           clang libclang-rt-14-dev clang-format; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "deps: installing ${need_apt[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
python3 -c "import numpy, pytest, nanobind, scikit_build_core" 2>/dev/null ||
  python3 -m pip install -q numpy pytest nanobind scikit-build-core
