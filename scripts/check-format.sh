#!/usr/bin/env bash
# Checks that the C++/CUDA sources follow .clang-format; lists the files that
# differ and exits non-zero if any do.
#   scripts/check-format.sh          check (clang-format --dry-run -Werror)
#   scripts/check-format.sh --fix    rewrite the files that differ in place
# Only tracked files are looked at (git ls-files), so build trees are skipped.
# Set CLANG_FORMAT to use another binary; the style is tuned for version 14.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
fix=0
case "${1:-}" in
  --fix) fix=1 ;;
  "") ;;
  *) echo "usage: scripts/check-format.sh [--fix]" >&2; exit 2 ;;
esac
cf=${CLANG_FORMAT:-$(command -v clang-format-14 || command -v clang-format || true)}
if [ -z "$cf" ]; then
  echo "check-format: clang-format not found (scripts/deps.sh installs it)" >&2
  exit 2
fi

mapfile -t files < <(git ls-files -- include src tests bench tools support fuzz python/src |
                     grep -E '\.(h|hpp|cpp|cc|cu|cuh)$')
bad=()
for f in "${files[@]}"; do
  "$cf" --style=file --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ ${#bad[@]} -eq 0 ]; then
  echo "check-format: ${#files[@]} files follow .clang-format"
  exit 0
fi
if [ $fix -eq 1 ]; then
  "$cf" --style=file -i "${bad[@]}"
  printf 'check-format: reformatted %s\n' "${bad[@]}"
  exit 0
fi
printf 'check-format: differs from .clang-format: %s\n' "${bad[@]}" >&2
echo "check-format: ${#bad[@]} file(s) differ; run scripts/check-format.sh --fix" >&2
exit 1
