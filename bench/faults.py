#!/usr/bin/env python3
"""Fault-recovery benchmark: DDP training under torchrun and under bulsajo
(restart mode and live mode), with the same fault schedule, in one invocation.

    python3 bench/faults.py --live-steps 3000 --out bench-results.json     # full run
    python3 bench/faults.py --launchers bulsajo-live,bulsajo --steps 300 --live-steps 600 \
        --kill-every 8 --timeout 90 --out /tmp/short.json                  # a short check

Launchers (--launchers, comma-separated; --only NAME for one):

  torchrun              torchrun, examples/ddp_train.py: restart from checkpoint
  bulsajo               bulsajo run (restart mode), examples/ddp_train.py
  bulsajo-live          bulsajo run --recovery live, examples/live_ddp.py:
                        survivors keep training in-process
  torchrun-live-script  torchrun, examples/live_ddp.py as a static DDP job
                        (fault-free only): the baseline for the SDK's overhead

Goodput, per-fault cost and the parameter-hash check always compare a launcher
with its own fault-free run (same launcher, same script). bulsajo's own summary
(goodput, lost time by cause) is set beside the wall clock twice: against the
median fault-free run, and per faulty run against the fault-free run of the same
round, raw and pace-matched (same_round(): the machine's pace drifts between
rounds by more than the faults cost; --render FILE.json redoes it for old runs).

Scenarios (--scenarios, comma-separated):

  fault-free  no faults: the baseline for goodput and for bulsajo's overhead.
  sigkill     one worker SIGKILLed every --kill-every seconds, the first at
              --kill-every seconds after the launcher starts, until the job ends.
  sigstop     one worker SIGSTOPped once, --stop-at seconds after the start
              (a hang: torchrun never recovers from it; the run is capped at
              --timeout and reported as "did not finish").

Which process holds a rank: for bulsajo (both modes) the harness reads
RUN_DIR/pids/rankN, which bulsajo rewrites whenever a rank changes hands, and
keeps the pids that are alive, in the launcher's session and running the
script.  Otherwise (torchrun, or a bulsajo without pids files) a worker is a
process of the launcher's session whose command line contains the training
script and whose environment holds RANK=.  The environment is
read as the process sees it now: bulsajo starts workers through a "standby"
shim that imports torch first and sets RANK etc. with os.environ.update once it
is given a rank, and /proc/PID/environ only ever shows the environment a
process was exec'd with; so, when /proc/PID/environ has no RANK=, the harness
reads libc's `environ` array out of /proc/PID/mem (needs the same user as the
workers, or root).  Standbys that have not been given a rank yet have no RANK
and are never chosen.

Which worker: a seeded random.Random(--seed + repeat index) draws a rank for
every fault in advance, so every launcher gets the same ranks in the same
order; a fault goes to that rank in the newest generation (bulsajo: the
current pids files; torchrun: TORCHELASTIC_RESTART_COUNT).  If no worker is alive at the scheduled time
(between generations), the harness retries every 50 ms.

Measurements: see bench/README.md.  For bulsajo, events.jsonl gives
detection, recovery and rolled-back steps; with live_ddp.py each rank's
--result-dir file (rank{R}.json) gives the steps it lost per regroup.

Stdlib only; runs with any python3 >= 3.6.  Every launcher is started in its
own session (start_new_session=True) and, when the run ends for any reason,
every process left in that session is SIGKILLed (bulsajo puts each worker in
its own process group, so killing the launcher's group alone is not enough).
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SCRIPT = os.path.join(REPO, "examples", "ddp_train.py")
DEFAULT_LIVE_SCRIPT = os.path.join(REPO, "examples", "live_ddp.py")
SCENARIOS = ("fault-free", "sigkill", "sigstop")
LAUNCHERS = ("torchrun", "bulsajo", "bulsajo-live", "torchrun-live-script")
# Launchers that only run the fault-free scenario (baselines for overhead).
FAULT_FREE_ONLY = ("torchrun-live-script",)
# Launchers whose job is --live-script (examples/live_ddp.py), not --script.
LIVE_SCRIPT_LAUNCHERS = ("bulsajo-live", "torchrun-live-script")
# Global batch of the two example scripts with their defaults: ddp_train.py
# uses --batch 32 per rank; live_ddp.py --global-batch 128 whatever the world.
DDP_TRAIN_BATCH_PER_RANK = 32
LIVE_DDP_GLOBAL_BATCH = 128

DONE_RE = re.compile(r"done steps=(\d+) loss=(\S+) params_sha256=([0-9a-f]+)(?: regroups=(\d+))?")
RESUMED_RE = re.compile(r"resumed from \S+ at step (\d+)")
STEP_RE = re.compile(r"\bstep (\d+) loss ")
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# Variables a launcher sets for its workers: never inherit them from the caller.
SCRUB_PREFIXES = ("TORCHELASTIC_", "BULSAJO_")
SCRUB_NAMES = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
               "GROUP_WORLD_SIZE", "ROLE_NAME", "ROLE_RANK", "ROLE_WORLD_SIZE",
               "MASTER_ADDR", "MASTER_PORT"}


def log(msg):
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


# ---------------------------------------------------------------- /proc helpers

def proc_stat(pid):
    """(ppid, pgrp, session, state) of pid, or None when it is gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    # state ppid pgrp session ...
    return int(rest[1]), int(rest[2]), int(rest[3]), rest[0]


def all_pids():
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            out.append(int(name))
    return out


def session_members(sid):
    """Every live process whose session id is sid (the launcher's pid), and
    every descendant of those that started a session of its own: torch 2.x's
    torchrun starts each worker in a new session, so a search by session
    alone found no torchrun worker to fault (its sigkill runs had 0 faults)."""
    stats = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st is not None and st[3] != "Z":
            stats[pid] = st
    out = set(pid for pid, st in stats.items() if st[2] == sid)
    children = {}
    for pid, st in stats.items():
        children.setdefault(st[0], []).append(pid)
    stack = list(out | {sid})
    while stack:
        for c in children.get(stack.pop(), []):
            if c not in out:
                out.add(c)
                stack.append(c)
    return sorted(out)


