#!/usr/bin/env python3
"""What one fault costs a live-mode job, in wall time: interleaved rounds of a
fault-free run and runs with `--chaos kill-every=...` (SIGKILL to a random
rank), for one or more bulsajo binaries (e.g. before and after a change).

    python3 bench/live_cost.py --bin new=bin/bulsajo --bin old=/tmp/bulsajo-old \
        --model transformer --steps 300 --kill-every 5,15 --rounds 3 \
        --out bench/results-live-cost.json

Each round runs, in order: fault-free (the first binary), then every
(kill-every, binary) pair; the chaos seed is the round number; one more
fault-free run closes the last round. Per faulty run, with "fault-free wall"
the mean of the fault-free runs just before and just after its round:
  cost per fault = (wall - fault-free wall) / faults
  wall-clock goodput = fault-free wall / wall;  summary goodput = bulsajo's own
    (its useful / wall, startup left out of both)
    (walls counted from the first step: startup, which no fault touches, varies
    by seconds between runs on a shared machine)
  recover_ms = fault detected -> the new generation's first committed step
  shrink / grow pause = the summary's pauses (gap over the healthy step time)
and the medians over rounds. Workers: examples/live_ddp.py, 4 per node, gloo.

--in-run measures the cost per fault against the run's own pace rather than
against other runs (the machine's pace drifts by up to 40 % between runs a
minute apart, more than the cost being measured). The faults then come at
fixed times: the first --quiet-s after the first step, then one every
kill-every seconds while the fault-free run before it says --suffix-s are left.
From each rank's commit times (live_ddp.py --step-log), the job's timeline
T(k) (when step k first committed):
  prefix: the steady steps before the first fault (after the pool's first
    fill), pace p1;  suffix: the last stretch's steps past its warm steps
    (after the last grow), pace p2;  middle: everything in between
  in-run lost = T(middle end) - T(middle start) - middle steps x (p1 + p2) / 2
It holds every pause, warm step, smaller-world step and slower step around a
fault, and assumes only that the pace drifts linearly between the prefix and
the suffix. The same windows (by step) on the fault-free runs around the round
give the method's own error ("null": 0 for a perfect method).
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(binary, label, args, chaos, seed, plan=None):
    d = os.path.join(args.work, label)
    subprocess.run(["rm", "-rf", d], check=True)
    os.makedirs(d)
    cmd = [binary, "run", "--recovery", "live", "--max-restarts", "100",
           "--nproc-per-node", "4", "--run-dir", os.path.join(d, "run")]
    if plan:
        cmd += ["--chaos", plan]
    elif chaos:
        cmd += ["--chaos", "kill-every=%ss,seed=%d" % (chaos, seed)]
    cmd += ["--", args.python, os.path.join(ROOT, "examples", "live_ddp.py"),
            "--model", args.model, "--steps", str(args.steps),
            "--step-log", os.path.join(d, "steps.log")]
    t0, st0 = time.monotonic(), _steal_s()
    with open(os.path.join(d, "out.log"), "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    wall = time.monotonic() - t0
    steal = _steal_s() - st0
    evs = [json.loads(l) for l in open(os.path.join(d, "run", "events.jsonl"))]
    fin = [e for e in evs if e["type"] == "run_finished"]
    summ = fin[-1]["summary"] if fin else {}
    pauses = summ.get("pauses") or []
    rec = [e["recover_ms"] for e in evs if e["type"] == "recovered" and "recover_ms" in e]
    return {
        "label": label, "binary": binary, "kill_every_s": chaos, "seed": seed, "rc": rc,
        "wall_s": round(wall, 2),
        # CPU time the hypervisor gave other guests during the run (all CPUs):
        # a neighbour's load, which slows a run without any fault
        "steal_s": round(steal, 2),
        "faults": sum(1 for e in evs if e["type"] == "fault"),
        # the summary's goodput after startup, to set next to the wall clock's
        "summary_goodput": _after_startup(summ),
        "summary_lost_s": summ.get("lost_s"),
        "healthy_step_s": summ.get("healthy_step_s"),
        "healthy_from": summ.get("healthy_from"),
        # to the first step: importing torch and building the model, which no
        # fault touches (chaos waits for training) but which this machine's
        # disk and neighbours make vary by seconds between runs
        "startup_s": summ.get("startup_s") or 0.0,
        "recover_ms": rec,
        "shrink_pause_s": [p["pause_s"] for p in pauses if p["cause"] == "fault"],
        "grow_pause_s": [p["pause_s"] for p in pauses if p["cause"] == "grow"],
        "chaos": plan,
        "_dir": d,
    }


def _time(s):
    """An event's RFC 3339 time (Go writes nanoseconds) as a Unix time."""
    head, _, frac = s.rstrip("Z").partition(".")
    t = datetime.datetime.fromisoformat(head).replace(tzinfo=datetime.timezone.utc)
    return t.timestamp() + (float("0." + frac) if frac else 0.0)


