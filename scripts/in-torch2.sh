#!/usr/bin/env bash
# Runs a command with Debian 13's torch 2.x (the chroot of scripts/torch2-env.sh).
#
#   scripts/in-torch2.sh CMD ARGS...         CMD runs inside the chroot, in the same directory
#   scripts/in-torch2.sh --host CMD ARGS...  CMD runs here (Go, ip, etcd), with
#       BULSAJO_TEST_PYTHON pointing at scripts/torch2/python3, which runs the
#       chroot's python3 (as a python3 on the host would: same directory, same pid)
#
# The chroot gets /proc, /dev, /sys, /tmp, the repository (at the same path)
# and the host's /etc/hosts mounted, in a mount namespace of its own: the
# mounts vanish when the command ends, however it ends, and two runs at once
# do not unmount each other's. Needs root (as the debootstrap does).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd -P)
if [ "${BULSAJO_TORCH2_NS:-}" != "$$" ]; then
  if [ "$(id -u)" != 0 ]; then echo "in-torch2: needs root (chroot, mounts)" >&2; exit 1; fi
  if [ $# -eq 0 ] || { [ "$1" = --host ] && [ $# -eq 1 ]; }; then
    echo "usage: scripts/in-torch2.sh [--host] CMD [ARGS...]" >&2; exit 2
  fi
  ROOT=$("$REPO/scripts/torch2-env.sh")
  export BULSAJO_TORCH2_ROOT=$ROOT
  # exec keeps the pid, which is how the second pass knows it is inside.
  export BULSAJO_TORCH2_NS=$$
  exec unshare --mount --propagation slave "$BASH" "$0" "$@"
fi
unset BULSAJO_TORCH2_NS
ROOT=$BULSAJO_TORCH2_ROOT
mount -t proc proc "$ROOT/proc"
mount --rbind /dev "$ROOT/dev"
mount --rbind /sys "$ROOT/sys"
mount --bind /tmp "$ROOT/tmp"
if [ -f /etc/hosts ]; then touch "$ROOT/etc/hosts"; mount --bind /etc/hosts "$ROOT/etc/hosts"; fi
mkdir -p "$ROOT$REPO"
mount --bind "$REPO" "$ROOT$REPO"
if [ "$1" = --host ]; then
  shift
  export BULSAJO_TEST_PYTHON=$REPO/scripts/torch2/python3
  exec "$@"
fi
case $PWD in
  "$REPO"|"$REPO"/*|/tmp|/tmp/*) ;;
  *) echo "in-torch2: $PWD is not visible in the chroot (only the repository and /tmp are)" >&2; exit 2 ;;
esac
exec unshare --root="$ROOT" --wd="$PWD" /usr/bin/env \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
