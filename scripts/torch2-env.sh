#!/usr/bin/env bash
# Sets up Debian 13 (trixie)'s python3-torch (2.6) in a chroot, cached in a
# fixed directory so that a second `make test` does not download it again.
# Prints the chroot's path. Debian 12 has no torch 2.x and PyPI is out of reach,
# so a debootstrap chroot from the archive apt already uses is the way in.
set -euo pipefail
DIR=${BULSAJO_TORCH2_ROOT:-/var/cache/bulsajo/trixie-torch}
STAMP=$DIR/.bulsajo-ready
if [ -f "$STAMP" ]; then echo "$DIR"; exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "torch2-env: needs root to debootstrap $DIR (or set BULSAJO_TORCH2_ROOT to a ready chroot)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq debootstrap >/dev/null
fi
# The archive apt already uses (deb822 or one-line sources).
URI=$( (cat /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null || true) \
  | grep -oE '^(URIs:[[:space:]]*|deb[[:space:]]+)[^ ]+' | grep -v security | head -1 | awk '{print $NF}' || true)
URI=${URI:-http://deb.debian.org/debian}
echo "torch2-env: debootstrap trixie from $URI into $DIR (about 10 minutes, once)" >&2
# A half-made chroot from an interrupted run is started over.
rm -rf "$DIR.tmp"
mkdir -p "$(dirname "$DIR")"
debootstrap --variant=minbase trixie "$DIR.tmp" "$URI" >"$DIR.log" 2>&1 || {
  echo "torch2-env: debootstrap failed, see $DIR.log" >&2; exit 1; }
chroot "$DIR.tmp" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  python3-torch python3-numpy procps >>"$DIR.log" 2>&1 || {
  echo "torch2-env: apt-get install python3-torch in the chroot failed, see $DIR.log" >&2; exit 1; }
rm -rf "$DIR"
mv "$DIR.tmp" "$DIR"
touch "$STAMP"
echo "$DIR"
