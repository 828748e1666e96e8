#!/usr/bin/env bash
# Runs the README's two commands on a stock Debian whose Python is externally
# managed (PEP 668), without touching this machine's Python: debootstraps a
# minimal root into .fresh/<suite>/ (reused on later runs), copies the
# committed tree (git archive HEAD) into it, and runs, as root inside a chroot,
#   scripts/run.sh bench --no-progress     then     scripts/run.sh test
# The tree is copied afresh for each job; what a job apt-installs stays in the root.
#
#   scripts/check-fresh-debian.sh [--suite bookworm|trixie] [--jobs bench,test] [--keep]
#
# Needs root, debootstrap and the network to Debian's mirror and PyPI. The
# chroot has no nvcc, so both jobs build the CPU backend only. Docker is not
# needed. The host's pip cache is bind-mounted read-write, so a second run does
# not download torch again. --keep leaves the copied tree in the root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
suite=bookworm
jobs=bench,test
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) suite=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--suite bookworm|trixie] [--jobs bench,test] [--keep]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "check-fresh-debian: needs root (debootstrap, chroot)" >&2; exit 2; }
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null

base="$root/.fresh/$suite"
mkdir -p "$root/.fresh"
if [ ! -x "$base/usr/bin/apt-get" ]; then
  echo "check-fresh-debian: debootstrap $suite into $base"
  debootstrap --variant=minbase "$suite" "$base" http://deb.debian.org/debian >"$root/.fresh/$suite.log" 2>&1 ||
    { tail -20 "$root/.fresh/$suite.log"; exit 1; }
fi

mounts=()
cleanup() {
  local m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() {  # bind HOST_PATH PATH_IN_ROOT
  mkdir -p "$base$2"
  mount --bind "$1" "$base$2"
  mounts+=("$base$2")
}
bind /proc /proc
bind /sys /sys
bind /dev /dev
mkdir -p "${HOME:-/root}/.cache/pip"
bind "${HOME:-/root}/.cache/pip" /root/.cache/pip
cp /etc/resolv.conf "$base/etc/resolv.conf"
# The host's CA bundle, for hosts whose HTTPS goes through an intercepting
# proxy (the stock root would refuse PyPI's certificate there); pip and
# Python's ssl are pointed at it. The root's own trust store is left as is.
ca_env=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$base/etc/host-ca-certificates.crt"
  ca_env=(PIP_CERT=/etc/host-ca-certificates.crt SSL_CERT_FILE=/etc/host-ca-certificates.crt
          REQUESTS_CA_BUNDLE=/etc/host-ca-certificates.crt)
fi

status=0
IFS=, read -r -a job_list <<<"$jobs"
for job in "${job_list[@]}"; do
  work="$base/src"
  rm -rf "$work"
  mkdir -p "$work"
  git -C "$root" archive HEAD | tar -x -C "$work"
  echo "check-fresh-debian: [$suite] scripts/run.sh $job (commit $(git -C "$root" rev-parse --short HEAD))"
  args=()
  [ "$job" = bench ] && args=(--no-progress)
  # The precondition: a stock interpreter that refuses pip installs.
  if ! chroot "$base" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      bash -c 'ls /usr/lib/python3*/EXTERNALLY-MANAGED >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3 >/dev/null; }
               ls /usr/lib/python3*/EXTERNALLY-MANAGED'; then
    echo "check-fresh-debian: [$suite] the root's python3 is not marked externally managed" >&2
    status=1
  fi
  if chroot "$base" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      NSA_JOBS="${NSA_JOBS:-2}" "${ca_env[@]}" bash -c "cd /src && scripts/run.sh $job ${args[*]}" 2>&1 | tee "$root/.fresh/$suite-$job.log"; then
    echo "check-fresh-debian: [$suite] scripts/run.sh $job: OK"
  else
    echo "check-fresh-debian: [$suite] scripts/run.sh $job: FAILED (log .fresh/$suite-$job.log)" >&2
    status=1
  fi
  [ $keep -eq 1 ] || rm -rf "$work"
done
exit $status