def timeline(d):
    """step -> the first time any rank committed it (live_ddp.py --step-log)."""
    T = {}
    with open(os.path.join(d, "steps.log")) as f:
        for line in f:
            v = line.split()
            if len(v) >= 2:
                k, t = int(v[1]), float(v[0])
                T[k] = min(T.get(k, t), t)
    return T


def _stretches(d):
    return [json.loads(l)["stretch"] for l in open(os.path.join(d, "run", "events.jsonl"))
            if '"type":"steps"' in l]


def _pace(T, a, b):
    return (T[b] - T[a]) / (b - a)


def in_run_lost(T, w):
    """The middle window's wall time less its steps at the prefix's and the
    suffix's mean pace; w = (a, b, c, d) step indices."""
    a, b, c, d = w
    p1, p2 = _pace(T, a, b), _pace(T, c, d)
    return (T[c] - T[b]) - (c - b) * (p1 + p2) / 2, p1, p2


def in_run_windows(d):
    """(a, b, c, d) for a faulty run, or a reason it has none."""
    evs = [json.loads(l) for l in open(os.path.join(d, "run", "events.jsonl"))]
    faults = [e for e in evs if e["type"] == "fault"]
    st = _stretches(d)
    if not faults or len(st) < 2:
        return "no fault"
    T = timeline(d)
    first, last = st[0], st[-1]
    if last.get("cause") != "grow" or last.get("import_steps"):
        return "the last stretch is no clean grow (%s)" % last.get("cause")
    f1 = _time(faults[0]["time"]) - (faults[0].get("detect_ms") or 0) / 1000
    a = first["from_step"] + (first.get("fill_steps") or 0) + 1
    before = [k for k, t in T.items() if t < f1]
    b = max(before) if before else -1
    c = last["from_step"] + (last.get("warm_steps") or 0)
    dd = max(T)
    if b - a < 10 or dd - c < 10 or not all(k in T for k in (a, b, c, dd)):
        return "prefix %d or suffix %d steps too short" % (b - a, dd - c)
    return (a, b, c, dd)


def null_lost(ff, w):
    """The in-run estimate on a fault-free run over a faulty run's windows."""
    T = timeline(ff["_dir"])
    fill = _stretches(ff["_dir"])[0]
    a = max(w[0], fill["from_step"] + (fill.get("fill_steps") or 0) + 1)
    if w[1] - a < 10 or not all(k in T for k in (a,) + tuple(w[1:])):
        return None
    return in_run_lost(T, (a,) + tuple(w[1:]))[0]


def in_run_plan(ff, args, every, seed):
    """kill-at times (the supervisor's clock, from its start) for a run like ff."""
    train = ff["wall_s"] - ff["startup_s"]
    n = max(1, int((train - args.quiet_s - args.suffix_s) / every) + 1)
    at = [ff["startup_s"] + args.quiet_s + i * every for i in range(n)]
    return ",".join(["kill-at=%.1fs" % t for t in at] + ["seed=%d" % seed])


def _steal_s():
    """The machine's CPU steal time so far, in seconds (/proc/stat)."""
    with open("/proc/stat") as f:
        v = f.readline().split()
    return int(v[8]) / os.sysconf("SC_CLK_TCK") if len(v) > 8 else 0.0


