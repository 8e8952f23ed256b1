#!/usr/bin/env bash
# NCCL check for a GPU machine (not CI): the restart and live paths with
# backend nccl. Needs: bin/bulsajo built for this machine, a python with a
# CUDA build of torch (PYTHON=...), and GPUs. Prints one PASS/FAIL line per
# check and exits non-zero if any failed. About 2 minutes.
#
#   PYTHON=python3 bench/gpu/nccl_check.sh
#
# With one GPU only the single-rank paths run: NCCL refuses two ranks on one
# device, so the live regroup over NCCL needs >= 2 GPUs.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
B=bin/bulsajo
OUT=${OUT:-$(mktemp -d)}
n=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
echo "GPUs: $n; torch: $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1)"
fail=0
check() { # name, command...
  local name=$1; shift
  if timeout 240 "$@" >"$OUT/$name.log" 2>&1; then echo "PASS $name"; else echo "FAIL $name (log: $OUT/$name.log)"; tail -20 "$OUT/$name.log"; fail=1; fi
}
[ "$n" -ge 1 ] || { echo "FAIL no GPU visible to torch"; exit 1; }
np=$(( n < 4 ? n : 4 ))
# Restart mode over NCCL: a worker is SIGKILLed, the job resumes from its checkpoint.
check restart-nccl $B run --nproc-per-node "$np" --run-dir "$OUT/r" --chaos kill-at=8s \
  -- "$PY" examples/ddp_train.py --backend nccl --steps 600 --ckpt-dir "$OUT/ckpt"
grep -q '^! rank' "$OUT/restart-nccl.log" || { echo "FAIL restart-nccl: no fault was injected"; fail=1; }
# Live mode over NCCL.
if [ "$n" -ge 2 ]; then
  check live-nccl $B run --recovery live --nproc-per-node "$np" --run-dir "$OUT/l" --chaos kill-at=8s,stop-at=16s \
    -- "$PY" examples/live_ddp.py --backend nccl --steps 3000 --result-dir "$OUT/l/results"
  grep -q 'regroup: generation' "$OUT/live-nccl.log" || { echo "FAIL live-nccl: no regroup"; fail=1; }
else
  check live-nccl-static $B run --recovery live --nproc-per-node 1 --run-dir "$OUT/l" \
    -- "$PY" examples/live_ddp.py --backend nccl --steps 300
fi
exit $fail
