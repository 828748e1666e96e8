#!/usr/bin/env bash
# Checks a wheel the way a user meets it: installs it into a fresh virtual
# environment (no system site-packages, no network, no build tools), imports
# the package from outside the source tree and runs the installed `nsa
# selftest` (every op on every backend it can reach against the reference;
# without a GPU the CUDA rows say SKIP).
#
#   scripts/check-wheel.sh [WHEEL] [--python PY]
#
# WHEEL defaults to the newest dist/*.whl. PY (default python3, or
# $NSA_WHEEL_PYTHON) must match the wheel's cpXY tag. Ends with one summary line.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wheel=""
py=${NSA_WHEEL_PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --python) py=$2; shift 2 ;;
    -*) echo "usage: $0 [WHEEL] [--python PY]" >&2; exit 2 ;;
    *) wheel=$1; shift ;;
  esac
done
[ -n "$wheel" ] || wheel=$(ls -t "$root"/dist/*.whl 2>/dev/null | head -1)
[ -f "$wheel" ] || { echo "check-wheel: no wheel (give one, or build it with scripts/build-wheel.sh)" >&2; exit 2; }
wheel=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
name=$(basename "$wheel")
case "$name" in
  *-manylinux*) ;;
  *) echo "check-wheel: $name has no manylinux platform tag (scripts/build-wheel.sh repairs it with auditwheel)" >&2; exit 1 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps "$wheel"
cd "$tmp"  # away from the source tree: the installed package is the one imported
"$tmp/venv/bin/python" -c 'import nsa, sys
print(f"check-wheel: imported nsa {nsa.__version__} from {nsa.__file__} (CUDA backend built: {nsa.cuda_built()})")'
[ -x "$tmp/venv/bin/nsa" ] || { echo "check-wheel: the wheel has no nsa tool (built without CLI11/fmt/nlohmann_json)" >&2; exit 1; }
"$tmp/venv/bin/nsa" selftest
echo "check-wheel: OK: $name installs into a fresh venv ($("$tmp/venv/bin/python" -V 2>&1)) and passes nsa selftest"
