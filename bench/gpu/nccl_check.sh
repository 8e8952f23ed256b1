#!/usr/bin/env bash
# NCCL check for a GPU machine (not CI): restart and live mode with backend
# nccl, and torch 2.x's communicator abort (what live mode uses to abandon a
# group whose collective is stuck in a CUDA kernel). Under 10 minutes on one
# GPU. One PASS / FAIL / SKIP / INFO line per check, then a summary; exits 1
# if any check failed, 2 if it could not start.
#
#   bench/gpu/nccl_check.sh
#   PYTHON=/opt/venv/bin/python3 BULSAJO_BIN=/path/to/bulsajo bench/gpu/nccl_check.sh
#
# Assumes: Linux x86-64 or arm64; a python ($PYTHON, default python3) whose
# torch (1.13 or 2.x) is a CUDA build, with numpy; NVIDIA GPUs visible to it.
# bulsajo: $BULSAJO_BIN, else built from this checkout when `go` is on PATH
# (Go >= 1.26), else bin/bulsajo as found (build it elsewhere with
# `go build -o bin/bulsajo ./cmd/bulsajo` and copy bin/ along). Nothing is
# downloaded. Logs: $OUT (default a new temporary directory).
#
# NCCL refuses two ranks of one communicator on one GPU ("Duplicate GPU
# detected", NCCL >= 2.5); the script confirms that (INFO) and runs one rank
# per GPU, up to 4. With one GPU the checks that need two ranks (live regroup
# over NCCL, abort of a stuck collective) say SKIP.
set -u
cd "$(dirname "$0")/../.." || exit 2
REPO=$(pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d /tmp/bulsajo-nccl-XXXXXX)}
mkdir -p "$OUT"
T0=$(date +%s)
results=()
say() { echo "$*"; results+=("$*"); }

# ---- what is here
if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "FAIL setup: $PY cannot import torch (set PYTHON to an interpreter with a CUDA build of torch)"; exit 2
fi
"$PY" - <<'EOF' | tee "$OUT/env.txt"
import torch, platform
print("python %s, torch %s, CUDA %s, cuda available %s" % (platform.python_version(), torch.__version__,
      torch.version.cuda, torch.cuda.is_available()))
if torch.cuda.is_available():
    try:
        print("NCCL %s" % (".".join(map(str, torch.cuda.nccl.version())),))
    except Exception as e:
        print("NCCL version unknown: %r" % e)
    for i in range(torch.cuda.device_count()):
        print("GPU %d: %s" % (i, torch.cuda.get_device_name(i)))
EOF
n=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
if [ "$n" -lt 1 ]; then echo "FAIL setup: no GPU visible to torch"; exit 2; fi
"$PY" -c 'import torch.distributed as d, sys; sys.exit(0 if d.is_nccl_available() else 1)' ||
  { echo "FAIL setup: this torch has no NCCL backend"; exit 2; }
"$PY" -c 'import numpy' 2>/dev/null || { echo "FAIL setup: numpy missing (the examples hash parameters with it)"; exit 2; }

if [ -n "${BULSAJO_BIN:-}" ]; then
  B=$BULSAJO_BIN
elif command -v go >/dev/null 2>&1; then
  B=$OUT/bulsajo
  echo "building bulsajo with $(go version)"
  go build -o "$B" ./cmd/bulsajo || { echo "FAIL setup: go build failed"; exit 2; }
elif [ -x bin/bulsajo ]; then
  B=$REPO/bin/bulsajo
  echo "no Go here: using bin/bulsajo as found (built $(date -r bin/bulsajo -u +%FT%TZ); sources may be newer)"
else
  echo "FAIL setup: no bulsajo binary: set BULSAJO_BIN, or put Go on PATH, or build bin/bulsajo where Go is"; exit 2
fi
"$B" --version >/dev/null 2>&1 || "$B" --help >/dev/null 2>&1 || { echo "FAIL setup: $B does not run here"; exit 2; }
np=$(( n < 4 ? n : 4 ))
echo "GPUs: $n, ranks per check: $np, logs: $OUT"

# ---- probes of the NCCL API (no bulsajo run): python/bulsajo on the path
cat >"$OUT/probe.py" <<'EOF'
# probe.py MODE: "abort-reinit" (1 process, GPU 0), "two-on-one" / "stuck" (RANK 0|1 of 2)
import datetime, os, signal, socket, sys, threading, time
import torch, torch.distributed as dist
import bulsajo.torch as bj

mode = sys.argv[1]
rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
T = datetime.timedelta(seconds=60)


def group(port):
    store = bj._tcp_store("127.0.0.1", port, world, rank == 0, T)
    dist.init_process_group("nccl", store=store, rank=rank, world_size=world, timeout=T)