def proc_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def exec_environ(pid):
    """The environment pid was exec'd with (/proc/PID/environ)."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for kv in raw.split(b"\0"):
        if b"=" in kv:
            k, _, v = kv.partition(b"=")
            env[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
    return env


_elf_cache = {}


def _elf_environ_symbol(path):
    """(st_value, e_type) of a defined __environ/environ in path's .dynsym, or None.

    The main executable usually holds the live copy (a copy relocation), so it
    is tried before libc."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_mtime, st.st_size)
    if key in _elf_cache:
        return _elf_cache[key]
    result = None
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1:  # ELF64 LE
            e_type, = struct.unpack_from("<H", data, 0x10)
            e_shoff, = struct.unpack_from("<Q", data, 0x28)
            e_shentsize, e_shnum = struct.unpack_from("<HH", data, 0x3A)
            secs = [struct.unpack_from("<IIQQQQIIQQ", data, e_shoff + i * e_shentsize)
                    for i in range(e_shnum)]
            for sh in secs:
                if sh[1] != 11:  # SHT_DYNSYM
                    continue
                str_off = secs[sh[6]][4]
                off, size, ent = sh[4], sh[5], sh[9] or 24
                for j in range(size // ent):
                    name_off, _info, _other, shndx, value, _sz = struct.unpack_from(
                        "<IBBHQQ", data, off + j * ent)
                    if not value or shndx == 0:
                        continue
                    a = str_off + name_off
                    nm = data[a:data.index(b"\0", a)]
                    if nm in (b"__environ", b"environ", b"_environ"):
                        result = (value, e_type)
                        break
                if result:
                    break
    except (OSError, ValueError, struct.error):
        result = None
    _elf_cache[key] = result
    return result


def _read_cstring(mem, addr, limit=1 << 16):
    out = b""
    while len(out) < limit:
        mem.seek(addr)
        n = 4096 - (addr % 4096)  # never read across a page we may not have
        chunk = mem.read(n)
        if not chunk:
            break
        i = chunk.find(b"\0")
        if i >= 0:
            return out + chunk[:i]
        out += chunk
        addr += len(chunk)
    return out


def live_environ(pid):
    """The environment as the process sees it now (libc's environ array, read
    from /proc/PID/mem), or None when it cannot be read."""
    try:
        exe = os.readlink("/proc/%d/exe" % pid)
        bases = {}
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or int(parts[2], 16) != 0:
                    continue
                lo = int(parts[0].split("-")[0], 16)
                if parts[5] not in bases or lo < bases[parts[5]]:
                    bases[parts[5]] = lo
        addr = None
        for path in [exe] + [p for p in bases if "/libc.so" in p or "/libc-" in p]:
            sym = _elf_environ_symbol(path)
            if sym:
                value, e_type = sym
                addr = value if e_type == 2 else bases.get(path, 0) + value  # ET_EXEC: absolute
                break
        if addr is None:
            return None
        env = {}
        with open("/proc/%d/mem" % pid, "rb", buffering=0) as mem:
            mem.seek(addr)
            arr, = struct.unpack("<Q", mem.read(8))
            for i in range(8192):
                mem.seek(arr + 8 * i)
                ptr, = struct.unpack("<Q", mem.read(8))
                if ptr == 0:
                    break
                kv = _read_cstring(mem, ptr)
                k, _, v = kv.partition(b"=")
                env[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
        return env
    except (OSError, ValueError, struct.error):
        return None


def _activation_pipe_pending(pid, fd):
    """True when pid's fd is a pipe whose other end its parent still holds:
    a bulsajo standby that has not read its activation yet."""
    try:
        link = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        if not link.startswith("pipe:"):
            return False
        st = proc_stat(pid)
        pdir = "/proc/%d/fd" % st[0]
        return any(os.readlink(os.path.join(pdir, x)) == link for x in os.listdir(pdir))
    except (OSError, TypeError):
        return False


def worker_env(pid):
    """(env, how) for pid: how says where RANK came from."""
    env = exec_environ(pid)
    if env is None:
        return None, "gone"
    if "RANK" in env:
        return env, "environ"
    live = live_environ(pid)
    if live is not None:
        return live, "live-environ"
    # Last resort (e.g. /proc/PID/mem not readable): a bulsajo shim process
    # whose activation pipe is closed has been given a rank; which one, unknown.
    fd = env.get("BULSAJO_ACTIVATE_FD")
    if fd and not _activation_pipe_pending(pid, fd):
        env = dict(env)
        env["RANK"] = "-1"
        return env, "fd-heuristic"
    return env, "environ"


def find_workers(sid, script):
    """Workers (processes holding a rank) in session sid."""
    out = []
    for pid in session_members(sid):
        if pid == sid:
            continue
        if not any(a.endswith(script) or a == script for a in proc_cmdline(pid)):
            continue
        env, how = worker_env(pid)
        if not env or "RANK" not in env:
            continue
        try:
            rank = int(env["RANK"])
            gen = int(env.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        except ValueError:
            continue
        out.append({"pid": pid, "rank": rank, "restart": gen, "how": how})
    return out


def is_bulsajo(launcher):
    return launcher.startswith("bulsajo")


def latest_generation(events_path):
    """(gen, world_size, started, between) from events.jsonl: the last
    generation_started event (started: its time, epoch seconds), and whether
    a fault came after it (bulsajo is between generations).  Nones when there
    is no such event."""
    gen = world = started = None
    fault_after = False
    for e in read_events(events_path):
        t = e.get("type")
        if t == "generation_started" and e.get("gen") is not None:
            gen, world, started = e["gen"], e.get("world_size"), parse_time(e.get("time", ""))
            fault_after = False
        elif t == "fault":
            fault_after = True
    return gen, world, started, fault_after


def find_workers_pids(sid, script, run_dir):
    """Workers from bulsajo's RUN_DIR/pids/rankN files (the pid holding each
    rank now), or None when there are no such files.  A file may name a pid
    that has died (after a shrink in live mode the highest rank's file stays
    until a replacement takes the rank), so a pid counts only while it is
    alive, in the launcher's session and running the script."""
    d = os.path.join(run_dir, "pids")
    try:
        names = [n for n in os.listdir(d) if re.match(r"rank\d+$", n)]
    except OSError:
        return None
    if not names:
        return None
    gen, world, started, between = latest_generation(os.path.join(run_dir, "events.jsonl"))
    if gen is None or between:
        return []  # no generation yet, or between generations: try again shortly
    members = set(session_members(sid))
    holder = {}  # pid -> (mtime, rank): the newest file naming a pid is its rank now
    for n in names:
        path = os.path.join(d, n)
        try:
            with open(path) as f:
                pid = int(f.read().strip())
            mtime = os.stat(path).st_mtime_ns
        except (OSError, ValueError):
            continue
        rank = int(n[4:])
        if world is not None and rank >= world:
            continue  # a rank the current generation does not have (live mode, shrunk)
        if pid not in members or pid == sid:
            continue
        if not any(a.endswith(script) or a == script for a in proc_cmdline(pid)):
            continue
        if pid not in holder or mtime > holder[pid][0]:
            holder[pid] = (mtime, rank)
    # bulsajo records generation_started before it writes the new generation's
    # pids: a file older than that names a worker of an earlier generation
    # (restart mode: one being stopped).  Should the file system's mtimes be
    # too coarse for this, it stops filtering 2 s into the generation.
    fresh = {pid: v for pid, v in holder.items()
             if started is None or v[0] / 1e9 >= started - 0.01}
    if not fresh and started is not None and time.time() - started < 2.0:
        return []
    return [{"pid": pid, "rank": rank, "restart": gen if gen is not None else 0,
             "how": "pids-file"} for pid, (_m, rank) in (fresh or holder).items()]


def session_snapshot(sid):
    """pid, ppid, state, wchan and command of every process in session sid."""
    out = []
    for pid in session_members(sid):
        st = proc_stat(pid)
        try:
            with open("/proc/%d/wchan" % pid) as f:
                wchan = f.read().strip()
        except OSError:
            wchan = None
        env, how = worker_env(pid)
        out.append({"pid": pid, "ppid": st[0] if st else None, "state": st[3] if st else None,
                    "wchan": wchan, "rank": (env or {}).get("RANK"),
                    "cmd": " ".join(proc_cmdline(pid))[:300]})
    return out


def kill_session(sid, pgid=None):
    """SIGKILL every process of session sid (and pgid); return how many were left."""
    left = 0
    for attempt in range(50):
        members = session_members(sid)
        if attempt == 0:
            left = len([p for p in members if p != sid])
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
        if not members:
            return left
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
    log("WARNING: processes of session %d survive SIGKILL: %s" % (sid, session_members(sid)))
    return left


# ---------------------------------------------------------------- one run

LIVE = {}  # pid -> Popen of running launchers, for cleanup on exit


def free_port():
    """A port free now, below the kernel's ephemeral range, where no outgoing
    connection can take it before torchrun binds it (bulsajo chooses its own
    ports the same way, internal/ports)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(64):
        port = random.randrange(max(1024, low - 12000), low)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port below %d" % low)


def clean_env():
    env = {}
    for k, v in os.environ.items():
        if k in SCRUB_NAMES or k.startswith(SCRUB_PREFIXES):
            continue
        env[k] = v
    return env


def script_of(cfg, launcher):
    return cfg.live_script if launcher in LIVE_SCRIPT_LAUNCHERS else cfg.script


def script_match(script):
    """The part of a script path that a worker's command line ends with."""
    return os.path.join(os.path.basename(os.path.dirname(script)), os.path.basename(script))


def steps_of(cfg, launcher):
    """--steps, or --live-steps for the launchers that run --live-script."""
    if launcher in LIVE_SCRIPT_LAUNCHERS and getattr(cfg, "live_steps", None):
        return cfg.live_steps
    return cfg.steps


def global_batch(cfg, launcher):
    """Samples per step of the launcher's script (with the scripts' defaults)."""
    if launcher in LIVE_SCRIPT_LAUNCHERS:
        return LIVE_DDP_GLOBAL_BATCH
    return DDP_TRAIN_BATCH_PER_RANK * cfg.nproc


TORCHRUN_ENV = {}  # --torchrun-env: only for the torchrun launchers


def launcher_env(launcher):
    """The launcher's environment.  torchrun-live-script needs the SDK on
    PYTHONPATH (bulsajo puts its embedded copy there for its own workers):
    the repository's python/ tree, which the binary embeds when built."""
    env = clean_env()
    if launcher in ("torchrun", "torchrun-live-script"):
        env.update(TORCHRUN_ENV)
    if launcher == "torchrun-live-script":
        sdk = os.path.join(REPO, "python")
        env["PYTHONPATH"] = sdk + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def launcher_cmd(cfg, launcher, rundir, ckpt):
    if launcher in LIVE_SCRIPT_LAUNCHERS:
        # live_ddp.py keeps no checkpoint; every rank writes rankR.json with
        # its recovery history (lost_steps per regroup) at the end.
        train = [cfg.live_script, "--steps", str(steps_of(cfg, launcher)),
                 "--result-dir", os.path.join(rundir, "results")]
    else:
        train = [cfg.script, "--steps", str(cfg.steps), "--ckpt-dir", ckpt]
    if launcher in ("torchrun", "torchrun-live-script"):
        return [cfg.python, cfg.torchrun,
                "--nproc_per_node=%d" % cfg.nproc, "--max_restarts=100",
                "--redirects=1", "--tee=1",
                "--master_port=%d" % free_port(),
                "--log_dir=%s" % os.path.join(rundir, "torchrun-logs")] + train
    live = ["--recovery", "live"] if launcher == "bulsajo-live" else []
    return [cfg.bulsajo_bin, "run"] + live + [
        "--nproc-per-node", str(cfg.nproc), "--max-restarts", "100",
        "--run-dir", os.path.join(rundir, "run"), "--", cfg.python] + train


def parse_time(s):
    """Seconds since the epoch from an RFC 3339 time with up to 9 fraction digits."""
    m = re.match(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", s)
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(x) for x in m.groups()[:6])
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    tz = m.group(8)
    off = 0
    if tz != "Z":
        off = (int(tz[1:3]) * 60 + int(tz[4:6])) * 60 * (1 if tz[0] == "+" else -1)
    dt = datetime.datetime(y, mo, d, h, mi, sec, tzinfo=datetime.timezone.utc)
    return dt.timestamp() + frac - off


def read_events(path):
    evs = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    evs.append(json.loads(line))
                except ValueError:
                    pass  # a torn last line
    except OSError:
        pass
    return evs


def read_live_results(d):
    """live_ddp.py --result-dir files (rank{R}.json, one per rank that
    finished): the recoveries by generation, merged over ranks.

    Every rank appends one history entry per regroup it took part in; a
    survivor's entry has lost_steps 1 when the step in flight was redone
    (0 when it had committed elsewhere and was adopted), a replacement's 0.
    Per generation the harness keeps the maximum over ranks; a grow (a
    replacement joining at a step boundary) loses nothing.  A rank that was
    killed writes no file, but every recovery has survivors that do."""
    files = []
    try:
        names = sorted(n for n in os.listdir(d) if re.match(r"rank\d+\.json$", n))
    except OSError:
        return None
    for n in names:
        try:
            with open(os.path.join(d, n)) as f:
                files.append(json.load(f))
        except (OSError, ValueError):
            pass
    if not files:
        return None
    gens = {}
    for r in files:
        for h in r.get("history") or []:
            g = gens.setdefault(h.get("gen"), {"gen": h.get("gen"), "world_size": h.get("world_size"),
                                               "lost_steps": 0, "seconds_max": 0.0,
                                               "transferred_bytes": 0, "ranks": 0,
                                               "replacements": 0})
            g["lost_steps"] = max(g["lost_steps"], int(h.get("lost_steps") or 0))
            g["seconds_max"] = max(g["seconds_max"], float(h.get("seconds") or 0.0))
            g["transferred_bytes"] = max(g["transferred_bytes"], int(h.get("transferred_bytes") or 0))
            g["ranks"] += 1
            g["replacements"] += 1 if h.get("replacement") else 0
    hist = [gens[k] for k in sorted(gens, key=lambda x: (x is None, x))]
    return {
        "ranks_reporting": len(files),
        "params_sha256": sorted({r.get("params_sha256") for r in files if r.get("params_sha256")}),
        "regroups": max([r.get("regroups") or 0 for r in files] or [0]),
        "generations": hist,
        "lost_steps_total": sum(g["lost_steps"] for g in hist),
    }


def run_one(cfg, launcher, scenario, rep, workdir):
    name = "%s-%s-r%d" % (launcher, scenario, rep)
    rundir = os.path.join(workdir, name)
    if os.path.exists(rundir):
        shutil.rmtree(rundir)
    os.makedirs(rundir)
    ckpt = os.path.join(rundir, "ckpt")  # fresh for every run
    cmd = launcher_cmd(cfg, launcher, rundir, ckpt)
    match = script_match(script_of(cfg, launcher))

    # The fault plan: the same for both launchers (seed + repeat).
    rng = random.Random(cfg.seed + rep)
    plan_ranks = [rng.randrange(cfg.nproc) for _ in range(10000)]
    if scenario == "sigkill":
        next_at, every, sig = float(cfg.kill_every), float(cfg.kill_every), signal.SIGKILL
    elif scenario == "sigstop":
        next_at, every, sig = float(cfg.stop_at), None, signal.SIGSTOP
    else:
        next_at, every, sig = None, None, None

    out_path = os.path.join(rundir, "output.log")
    outf = open(out_path, "w", buffering=1)  # line-buffered: tail -f works
    lines = []  # (t since start, wall time, text)
    done = threading.Event()
    ended = {}

    log("%s: %s" % (name, " ".join(cmd)))
    t0_wall = time.time()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=REPO, env=launcher_env(launcher), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    LIVE[p.pid] = p

    first_done = {}  # "t": when the first `done` line was read
    last_step = {}   # "step", "t": the last `step N loss X` line (rank 0 logs every 10)
    step_lines = []  # (t, step) of every `step N loss X` line

    def reader():
        for raw in iter(p.stdout.readline, b""):
            t = time.monotonic() - t0
            text = ANSI_RE.sub("", raw.decode("utf-8", "replace").rstrip("\r\n"))
            lines.append((t, t0_wall + t, text))
            outf.write("%9.3f %s\n" % (t, text))
            if "t" not in first_done and DONE_RE.search(text):
                first_done["t"] = t
            m = STEP_RE.search(text)
            if m:
                last_step["step"], last_step["t"] = int(m.group(1)), t
                last_step.setdefault("first_t", t)
                step_lines.append((t, int(m.group(1))))
        outf.flush()

    def waiter():
        rc = p.wait()
        ended["t"] = time.monotonic() - t0
        ended["rc"] = rc
        done.set()

    rt = threading.Thread(target=reader, daemon=True)
    wt = threading.Thread(target=waiter, daemon=True)
    rt.start()
    wt.start()

    injections = []
    timed_out = False     # capped at --timeout
    hung_after_done = False  # `done` printed, launcher still running --exit-grace later
    fault_index = 0
    try:
        while True:
            now = time.monotonic() - t0
            if now >= cfg.timeout:
                timed_out = True
                break
            deadline = cfg.timeout
            if "t" in first_done:
                if now >= first_done["t"] + cfg.exit_grace:
                    timed_out = hung_after_done = True
                    break
                deadline = min(deadline, first_done["t"] + cfg.exit_grace)
                next_at = None  # training is over: no more faults
            wait = deadline - now
            if next_at is not None:
                wait = min(wait, max(0.0, next_at - now), 0.5)
            if done.wait(max(0.0, wait)):
                break
            now = time.monotonic() - t0
            if next_at is None or now < next_at or "t" in first_done:
                continue
            # Inject a fault now (or retry in 50 ms if there is no worker).
            ws = None
            if is_bulsajo(launcher):
                ws = find_workers_pids(p.pid, match, os.path.join(rundir, "run"))
            if ws is None:
                ws = find_workers(p.pid, match)
            if not ws:
                next_at = now + 0.05
                continue
            newest = max(w["restart"] for w in ws)
            ws = sorted((w for w in ws if w["restart"] == newest), key=lambda w: (w["rank"], w["pid"]))
            want = plan_ranks[fault_index % len(plan_ranks)]
            pick = [w for w in ws if w["rank"] == want]
            w = pick[0] if pick else ws[want % len(ws)]
            t_inj = time.monotonic() - t0
            try:
                os.kill(w["pid"], sig)
            except OSError:
                next_at = time.monotonic() - t0 + 0.05
                continue
            fault_index += 1
            injections.append({"t": round(t_inj, 3), "wall": t0_wall + t_inj,
                               "signal": signal.Signals(sig).name, "pid": w["pid"],
                               "rank": w["rank"], "planned_rank": want,
                               "restart_count": newest, "found_by": w["how"],
                               # training state when it hit: the last logged step and its age
                               "last_logged_step": last_step.get("step"),
                               "last_step_age_s": round(t_inj - last_step["t"], 3)
                               if "t" in last_step else None})
            log("%s: t=%.1fs %s rank %d (pid %d, restart %d, via %s)" % (
                name, t_inj, signal.Signals(sig).name, w["rank"], w["pid"], newest, w["how"]))
            if every is None:
                next_at = None
            else:
                while next_at <= time.monotonic() - t0:
                    next_at += every
    finally:
        snapshot = session_snapshot(p.pid) if timed_out else None
        stragglers = kill_session(p.pid, p.pid)
        done.wait(10)
        rt.join(10)
        outf.close()
        LIVE.pop(p.pid, None)

    finished_ok = (not timed_out) and ended.get("rc") == 0
    wall = ended["t"] if not timed_out and "t" in ended else time.monotonic() - t0
    to_done = first_done.get("t")
    rec = {
        "name": name, "launcher": launcher, "scenario": scenario, "repeat": rep,
        "command": cmd, "output_log": out_path,
        "exit_code": None if timed_out else ended.get("rc"),
        "timed_out": timed_out, "hung_after_done": hung_after_done,
        "wall_s": round(wall, 3),
        # start -> the first `done` line: training complete, before teardown
        "to_done_s": round(to_done, 3) if to_done is not None else None,
        # start -> rank 0's first `step N loss X` line: launcher + job startup
        "to_first_step_s": round(last_step["first_t"], 3) if "first_t" in last_step else None,
        # `done` line -> launcher exit (torchrun polls its workers every 5 s)
        "exit_tail_s": round(wall - to_done, 3) if (to_done is not None and not timed_out) else None,
        "faults_injected": len(injections), "injections": injections,
        # processes still in the launcher's session after it exited by itself
        "stragglers_after_exit": 0 if timed_out else stragglers,
        # what was left when the run was capped: which process hung, and where
        "processes_at_timeout": snapshot,
    }
    donem = None
    for _t, _w, text in lines:
        m = DONE_RE.search(text)
        if m:
            donem = m
    rec["done_steps"] = int(donem.group(1)) if donem else None
    rec["loss"] = donem.group(2) if donem else None
    rec["params_sha256"] = donem.group(3) if donem else None
    rec["regroups"] = int(donem.group(4)) if donem and donem.group(4) is not None else None
    rec["finished"] = bool(finished_ok and donem)
    rec["script"] = os.path.relpath(script_of(cfg, launcher), REPO)
    rec["global_batch"] = global_batch(cfg, launcher)
    # samples/s = steps * global batch / wall (goodput is the ratio of these)
    rec["steps"] = steps_of(cfg, launcher)
    rec["samples_per_s"] = (round(rec["steps"] * rec["global_batch"] / wall, 2)
                            if rec["finished"] and wall > 0 else None)
    # Per-step time as the harness sees rank 0's `step N loss X` lines: from
    # the first such line to the last (no startup, no teardown), and over the
    # second half of the run only (after any start-up work in the background,
    # such as bulsajo's standbys importing torch).  Meaningful for fault-free
    # runs; with faults it includes the recoveries.
    rec["step_ms"] = rec["step_ms_2nd_half"] = None
    if len(step_lines) >= 2 and step_lines[-1][1] > step_lines[0][1]:
        (ta, sa), (tb, sb) = step_lines[0], step_lines[-1]
        rec["step_ms"] = round(1000.0 * (tb - ta) / (sb - sa), 3)
        half = [x for x in step_lines if x[1] >= rec["steps"] // 2]
        if len(half) >= 2 and half[-1][1] > half[0][1]:
            rec["step_ms_2nd_half"] = round(
                1000.0 * (half[-1][0] - half[0][0]) / (half[-1][1] - half[0][1]), 3)

    # Fault -> first "resumed from" line after it: training back after a
    # restart from the checkpoint (ddp_train.py prints it; live_ddp.py has
    # no such line).
    resumed = [(t, int(RESUMED_RE.search(text).group(1)))
               for t, _w, text in lines if RESUMED_RE.search(text)]
    for inj in injections:
        nxt = [(t, st) for t, st in resumed if t > inj["t"]]
        inj["to_resumed_s"] = round(nxt[0][0] - inj["t"], 3) if nxt else None
        # Steps lost, as rank 0's log shows them (restart from a checkpoint):
        # the last step logged since the previous resume and before the fault,
        # minus the step the next generation resumed at, + 1.  A lower bound:
        # rank 0 logs every 10 steps, so up to 9 more steps may have run.
        inj["steps_lost_logged_min"] = None
        if nxt and script_of(cfg, launcher) == cfg.script:
            since = max([t for t, _ in resumed if t <= inj["t"]] or [0.0])
            done_steps = [st for t, st in step_lines if since <= t <= inj["t"]]
            inj["steps_lost_logged_min"] = max(0, max(done_steps) - nxt[0][1] + 1) if done_steps else 0

    if is_bulsajo(launcher):
        evs = read_events(os.path.join(rundir, "run", "events.jsonl"))
        faults = [e for e in evs if e.get("type") == "fault"]
        recov = [e for e in evs if e.get("type") == "recovered"]
        fin = [e for e in evs if e.get("type") == "run_finished"]
        rec["bulsajo"] = {
            "faults": [{"time": e.get("time"), "cause": e.get("cause"), "rank": e.get("rank"),
                        "detect_ms": e.get("detect_ms", 0.0), "detail": e.get("detail")}
                       for e in faults],
            "recovered": [{"time": e.get("time"), "recover_ms": e.get("recover_ms", 0.0),
                           "rolled_back_steps": e.get("rolled_back_steps", 0)} for e in recov],
            "summary": fin[-1].get("summary") if fin else None,
        }
        # Harness-measured detection: injection -> the first fault event after
        # it (and before the next injection).
        used = set()
        for k, inj in enumerate(injections):
            inj["to_fault_event_ms"] = None
            until = injections[k + 1]["wall"] if k + 1 < len(injections) else float("inf")
            for i, e in enumerate(faults):
                te = parse_time(e.get("time", ""))
                if i in used or te is None or te < inj["wall"] - 0.001 or te >= until:
                    continue
                used.add(i)
                inj["to_fault_event_ms"] = round((te - inj["wall"]) * 1000, 1)
                inj["fault_event_rank"] = e.get("rank")
                inj["fault_event_cause"] = e.get("cause")
                break
        # Faults bulsajo saw that the harness did not cause (e.g. a worker
        # that hangs at exit after `done`).
        rec["bulsajo"]["faults_not_injected"] = [
            {"time": e.get("time"), "cause": e.get("cause"), "detail": e.get("detail")}
            for i, e in enumerate(faults) if i not in used]
        # Fault -> resumed, from the events: the harness's signal to the
        # first `recovered` event after the fault event it caused (bulsajo
        # writes `recovered` when the next generation reports its first step).
        # It equals signal -> fault event + recover_ms.
        rused = set()
        for inj in injections:
            inj["to_recovered_event_s"] = inj["recover_ms"] = inj["rolled_back_steps"] = None
            if inj.get("to_fault_event_ms") is None:
                continue
            tf = inj["wall"] + inj["to_fault_event_ms"] / 1000.0
            for i, e in enumerate(recov):
                te = parse_time(e.get("time", ""))
                if i in rused or te is None or te < tf - 0.001:
                    continue
                rused.add(i)
                inj["to_recovered_event_s"] = round(te - inj["wall"], 3)
                inj["recover_ms"] = e.get("recover_ms", 0.0)
                inj["rolled_back_steps"] = e.get("rolled_back_steps", 0)
                break
    if launcher in LIVE_SCRIPT_LAUNCHERS:
        rec["live_results"] = read_live_results(os.path.join(rundir, "results"))
    for inj in injections:
        inj["wall"] = round(inj["wall"], 3)

    if cfg.keep_ckpt is False:
        shutil.rmtree(ckpt, ignore_errors=True)
    why = ""
    if hung_after_done:
        why = ", printed `done` at %.1fs but did not exit within --exit-grace %gs" % (
            to_done, cfg.exit_grace)
    elif timed_out:
        why = ", capped at --timeout"
    log("%s: %s in %.1fs (done line at %s), %d faults, exit %s%s" % (
        name, "finished" if rec["finished"] else "DID NOT FINISH", wall,
        fmt(to_done, "%.1fs"), len(injections), rec["exit_code"], why))
    return rec


# ---------------------------------------------------------------- machine

def read_first(path, pattern=None):
    try:
        with open(path) as f:
            for line in f:
                if pattern is None:
                    return line.strip()
                m = re.match(pattern, line)
                if m:
                    return m.group(1).strip()
    except OSError:
        pass
    return None


def machine_info(cfg):
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": read_first("/proc/cpuinfo", r"model name\s*:\s*(.*)"),
        "mem_total": read_first("/proc/meminfo", r"MemTotal:\s*(.*)"),
        "kernel": "%s %s" % (platform.system(), platform.release()),
        "loadavg_start": read_first("/proc/loadavg"),
    }
    quota = read_first("/sys/fs/cgroup/cpu.max") or None
    if quota is None:
        q = read_first("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        per = read_first("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if q is not None:
            quota = "%s %s" % (q, per)
    info["cgroup_cpu_quota"] = quota
    try:
        info["torch"] = subprocess.run(
            [cfg.python, "-c", "import sys, torch; print(torch.__version__, 'python', sys.version.split()[0])"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120,
            env=clean_env()).stdout.decode().strip().splitlines()[-1]
    except (OSError, subprocess.TimeoutExpired, IndexError) as e:
        info["torch"] = "unknown (%s)" % e
    try:
        info["bulsajo"] = subprocess.run([cfg.bulsajo_bin, "version"], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, timeout=30
                                         ).stdout.decode().strip()
    except (OSError, subprocess.TimeoutExpired):
        info["bulsajo"] = None
    info["torchrun"] = cfg.torchrun
    info["python"] = cfg.python
    return info


# ---------------------------------------------------------------- results

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec="%.1f", none="—"):
    return none if x is None else spec % x


def short_ms(x):
    return "%.1f" % x if x < 10 else "%.0f" % x


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / float(len(xs)) if xs else None


def aggregate(runs, cfg):
    groups = {}
    for r in runs:
        groups.setdefault((r["launcher"], r["scenario"]), []).append(r)
    agg = {}
    for (launcher, scenario), rs in groups.items():
        fin = [r for r in rs if r["finished"]]
        injs = [i for r in rs for i in r["injections"]]
        resumed = [i["to_resumed_s"] for i in injs if i.get("to_resumed_s") is not None]
        a = {
            "launcher": launcher, "scenario": scenario, "runs": len(rs), "finished": len(fin),
            "script": rs[0].get("script"),
            "hung_after_done": sum(1 for r in rs if r.get("hung_after_done")),
            "capped": sum(1 for r in rs if r["timed_out"] and not r.get("hung_after_done")),
            # medians over the runs that finished
            "wall_s": med([r["wall_s"] for r in fin]),
            "exit_tail_s": med([r.get("exit_tail_s") for r in fin]),
            "wall_s_all": [r["wall_s"] for r in rs],
            "samples_per_s": med([r.get("samples_per_s") for r in fin]),
            "step_ms": med([r.get("step_ms") for r in fin]),
            "step_ms_2nd_half": med([r.get("step_ms_2nd_half") for r in fin]),
            # over every run that printed `done` (hung at exit or not)
            "to_done_s": med([r.get("to_done_s") for r in rs]),
            "to_first_step_s": med([r.get("to_first_step_s") for r in rs]),
            "faults": med([r["faults_injected"] for r in rs]),
            # signal -> rank 0's next `resumed from` line (restart from a checkpoint)
            "to_resumed_s_median": med(resumed),
            "to_resumed_s_max": max(resumed) if resumed else None,
            "loss": sorted({r["loss"] for r in rs if r["loss"]}),
            "params_sha256": sorted({r["params_sha256"] for r in rs if r["params_sha256"]}),
        }
        # Steps lost per fault from rank 0's log (restart launchers): a lower bound.
        sl = [i.get("steps_lost_logged_min") for i in injs]
        sl = [x for x in sl if x is not None]
        a["steps_lost_logged_min_mean"] = mean(sl)
        a["steps_lost_logged_min_max"] = max(sl) if sl else None
        # Fault -> training again: the figure the table shows.  torchrun: the
        # harness's own observation (signal -> `resumed from` line); bulsajo:
        # signal -> the `recovered` event (= signal -> fault event + recover_ms).
        if is_bulsajo(launcher):
            fr = [i.get("to_recovered_event_s") for i in injs]
            a["fault_to_resumed_source"] = "events.jsonl: signal -> recovered event"
        else:
            fr = resumed
            a["fault_to_resumed_source"] = "harness: signal -> `resumed from` line"
        fr = [x for x in fr if x is not None]
        a["fault_to_resumed_s_median"] = med(fr)
        a["fault_to_resumed_s_max"] = max(fr) if fr else None
        if is_bulsajo(launcher):
            b = [r.get("bulsajo", {}) for r in rs]
            det = [f["detect_ms"] for x in b for f in x.get("faults", [])]
            recm = [y["recover_ms"] for x in b for y in x.get("recovered", [])]
            rb = [y["rolled_back_steps"] for x in b for y in x.get("recovered", [])]
            hm = [i["to_fault_event_ms"] for i in injs if i.get("to_fault_event_ms") is not None]
            # rolled_back_steps of the recovered event paired with each injected fault
            rbi = [i.get("rolled_back_steps") for i in injs if i.get("rolled_back_steps") is not None]
            a.update({
                "detect_ms_median": med(det), "detect_ms_max": max(det) if det else None,
                "recover_ms_median": med(recm), "recover_ms_max": max(recm) if recm else None,
                "rolled_back_steps_median": med(rb),
                "rolled_back_steps_per_fault_mean": mean(rbi),
                "rolled_back_steps_per_fault_max": max(rbi) if rbi else None,
                "injection_to_fault_event_ms_median": med(hm),
                "injection_to_fault_event_ms_max": max(hm) if hm else None,
                "bulsajo_faults_detected": med([len(x.get("faults", [])) for x in b]),
                "bulsajo_faults_not_injected": [f for x in b for f in x.get("faults_not_injected", [])],
            })
        if launcher in LIVE_SCRIPT_LAUNCHERS:
            lr = [r.get("live_results") for r in rs if r.get("live_results")]
            per_fault = [x["lost_steps_total"] / float(r["faults_injected"])
                         for r in rs for x in [r.get("live_results")]
                         if x and r["faults_injected"]]
            lost_gen = [g["lost_steps"] for x in lr for g in x["generations"]]
            a.update({
                # live_ddp.py's own account (rank{R}.json history), per fault
                "worker_lost_steps_per_fault_mean": mean(per_fault),
                "worker_lost_steps_max_per_regroup": max(lost_gen) if lost_gen else None,
                "worker_regroups": med([x["regroups"] for x in lr]),
                # all ranks that finished agree on the parameters
                "workers_agree": all(len(x["params_sha256"]) == 1 for x in lr) if lr else None,
            })
        agg[(launcher, scenario)] = a
    # Goodput and per-fault cost against the same launcher's fault-free wall.
    # Same steps and global batch, so this is also the ratio of samples/s.
    for (launcher, scenario), a in agg.items():
        ffa = agg.get((launcher, "fault-free"), {})
        base = ffa.get("wall_s")
        a["goodput"] = a["per_fault_cost_s"] = a["goodput_to_done"] = None
        if base and a["wall_s"]:
            a["goodput"] = base / a["wall_s"]
            if a["faults"]:
                a["per_fault_cost_s"] = (a["wall_s"] - base) / a["faults"]
        if ffa.get("to_done_s") and a["to_done_s"]:
            a["goodput_to_done"] = ffa["to_done_s"] / a["to_done_s"]
        ff = ffa.get("params_sha256") or []
        a["params_match_fault_free"] = (a["params_sha256"] == ff) if (ff and a["params_sha256"]) else None
    # The same, per run (against the median fault-free wall of its launcher).
    for r in runs:
        base = agg.get((r["launcher"], "fault-free"), {}).get("wall_s")
        r["goodput"] = r["per_fault_cost_s"] = None
        if base and r["finished"]:
            r["goodput"] = round(base / r["wall_s"], 4)
            if r["faults_injected"]:
                r["per_fault_cost_s"] = round((r["wall_s"] - base) / r["faults_injected"], 3)

    # bulsajo's own account (the run_finished summary) next to the wall
    # clock: goodput, lost time by cause, and the pause of every regroup.
    for (launcher, scenario), a in agg.items():
        if not is_bulsajo(launcher):
            continue
        rs = [r for r in groups[(launcher, scenario)] if r["finished"]]
        sums = [(r, (r.get("bulsajo") or {}).get("summary") or {}) for r in rs]
        sums = [(r, s) for r, s in sums if s.get("goodput") is not None]
        diffs = [s["goodput"] - r["goodput"] for r, s in sums if r.get("goodput") is not None]
        a["summary_goodput"] = med([s["goodput"] for _r, s in sums])
        a["summary_minus_wall_goodput"] = diffs
        a["summary_lost_s"] = {k: med([s.get(k) or 0.0 for _r, s in sums]) for k in
                               ("detect_s", "restart_s", "rollback_s", "grow_s",
                                "smaller_world_s", "other_s", "lost_s")}
        pauses = [p for _r, s in sums for p in s.get("pauses") or []]
        a["healthy_step_ms"] = med([s.get("healthy_step_s", 0) * 1000 for _r, s in sums
                                    if s.get("healthy_step_s")])
        for kind, causes in (("shrink", ("fault", "regroup")), ("grow", ("grow",))):
            ps = [p["pause_s"] for p in pauses if p.get("cause") in causes]
            ws = [p.get("warm_s", 0.0) for p in pauses if p.get("cause") in causes]
            a["pause_%s_s" % kind] = {"n": len(ps), "median": med(ps),
                                      "max": max(ps) if ps else None, "warm_median": med(ws)}

    def ratio(x, y, key):
        vx, vy = x.get(key), y.get(key)
        return vx / vy - 1 if (vx and vy) else None

    # bulsajo (restart mode) vs torchrun, both running ddp_train.py.
    t = agg.get(("torchrun", "fault-free"), {})
    b = agg.get(("bulsajo", "fault-free"), {})
    overhead = {"wall": ratio(b, t, "wall_s"), "to_done": ratio(b, t, "to_done_s"),
                "step_ms": ratio(b, t, "step_ms")}
    # The SDK's overhead: live_ddp.py under bulsajo live vs under torchrun
    # (static group, plain DDP semantics), fault-free.
    lt = agg.get(("torchrun-live-script", "fault-free"), {})
    lb = agg.get(("bulsajo-live", "fault-free"), {})
    overhead["sdk"] = {
        "step_ms": ratio(lb, lt, "step_ms"),
        "step_ms_2nd_half": ratio(lb, lt, "step_ms_2nd_half"),
        "wall": ratio(lb, lt, "wall_s"),
        "to_done": ratio(lb, lt, "to_done_s"),
        "bulsajo_live_step_ms": lb.get("step_ms"), "torchrun_step_ms": lt.get("step_ms"),
        "bulsajo_live_step_ms_2nd_half": lb.get("step_ms_2nd_half"),
        "torchrun_step_ms_2nd_half": lt.get("step_ms_2nd_half"),
        "same_params": (lb["params_sha256"] == lt["params_sha256"])
        if (lb.get("params_sha256") and lt.get("params_sha256")) else None,
    }
    return agg, overhead


def same_round(runs):
    """bulsajo's summary against the wall clock, per faulty run, with the
    fault-free run of the same launcher in the same round as the baseline
    (the aggregate compares with the median of all rounds, which a machine
    whose pace drifts between rounds makes off by more than the faults cost).

    pace-matched: the fault-free wall scaled by the two runs' healthy step
    (the summary's healthy_step_s), i.e. what the fault-free run would have
    taken at this run's pace. The pace comes from the summary itself, so
    summary − pace-matched checks the rest of the account (detection, stops,
    restarts, rollbacks, regroups, slower steps add up to the wall time the
    faults cost), not the pace."""
    ff = {}
    for r in runs:
        if r["scenario"] == "fault-free" and r["finished"]:
            ff[(r["launcher"], r.get("repeat"))] = r
    rows = []
    for r in runs:
        if not is_bulsajo(r["launcher"]) or r["scenario"] == "fault-free" or not r["finished"]:
            continue
        base = ff.get((r["launcher"], r.get("repeat")))
        s = (r.get("bulsajo") or {}).get("summary") or {}
        if base is None or s.get("goodput") is None:
            continue
        bs = (base.get("bulsajo") or {}).get("summary") or {}
        row = {"name": r["name"], "launcher": r["launcher"], "scenario": r["scenario"],
               "repeat": r.get("repeat"), "faults": r["faults_injected"],
               "wall_s": r["wall_s"], "fault_free_wall_s": base["wall_s"],
               "wall_goodput": base["wall_s"] / r["wall_s"],
               "summary_goodput": s["goodput"],
               "healthy_step_s": s.get("healthy_step_s"),
               "fault_free_healthy_step_s": bs.get("healthy_step_s"),
               "pace_matched_goodput": None}
        row["summary_minus_wall"] = row["summary_goodput"] - row["wall_goodput"]
        if row["healthy_step_s"] and row["fault_free_healthy_step_s"]:
            pace = row["healthy_step_s"] / row["fault_free_healthy_step_s"]
            row["pace_matched_goodput"] = base["wall_s"] * pace / r["wall_s"]
            row["summary_minus_pace_matched"] = row["summary_goodput"] - row["pace_matched_goodput"]
        rows.append(row)
    rows.sort(key=lambda x: (x["repeat"] or 0, SCENARIOS.index(x["scenario"])
                             if x["scenario"] in SCENARIOS else len(SCENARIOS),
                             LAUNCHERS.index(x["launcher"]) if x["launcher"] in LAUNCHERS
                             else len(LAUNCHERS)))
    return rows


def render_same_round(rows):
    """The markdown table of same_round(runs), with a one-line tally."""
    if not rows:
        return []
    L = ["", "bulsajo's summary against the wall clock, every faulty run, against the fault-free "
         "run of the same launcher in the same round (pace-matched: that run's wall × this "
         "run's healthy step / its healthy step; see same_round() in bench/faults.py):", "",
         "| run | faults | wall s | fault-free wall s (same round) | wall-clock goodput (same round) "
         "| summary goodput | summary − wall | healthy step ms: this run / fault-free "
         "| pace-matched wall goodput | summary − pace-matched |",
         "|---|---|---|---|---|---|---|---|---|---|"]
    for x in rows:
        hs = "—"
        if x["healthy_step_s"] and x["fault_free_healthy_step_s"]:
            hs = "%.1f / %.1f" % (x["healthy_step_s"] * 1000, x["fault_free_healthy_step_s"] * 1000)
        pm = x.get("summary_minus_pace_matched")
        L.append("| %s | %d | %.1f | %.1f | %.3f | %.3f | %+.3f | %s | %s | %s |" % (
            x["name"], x["faults"], x["wall_s"], x["fault_free_wall_s"], x["wall_goodput"],
            x["summary_goodput"], x["summary_minus_wall"], hs,
            fmt(x["pace_matched_goodput"], "%.3f"), "—" if pm is None else "%+.3f" % pm))
    raw = [x["summary_minus_wall"] for x in rows]
    pms = [x["summary_minus_pace_matched"] for x in rows if x.get("summary_minus_pace_matched") is not None]
    line = ("Summary − wall, same round: %+.3f..%+.3f, %d of %d within 0.03" % (
        min(raw), max(raw), sum(1 for d in raw if abs(d) <= 0.03), len(raw)))
    if pms:
        line += ("; pace-matched: %+.3f..%+.3f, %d of %d within 0.03, median %+.3f" % (
            min(pms), max(pms), sum(1 for d in pms if abs(d) <= 0.03), len(pms), med(pms)))
    L += ["", line + "."]
    return L


def finished_cell(a, cfg):
    if a["finished"] == a["runs"]:
        return "yes" if a["runs"] == 1 else "%d/%d" % (a["finished"], a["runs"])
    why = []
    if a["hung_after_done"]:
        why.append("%shung at exit after `done` †" % ("" if a["runs"] == 1 else "%d " % a["hung_after_done"]))
    if a["capped"]:
        why.append("%scapped at %gs" % ("" if a["runs"] == 1 else "%d " % a["capped"], cfg.timeout))
    other = a["runs"] - a["finished"] - a["hung_after_done"] - a["capped"]
    if other:
        why.append("%d exited with an error" % other)
    head = "**no**" if a["finished"] == 0 else "%d/%d" % (a["finished"], a["runs"])
    return "%s (%s)" % (head, ", ".join(why))


def pct(x):
    return "—" if x is None else "%+.1f%%" % (100 * x)


def steps_lost_cell(a):
    """Steps lost per fault (mean / max): bulsajo from its events
    (rolled_back_steps), bulsajo-live also from the workers' result files,
    torchrun a lower bound from rank 0's log."""
    if not a.get("faults"):
        return "—"
    if is_bulsajo(a["launcher"]):
        cell = "—"
        if a.get("rolled_back_steps_per_fault_mean") is not None:
            cell = "%.1f / %d" % (a["rolled_back_steps_per_fault_mean"],
                                  a["rolled_back_steps_per_fault_max"])
        if a.get("worker_lost_steps_per_fault_mean") is not None:
            cell += "; workers %.1f" % a["worker_lost_steps_per_fault_mean"]
        return cell
    if a.get("steps_lost_logged_min_mean") is not None:
        return "≥ %.1f / ≥ %d" % (a["steps_lost_logged_min_mean"], a["steps_lost_logged_min_max"])
    return "—"


def render(machine, cfg, agg, overhead, runs=None):
    script = getattr(cfg, "script", DEFAULT_SCRIPT)
    live_script = getattr(cfg, "live_script", None) or DEFAULT_LIVE_SCRIPT
    launchers_run = sorted({k[0] for k in agg}, key=lambda x: LAUNCHERS.index(x)
                           if x in LAUNCHERS else len(LAUNCHERS))
    L = []
    L.append("## Fault benchmark: %s" % " vs ".join(launchers_run))
    L.append("")
    L.append("- date: %s" % machine["date_utc"])
    L.append("- machine: %s CPUs (%s usable), %s, %s, memory %s, cgroup CPU quota %s" % (
        machine["nproc"], machine["cpus_usable"], machine["cpu_model"], machine["kernel"],
        machine["mem_total"], machine["cgroup_cpu_quota"]))
    L.append("- torch %s (%s); torchrun %s; %s" % (machine["torch"], machine["python"],
                                                machine["torchrun"], machine["bulsajo"]))
    L.append("- load average at start: %s; at end: %s" % (machine["loadavg_start"],
                                                         machine.get("loadavg_end")))
    jobs = []
    if any(x in launchers_run for x in ("torchrun", "bulsajo")):
        jobs.append("torchrun, bulsajo: %s" % os.path.relpath(script, REPO))
    if any(x in launchers_run for x in LIVE_SCRIPT_LAUNCHERS):
        jobs.append("bulsajo-live, torchrun-live-script: %s" % os.path.relpath(live_script, REPO))
    steps = "--steps %d" % cfg.steps
    if getattr(cfg, "live_steps", None) and any(x in launchers_run for x in LIVE_SCRIPT_LAUNCHERS):
        steps += " (%s: --steps %d)" % (os.path.basename(live_script), cfg.live_steps)
    L.append("- job: %s; %s, %d workers; SIGKILL every %gs from %gs; SIGSTOP at %gs; "
             "timeout %gs; exit grace %gs; seed %d; %d repeat(s), medians; bench took %ss"
             % ("; ".join(jobs), steps, cfg.nproc, cfg.kill_every,
                cfg.kill_every, cfg.stop_at, cfg.timeout, cfg.exit_grace, cfg.seed, cfg.repeat,
                machine.get("bench_duration_s")))
    L.append("")
    L.append("| launcher | scenario | finished | wall s | to `done` s | samples/s | step ms "
             "| faults | goodput | s lost / fault | steps lost / fault (mean / max) "
             "| fault→resumed s (med / max) | signal→fault event ms (med / max) "
             "| detect_ms (med / max) | recover_ms (med / max) "
             "| final loss | params sha256 | = fault-free |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    notes = []
    order = list(LAUNCHERS) + [l for l in launchers_run if l not in LAUNCHERS]
    for key in [(l, s) for s in SCENARIOS for l in order]:
        a = agg.get(key)
        if not a:
            continue
        if a["wall_s"] is not None:
            wall = fmt(a["wall_s"])
        elif a["capped"]:
            wall = "> %g" % cfg.timeout
        else:
            wall = "—"
        res = "—"
        if a.get("fault_to_resumed_s_median") is not None:
            res = "%.2f / %.2f" % (a["fault_to_resumed_s_median"], a["fault_to_resumed_s_max"])
        elif a.get("to_resumed_s_median") is not None:  # an older JSON
            res = "%.2f / %.2f" % (a["to_resumed_s_median"], a["to_resumed_s_max"])
        sig = det = rcv = "—"
        if is_bulsajo(a["launcher"]):
            if a.get("injection_to_fault_event_ms_median") is not None:
                sig = "%.0f / %.0f" % (a["injection_to_fault_event_ms_median"],
                                       a["injection_to_fault_event_ms_max"])
            if a.get("detect_ms_median") is not None:
                det = "%s / %s" % (short_ms(a["detect_ms_median"]), short_ms(a["detect_ms_max"]))
            if a.get("recover_ms_median") is not None:
                rcv = "%.0f / %.0f" % (a["recover_ms_median"], a["recover_ms_max"])
            extra = a.get("bulsajo_faults_not_injected") or []
            if extra:
                notes.append("%s %s: %d fault(s) detected that the harness did not inject: %s."
                             % (a["launcher"], a["scenario"], len(extra), "; ".join(
                                 "%s (%s)" % (f.get("cause"), f.get("detail")) for f in extra)))
        if a.get("workers_agree") is False:
            notes.append("**%s %s: the ranks' final params_sha256 differ** (rank{R}.json)."
                         % (a["launcher"], a["scenario"]))
        h = ", ".join(x[:12] for x in a["params_sha256"]) or "—"
        match = {True: "yes", False: "**no**", None: "—"}[a["params_match_fault_free"]]
        if a["launcher"] == "bulsajo-live" and a["params_match_fault_free"] is False:
            match = "no ‡"
        L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            a["launcher"], a["scenario"], finished_cell(a, cfg), wall, fmt(a["to_done_s"]),
            fmt(a.get("samples_per_s"), "%.0f"), fmt(a.get("step_ms"), "%.1f"),
            fmt(a["faults"], "%g"), fmt(a["goodput"], "%.2f"), fmt(a["per_fault_cost_s"], "%.1f"),
            steps_lost_cell(a), res, sig, det, rcv, ", ".join(a["loss"]) or "—", h, match))
    L.append("")
    if overhead.get("wall") is not None or overhead.get("to_done") is not None:
        L.append("Fault-free overhead of bulsajo (restart mode) vs torchrun, %s "
                 "(bulsajo / torchrun − 1): wall %s; start → `done` %s; step time %s." % (
                     os.path.relpath(script, REPO), pct(overhead.get("wall")),
                     pct(overhead.get("to_done")), pct(overhead.get("step_ms"))))
    sdk = overhead.get("sdk") or {}
    if sdk.get("step_ms") is not None or sdk.get("wall") is not None:
        same = {True: "the same final parameters", False: "**different final parameters**",
                None: "final parameters not compared"}[sdk.get("same_params")]
        L.append("SDK overhead, fault-free (%s under bulsajo live vs the same script under "
                 "torchrun, static group): step time %s (%s vs %s ms), second half of the run "
                 "%s (%s vs %s ms); wall %s; start → `done` %s; %s." % (
                     os.path.relpath(live_script, REPO), pct(sdk.get("step_ms")),
                     fmt(sdk.get("bulsajo_live_step_ms"), "%.1f"),
                     fmt(sdk.get("torchrun_step_ms"), "%.1f"),
                     pct(sdk.get("step_ms_2nd_half")),
                     fmt(sdk.get("bulsajo_live_step_ms_2nd_half"), "%.1f"),
                     fmt(sdk.get("torchrun_step_ms_2nd_half"), "%.1f"),
                     pct(sdk.get("wall")), pct(sdk.get("to_done")), same))
    for key in [(l, s) for s in SCENARIOS for l in order]:
        a = agg.get(key)
        if not a or a.get("summary_goodput") is None:
            continue
        d = a.get("summary_minus_wall_goodput") or []
        lost = a.get("summary_lost_s") or {}
        line = ("%s %s, bulsajo's summary: goodput %s (wall clock %s; per run summary − wall: %s) · "
                "lost %s s (detect %s, restart %s, rollback %s, grow %s, smaller world %s, other %s; "
                "medians) · healthy step %s ms" % (
                    a["launcher"], a["scenario"], fmt(a["summary_goodput"], "%.3f"),
                    fmt(a.get("goodput"), "%.3f"), ", ".join("%+.3f" % x for x in d) or "—",
                    fmt(lost.get("lost_s")), fmt(lost.get("detect_s")), fmt(lost.get("restart_s")),
                    fmt(lost.get("rollback_s")), fmt(lost.get("grow_s")),
                    fmt(lost.get("smaller_world_s")), fmt(lost.get("other_s")),
                    fmt(a.get("healthy_step_ms"), "%.1f")))
        for kind in ("shrink", "grow"):
            p = a.get("pause_%s_s" % kind) or {}
            if p.get("n"):
                line += " · %s pauses (n=%d): median %.3f s, max %.3f s, then %.3f s slower first steps" % (
                    kind, p["n"], p["median"], p["max"], p["warm_median"] or 0.0)
        L.append(line + ".")
    L += render_same_round(same_round(runs or []))
    ffs = [(l, agg[(l, "fault-free")]) for l in order if (l, "fault-free") in agg]
    if any(a.get("to_first_step_s") is not None for _l, a in ffs):
        L.append("Fault-free start → first step / `done` → launcher exit: %s." % "; ".join(
            "%s %s s / %s s" % (l, fmt(a.get("to_first_step_s")), fmt(a.get("exit_tail_s")))
            for l, a in ffs))
    for l in ("bulsajo", "bulsajo-live"):
        ss = agg.get((l, "sigstop"))
        if ss and ss.get("injection_to_fault_event_ms_median") is not None:
            L.append("%s SIGSTOP detection (the harness's SIGSTOP → bulsajo's fault event): "
                     "median %.2f s, max %.2f s." % (l, ss["injection_to_fault_event_ms_median"] / 1000,
                                                    ss["injection_to_fault_event_ms_max"] / 1000))
    L.append("")
    L.append("Columns: samples/s = steps × global batch / wall; goodput = samples/s with faults / "
             "samples/s fault-free of the same launcher and script; step ms = rank 0's first to last "
             "`step N` line / steps between (fault-free: the per-step time). fault→resumed: torchrun "
             "from the signal to rank 0's `resumed from` line (harness), bulsajo from the signal to "
             "the `recovered` event in events.jsonl. steps lost: bulsajo `rolled_back_steps` of the "
             "`recovered` event; bulsajo-live \"workers\" = `lost_steps` in live_ddp.py's rank{R}.json "
             "history; torchrun ≥ = lower bound from rank 0's log (it logs every 10 steps).")
    if any(a["launcher"] == "bulsajo-live" and a["params_match_fault_free"] is False
           for a in agg.values()):
        notes.append("‡ bulsajo-live: after a fault the job trains with 3 ranks until the "
                     "replacement joins, so gradients are summed in a different order and the "
                     "last bits differ from the 4-rank fault-free run; a different hash is "
                     "expected here. The SDK checks after every regroup that all ranks hold "
                     "bit-identical parameters and optimizer state.")
    if any(a["hung_after_done"] for a in agg.values()):
        notes.append("† rank 0 printed `done` (training complete) but the launcher had not exited "
                     "%gs later; the run was stopped. See processes_at_timeout in the JSON." % cfg.exit_grace)
    for n in notes:
        L.append("")
        L.append(n)
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="torchrun vs bulsajo (restart and live mode) under injected worker faults",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500, help="training steps (--steps of the script)")
    ap.add_argument("--live-steps", type=int, default=None,
                    help="training steps of --live-script (bulsajo-live, torchrun-live-script); "
                         "None: --steps.  live_ddp.py runs a step in about half the time of "
                         "ddp_train.py, so 2 x --steps gives it a similar length and number of faults")
    ap.add_argument("--nproc", type=int, default=4, help="workers per launcher")
    ap.add_argument("--kill-every", type=float, default=15.0,
                    help="sigkill scenario: seconds between kills (the first at this time too)")
    ap.add_argument("--stop-at", type=float, default=None,
                    help="sigstop scenario: when to SIGSTOP (None: --kill-every)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per launcher and scenario (medians)")
    ap.add_argument("--launchers", default=",".join(LAUNCHERS),
                    help="comma-separated subset of %s (%s: fault-free only)"
                    % (",".join(LAUNCHERS), ",".join(FAULT_FREE_ONLY)))
    ap.add_argument("--only", choices=LAUNCHERS, default=None,
                    help="run this one launcher (overrides --launchers)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated subset of " + ",".join(SCENARIOS))
    ap.add_argument("--bulsajo-bin", default=os.path.join(REPO, "bin", "bulsajo"), help="bulsajo binary")
    ap.add_argument("--torchrun", default=shutil.which("torchrun") or "/usr/bin/torchrun",
                    help="torchrun script (run with --python)")
    ap.add_argument("--python", default="/usr/bin/python3", help="interpreter with torch")
    ap.add_argument("--script", default=DEFAULT_SCRIPT,
                    help="training script of torchrun and bulsajo (restart mode)")
    ap.add_argument("--torchrun-env", action="append", default=[], metavar="K=V",
                    help="set K=V for the torchrun launchers only (repeatable); torch 2.6 "
                         "without libuv: PYTHONPATH=scripts/torch2/nolibuv")
    ap.add_argument("--live-script", default=DEFAULT_LIVE_SCRIPT,
                    help="training script of bulsajo-live and torchrun-live-script "
                         "(bulsajo.torch SDK; takes --steps and --result-dir)")
    ap.add_argument("--timeout", type=float, default=300.0, help="cap on every run, seconds")
    ap.add_argument("--exit-grace", type=float, default=60.0,
                    help="a run that printed `done` but whose launcher has not exited this many "
                         "seconds later is stopped and reported as hung at exit")
    ap.add_argument("--seed", type=int, default=1, help="victim-rank seed (run r of --repeat uses seed + r)")
    ap.add_argument("--out", default=None, help="write JSON results here")
    ap.add_argument("--markdown", default=None, help="also write the markdown table here")
    ap.add_argument("--work-dir", default=None,
                    help="run dirs, logs, checkpoints (None: a new dir under the temp dir)")
    ap.add_argument("--keep-ckpt", action="store_true", help="keep checkpoints after each run")
    ap.add_argument("--render", metavar="JSON[,JSON...]", default=None,
                    help="run nothing: print the table of earlier --out file(s), their runs "
                         "merged (and write the result with --out / --markdown)")
    cfg = ap.parse_args(argv)
    if cfg.stop_at is None:
        cfg.stop_at = cfg.kill_every
    cfg.scenarios = [s.strip() for s in cfg.scenarios.split(",") if s.strip()]
    for s in cfg.scenarios:
        if s not in SCENARIOS:
            ap.error("unknown scenario %r (want %s)" % (s, ", ".join(SCENARIOS)))
    if cfg.only:
        cfg.launchers = [cfg.only]
    else:
        cfg.launchers = [x.strip() for x in cfg.launchers.split(",") if x.strip()]
        for x in cfg.launchers:
            if x not in LAUNCHERS:
                ap.error("unknown launcher %r (want %s)" % (x, ", ".join(LAUNCHERS)))
        # always in the canonical order (interleaved the same way every time)
        cfg.launchers = [x for x in LAUNCHERS if x in cfg.launchers]
    cfg.script = os.path.abspath(cfg.script)
    cfg.live_script = os.path.abspath(cfg.live_script)
    for kv in cfg.torchrun_env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            ap.error("--torchrun-env %r: want K=V" % kv)
        TORCHRUN_ENV[k] = v
    cfg.script_match = script_match(cfg.script)
    if cfg.render:
        return cfg
    if any(is_bulsajo(x) for x in cfg.launchers) and not os.access(cfg.bulsajo_bin, os.X_OK):
        ap.error("%s is not executable: build it with `go build -o bin/bulsajo ./cmd/bulsajo`"
                 % cfg.bulsajo_bin)
    if any(x.startswith("torchrun") for x in cfg.launchers) and not os.path.exists(cfg.torchrun):
        ap.error("torchrun not found at %s (use --torchrun)" % cfg.torchrun)
    for x in cfg.launchers:
        if not os.path.exists(script_of(cfg, x)):
            ap.error("%s: script %s not found" % (x, script_of(cfg, x)))
    if not any(x not in FAULT_FREE_ONLY or "fault-free" in cfg.scenarios for x in cfg.launchers):
        ap.error("%s only run the fault-free scenario" % ", ".join(FAULT_FREE_ONLY))
    return cfg


def plan(cfg):
    """(rep, scenario, launcher) of every run, in the order they run:
    launchers interleaved within each scenario, so slow drift in machine load
    hits all alike.  FAULT_FREE_ONLY launchers run only fault-free."""
    out = []
    for rep in range(cfg.repeat):
        for scenario in cfg.scenarios:
            for launcher in cfg.launchers:
                if launcher in FAULT_FREE_ONLY and scenario != "fault-free":
                    continue
                out.append((rep, scenario, launcher))
    return out


def rerender(paths, cfg):
    """Print (and with --out/--markdown, write) the results of earlier --out
    JSON files; several files are merged (runs appended; machine and config
    from the first)."""
    old = None
    # Runs are grouped by launcher and scenario, so files merged must have
    # measured the same job the same way.
    same = ("steps", "live_steps", "nproc", "kill_every", "stop_at", "script", "live_script")
    for path in paths.split(","):
        with open(path) as f:
            d = json.load(f)
        if old is None:
            old = d
            old["merged_from"] = [path]
            continue
        diff = [k for k in same if old["config"].get(k) != d["config"].get(k)]
        if diff:
            sys.exit("--render: %s differs from %s in %s; not merging" % (
                path, old["merged_from"][0], ", ".join(
                    "%s (%r vs %r)" % (k, d["config"].get(k), old["config"].get(k)) for k in diff)))
        old["runs"].extend(d["runs"])
        old["merged_from"].append(path)
    ocfg = argparse.Namespace(**old["config"])
    agg, overhead = aggregate(old["runs"], ocfg)
    table = render(old["machine"], ocfg, agg, overhead, old["runs"])
    print(table)
    old.update({"aggregate": [agg[k] for k in sorted(agg)],
                "bulsajo_fault_free_overhead": overhead, "markdown": table})
    if cfg.out:
        with open(cfg.out, "w") as f:
            json.dump(old, f, indent=2)
            f.write("\n")
    if cfg.markdown:
        with open(cfg.markdown, "w") as f:
            f.write(table + "\n")


def cleanup_all():
    for pid in list(LIVE):
        kill_session(pid, pid)
        LIVE.pop(pid, None)


def main(argv=None):
    cfg = parse_args(argv)
    if cfg.render:
        rerender(cfg.render, cfg)
        return
    if not sys.platform.startswith("linux"):
        sys.exit("bench/faults.py needs Linux (/proc)")
    workdir = cfg.work_dir or tempfile.mkdtemp(prefix="bulsajo-bench-")
    os.makedirs(workdir, exist_ok=True)

    def on_term(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)

    machine = machine_info(cfg)
    todo = plan(cfg)
    log("work dir %s; torch %s; %d run(s)" % (workdir, machine["torch"], len(todo)))
    runs = []
    started = time.monotonic()
    try:
        for rep, scenario, launcher in todo:
            runs.append(run_one(cfg, launcher, scenario, rep, workdir))
    except KeyboardInterrupt:
        log("interrupted: killing launchers and writing what was measured")
    finally:
        cleanup_all()
    machine["loadavg_end"] = read_first("/proc/loadavg")
    machine["bench_duration_s"] = round(time.monotonic() - started, 1)

    agg, overhead = aggregate(runs, cfg)
    table = render(machine, cfg, agg, overhead, runs)
    print(table)
    result = {
        "machine": machine,
        "config": {k: v for k, v in vars(cfg).items()},
        "work_dir": workdir,
        "runs": runs,
        "aggregate": [agg[k] for k in sorted(agg)],
        # bulsajo / torchrun - 1 (ddp_train.py); "sdk": bulsajo-live /
        # torchrun-live-script - 1 (live_ddp.py)
        "bulsajo_fault_free_overhead": overhead,
        "markdown": table,
    }
    if cfg.out:
        with open(cfg.out, "w") as f:
            json.dump(result, f, indent=2, sort_keys=False)
            f.write("\n")
        log("wrote %s" % cfg.out)
    if cfg.markdown:
        with open(cfg.markdown, "w") as f:
            f.write(table + "\n")
    log("done in %.0f s; logs in %s" % (machine["bench_duration_s"], workdir))


if __name__ == "__main__":
    main()
