#!/usr/bin/env bash
# Runs a throwaway N-member etcd cluster (Debian's etcd-server, /usr/bin/etcd)
# on free loopback ports, in the foreground, for trying the multi-node store
# by hand (kill a member: the others keep serving). Ctrl-C (or SIGTERM)
# kills every member; the data dir is removed unless it was given.
#
#   scripts/etcd-cluster.sh [-n MEMBERS] [DATA_DIR]
#
# It prints the endpoints (one line, comma-separated, for --endpoints or
# store.OpenEtcd) once the cluster has a leader. The Go tests do not use it:
# they start their own cluster (internal/store/etcd_test.go).
set -euo pipefail
ETCD=${ETCD:-/usr/bin/etcd}
PYTHON=${PYTHON:-python3}
n=3
if [ "${1:-}" = -n ]; then n=$2; shift 2; fi
if [ ! -x "$ETCD" ]; then
  echo "etcd-cluster: $ETCD not found; install it: sudo apt-get install -y etcd-server (or make deps)" >&2
  exit 1
fi
if [ -n "${1:-}" ]; then dir=$1; keep=1; else dir=$(mktemp -d); keep=0; fi
mkdir -p "$dir"
# etcd refuses an ETCD_* variable that shadows a flag.
for v in $(compgen -e | grep '^ETCD_' || true); do unset "$v"; done

# 2n free ports (chosen together so that they are distinct).
read -r -a ports <<<"$("$PYTHON" -c '
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' $((2 * n)))"

initial=() endpoints=() pids=()
for ((i = 0; i < n; i++)); do
  initial+=("m$i=http://127.0.0.1:${ports[2 * i + 1]}")
  endpoints+=("http://127.0.0.1:${ports[2 * i]}")
done
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$keep" = 0 ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for ((i = 0; i < n; i++)); do
  "$ETCD" --name "m$i" --data-dir "$dir/m$i" \
    --listen-client-urls "${endpoints[i]}" --advertise-client-urls "${endpoints[i]}" \
    --listen-peer-urls "http://127.0.0.1:${ports[2 * i + 1]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ports[2 * i + 1]}" \
    --initial-cluster "$(IFS=,; echo "${initial[*]}")" --initial-cluster-state new \
    --initial-cluster-token "bulsajo-$$" --logger zap --log-level warn \
    >"$dir/m$i.log" 2>&1 &
  pids+=($!)
done

# Ready when a member reports health (which needs a leader).
for ((t = 0; t < 100; t++)); do
  if "$PYTHON" -c 'import json, sys, urllib.request
sys.exit(json.load(urllib.request.urlopen(sys.argv[1] + "/health", timeout=1)).get("health") != "true")' \
    "${endpoints[0]}" 2>/dev/null; then
    echo "$(IFS=,; echo "${endpoints[*]}")"
    echo "etcd-cluster: $n members up (pids ${pids[*]}, logs in $dir); Ctrl-C stops them" >&2
    wait || true
    echo "etcd-cluster: every member has exited" >&2
    exit 1
  fi
  sleep 0.2
done
echo "etcd-cluster: no leader after 20s; logs in $dir" >&2
tail -n 5 "$dir"/m*.log >&2
exit 1
