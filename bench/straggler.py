#!/usr/bin/env python3
"""Straggler benchmark: one rank of a live-mode job throttled by a cgroup.

    go build -o bin/bulsajo ./cmd/bulsajo
    sudo python3 bench/straggler.py --trials 3 --out /tmp/straggler.json

Each trial runs `bulsajo run --recovery live` with examples/live_ddp.py
(gloo, CPU), waits for training, measures steps/s for --measure seconds
(before), caps one rank's process at --quota percent of a CPU (cgroup v1
cpu.cfs_quota_us), and records from bulsajo's output: the time to the
"⚠ straggler" line, with --action replace the time to "↻ straggler:
moving" and to the replacement's admission ("↻ grow:"), and steps/s
during the throttle and after the move.  Steps/s come from rank 0's
"step N" lines.  Standard library only; needs root (cgroups).
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP = re.compile(r"^\[rank0\] step (\d+) ")


class Run(object):
    def __init__(self, args, action):
        self.dir = tempfile.mkdtemp(prefix="bulsajo-straggler-")
        cmd = [args.bulsajo, "run", "--run-dir", os.path.join(self.dir, "run"), "--recovery", "live",
               "--nproc-per-node", str(args.nproc), "--straggler-action", action,
               "--straggler-replace-after", args.replace_after, "--",
               args.python, os.path.join(REPO, "examples", "live_ddp.py"), "--steps", "100000000",
               "--log-every", "10"]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True, universal_newlines=True)
        self.lines = []       # (monotonic, line)
        self.steps = []       # (monotonic, step)
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            t = time.monotonic()
            with self.lock:
                self.lines.append((t, line.rstrip("\n")))
                m = STEP.match(line)
                if m:
                    self.steps.append((t, int(m.group(1))))

    def first(self, pattern, after=0.0):
        r = re.compile(pattern)
        with self.lock:
            for t, l in self.lines:
                if t >= after and r.search(l):
                    return t
        return None

    def wait(self, pattern, timeout, after=0.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.first(pattern, after)
            if t is not None:
                return t
            time.sleep(0.05)
        return None

    def rate(self, t0, t1):
        with self.lock:
            pts = [(t, s) for t, s in self.steps if t0 <= t <= t1]
        if len(pts) < 2:
            return 0.0
        return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])

    def pid(self, rank):
        with open(os.path.join(self.dir, "run", "pids", "rank%d" % rank)) as f:
            return int(f.read().strip())

    def stop(self):
        try:
            os.killpg(self.p.pid, signal.SIGINT)
            self.p.wait(60)
        except Exception:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()


def throttle(pid, quota_pct):
    d = "/sys/fs/cgroup/cpu/bulsajo-bench-%d" % os.getpid()
    os.mkdir(d)
    with open(d + "/cpu.cfs_period_us", "w") as f:
        f.write("100000")
    with open(d + "/cpu.cfs_quota_us", "w") as f:
        f.write(str(quota_pct * 1000))
    with open(d + "/cgroup.procs", "w") as f:
        f.write(str(pid))
    return d


def unthrottle(d):
    try:
        with open(d + "/cgroup.procs") as f:
            pids = f.read().split()
        for p in pids:
            with open("/sys/fs/cgroup/cpu/cgroup.procs", "w") as f:
                f.write(p)
    except OSError:
        pass
    for _ in range(50):
        try:
            os.rmdir(d)
            return
        except OSError:
            time.sleep(0.1)


def trial(args, action):
    run = Run(args, action)
    out = {"action": action}
    cg = None
    try:
        if run.wait(r"^\[rank0\] step 30 ", 120) is None:
            raise RuntimeError("training did not start")
        t0 = time.monotonic()
        time.sleep(args.measure)
        out["before"] = run.rate(t0, time.monotonic())
        pid = run.pid(args.rank)
        cg = throttle(pid, args.quota)
        th = time.monotonic()
        # a straggler named before the throttle is a false alarm
        out["named_before"] = sum(1 for t, l in list(run.lines) if t < th and "⚠ straggler" in l)
        det = run.wait(r"⚠ straggler: rank %d " % args.rank, args.timeout, th)
        out["detect_s"] = None if det is None else round(det - th, 2)
        out["line"] = None if det is None else [l for t, l in run.lines if t == det][0]
        if action == "replace" and det is not None:
            mv = run.wait(r"↻ straggler: moving", args.timeout, th)
            grow = run.wait(r"↻ grow:", args.timeout, th)
            out["move_s"] = None if mv is None else round(mv - th, 2)
            out["grow_s"] = None if grow is None else round(grow - th, 2)
            out["during"] = run.rate(th, mv or th)
            if grow is not None:
                time.sleep(args.settle)
                t1 = time.monotonic()
                time.sleep(args.measure)
                out["after"] = run.rate(t1, time.monotonic())
        else:
            t1 = time.monotonic()
            time.sleep(args.measure)
            out["during"] = run.rate(t1, time.monotonic())
    finally:
        run.stop()
        if cg:
            unthrottle(cg)
    for k in ("before", "during", "after"):
        if k in out:
            out[k] = round(out[k], 2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bulsajo", default=os.path.join(REPO, "bin", "bulsajo"))
    ap.add_argument("--python", default="/usr/bin/python3")
    ap.add_argument("--nproc", type=int, default=3)
    ap.add_argument("--rank", type=int, default=1, help="rank to throttle")
    ap.add_argument("--quota", type=int, default=10, help="percent of one CPU the throttled rank gets")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--actions", default="warn,replace")
    ap.add_argument("--replace-after", default="10s")
    ap.add_argument("--measure", type=float, default=10.0, help="seconds per throughput measurement")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after the grow before measuring")
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res = []
    for i in range(args.trials):
        for action in args.actions.split(","):
            r = trial(args, action)
            r["trial"] = i
            print(json.dumps(r, ensure_ascii=False), flush=True)
            res.append(r)
    for action in args.actions.split(","):
        rs = [r for r in res if r["action"] == action]
        det = [r["detect_s"] for r in rs if r.get("detect_s") is not None]
        line = "%s: detected %d/%d, named before the throttle %d" % (
            action, len(det), len(rs), sum(r.get("named_before", 0) for r in rs))
        if det:
            line += ", detection median %.1f s (%.1f-%.1f)" % (statistics.median(det), min(det), max(det))
        for k in ("move_s", "grow_s", "before", "during", "after"):
            v = [r[k] for r in rs if r.get(k) is not None]
            if v:
                line += ", %s median %.1f" % (k, statistics.median(v))
        print(line)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    sys.exit(main())
