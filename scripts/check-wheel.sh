#!/usr/bin/env bash
# Checks wheels the way a user meets them: each is installed into a fresh
# virtual environment (no system site-packages, no network, no build tools,
# PYTHONPATH unset), the package is imported from outside the source tree, and
# the installed `nsa selftest` runs (every op on every backend it can reach
# against the reference; without a GPU the CUDA rows say SKIP).
#
#   scripts/check-wheel.sh [WHEEL ...] [--python PY]
#
# Without a WHEEL, the newest dist/*.whl. PY (default python3, or
# $NSA_WHEEL_PYTHON) must match the wheels' cpXY tag. Ends with one line per wheel.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
usage() { echo "usage: $0 [WHEEL ...] [--python PY]" >&2; exit 2; }
wheels=()
py=${NSA_WHEEL_PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || usage; py=$2; shift 2 ;;
    -*) usage ;;
    *) wheels+=("$1"); shift ;;
  esac
done
if [ ${#wheels[@]} -eq 0 ]; then
  newest=$(ls -t "$root"/dist/*.whl 2>/dev/null | head -1 || true)
  [ -n "$newest" ] || { echo "check-wheel: no wheel in dist/ (build one with scripts/build-wheel.sh)" >&2; exit 2; }
  wheels=("$newest")
fi
# The installed package must be the one imported, not a build tree on PYTHONPATH.
unset PYTHONPATH PYTHONHOME

check_one() {
  local wheel name tmp
  wheel=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
  name=$(basename "$wheel")
  [ -f "$wheel" ] || { echo "check-wheel: no such wheel: $1" >&2; return 1; }
  case "$name" in
    *-manylinux*) ;;
    *) echo "check-wheel: $name has no manylinux platform tag (scripts/build-wheel.sh repairs it with auditwheel)" >&2
       return 1 ;;
  esac
  tmp=$(mktemp -d)
  "$py" -m venv "$tmp/venv"
  "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps "$wheel"
  (cd "$tmp" && "$tmp/venv/bin/python" -I -c 'import nsa
print(f"check-wheel: imported nsa {nsa.__version__} from {nsa.__file__} (CUDA backend built: {nsa.cuda_built()})")')
  [ -x "$tmp/venv/bin/nsa" ] || { echo "check-wheel: $name has no nsa tool" >&2; rm -rf "$tmp"; return 1; }
  (cd "$tmp" && "$tmp/venv/bin/nsa" selftest) || { rm -rf "$tmp"; return 1; }
  echo "check-wheel: OK: $name installs into a fresh venv ($("$tmp/venv/bin/python" -V 2>&1)) and passes nsa selftest"
  rm -rf "$tmp"
}

status=0
for w in "${wheels[@]}"; do check_one "$w" || { echo "check-wheel: FAILED: $w" >&2; status=1; }; done
exit $status