def collective(t, within):
    """all_reduce + synchronize in a thread: (raised or None, seconds), or hung."""
    res = {}

    def run():
        t0 = time.monotonic()
        try:
            dist.all_reduce(t)
            torch.cuda.synchronize()
            res["err"] = None
        except Exception as e:
            res["err"] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        res["s"] = time.monotonic() - t0
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(within)
    return None if th.is_alive() else res


if mode == "abort-reinit":
    torch.cuda.set_device(0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); p1 = s.getsockname()[1]
    group(p1)
    t = torch.ones(1 << 20, device="cuda")
    r = collective(t, 60)
    assert r and r["err"] is None, r
    abort = bj._nccl_abort(dist.group.WORLD)
    if abort is None:
        print("RESULT skip: torch %s offers no communicator abort" % torch.__version__, flush=True)
        os._exit(0)
    t0 = time.monotonic()
    abort()
    print("abort returned in %.3f s" % (time.monotonic() - t0), flush=True)
    r = collective(t, 20)
    print("collective on the aborted group: %s" % ("hung > 20 s" if r is None else (r["err"] or "no error")), flush=True)
    try:
        dist.destroy_process_group()
    except Exception as e:
        print("destroy after abort: %r" % (e,), flush=True)
    bj._reset_group_counter()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); p2 = s.getsockname()[1]
    group(p2)
    t = torch.full((4,), 2.0, device="cuda")
    r = collective(t, 60)
    ok = r is not None and r["err"] is None and t.sum().item() == 8.0
    print("RESULT %s: new group in the same process after the abort: %s" % ("pass" if ok else "fail", r), flush=True)
    dist.destroy_process_group()
    os._exit(0 if ok else 1)

port = int(os.environ["MASTER_PORT"])
torch.cuda.set_device(0 if mode == "two-on-one" else rank)
group(port)
t = torch.ones(1 << 20, device="cuda")
r = collective(t, 60)
if mode == "two-on-one":
    print("RESULT %s" % ("hung" if r is None else (r["err"] or "ok")), flush=True)
    os._exit(0)
assert r and r["err"] is None, r
if rank == 1:
    open(os.environ["STOPPED_FILE"], "w").write(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGSTOP)   # a hung peer; the driver kills it
    os._exit(3)
while not os.path.exists(os.environ["STOPPED_FILE"]):
    time.sleep(0.05)
time.sleep(0.5)
abort = bj._nccl_abort(dist.group.WORLD)
if abort is None:
    print("RESULT skip: torch %s offers no communicator abort" % torch.__version__, flush=True)
    os._exit(0)
timer = threading.Timer(3.0, abort)      # what bulsajo's reader thread does on a new generation
timer.start()
r = collective(t, 30)
if r is None:
    print("RESULT fail: the collective stuck on a stopped peer was not released by the abort (> 30 s)", flush=True)
    os._exit(1)
print("RESULT pass: stuck collective returned %.2f s after it started (abort at 3 s): %s"
      % (r["s"], r["err"] or "no error raised"), flush=True)
os._exit(0)
EOF
probe() { # name, timeout, env/command...
  local name=$1 limit=$2; shift 2
  timeout "$limit" env PYTHONPATH="$REPO/python" "$@" >"$OUT/$name.log" 2>&1
}

# 1. abort, then a new group in the same process (live mode's regroup), one GPU
probe abort-reinit 150 "$PY" "$OUT/probe.py" abort-reinit
line=$(grep '^RESULT' "$OUT/abort-reinit.log" | tail -1)
case $line in
  "RESULT pass"*) say "PASS nccl-abort-reinit (${line#RESULT pass: }; $(grep -m1 'collective on the aborted' "$OUT/abort-reinit.log"))" ;;
  "RESULT skip"*) say "SKIP nccl-abort-reinit (${line#RESULT skip: })" ;;
  *) say "FAIL nccl-abort-reinit (log: $OUT/abort-reinit.log)"; tail -15 "$OUT/abort-reinit.log" ;;
esac

# 2. two ranks on one GPU: does this NCCL allow it?
port=$(( 20000 + RANDOM % 20000 ))
for r in 0 1; do
  PYTHONPATH="$REPO/python" RANK=$r WORLD_SIZE=2 MASTER_PORT=$port timeout 120 "$PY" "$OUT/probe.py" two-on-one \
    >"$OUT/two-on-one.r$r.log" 2>&1 &
done
wait
if grep -qi 'duplicate gpu' "$OUT"/two-on-one.r*.log; then
  say "INFO nccl-two-ranks-one-gpu: NCCL refuses it (Duplicate GPU detected): one rank per GPU below"
else
  say "INFO nccl-two-ranks-one-gpu: $(grep -h '^RESULT' "$OUT"/two-on-one.r*.log | sort -u | tr '\n' ' ')"
fi