def _after_startup(summ):
    """useful/wall with the startup taken out of both (None without a summary)."""
    st = summ.get("startup_s") or 0.0
    if not summ.get("wall_s") or summ["wall_s"] <= st:
        return summ.get("goodput")
    return round((summ.get("useful_s", 0.0) - st) / (summ["wall_s"] - st), 3)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def by_binary_and_rate(runs, bins, kills):
    """(binary name, kill-every, its faulty runs) for each table row."""
    for k in kills:
        for name, _ in bins:
            yield name, k, [x for x in runs if x.get("kill_every_s") == k and x["name"] == name]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", action="append", required=True, metavar="NAME=PATH",
                   help="a bulsajo binary to measure (repeatable; the first runs fault-free)")
    p.add_argument("--model", default="transformer", choices=["mlp", "transformer"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--kill-every", default="5,15", help="seconds, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--python", default="/usr/bin/python3")
    p.add_argument("--work", default="/tmp/bulsajo-live-cost")
    p.add_argument("--out", default=None, help="write all runs here (JSON)")
    p.add_argument("--in-run", action="store_true",
                   help="faults between a fault-free prefix and suffix; cost from the run's own pace")
    p.add_argument("--quiet-s", type=float, default=20.0, help="--in-run: training before the first fault")
    p.add_argument("--suffix-s", type=float, default=20.0, help="--in-run: training left after the last fault")
    args = p.parse_args()
    bins = []
    for b in args.bin:
        name, sep, path = b.partition("=")
        if not sep or not name or not path:
            p.error("--bin wants NAME=PATH, got %r" % b)
        bins.append((name, os.path.abspath(path)))
    kills = [int(x) for x in args.kill_every.split(",") if x]
    runs, ffs = [], []
    for r in range(1, args.rounds + 2):
        ff = run_one(bins[0][1], "fault-free-%d" % r, args, None, r)
        ff["name"] = bins[0][0]
        runs.append(ff)
        ffs.append(ff)
        print("round %d fault-free: %.1f s" % (r, ff["wall_s"]), flush=True)
        if r > args.rounds:
            break  # the closing fault-free run: the last round's "after"
        for k in kills:
            for name, path in bins:
                plan = in_run_plan(ff, args, k, r) if args.in_run else None
                x = run_one(path, "%s-k%d-%d" % (name, k, r), args, k, r, plan)
                x["name"] = name
                x["round"] = r
                runs.append(x)
                print("round %d %s kill every %d s: %.1f s, %d faults, summary goodput %.3f, "
                      "recover_ms median %.0f" % (r, name, k, x["wall_s"], x["faults"],
                                                  x["summary_goodput"] or 0, med(x["recover_ms"])),
                      flush=True)
    # Each faulty run against the fault-free runs on either side of its round
    # (their mean): a machine whose pace drifts by minutes moves both.
    for x in runs:
        if "round" not in x:
            continue
        before, after = ffs[x["round"] - 1], ffs[x["round"]]
        ffw = statistics.mean(f["wall_s"] - f["startup_s"] for f in (before, after))
        x["fault_free_wall_s"] = round(ffw, 2)
        x["fault_free_spread"] = round(abs((before["wall_s"] - before["startup_s"]) -
                                           (after["wall_s"] - after["startup_s"])) / ffw, 3)
        n = max(x["faults"], 1)
        w = x["wall_s"] - x["startup_s"]
        x["cost_per_fault_s"] = round((w - ffw) / n, 3)
        x["wall_goodput"] = round(ffw / w, 3)
        # The same with the fault-free time scaled to this run's pace (the
        # summary's healthy step against the fault-free runs'): it checks the
        # summary's account of the pauses, not its pace, which it takes from
        # the summary itself. The refill's slower steps are in the pace, so it
        # is no measure of the cost per fault.
        hs = [f.get("healthy_step_s") for f in (before, after)]
        x["pace_matched_wall_goodput"] = None
        if x.get("healthy_step_s") and all(hs):
            pace = x["healthy_step_s"] / statistics.mean(hs)
            x["pace_matched_wall_goodput"] = round(ffw * pace / w, 3)
        print("round %d %s kill every %d s: %.2f s per fault, goodput summary %.3f / wall clock %.3f "
              "/ pace-matched %s (fault-free runs around it differ by %.1f%%)"
              % (x["round"], x["name"], x["kill_every_s"], x["cost_per_fault_s"],
                 x["summary_goodput"] or 0, x["wall_goodput"],
                 "—" if x["pace_matched_wall_goodput"] is None else "%.3f" % x["pace_matched_wall_goodput"],
                 100 * x["fault_free_spread"]))
        if args.in_run:
            w = in_run_windows(x["_dir"])
            x["in_run_windows"] = w
            if isinstance(w, tuple):
                lost, p1, p2 = in_run_lost(timeline(x["_dir"]), w)
                x["in_run_lost_s"] = round(lost, 3)
                x["in_run_cost_per_fault_s"] = round(lost / n, 3)
                x["in_run_pace_s"] = [round(p1, 4), round(p2, 4)]
                nulls = [null_lost(f, w) for f in (before, after)]
                x["null_lost_s"] = [None if v is None else round(v, 3) for v in nulls]
                x["null_per_fault_s"] = [None if v is None else round(v / n, 3) for v in nulls]
                print("  in run: %.3f s lost, %.3f s per fault (pace %.4f -> %.4f s a step, "
                      "summary %.3f s per fault); fault-free runs, same windows: %s s per fault"
                      % (lost, lost / n, p1, p2, (x["summary_lost_s"] or 0) / n,
                         " / ".join("—" if v is None else "%+.3f" % (v / n) for v in nulls)))
            else:
                print("  in run: no estimate (%s)" % w)
    for x in runs:
        x.pop("_dir", None)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "steps": args.steps, "runs": runs}, f, indent=1)
    print("\n| binary | kill every | runs | faults | s per fault (median) | summary goodput | "
          "wall-clock goodput | summary - wall (max abs) | summary - pace-matched (max abs) | "
          "recover ms (median) | shrink pause s | grow pause s | steal s (max) | "
          "healthy step unmeasured |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, k, xs in by_binary_and_rate(runs, bins, kills):
        diff = max(abs((x["summary_goodput"] or 0) - x["wall_goodput"]) for x in xs)
        pm = [abs((x["summary_goodput"] or 0) - x["pace_matched_wall_goodput"])
              for x in xs if x["pace_matched_wall_goodput"] is not None]
        print("| %s | %d s | %d | %s | %.2f | %.3f | %.3f | %.3f | %s | %.0f | %.3f | %.3f | %.1f | %d of %d |" % (
            name, k, len(xs), "/".join(str(x["faults"]) for x in xs),
            med(x["cost_per_fault_s"] for x in xs), med(x["summary_goodput"] for x in xs),
            med(x["wall_goodput"] for x in xs), diff, "%.3f" % max(pm) if pm else "—",
            med([v for x in xs for v in x["recover_ms"]]),
            med([v for x in xs for v in x["shrink_pause_s"]]),
            med([v for x in xs for v in x["grow_pause_s"]]),
            max(x["steal_s"] for x in xs),
            sum(1 for x in xs if x.get("healthy_from") == "median_step"), len(xs)))
    if args.in_run:
        print("\n| binary | kill every | runs | faults | in-run s per fault (median, range) | "
              "null s per fault (median abs, max abs) | summary lost s per fault (median) | "
              "raw s per fault (median) |")
        print("|---|---|---|---|---|---|---|---|")
        for name, k, xs in by_binary_and_rate(runs, bins, kills):
            ys = [x["in_run_cost_per_fault_s"] for x in xs if "in_run_cost_per_fault_s" in x]
            ns = [abs(v) for x in xs for v in x.get("null_per_fault_s") or [] if v is not None]
            print("| %s | %d s | %d of %d | %s | %.3f (%s) | %s | %.3f | %.2f |" % (
                name, k, len(ys), len(xs), "/".join(str(x["faults"]) for x in xs), med(ys),
                "%.3f..%.3f" % (min(ys), max(ys)) if ys else "—",
                "%.3f, %.3f" % (med(ns), max(ns)) if ns else "—",
                med((x["summary_lost_s"] or 0) / max(x["faults"], 1) for x in xs),
                med(x["cost_per_fault_s"] for x in xs)))
    if any(x["rc"] != 0 for x in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
