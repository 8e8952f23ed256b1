"""Tests for the standby worker shim python/bulsajo/_standby.py, run as a real
subprocess with a real pipe as its activation fd.

Run from the repository root:
    PYTHONPATH=python /usr/bin/python3 -m unittest discover -s python/tests -t python
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

PYDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM = os.path.join(PYDIR, "bulsajo", "_standby.py")

# The target script reports what it sees as one JSON line on stdout.
PROBE = textwrap.dedent("""\
    import gc, json, os, sys
    fd_closed = None
    if os.environ.get("CHECK_FD"):
        try:
            os.fstat(int(os.environ["CHECK_FD"]))
            fd_closed = False
        except OSError:
            fd_closed = True
    try:
        import bulsajo
        bulsajo_file = bulsajo.__file__
    except ImportError:
        bulsajo_file = None
    print(json.dumps({
        "argv": sys.argv,
        "name": __name__,
        "file": __file__,
        "path0": sys.path[0],
        "path": sys.path,
        "main_is_me": sys.modules["__main__"].__dict__ is globals(),
        "env": {k: os.environ.get(k) for k in
                ("RANK", "WORLD_SIZE", "FOO", "EMPTY", "BULSAJO_ACTIVATE_FD",
                 "BULSAJO_PRELOAD", "KEEP")},
        "modules": [m for m in ("colorsys", "torch", "torch.distributed",
                                "torch.nn.parallel", "torch._dynamo")
                    if m in sys.modules],
        "fd_closed": fd_closed,
        "bulsajo_file": bulsajo_file,
        "gc_frozen": gc.get_freeze_count(),
    }))
    sys.stdout.flush()
    if os.environ.get("RAISE"):
        raise ValueError(os.environ["RAISE"])
    if os.environ.get("MARKER"):
        open(os.environ["MARKER"], "w").close()
    sys.exit(int(os.environ.get("EXIT_CODE", "0")))
