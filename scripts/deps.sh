#!/usr/bin/env bash
# Installs what a job of scripts/run.sh needs on Debian 12/13 or Ubuntu
# 22.04/24.04, skipping what is already there, and prints what it did.
#
#   scripts/deps.sh bench    the C++ toolchain and libraries only (no Python packages, no fuzzers)
#   scripts/deps.sh test     + clang and its compiler-rt (libFuzzer), and a virtual environment
#                              (.venv, or $NSA_VENV) with numpy, pytest, nanobind, scikit-build-core;
#                              and torch (CPU use of PyPI's build; NSA_TORCH=0 leaves it out and the
#                              torch tests skip visibly)
#
# Nothing is pip-installed into a system interpreter: Python packages go into
# the virtual environment (Debian and Ubuntu mark their python3 as externally
# managed, PEP 668). When the distro's CMake is older than the 3.25 the build
# needs (Ubuntu 22.04 ships 3.22), CMake comes from PyPI into the same venv.
# nvcc is optional: without it the build is CPU-only and GPU tests skip.
# The last line says what the job has; scripts/run.sh puts $NSA_VENV/bin first on PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
job=${1:-test}
case "$job" in bench | test) ;; *) echo "usage: scripts/deps.sh bench|test" >&2; exit 2 ;; esac
venv=${NSA_VENV:-$root/.venv}
min_cmake=3.25
installed=()

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
apt_updated=0
apt_update() {
  [ $apt_updated -eq 1 ] || { $sudo_cmd apt-get update -qq; apt_updated=1; }
}
has_pkg() { dpkg -s "$1" >/dev/null 2>&1; }
# A package name the distro knows (after apt-get update).
known_pkg() { apt-cache show "$1" >/dev/null 2>&1; }
apt_install() {  # apt_install PKG... : installs those not installed yet
  local need=() p
  for p in "$@"; do has_pkg "$p" || need+=("$p"); done
  [ ${#need[@]} -gt 0 ] || return 0
  echo "deps: apt-get install ${need[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  installed+=("${need[@]}")
}

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

# --- C++ toolchain and libraries (both jobs) ------------------------------
apt_install g++ make ninja-build cmake libgtest-dev libcli11-dev nlohmann-json3-dev libfmt-dev

# --- clang + compiler-rt for the libFuzzer targets (test) -----------------
if [ "$job" = test ]; then
  # clang-format: scripts/check-format.sh (.clang-format is tuned on clang-format 14, Debian 12's).
  apt_install clang clang-format
  clang_major=$(clang -dumpversion | cut -d. -f1)
  # libFuzzer and the sanitizer runtimes: the unversioned metapackage where the
  # distro has it (Debian 12/13, Ubuntu 24.04), else the default clang's own
  # package (Ubuntu 22.04 ships them in libclang-common-<v>-dev).
  if ! has_pkg libclang-rt-dev && ! has_pkg "libclang-rt-$clang_major-dev"; then
    apt_update
    for p in libclang-rt-dev "libclang-rt-$clang_major-dev" "libclang-common-$clang_major-dev"; do
      if known_pkg "$p"; then apt_install "$p"; break; fi
    done
  fi
  # The distro's python3 (unless another one is first on PATH): python3-venv,
  # because Debian/Ubuntu split ensurepip out of python3; python3-dev for Python.h.
  py=$(command -v python3 || true)
  if [ -z "$py" ] || [ "$py" = /usr/bin/python3 ]; then apt_install python3 python3-venv python3-dev; fi
fi

# --- the virtual environment ---------------------------------------------
need_venv=0
[ "$job" = test ] && need_venv=1
cmake_version=$(cmake --version 2>/dev/null | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
if ! version_ge "${cmake_version:-0}" "$min_cmake"; then
  need_venv=1
  [ -x "$venv/bin/cmake" ] && cmake_version=$("$venv/bin/cmake" --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
fi
if [ $need_venv -eq 1 ]; then
  if [ ! -x "$venv/bin/python" ]; then
    py=$(command -v python3 || true)  # the distro's (Ubuntu ships python3 without venv support)
    if [ -z "$py" ] || [ "$py" = /usr/bin/python3 ]; then apt_install python3 python3-venv; fi
    echo "deps: creating virtual environment $venv ($(python3 --version))"
    python3 -m venv "$venv" || {
      echo "deps: 'python3 -m venv' failed; on Debian/Ubuntu install python3-venv" >&2; exit 1; }
    installed+=("venv:$venv")
  fi
  pip_install() {  # pip_install IMPORT_NAME SPEC... : installs SPECs unless IMPORT_NAME imports
    local mod=$1; shift
    "$venv/bin/python" -c "import $mod" 2>/dev/null && return 0
    echo "deps: pip install $* (into $venv)"
    # --no-compile: no .pyc for thousands of files up front (torch's alone take minutes on 2 cores).
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile "$@"
    installed+=("$@")
  }
  if ! version_ge "${cmake_version:-0}" "$min_cmake"; then
    echo "deps: CMake ${cmake_version:-missing} is older than $min_cmake: using PyPI's cmake in $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "cmake>=$min_cmake,<4" ninja  # 3.x: as tested
    installed+=("cmake>=$min_cmake,<4" ninja)
    cmake_version=$("$venv/bin/cmake" --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
  fi
  if [ "$job" = test ]; then
    pip_install numpy numpy
    pip_install pytest pytest
    pip_install nanobind "nanobind==3.1.0"  # pinned: scripts/stubs.py output depends on its version
    pip_install scikit_build_core "scikit-build-core>=0.10"
    # torch runs the torch tests (test_torch*.py, torch.compile(fullgraph=True)
    # of the custom ops) on the CPU. PyPI has only the CUDA-bundled build (about
    # 3 GB to download, 5 GB installed; about a minute on an idle 2-core machine
    # with a fast mirror). NSA_TORCH=0 skips it. The GPU check runs the same
    # tests with the GPU machine's torch.
    if [ "${NSA_TORCH:-1}" = 1 ]; then pip_install torch torch; fi
  fi
fi

summary="deps ($job): g++ $(g++ -dumpfullversion), cmake $cmake_version, ninja $(ninja --version 2>/dev/null || "$venv/bin/ninja" --version)"
[ "$job" = test ] && summary+=", clang $(clang -dumpversion)"
command -v nvcc >/dev/null && summary+=", nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')" ||
  summary+=", no nvcc (CPU-only build)"
[ $need_venv -eq 1 ] && summary+=", venv $venv ($("$venv/bin/python" --version 2>&1))"
[ "$job" = test ] && summary+=", torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null ||
  echo 'not installed (NSA_TORCH=0; the torch tests skip)')"
if [ ${#installed[@]} -gt 0 ]; then summary+="; installed now: ${installed[*]}"; else summary+="; nothing installed"; fi
echo "$summary"
