#!/usr/bin/env bash
# Installs what `make demo` (no argument) and `make test` (--test) need on a
# fresh Debian 12 machine: PyTorch from Debian (no PyPI here); for the tests
# also etcd, chromium and Slurm. Go modules come through `go build`; torch 2.x
# comes from scripts/torch2-env.sh.
set -euo pipefail
PYTHON=${PYTHON:-/usr/bin/python3}
missing=()
"$PYTHON" -c 'import torch.distributed' 2>/dev/null || missing+=(python3-torch)
if [ "${1:-}" = --test ]; then
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
[ -x /usr/bin/etcd ] || missing+=(etcd-server) # internal/store's external-cluster tests
[ -x /usr/bin/chromium ] || missing+=(chromium)  # the dashboard's browser tests (test/e2e)
# test/slurm: a real Slurm (22.05 on Debian 12); not slurm-wlm-emulator
command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1 ||
  missing+=(slurmctld slurmd slurm-client)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: need ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