""")


class StandbyTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="bulsajo-standby-")
        self.script = os.path.join(self.tmp, "probe.py")
        with open(self.script, "w") as f:
            f.write(PROBE)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def base_env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BULSAJO_") and k not in ("RANK", "PYTHONPATH")}
        env["PYTHONPATH"] = PYDIR
        env["BULSAJO_PRELOAD"] = ""
        env.update(extra)
        return env

    def start(self, args, env=None, cwd=None, with_fd=True):
        """Start the shim; return (proc, write end of the activation pipe or None)."""
        env = self.base_env() if env is None else env
        if not with_fd:
            p = subprocess.Popen([sys.executable, SHIM] + args, env=env, cwd=cwd,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            return p, None
        r, w = os.pipe()
        env["BULSAJO_ACTIVATE_FD"] = str(r)
        try:
            p = subprocess.Popen([sys.executable, SHIM] + args, env=env, cwd=cwd,
                                 pass_fds=(r,), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        finally:
            os.close(r)
        self.fd_number = r
        return p, w

    def finish(self, p, w=None, data=None, timeout=60):
        if w is not None:
            if data is not None:
                os.write(w, data)
            os.close(w)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            raise
        return p.returncode, out.decode(), err.decode()

    def activate(self, args, env_vars, env=None, cwd=None):
        p, w = self.start(args, env=env, cwd=cwd)
        env_vars = dict(env_vars)
        env_vars.setdefault("CHECK_FD", str(self.fd_number))
        line = json.dumps({"env": env_vars}).encode() + b"\n"
        return self.finish(p, w, line)

    @staticmethod
    def report(out):
        lines = [l for l in out.splitlines() if l.startswith("{")]
        assert len(lines) == 1, out
        return json.loads(lines[0])

    # --- script mode -----------------------------------------------------

    def test_env_argv_and_path(self):
        rc, out, err = self.activate([self.script, "--steps", "3", "a b"],
                                     {"RANK": "3", "WORLD_SIZE": "8", "FOO": "bar=baz",
                                      "EMPTY": ""},
                                     env=self.base_env(KEEP="kept"))
        self.assertEqual(rc, 0, err)
        r = self.report(out)
        self.assertEqual(r["argv"], [self.script, "--steps", "3", "a b"])
        self.assertEqual(r["name"], "__main__")
        self.assertTrue(r["main_is_me"])
        self.assertEqual(r["file"], os.path.abspath(self.script))
        self.assertEqual(r["path0"], os.path.dirname(os.path.realpath(self.script)))
        shim_dir = os.path.dirname(os.path.realpath(SHIM))
        self.assertNotIn(shim_dir, [os.path.realpath(p) for p in r["path"] if p])
        self.assertEqual(r["env"]["RANK"], "3")
        self.assertEqual(r["env"]["WORLD_SIZE"], "8")
        self.assertEqual(r["env"]["FOO"], "bar=baz")
        self.assertEqual(r["env"]["EMPTY"], "")
        self.assertEqual(r["env"]["KEEP"], "kept")  # the standby's own env survives
        self.assertIsNone(r["env"]["BULSAJO_ACTIVATE_FD"])
        self.assertIsNone(r["env"]["BULSAJO_PRELOAD"])
        self.assertTrue(r["fd_closed"])
        # `import bulsajo` resolves to the package, not to something in its dir
        self.assertEqual(os.path.realpath(r["bulsajo_file"]),
                         os.path.realpath(os.path.join(PYDIR, "bulsajo", "__init__.py")))
        self.assertEqual(r["modules"], [])  # BULSAJO_PRELOAD="" preloads nothing

    def test_matches_plain_python(self):
        """argv, __file__ and sys.path[0] are what `python3 probe.py ARGS` gives."""
        link_dir = os.path.join(self.tmp, "link")
        os.symlink(self.tmp, link_dir)
        rel = os.path.join("link", "probe.py")  # relative and through a symlink
        env = self.base_env()
        plain = subprocess.run([sys.executable, rel, "x", "-m", "y"], cwd=self.tmp,
                               env=env, capture_output=True, timeout=60)
        self.assertEqual(plain.returncode, 0, plain.stderr)
        want = self.report(plain.stdout.decode())
        rc, out, err = self.activate([rel, "x", "-m", "y"], {}, cwd=self.tmp)
        self.assertEqual(rc, 0, err)
        got = self.report(out)
        for key in ("argv", "name", "file", "path0", "main_is_me"):
            self.assertEqual(got[key], want[key], key)
        self.assertEqual(got["argv"][0], rel)

    def test_exit_code_propagates(self):
        rc, out, err = self.activate([self.script], {"EXIT_CODE": "7"})
        self.assertEqual(rc, 7, err)
        self.report(out)

    def test_exception_exits_1_with_traceback(self):
        rc, out, err = self.activate([self.script], {"RAISE": "boom-42"})
        self.assertEqual(rc, 1)
        self.assertIn("Traceback", err)
        self.assertIn("ValueError: boom-42", err)
        self.assertIn(os.path.abspath(self.script), err)

    def test_missing_script_like_python(self):
        rc, out, err = self.activate([os.path.join(self.tmp, "nope.py")], {})
        self.assertEqual(rc, 2)
        self.assertIn("can't open file", err)

    def test_waits_for_activation_split_writes(self):
        marker = os.path.join(self.tmp, "ran")
        p, w = self.start([self.script])
        time.sleep(0.5)
        self.assertIsNone(p.poll(), "standby must wait for its activation")
        self.assertFalse(os.path.exists(marker))
        line = json.dumps({"env": {"RANK": "1", "MARKER": marker}}).encode() + b"\n"
        os.write(w, line[:5])
        time.sleep(0.2)
        self.assertIsNone(p.poll(), "a partial line must not activate")
        os.write(w, line[5:] + b"ignored trailing data\n")
        rc, out, err = self.finish(p, w)
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.report(out)["env"]["RANK"], "1")
        self.assertTrue(os.path.exists(marker))

    # --- discard / errors -------------------------------------------------

    def test_eof_exits_0_without_running(self):
        marker = os.path.join(self.tmp, "ran")
        p, w = self.start([self.script], env=self.base_env(MARKER=marker))
        rc, out, err = self.finish(p, w)  # close without writing
        self.assertEqual((rc, out, err), (0, "", ""))
        self.assertFalse(os.path.exists(marker))

    def test_partial_line_then_eof_exits_0(self):
        marker = os.path.join(self.tmp, "ran")
        p, w = self.start([self.script], env=self.base_env(MARKER=marker))
        rc, out, err = self.finish(p, w, b'{"env": {"RANK": "1"}}')  # no newline
        self.assertEqual((rc, out, err), (0, "", ""))
        self.assertFalse(os.path.exists(marker))

    def test_missing_fd_env_exits_2(self):
        p, _ = self.start([self.script], with_fd=False)
        rc, out, err = self.finish(p)
        self.assertEqual(rc, 2)
        self.assertEqual(out, "")
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("BULSAJO_ACTIVATE_FD", err)

    def test_no_args_exits_2(self):
        for args in ([], ["-m"]):
            p, w = self.start(args)
            rc, out, err = self.finish(p, w, b'{"env": {}}\n')
            self.assertEqual(rc, 2, args)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertIn("usage", err)

    def test_malformed_activation_exits_2(self):
        for line in (b"not json\n", b'{"env": ["A"]}\n'):
            p, w = self.start([self.script])
            rc, out, err = self.finish(p, w, line)
            self.assertEqual(rc, 2, line)
            self.assertEqual(out, "")

    # --- module mode -------------------------------------------------------

    def test_module_mode(self):
        pkg = os.path.join(self.tmp, "mypkg")
        os.mkdir(pkg)
        open(os.path.join(pkg, "__init__.py"), "w").close()
        shutil.copy(self.script, os.path.join(pkg, "train.py"))
        rc, out, err = self.activate(["-m", "mypkg.train", "--lr", "0.1"],
                                     {"RANK": "5", "EXIT_CODE": "3"}, cwd=self.tmp)
        self.assertEqual(rc, 3, err)
        r = self.report(out)
        # like `python3 -m mypkg.train --lr 0.1`
        self.assertEqual(r["argv"], [os.path.join(self.tmp, "mypkg", "train.py"),
                                     "--lr", "0.1"])
        self.assertEqual(r["name"], "__main__")
        self.assertEqual(r["path0"], self.tmp)
        self.assertEqual(r["env"]["RANK"], "5")
        self.assertTrue(r["fd_closed"])

    # --- preload ------------------------------------------------------------

    def test_preload_named_modules_and_ignore_failures(self):
        with open(os.path.join(self.tmp, "badmod.py"), "w") as f:
            f.write("raise ValueError('broken at import')\n")
        env = self.base_env(BULSAJO_PRELOAD="colorsys, no_such_module_xyz,badmod,")
        env["PYTHONPATH"] = PYDIR + os.pathsep + self.tmp
        rc, out, err = self.activate([self.script], {}, env=env)
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.report(out)["modules"], ["colorsys"])

    def test_default_preload_imports_torch(self):
        try:
            import torch  # noqa: F401
        except ImportError:
            self.skipTest("torch not installed for this interpreter")
        env = self.base_env()
        del env["BULSAJO_PRELOAD"]
        p, w = self.start([self.script], env=env)
        time.sleep(0.2)
        rc, out, err = self.finish(p, w, b'{"env": {}}\n', timeout=120)
        self.assertEqual(rc, 0, err)
        want = ["torch", "torch.distributed", "torch.nn.parallel"]
        if int(torch.__version__.split(".")[0]) >= 2:
            want.append("torch._dynamo")  # the first optimizer's import on 2.x
        # (colorsys, the marker of the test above, comes with torch._dynamo)
        got = [m for m in self.report(out)["modules"] if m.startswith("torch")]
        self.assertEqual(got, want)

    def test_env_rendezvous_works_on_this_torch(self):
        """An env:// script, started through the shim with torch preloaded,
        rendezvouses on this torch: where it was built without libuv (torch
        2.x's default store backend) the shim sets USE_LIBUV=0 and tells the
        launcher with one datagram; elsewhere it sets nothing."""
        try:
            import torch.distributed  # noqa: F401
        except ImportError:
            self.skipTest("torch not installed for this interpreter")
        import socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = "bulsajo-test-%d" % os.getpid()
        sock.bind("\0" + name)
        self.addCleanup(sock.close)
        script = os.path.join(self.tmp, "rdzv.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent("""\
                import os, socket, torch.distributed as dist
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    os.environ["MASTER_PORT"] = str(s.getsockname()[1])
                dist.init_process_group("gloo", init_method="env://")
                dist.destroy_process_group()
                print("USE_LIBUV=%s" % os.environ.get("USE_LIBUV"))
            """))
        env = self.base_env(BULSAJO_AGENT_SOCK="@" + name)
        del env["BULSAJO_PRELOAD"]
        env.pop("USE_LIBUV", None)
        rc, out, err = self.activate([script], {"RANK": "0", "WORLD_SIZE": "1",
                                                "MASTER_ADDR": "127.0.0.1"}, env=env)
        self.assertEqual(rc, 0, err)
        sock.setblocking(False)

        def told():
            # What the shim said besides "preloaded PID" (once, after the
            # preload: the launcher times rank 0's store from it).
            msgs = []
            while True:
                try:
                    msgs.append(sock.recv(100))
                except BlockingIOError:
                    break
            pre = [m for m in msgs if m.startswith(b"preloaded ")]
            self.assertEqual(len(pre), 1, msgs)
            self.assertTrue(pre[0].split()[1].isdigit(), pre)
            return [m for m in msgs if not m.startswith(b"preloaded ")]

        if "USE_LIBUV=0" in out:
            self.assertEqual(told(), [b"torch nolibuv"])
        else:
            self.assertIn("USE_LIBUV=None", out)
            self.assertEqual(told(), [])

        # The user's own choice is left alone (and nothing is said).
        env["USE_LIBUV"] = "0"
        rc, out, err = self.activate([script], {"RANK": "0", "WORLD_SIZE": "1",
                                                "MASTER_ADDR": "127.0.0.1"}, env=env)
        self.assertEqual(rc, 0, err)
        self.assertIn("USE_LIBUV=0", out)
        self.assertEqual(told(), [])


@unittest.skipUnless(hasattr(__import__("socket"), "recv_fds") and os.uname().machine in ("x86_64", "aarch64"),
                     "zygote mode needs socket.recv_fds and a known clone syscall")
class ZygoteTest(unittest.TestCase):
    """The shim in zygote mode, with this test process as the launcher."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="bulsajo-zygote-")
        self.script = os.path.join(self.tmp, "probe.py")
        with open(self.script, "w") as f:
            f.write(PROBE)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BULSAJO_") and k not in ("RANK", "PYTHONPATH")}
        env.update(PYTHONPATH=PYDIR, BULSAJO_PRELOAD="colorsys", KEEP="kept")
        self.start([self.script, "--flag"], env)

    def start(self, args, env):
        """Start the shim in zygote mode (args: the script and its arguments),
        with this test process as its launcher."""
        import socket
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.zygote = subprocess.Popen([sys.executable, SHIM] + args,
                                       env=dict(env, BULSAJO_ZYGOTE_FD=str(theirs.fileno())),
                                       pass_fds=(theirs.fileno(),), stderr=subprocess.PIPE)
        theirs.close()
        self.sock.settimeout(60)
        self.ready = False

    def tearDown(self):
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop(self):
        self.sock.close()  # EOF: the zygote exits
        try:
            self.zygote.wait(timeout=30)
        finally:
            self.zygote.kill()
            self.zygote.stderr.close()

    def fork(self):
        """Ask for a standby; return (pid, stdout read end, stderr read end, activation write end)."""
        import socket
        if not getattr(self, "ready", False):
            self.assertTrue(self.sock.recv(256).startswith(b"ready "))
            self.ready = True
        outr, outw = os.pipe()
        errr, errw = os.pipe()
        actr, actw = os.pipe()
        socket.send_fds(self.sock, [b"fork"], [outw, errw, actr])
        for f in (outw, errw, actr):
            os.close(f)
        reply = self.sock.recv(256)
        self.assertTrue(reply.startswith(b"pid "), reply)
        return int(reply.split()[1]), outr, errr, actw

    def test_forks_run_the_script_as_children_of_the_launcher(self):
        ready = self.sock.recv(256)
        self.assertTrue(ready.startswith(b"ready "), ready)
        self.assertEqual(int(ready.split()[1]), self.zygote.pid)
        self.ready = True
        with open("/proc/%d/comm" % self.zygote.pid) as f:
            self.assertEqual(f.read().strip(), "bulsajo-zygote")
        got = []
        for rank in ("0", "1"):
            pid, outr, errr, actw = self.fork()
            # CLONE_PARENT: the standby is this process's child, not the zygote's.
            def stat():
                with open("/proc/%d/stat" % pid) as f:
                    return f.read().rsplit(")", 1)[1].split()
            self.assertEqual(int(stat()[1]), os.getpid(), "parent")
            # The standby moves to its own group as it starts (the launcher
            # moves it too, not this test).
            deadline = time.monotonic() + 30
            while int(stat()[2]) != pid and time.monotonic() < deadline:
                time.sleep(0.005)
            self.assertEqual(int(stat()[2]), pid, "its own process group")
            with open("/proc/%d/comm" % pid) as f:
                self.assertNotEqual(f.read().strip(), "bulsajo-zygote")
            os.write(actw, json.dumps({"env": {"RANK": rank, "CHECK_FD": "3"}}).encode() + b"\n")
            os.close(actw)
            _, status = os.waitpid(pid, 0)
            self.assertEqual(os.waitstatus_to_exitcode(status), 0)
            with os.fdopen(outr) as f:
                r = StandbyTest.report(f.read())
            os.close(errr)
            got.append(r)
        for rank, r in zip(("0", "1"), got):
            self.assertEqual(r["env"]["RANK"], rank)
            self.assertEqual(r["env"]["KEEP"], "kept")
            self.assertIsNone(r["env"]["BULSAJO_ACTIVATE_FD"])
            self.assertEqual(r["argv"], [self.script, "--flag"])
            self.assertEqual(r["name"], "__main__")
            self.assertTrue(r["main_is_me"])
            self.assertIn("colorsys", r["modules"])  # preloaded once, by the zygote
            self.assertTrue(r["fd_closed"])
            self.assertGreater(r["gc_frozen"], 0)  # the zygote's objects stay shared

    def test_exit_status_and_discard(self):
        pid, outr, errr, actw = self.fork()
        os.write(actw, json.dumps({"env": {"EXIT_CODE": "7"}}).encode() + b"\n")
        os.close(actw)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 7)
        # EOF before an activation: discarded, exits 0 without running the script.
        pid, outr2, errr2, actw = self.fork()
        os.close(actw)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        with os.fdopen(outr2) as f:
            self.assertEqual(f.read(), "")
        for fd in (outr, errr, errr2):
            os.close(fd)

    def test_a_fork_skips_only_the_exit_handlers_loaded_before_it(self):
        # A preloaded library's C exit handler (as torch's static destructors
        # are) is skipped in a fork; one registered by the script still runs,
        # C stdio buffers are flushed, Python's atexit runs, and the status
        # is what the script exited with.
        self.stop()
        with open(os.path.join(self.tmp, "cexit.py"), "w") as f:
            f.write(textwrap.dedent("""\
                import ctypes
                libc = ctypes.CDLL(None)
                libc.strdup.restype = ctypes.c_void_p
                libc.__cxa_atexit.argtypes = [ctypes.c_void_p] * 3
                def on_exit(text):  # puts(text) at C exit; strdup outlives Python
                    libc.__cxa_atexit(ctypes.cast(libc.puts, ctypes.c_void_p),
                                      libc.strdup(text.encode()), None)
                on_exit("preloaded handler")
            """))
        script = os.path.join(self.tmp, "exits.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent("""\
                import atexit, ctypes, sys, cexit
                cexit.on_exit("script handler")
                atexit.register(lambda: print("python atexit", flush=True))
                cexit.libc.printf(b"buffered in C stdio\\n")
                sys.exit(5)
            """))
        # Not unbuffered: C stdout to a pipe keeps its line until flushed.
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("BULSAJO_") and k != "PYTHONUNBUFFERED"}
        env.update(PYTHONPATH=self.tmp, BULSAJO_PRELOAD="cexit")
        self.start([script], env)
        pid, outr, errr, actw = self.fork()
        os.write(actw, b'{"env": {}}\n')
        os.close(actw)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 5)
        with os.fdopen(outr) as f:
            out = f.read().splitlines()
        os.close(errr)
        self.assertEqual(sorted(out), ["buffered in C stdio", "python atexit", "script handler"])
        # The same program run by a plain interpreter runs them all.
        plain = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True)
        self.assertEqual(plain.returncode, 5)
        self.assertIn("preloaded handler", plain.stdout.splitlines())

    def test_a_request_without_its_files_is_refused(self):
        self.sock.recv(256)  # ready
        self.ready = True
        self.sock.send(b"fork")
        self.assertEqual(self.sock.recv(256), b"err bad request")
        pid, outr, errr, actw = self.fork()  # it still serves
        os.close(actw)
        os.waitpid(pid, 0)
        for fd in (outr, errr):
            os.close(fd)

    def test_a_preload_that_initialized_cuda_is_refused(self):
        # A stand-in torch whose CUDA is initialized (no GPU here): a fork
        # could not use that context, so the zygote says so and exits.
        self.stop()
        fake = os.path.join(self.tmp, "fake")
        os.makedirs(os.path.join(fake, "torch"))
        with open(os.path.join(fake, "torch", "__init__.py"), "w") as f:
            f.write("class cuda:\n    is_initialized = staticmethod(lambda: True)\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("BULSAJO_")}
        env.update(PYTHONPATH=fake, BULSAJO_PRELOAD="torch")
        self.start([self.script], env)
        self.assertEqual(self.sock.recv(256), b"err the preload initialized CUDA: a fork could not use it")
        self.assertEqual(self.zygote.wait(timeout=30), 0)

    def test_the_zygote_exits_when_the_launcher_closes(self):
        self.sock.recv(256)
        self.sock.close()
        self.assertEqual(self.zygote.wait(timeout=30), 0)


if __name__ == "__main__":
    unittest.main()
