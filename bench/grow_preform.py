#!/usr/bin/env python3
"""What a live grow would cost the survivors if the new group were formed
beforehand, beside what forming it at the boundary costs (today's way).

    python3 bench/grow_preform.py --python /usr/bin/python3 --rounds 5 --out F.json

A measurement of a mechanism, not of bulsajo: plain torch.distributed, no
agent. Four survivors train the MLP of examples/live_ddp.py (gloo, one
thread each, 32 samples per rank) on a group of 4; a fifth process (the
joiner) is started meanwhile; at step --boundary the survivors move to a group
of 5 that includes it. Two modes, interleaved (now pre now pre ...):

  now   at the boundary: drop the old group (gc), a new TCPStore hosted by
        rank 0, the gloo rendezvous of the 5, DDP rebuilt on it, the optimizer
        state broadcast from rank 0 (what bulsajo.torch's regroup does today,
        less the agreement and digest rounds);
  pre   a thread forms the group of 5 (gloo, constructed directly on the
        job-long store) from step --boundary - 40 while training goes on;
        at the boundary only DDP is rebuilt and the optimizer state sent;
        the old group is dropped after the boundary step.

Per run and survivor: pause = the boundary step and the two after it, minus
three median steps of the group of 5 (steps boundary+5 .. end); the median
step of the group of 4 is over steps 20 .. boundary-41, before any forming. Reported: medians over rounds of the slowest survivor's pause, and
each mode's median step, also while the background thread formed (pre).
Works on torch 1.13 (ProcessGroupGloo is a ProcessGroup) and 2.x (a
ProcessGroup with a gloo backend registered on it).
"""

import argparse
import datetime
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

W1, W2 = 4, 5


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def worker(args):
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from gloo_group import direct_gloo_group  # bench/ is sys.path[0]

    torch.set_num_threads(1)
    major = int(torch.__version__.split(".")[0])
    timeout = datetime.timedelta(seconds=60)
    rank, mode, joiner = args.rank, args.mode, args.rank == W1

    def store_at(port, host):
        if major >= 2:
            try:  # 2.4+ defaults to libuv, which Debian's build lacks
                return dist.TCPStore("127.0.0.1", port, None, host, timeout,
                                     wait_for_workers=False, use_libuv=False)
            except TypeError:
                return dist.TCPStore("127.0.0.1", port, None, host, timeout,
                                     wait_for_workers=False)
        return dist.TCPStore("127.0.0.1", port, W2 + 1, host, timeout, False)

    def await_listen(port):  # as bulsajo.torch does: probe, not the client's slow retries
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                return
            except OSError:
                time.sleep(0.005)

    def make_pg(store, prefix, r, w):
        return direct_gloo_group(store, prefix, r, w, timeout)

    def bcast(pg, t):
        o = dist.BroadcastOptions()
        o.rootRank, o.rootTensor = 0, 0
        pg.broadcast([t], o).wait()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(100 + rank)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    lossf = nn.CrossEntropyLoss()

    def send_state(pg):  # rank 0's optimizer state to all (the params go with DDP's build)
        if joiner:
            n = torch.zeros(1, dtype=torch.int64)
        else:
            b = io.BytesIO()
            torch.save(opt.state_dict(), b)
            payload = b.getvalue()
            n = torch.tensor([len(payload)], dtype=torch.int64)
        bcast(pg, n)
        buf = torch.empty(int(n), dtype=torch.uint8) if joiner else \
            torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        bcast(pg, buf)
        if joiner:
            opt.load_state_dict(torch.load(io.BytesIO(buf.numpy().tobytes())))

    def step(ddp):
        opt.zero_grad()
        lossf(ddp(x), y).backward()
        opt.step()

    store = store_at(args.port, rank == 0)
    if joiner:
        if mode == "now":
            await_listen(args.port2)
            s2 = store_at(args.port2, False)
            pg = make_pg(s2, "g", W1, W2)
        else:
            pg = make_pg(store, "g2", W1, W2)
        ddp = nn.parallel.DistributedDataParallel(model, process_group=pg)
        send_state(pg)
        for _ in range(args.boundary, args.steps):
            step(ddp)
        return {}

    pg = make_pg(store, "g1", rank, W1)
    ddp = nn.parallel.DistributedDataParallel(model, process_group=pg)
    bg, th, durs, split = {}, None, [], {}
    start_bg = args.boundary - 40

    def form():
        t = time.monotonic()
        bg["pg"] = make_pg(store, "g2", rank, W2)
        bg["s"] = time.monotonic() - t

    old = None
    t_prev = time.monotonic()
    for s in range(args.steps):
        if mode == "pre" and s == start_bg:
            th = threading.Thread(target=form)
            th.start()
        if s == args.boundary:
            if mode == "pre":
                th.join()
                old, pg = pg, bg["pg"]
            else:
                import gc
                del ddp
                pg = None
                gc.collect()
                if rank != 0:
                    await_listen(args.port2)
                s2 = store_at(args.port2, rank == 0)
                pg = make_pg(s2, "g", rank, W2)
            t = time.monotonic()
            ddp = nn.parallel.DistributedDataParallel(model, process_group=pg)
            split["ddp_ms"] = (time.monotonic() - t) * 1000
            t = time.monotonic()
            send_state(pg)
            split["state_ms"] = (time.monotonic() - t) * 1000
        if s == args.boundary + 1 and old is not None:
            old = None  # the old group goes after the boundary step, off its path
        step(ddp)
        now = time.monotonic()
        durs.append(now - t_prev)
        t_prev = now
    ms = [d * 1000 for d in durs]
    med = statistics.median(ms[20:start_bg])
    after = statistics.median(ms[args.boundary + 5:])  # the pace of the group of 5
    return {"rank": rank, "mode": mode, "torch": torch.__version__,
            "step_ms": med, "step_ms_after": after,
            "step_ms_while_forming": statistics.median(ms[start_bg:args.boundary]),
            "pause_ms": sum(ms[args.boundary:args.boundary + 3]) - 3 * after,
            "formed_in_background_ms": bg.get("s", 0) * 1000,
            "ddp_build_ms": split["ddp_ms"], "state_ms": split["state_ms"]}


