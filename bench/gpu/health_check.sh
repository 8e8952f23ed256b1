#!/usr/bin/env bash
# GPU health device check (a GPU machine, not CI; about 5 minutes on one GPU).
# Builds bulsajo with cgo and the nvml tag, reads the GPUs through the real
# NVML probe (`bulsajo gpus --watch`), compares what it reads with
# nvidia-smi, and runs a short two-process job on the GPU under
# `bulsajo run` with GPU health on. Prints one PASS/FAIL line per check and
# exits non-zero if any failed.
#
#   PYTHON=python3 bench/gpu/health_check.sh          # logs in $OUT (default: a temp dir)
#
# Needs: a Go toolchain (go on PATH or /usr/local/go/bin/go), gcc (cgo), the
# NVIDIA driver (libnvidia-ml.so.1), and a python with a CUDA build of torch.
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
fail=0
pass() { echo "PASS $1"; }
failed() { echo "FAIL $1 (logs: $OUT)"; fail=1; }

GO=$(command -v go || true)
[ -n "$GO" ] || { [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go; }
[ -n "$GO" ] || { echo "FAIL no Go toolchain (which go; /usr/local/go/bin/go)"; exit 1; }
echo "go: $($GO version) · out: $OUT"

B=$OUT/bulsajo-nvml
if CGO_ENABLED=1 CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations" timeout 300 "$GO" build -tags nvml -o "$B" ./cmd/bulsajo >"$OUT/build.log" 2>&1; then
  pass "build -tags nvml"
else
  failed "build -tags nvml"; grep -v -e warning -e note: "$OUT/build.log" | tail -20; exit 1
fi

echo "== nvidia-smi"
nvidia-smi --query-gpu=index,uuid,name,pci.bus_id,temperature.gpu,power.draw,clocks.sm,clocks_event_reasons.active,pcie.link.width.current,pcie.link.width.max,ecc.errors.uncorrected.volatile.total,remapped_rows.failure \
  --format=csv 2>&1 | tee "$OUT/smi.csv"

echo "== bulsajo gpus --watch 30s (the real NVML probe: devices, one sample each, preflight, 30 s of the watch loop)"
timeout 120 "$B" gpus --watch 30s 2>&1 | tee "$OUT/gpus.log"
if grep -q "GPU(s) · preflight" "$OUT/gpus.log" && ! grep -q "unavailable" "$OUT/gpus.log"; then pass "probe opened"; else failed "probe opened"; fi
# Every UUID nvidia-smi lists, the probe lists.
miss=0
for u in $(nvidia-smi --query-gpu=uuid --format=csv,noheader 2>/dev/null); do
  grep -q "$u" "$OUT/gpus.log" || { echo "  probe did not list $u"; miss=1; }
done
[ $miss = 0 ] && pass "probe lists every GPU nvidia-smi lists" || failed "probe lists every GPU nvidia-smi lists"
grep -q "preflight: every GPU fit to run" "$OUT/gpus.log" && pass "preflight healthy" || failed "preflight healthy (see the preflight lines above: a real problem, or a false alarm to fix)"
grep -q "^0 verdict(s)" "$OUT/gpus.log" && pass "watch loop quiet on an idle healthy GPU" || failed "watch loop quiet (verdicts above)"

echo "== two processes on the GPU under bulsajo run (gloo between them, compute on cuda)"
cat >"$OUT/job.py" <<'PYEOF'
import os, sys, torch, torch.distributed as dist
import bulsajo
steps = int(sys.argv[1])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
n = torch.cuda.device_count()
if n == 0:
    sys.exit("no CUDA device visible to torch")
dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % n)
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048)).to(dev)
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
print("rank %d on %s (%s) CUDA_VISIBLE_DEVICES=%s BULSAJO_GPU=%s" % (rank, dev, torch.cuda.get_device_name(dev),
      os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("BULSAJO_GPU")), flush=True)
for s in range(steps):
    x = torch.randn(512, 2048, device=dev)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    for p in model.parameters():
        g = p.grad.cpu()
        dist.all_reduce(g)
        p.grad.copy_(g / world)
    opt.step()
    bulsajo.step(s)
    if rank == 0 and s % 50 == 0:
        print("step %d loss %.4f" % (s, loss.item()), flush=True)
dist.destroy_process_group()
print("done rank %d" % rank, flush=True)
PYEOF
timeout 300 "$B" run --nproc-per-node 2 --max-restarts 1 --run-dir "$OUT/run" -- "$PY" "$OUT/job.py" 300 >"$OUT/run.log" 2>&1
rc=$?
tail -25 "$OUT/run.log"
[ $rc = 0 ] && grep -q "done rank 0" "$OUT/run.log" && pass "job on the GPU (exit 0)" || failed "job on the GPU (exit $rc)"
grep -q "GPU health: watching" "$OUT/run.log" && pass "run watched the GPU" || failed "run watched the GPU"
if grep -q '"gpu_drained"\|"gpu_fault"' "$OUT/run/events.jsonl" 2>/dev/null; then failed "no GPU fault on a healthy GPU"; else pass "no GPU fault on a healthy GPU"; fi
[ -s "$OUT/run/gpus.json" ] && { cat "$OUT/run/gpus.json"; pass "gpus.json written"; } || failed "gpus.json written"
exit $fail