# 3. abort releases a collective stuck on a stopped peer (two GPUs)
if [ "$n" -ge 2 ]; then
  port=$(( 20000 + RANDOM % 20000 ))
  stopped=$OUT/stuck.stopped
  for r in 0 1; do
    PYTHONPATH="$REPO/python" RANK=$r WORLD_SIZE=2 MASTER_PORT=$port STOPPED_FILE=$stopped \
      timeout 120 "$PY" "$OUT/probe.py" stuck >"$OUT/stuck.r$r.log" 2>&1 &
    pids[$r]=$!
  done
  wait "${pids[0]}"
  [ -f "$stopped" ] && kill -KILL "$(cat "$stopped")" 2>/dev/null
  kill -KILL "${pids[1]}" 2>/dev/null; wait "${pids[1]}" 2>/dev/null
  line=$(grep '^RESULT' "$OUT/stuck.r0.log" | tail -1)
  case $line in
    "RESULT pass"*) say "PASS nccl-abort-stuck (${line#RESULT pass: })" ;;
    "RESULT skip"*) say "SKIP nccl-abort-stuck (${line#RESULT skip: })" ;;
    *) say "FAIL nccl-abort-stuck (log: $OUT/stuck.r0.log)"; tail -15 "$OUT/stuck.r0.log" ;;
  esac
else
  say "SKIP nccl-abort-stuck (needs 2 GPUs)"
fi

# ---- bulsajo runs
run_check() { # name, limit, run dir, bulsajo args...
  local name=$1 limit=$2 dir=$3; shift 3
  rm -rf "$dir"
  timeout "$limit" "$B" run --run-dir "$dir" "$@" >"$OUT/$name.log" 2>&1
}
count() { grep -c "\"type\":\"$1\"" "$2/events.jsonl" 2>/dev/null || true; }

# 4. restart mode: a worker is SIGKILLed; the job resumes from its checkpoint
run_check restart-nccl 200 "$OUT/r" --nproc-per-node "$np" --chaos kill-at=10s \
  -- "$PY" examples/ddp_train.py --backend nccl --steps 1500 --ckpt-dir "$OUT/ckpt"
rc=$?
f=$(count fault "$OUT/r"); g=$(count generation_started "$OUT/r")
if [ $rc -eq 0 ] && [ "${f:-0}" -ge 1 ] && grep -q 'done steps=' "$OUT/restart-nccl.log"; then
  say "PASS restart-nccl ($np ranks; $f fault(s), $g generations; $(grep -m1 '✓ done' "$OUT/restart-nccl.log"))"
else
  say "FAIL restart-nccl (exit $rc, faults ${f:-0}; log: $OUT/restart-nccl.log)"; tail -20 "$OUT/restart-nccl.log"
fi

# 5. live mode: a worker is SIGKILLed and one SIGSTOPped; survivors regroup in-process
if [ "$np" -ge 2 ]; then
  run_check live-nccl 240 "$OUT/l" --recovery live --nproc-per-node "$np" --chaos kill-at=10s,stop-at=20s \
    -- "$PY" examples/live_ddp.py --backend nccl --steps 4000 --result-dir "$OUT/l/results"
  rc=$?
  hashes=$(cat "$OUT"/l/results/rank*.json 2>/dev/null | grep -o '"params_sha256": *"[0-9a-f]*"' | sort -u | wc -l)
  files=$(ls "$OUT"/l/results/rank*.json 2>/dev/null | wc -l)
  rec=$(count recovered "$OUT/l")
  if [ $rc -eq 0 ] && [ "$files" -eq "$np" ] && [ "$hashes" -eq 1 ] && [ "${rec:-0}" -ge 1 ]; then
    say "PASS live-nccl ($np ranks; $rec recoveries; identical parameters on all ranks; $(grep -m1 '✓ done' "$OUT/live-nccl.log"))"
  else
    say "FAIL live-nccl (exit $rc, $files result files, $hashes distinct hashes, ${rec:-0} recoveries; log: $OUT/live-nccl.log)"
    tail -25 "$OUT/live-nccl.log"
  fi
else
  run_check live-nccl-1rank 150 "$OUT/l" --recovery live --nproc-per-node 1 \
    -- "$PY" examples/live_ddp.py --backend nccl --steps 300 --result-dir "$OUT/l/results"
  rc=$?
  if [ $rc -eq 0 ] && grep -q 'done steps=' "$OUT/live-nccl-1rank.log"; then
    say "PASS live-nccl-1rank (the SDK's NCCL group on this torch; a regroup needs 2 GPUs)"
  else
    say "FAIL live-nccl-1rank (exit $rc; log: $OUT/live-nccl-1rank.log)"; tail -20 "$OUT/live-nccl-1rank.log"
  fi
  say "SKIP live-nccl (regroup over NCCL needs 2 GPUs)"
fi

echo
echo "== summary ($(( $(date +%s) - T0 )) s; $(head -1 "$OUT/env.txt"))"
printf '%s\n' "${results[@]}"
for r in "${results[@]}"; do case $r in FAIL*) exit 1 ;; esac; done
exit 0