def run_once(args, mode):
    port, port2 = free_port(), free_port()
    base = [args.python, os.path.abspath(__file__), "--worker", "--mode", mode,
            "--port", str(port), "--port2", str(port2), "--steps", str(args.steps),
            "--boundary", str(args.boundary)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(base + ["--rank", str(r)], stdout=subprocess.PIPE, env=env)
             for r in range(W1)]
    joiner = subprocess.Popen(base + ["--rank", str(W1)], stdout=subprocess.PIPE, env=env)
    outs = []
    for p in procs + [joiner]:
        out, _ = p.communicate(timeout=300)
        if p.returncode != 0:
            raise SystemExit("grow_preform: a worker of mode %s exited %d" % (mode, p.returncode))
        outs.append(json.loads(out.decode().strip().splitlines()[-1]))
    surv = outs[:W1]
    return {"mode": mode, "torch": surv[0]["torch"],
            "pause_ms": max(o["pause_ms"] for o in surv),
            "step_ms": statistics.median(o["step_ms"] for o in surv),
            "step_ms_after": statistics.median(o["step_ms_after"] for o in surv),
            "step_ms_while_forming": statistics.median(o["step_ms_while_forming"] for o in surv),
            "formed_in_background_ms": max(o["formed_in_background_ms"] for o in surv),
            "ddp_build_ms": max(o["ddp_build_ms"] for o in surv),
            "state_ms": max(o["state_ms"] for o in surv)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=260)
    p.add_argument("--boundary", type=int, default=200)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=["now", "pre"], default="now", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port2", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.boundary < 60 or args.steps < args.boundary + 3:
        p.error("need --boundary >= 60 and --steps >= --boundary + 3")
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return
    runs = []
    for r in range(args.rounds):
        for mode in ("now", "pre"):
            res = run_once(args, mode)
            res["round"] = r
            runs.append(res)
            print("round %d %-3s pause %6.1f ms  step %5.1f ms (while forming %5.1f, after %5.1f)  "
                  "formed in background %5.1f ms  DDP build %5.1f ms  state %5.1f ms"
                  % (r, mode, res["pause_ms"], res["step_ms"], res["step_ms_while_forming"],
                     res["step_ms_after"], res["formed_in_background_ms"],
                     res["ddp_build_ms"], res["state_ms"]),
                  flush=True)
    agg = {}
    for mode in ("now", "pre"):
        rs = [x for x in runs if x["mode"] == mode]
        agg[mode] = {k: round(statistics.median(x[k] for x in rs), 1)
                     for k in ("pause_ms", "step_ms", "step_ms_while_forming", "step_ms_after",
                          "ddp_build_ms", "state_ms")}
    agg["pre_over_now_pause"] = round(agg["pre"]["pause_ms"] / agg["now"]["pause_ms"], 2) \
        if agg["now"]["pause_ms"] > 0 else None
    print(json.dumps(agg))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
                       "config": vars(args), "runs": runs, "aggregate": agg}, f, indent=1)


if __name__ == "__main__":
    main()
