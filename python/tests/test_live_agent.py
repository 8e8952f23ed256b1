"""A fake bulsajo agent for live-recovery tests, and tests of the wire protocol.

FakeAgent speaks the worker side's protocol (python/bulsajo/_live.py,
bulsajo/torch.py) over a Linux abstract unix STREAM socket:

  worker -> agent   {"type":"hello","pid":P,"gen":G,"rank":R}
                    {"type":"step","gen":G,"rank":R,"step":S}
                    {"type":"collective_failed","gen":G,"rank":R,"detail":"..."}
  agent -> worker   {"type":"generation","gen":G,"rank":R,"world_size":W,
                     "master_addr":A,"master_port":P,"join":bool}

It starts real worker processes (/usr/bin/python3 with torch) and lets a test
script faults: SIGKILL, SIGSTOP, new generations.  Every process it started is
SIGKILLed and reaped in close().

Run from the repository root:
    PYTHONPATH=python /usr/bin/python3 -m unittest discover -s python/tests -t python
"""

import json
import os
import shutil
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

PYDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(PYDIR)
EXAMPLE = os.path.join(REPO, "examples", "live_ddp.py")
# Workers run the interpreter running the tests (the one have_torch() checked):
# Debian 12's torch 1.13, or torch 2.x inside scripts/in-torch2.sh.
PYTHON = sys.executable

# Environment that must not leak from the test runner into workers.
SCRUB = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "BULSAJO_",
         "TORCHELASTIC_", "GROUP_RANK", "LOCAL_WORLD_SIZE")


def have_torch():
    try:
        import torch  # noqa: F401
        import torch.distributed as dist
        return dist.is_available()
    except Exception:
        return False


STARTUP_S = 300.0  # import torch + SDK init, on the slowest machine we run on


