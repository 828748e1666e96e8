#!/usr/bin/env bash
# Builds the `nsa` Python extension with plain CMake for one interpreter and
# stages an importable package at <build-dir>/python/nsa.
#
#   scripts/build-python.sh [python] [build-dir] [extra cmake args...]
#
#   scripts/build-python.sh                                     # python3, build-py, CUDA auto-detected
#   scripts/build-python.sh python3.12 build-py312
#   NSA_CUDA=OFF scripts/build-python.sh python3 build-py-cpu   # CPU-only
#
# Then:  PYTHONPATH=<build-dir>/python python -m pytest tests/python
# nanobind is taken from the target interpreter (python -m nanobind --cmake_dir);
# it is pip-installed into that interpreter when missing.
set -euo pipefail

PY=${1:-python3}
BUILD=${2:-build-py}
shift $(( $# > 2 ? 2 : $# ))
JOBS=${JOBS:-2}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PY=$(command -v "$PY")
if ! "$PY" -m nanobind --cmake_dir >/dev/null 2>&1; then
  echo "build-python: installing nanobind into $PY" >&2
  "$PY" -m pip install --quiet "nanobind>=2.0"
fi

cmake -S . -B "$BUILD" \
  -DCMAKE_BUILD_TYPE=Release \
  -DNSA_BUILD_PYTHON=ON -DNSA_BUILD_TESTS=OFF -DNSA_BUILD_BENCH=OFF -DNSA_BUILD_CLI=OFF \
  -DNSA_CUDA="${NSA_CUDA:-AUTO}" \
  -DPython_EXECUTABLE="$PY" \
  "$@"
cmake --build "$BUILD" --target _nsa nsa_python_files -j "$JOBS"

echo "build-python: package staged at $BUILD/python/nsa"
PYTHONPATH="$BUILD/python" "$PY" -c \
  'import nsa; print("build-python: import ok: nsa", nsa.__version__, "cuda_built =", nsa.cuda_built())'