def free_port():
    """A port free now, below the ephemeral range (as bulsajo's own choice,
    internal/ports): a port from bind(0) can be taken by one of gloo's
    outgoing connections before rank 0 binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    lo = max(1024, low - 12000)
    for _ in range(64):
        port = random.randrange(lo, low)
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port below %d" % low)


def proc_state(pid):
    """Single-letter state from /proc/PID/stat ('T' = stopped), or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
        return data[data.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        return None


def worker_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUB)}
    env["PYTHONPATH"] = PYDIR + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class FakeAgent(object):
    """Listens on an abstract socket, starts workers, assigns generations."""

    def __init__(self, tmpdir):
        self.tmpdir = tmpdir
        self.address = "@bulsajo-test-%d-%s" % (os.getpid(), uuid.uuid4().hex[:10])
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind("\0" + self.address[1:])
        self.srv.listen(64)
        self.cv = threading.Condition()
        self.conns = {}      # pid -> socket
        self.hellos = {}     # pid -> hello message
        self.assign = {}     # pid -> latest generation message for it
        self.msgs = []       # (monotonic, pid, msg) every message received
        self.closed_pids = set()  # pids whose connection closed
        self.readies = set()      # joiners that said ready
        self.procs = {}      # pid -> Popen
        self.logs = {}       # pid -> log path
        self._closing = False
        self.accepted = 0         # connections accepted
        self.before_hello = []    # (monotonic, msg) received on a connection before its hello
        self._acceptor = t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()

    # ------------------------------------------------------------ server side
    def _accept_loop(self):
        while not self._closing:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            with self.cv:
                self.accepted += 1
            threading.Thread(target=self._conn_loop, args=(c,), daemon=True).start()

    def _conn_loop(self, c):
        pid = None
        buf = b""
        while True:
            try:
                chunk = c.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line.decode())
                with self.cv:
                    if msg.get("type") == "hello" and pid is None:
                        pid = msg["pid"]
                        self.hellos[pid] = msg
                        self.conns[pid] = c
                        # A joiner says hello with wait and is admitted once
                        # it says ready (as bulsajo's launcher does).
                        if pid in self.assign and not msg.get("wait"):
                            self._sendline(c, self.assign[pid])
                    elif msg.get("type") == "ready" and pid is not None:
                        self.readies.add(pid)
                        if pid in self.assign:
                            self._sendline(c, self.assign[pid])
                    elif pid is None:
                        self.before_hello.append((time.monotonic(), msg))
                    self.msgs.append((time.monotonic(), pid, msg))
                    self.cv.notify_all()
        with self.cv:
            if pid is not None:
                self.closed_pids.add(pid)
                self.conns.pop(pid, None)
            self.cv.notify_all()
        try:
            c.close()
        except OSError:
            pass

    @staticmethod
    def _sendline(c, msg):
        try:
            c.sendall((json.dumps(msg) + "\n").encode())
        except OSError:
            pass

    # ------------------------------------------------------------ test side
    @staticmethod
    def generation(gen, rank, world, port, join=False, grow=False, at_step=None):
        m = {"type": "generation", "gen": gen, "rank": rank, "world_size": world,
             "master_addr": "127.0.0.1", "master_port": port, "join": bool(join)}
        if grow:  # no member lost: the members switch after committing at_step
            m["grow"], m["at_step"] = True, at_step
        return m

    def spawn(self, argv, gen, rank, world, port, join=False, env=None, grow=False, at_step=None):
        """Start a worker as the launcher would for (gen, rank)."""
        e = worker_env({
            "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port), "BULSAJO_GENERATION": str(gen),
            "BULSAJO_AGENT_CTL": self.address, "BULSAJO_RECOVERY": "live",
            "TORCHELASTIC_USE_AGENT_STORE": "False",
            # a regroup stuck for 10 s writes its stacks here (dump_logs shows them)
            "BULSAJO_RUN_DIR": self.tmpdir,
        })
        os.makedirs(os.path.join(self.tmpdir, "logs"), exist_ok=True)
        if join:
            e["BULSAJO_JOIN"] = "1"
        e.update(env or {})
        log = os.path.join(self.tmpdir, "worker-g%d-r%d-%s.log" % (gen, rank, uuid.uuid4().hex[:6]))
        with open(log, "wb") as out:
            p = subprocess.Popen([PYTHON] + list(argv), env=e, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=self.tmpdir)
        with self.cv:
            self.procs[p.pid] = p
            self.logs[p.pid] = log
        self.send_generation(p.pid, self.generation(gen, rank, world, port, join, grow, at_step))
        return p

    def send_generation(self, pid, msg):
        with self.cv:
            self.assign[pid] = msg
            c = self.conns.get(pid)
            waiting = self.hellos.get(pid, {}).get("wait") and pid not in self.readies
            if c is not None and not waiting:
                self._sendline(c, msg)

    def regroup(self, gen, members, port, world=None, grow=False, at_step=None):
        """Send generation ``gen`` to ``members`` (pids in new-rank order);
        world defaults to len(members) (replacements take the ranks above)."""
        world = len(members) if world is None else world
        for rank, pid in enumerate(members):
            self.send_generation(pid, self.generation(gen, rank, world, port,
                                                      grow=grow, at_step=at_step))

    def wait_for(self, pred, timeout, what="condition"):
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                v = pred()
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for %s\n%s" % (what, self.dump_logs()))
                self.cv.wait(min(left, 0.05))

    def messages(self, pid=None, type=None):
        with self.cv:
            return [m for (_, p, m) in self.msgs
                    if (pid is None or p == pid) and (type is None or m.get("type") == type)]

    def max_step(self, pid, gen=None):
        steps = [m["step"] for (_, p, m) in self.msgs
                 if p == pid and m.get("type") == "step" and (gen is None or m["gen"] == gen)]
        return max(steps) if steps else -1

    def all_reached(self, pids, step, gen=None):
        return all(self.max_step(p, gen) >= step for p in pids)

    def wait_hello(self, pids, timeout=None):
        """Wait until every pid has said hello: torch is imported and the SDK
        is up. Importing torch is not what these tests measure, and on a
        loaded machine (torch 2.x above all) it alone can take a minute, so
        the waits that follow count from here."""
        timeout = STARTUP_S if timeout is None else timeout

        def ready():
            for p in pids:
                if p in self.hellos:
                    continue
                if self.procs[p].poll() is not None:
                    raise AssertionError("worker %d exited before its hello\n%s"
                                         % (p, self.dump_logs()))
                return False
            return True
        self.wait_for(ready, timeout, "hello from %s" % (pids,))

    def wait_exit(self, pids, timeout):
        deadline = time.monotonic() + timeout
        codes = {}
        for pid in pids:
            p = self.procs[pid]
            left = max(0.1, deadline - time.monotonic())
            try:
                codes[pid] = p.wait(left)
            except subprocess.TimeoutExpired:
                raise AssertionError("worker %d did not exit\n%s" % (pid, self.dump_logs()))
        return codes

    def kill(self, pid, sig=signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def log(self, pid):
        try:
            with open(self.logs[pid], "rb") as f:
                return f.read().decode(errors="replace")
        except (OSError, KeyError):
            return ""

    def dump_logs(self):
        with self.cv:  # the agent's side: what it accepted and heard
            out = ["---- agent: %d connections accepted (accept thread %s), hellos from %s, "
                   "messages before a hello: %s"
                   % (self.accepted, "alive" if self._acceptor.is_alive() else "DEAD",
                      sorted(self.hellos), [m for _, m in self.before_hello])]
        for pid in sorted(self.logs):
            out.append("---- worker pid %d (%s)\n%s" % (pid, os.path.basename(self.logs[pid]),
                                                       self.log(pid)[-3000:]))
        logs = os.path.join(self.tmpdir, "logs")
        for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
            with open(os.path.join(logs, name), errors="replace") as f:
                out.append("---- %s\n%s" % (name, f.read()[-6000:]))
        return "\n".join(out)

    def close(self):
        self._closing = True
        for pid, p in list(self.procs.items()):
            if p.poll() is None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            self.srv.close()
        except OSError:
            pass
        with self.cv:
            conns = list(self.conns.values())
        for c in conns:
            try:
                c.close()
            except OSError:
                pass


def example_args(steps, tmp, **kw):
    args = [EXAMPLE, "--steps", str(steps), "--hidden", str(kw.get("hidden", 64)),
            "--global-batch", str(kw.get("global_batch", 48)), "--log-every", "1000",
            "--sleep-ms", str(kw.get("sleep_ms", 20)),
            "--sample-log", os.path.join(tmp, "samples.log"),
            "--result-dir", os.path.join(tmp, "results")]
    return args



# The start of a worker script around a one-layer model in live mode
# (argv[1]: the path it writes its result to).
TINY_JOB = """\
import json, os, sys, time
import torch, torch.nn as nn, torch.distributed as dist
import bulsajo.torch as bj
out = sys.argv[1]
job = bj.init()
torch.manual_seed(0)
net = nn.Linear(8, 4)
model = bj.DistributedDataParallel(net)
"""


class FakeAgentCase(unittest.TestCase):
    """A test with a temp dir and a FakeAgent in it, both cleaned up."""

    tmp_prefix = "bulsajo-live-"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix=self.tmp_prefix)
        self.agent = FakeAgent(self.tmp)

    def tearDown(self):
        self.agent.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def script(self, name, text):
        """Write a worker script into the temp dir; returns its path."""
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def start_world(self, argv, world=3, env=None):
        """Ranks 0..world-1 of generation 1 running ``argv``, each past its
        hello; returns their pids in rank order."""
        port = free_port()
        pids = [self.agent.spawn(argv, gen=1, rank=r, world=world, port=port, env=env).pid
                for r in range(world)]
        self.agent.wait_hello(pids)
        return pids


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class ProtocolTest(unittest.TestCase):
    """The worker's side of the control protocol, message by message."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="bulsajo-live-proto-")
        self.agent = FakeAgent(self.tmp)

    def tearDown(self):
        self.agent.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_hello_generation_and_steps(self):
        a = self.agent
        port = free_port()
        p = a.spawn(example_args(6, self.tmp, sleep_ms=0), gen=4, rank=0, world=1, port=port)
        a.wait_hello([p.pid])
        codes = a.wait_exit([p.pid], 30)
        self.assertEqual(codes[p.pid], 0, a.dump_logs())
        hello = a.hellos[p.pid]
        self.assertEqual(hello, {"type": "hello", "pid": p.pid, "gen": 4, "rank": 0})
        steps = a.messages(p.pid, "step")
        self.assertEqual(steps, [{"type": "step", "gen": 4, "rank": 0, "step": s}
                                 for s in range(6)])
        self.assertIn("done steps=6 ", a.log(p.pid))
        self.assertIn(" regroups=0", a.log(p.pid))
        self.assertEqual(a.messages(p.pid, "collective_failed"), [])

    def test_assignment_from_agent_wins_over_env(self):
        # The env says generation 1 on some port; the agent's reply (the
        # current assignment) says generation 2 on another: the reply wins.
        a = self.agent
        port = free_port()
        p = a.spawn(example_args(3, self.tmp, sleep_ms=0), gen=1, rank=0, world=1, port=free_port())
        a.send_generation(p.pid, a.generation(2, 0, 1, port))
        a.wait_hello([p.pid])
        codes = a.wait_exit([p.pid], 30)
        self.assertEqual(codes[p.pid], 0, a.dump_logs())
        self.assertEqual({m["gen"] for m in a.messages(p.pid, "step")}, {2})

    def test_worker_exits_when_agent_goes_away(self):
        a = self.agent
        p = a.spawn(example_args(100000, self.tmp, sleep_ms=20), gen=1, rank=0, world=1,
                    port=free_port())
        a.wait_hello([p.pid])
        a.wait_for(lambda: a.max_step(p.pid) >= 2, 20, "first steps")
        with a.cv:
            c = a.conns[p.pid]
        t0 = time.monotonic()
        c.shutdown(socket.SHUT_RDWR)
        code = p.wait(10)
        self.assertEqual(code, 1)
        self.assertLess(time.monotonic() - t0, 3.0)
        self.assertIn("lost the connection", a.log(p.pid))


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class StaticModeTest(unittest.TestCase):
    """Outside bulsajo (no BULSAJO_AGENT_CTL) the example runs as a world of one."""

    def test_plain_python(self):
        tmp = tempfile.mkdtemp(prefix="bulsajo-live-static-")
        self.addCleanup(shutil.rmtree, tmp, True)
        out = subprocess.run([PYTHON] + example_args(5, tmp, sleep_ms=0), env=worker_env(),
                             cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=60)
        text = out.stdout.decode(errors="replace")
        self.assertEqual(out.returncode, 0, text)
        self.assertRegex(text, r"done steps=5 loss=\S+ params_sha256=[0-9a-f]{64} regroups=0")
        with open(os.path.join(tmp, "samples.log")) as f:
            lines = f.read().splitlines()
        self.assertEqual([l.split()[1] for l in lines], [str(s) for s in range(5)])


if __name__ == "__main__":
    unittest.main()
