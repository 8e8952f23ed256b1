"""Tests for bulsajo.step() / bulsajo.managed() against real unix datagram sockets.

Run from the repository root:
    PYTHONPATH=python /usr/bin/python3 -m unittest discover -s python/tests -t python
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

import bulsajo

PYDIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV_KEYS = ("BULSAJO_AGENT_SOCK", "BULSAJO_GENERATION", "RANK")


def _reset():
    """Forget the SDK's per-process cache so the next step() re-reads the env."""
    if bulsajo._sock is not None:
        bulsajo._sock.close()
    bulsajo._sock = None
    bulsajo._pid = None


class SDKTest(unittest.TestCase):
    def setUp(self):
        self._saved = {k: os.environ.get(k) for k in ENV_KEYS}
        for k in ENV_KEYS:
            os.environ.pop(k, None)
        self.tmp = tempfile.mkdtemp(prefix="bulsajo-sdk-")
        _reset()

    def tearDown(self):
        _reset()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.tmp, ignore_errors=True)

    def listen_path(self):
        path = os.path.join(self.tmp, "agent.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.settimeout(5)
        self.addCleanup(s.close)
        return s, path

    def listen_abstract(self):
        name = "bulsajo-test-%d-%s" % (os.getpid(), uuid.uuid4().hex)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind("\0" + name)
        s.settimeout(5)
        self.addCleanup(s.close)
        return s, "@" + name

    def assertNoDatagram(self, s):
        s.settimeout(0.2)
        with self.assertRaises(socket.timeout):
            s.recv(4096)

    # --- datagram contents -------------------------------------------------

    def test_path_socket(self):
        s, path = self.listen_path()
        os.environ.update(BULSAJO_AGENT_SOCK=path, BULSAJO_GENERATION="3", RANK="2")
        self.assertIsNone(bulsajo.step(41))
        self.assertEqual(s.recv(4096), b"step 3 2 41\n")
        bulsajo.step(42)
        bulsajo.step(43)
        # one datagram per call, never merged
        self.assertEqual(s.recv(4096), b"step 3 2 42\n")
        self.assertEqual(s.recv(4096), b"step 3 2 43\n")

    def test_abstract_socket(self):
        s, addr = self.listen_abstract()
        self.assertTrue(addr.startswith("@"))
        os.environ.update(BULSAJO_AGENT_SOCK=addr, BULSAJO_GENERATION="12", RANK="0")
        bulsajo.step(0)
        bulsajo.step(1500)
        self.assertEqual(s.recv(4096), b"step 12 0 0\n")
        self.assertEqual(s.recv(4096), b"step 12 0 1500\n")

    def test_abstract_name_is_not_a_path(self):
        # "@name" must go to the abstract socket, not to a file called "@name".
        s, addr = self.listen_abstract()
        cwd = os.getcwd()
        os.chdir(self.tmp)
        try:
            f = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            f.bind(addr)  # a filesystem socket literally named "@bulsajo-test-..."
            f.settimeout(0.2)
            self.addCleanup(f.close)
            os.environ["BULSAJO_AGENT_SOCK"] = addr
            bulsajo.step(5)
        finally:
            os.chdir(cwd)
        self.assertEqual(s.recv(4096), b"step 0 -1 5\n")
        self.assertNoDatagram(f)

    def test_defaults_when_rank_and_generation_unset(self):
        s, path = self.listen_path()
        os.environ["BULSAJO_AGENT_SOCK"] = path
        bulsajo.step(7)
        self.assertEqual(s.recv(4096), b"step 0 -1 7\n")

    def test_bad_generation_and_rank_do_not_raise(self):
        s, path = self.listen_path()
        os.environ.update(BULSAJO_AGENT_SOCK=path, BULSAJO_GENERATION="x", RANK="")
        bulsajo.step(9)
        self.assertEqual(s.recv(4096), b"step 0 -1 9\n")

    def test_step_value_formatting(self):
        s, path = self.listen_path()
        os.environ.update(BULSAJO_AGENT_SOCK=path, RANK="1")
        bulsajo.step(True)     # bool is an int subclass; formatted as a number
        bulsajo.step(3.0)      # floats are truncated to an int
        self.assertIsNone(bulsajo.step("not a number"))  # swallowed, nothing sent
        self.assertIsNone(bulsajo.step(None))
        self.assertEqual(s.recv(4096), b"step 0 1 1\n")
        self.assertEqual(s.recv(4096), b"step 0 1 3\n")
        self.assertNoDatagram(s)

    def test_env_read_once(self):
        s, path = self.listen_path()
        os.environ.update(BULSAJO_AGENT_SOCK=path, RANK="1", BULSAJO_GENERATION="1")
        bulsajo.step(1)
        os.environ.update(RANK="9", BULSAJO_GENERATION="9")
        bulsajo.step(2)
        self.assertEqual(s.recv(4096), b"step 1 1 1\n")
        self.assertEqual(s.recv(4096), b"step 1 1 2\n")

    def test_fork_reopens_and_rereads_env(self):
        s, path = self.listen_path()
        os.environ.update(BULSAJO_AGENT_SOCK=path, RANK="1", BULSAJO_GENERATION="4")
        bulsajo.step(1)
        self.assertEqual(s.recv(4096), b"step 4 1 1\n")
        parent_sock = bulsajo._sock
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                os.environ["RANK"] = "5"
                bulsajo.step(2)
                code = 0 if bulsajo._sock is not parent_sock else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        self.assertEqual(os.waitstatus_to_exitcode(status), 0)
        self.assertEqual(s.recv(4096), b"step 4 5 2\n")
        bulsajo.step(3)  # the parent keeps its own cache
        self.assertEqual(s.recv(4096), b"step 4 1 3\n")

    # --- never raise, never block ---------------------------------------------

    def test_no_listener_path(self):
        os.environ["BULSAJO_AGENT_SOCK"] = os.path.join(self.tmp, "missing.sock")
        for i in range(3):
            self.assertIsNone(bulsajo.step(i))

    def test_no_listener_abstract(self):
        os.environ["BULSAJO_AGENT_SOCK"] = "@bulsajo-nobody-%s" % uuid.uuid4().hex
        for i in range(3):
            self.assertIsNone(bulsajo.step(i))

    def test_listener_goes_away(self):
        s, path = self.listen_path()
        os.environ["BULSAJO_AGENT_SOCK"] = path
        bulsajo.step(1)
        self.assertEqual(s.recv(4096), b"step 0 -1 1\n")
        s.close()
        os.unlink(path)
        self.assertIsNone(bulsajo.step(2))
        # a new agent bound at the same path receives again
        s2 = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(s2.close)
        s2.bind(path)
        s2.settimeout(5)
        bulsajo.step(3)
        self.assertEqual(s2.recv(4096), b"step 0 -1 3\n")

    def test_full_receive_queue_does_not_block(self):
        s, path = self.listen_path()  # bound but never read: its queue fills up
        # In a subprocess, so that a step() that blocks fails the test instead
        # of hanging it.
        code = ("import bulsajo, time\n"
                "t0 = time.monotonic()\n"
                "for i in range(20000): bulsajo.step(i)\n"
                "print(time.monotonic() - t0)\n")
        env = dict(os.environ, BULSAJO_AGENT_SOCK=path, PYTHONPATH=PYDIR)
        try:
            out = subprocess.run([sys.executable, "-c", code], env=env,
                                 capture_output=True, timeout=20)
        except subprocess.TimeoutExpired:
            self.fail("step() blocked on a full receive queue")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertLess(float(out.stdout), 10.0)
        # the first datagrams were queued intact
        self.assertEqual(s.recv(4096), b"step 0 -1 0\n")

    def test_path_is_not_a_socket(self):
        p = os.path.join(self.tmp, "plain-file")
        open(p, "w").close()
        os.environ["BULSAJO_AGENT_SOCK"] = p
        self.assertIsNone(bulsajo.step(1))

    # --- unmanaged -----------------------------------------------------------

    def test_unset_is_noop(self):
        self.assertFalse(bulsajo.managed())
        self.assertIsNone(bulsajo.step(1))
        self.assertIsNone(bulsajo._sock)
        # Cheap because nothing is set up again per call (a pid check and a
        # None test, ~0.2 us): _init runs only in a new process. Checked by
        # counting, not timing (a timed bound flakes on a loaded machine).
        calls = []
        orig = bulsajo._init
        bulsajo._init = lambda: (calls.append(1), orig())[1]
        try:
            for i in range(1000):
                bulsajo.step(i)
        finally:
            bulsajo._init = orig
        self.assertEqual(calls, [])
        self.assertIsNone(bulsajo._sock)

    def test_empty_is_unmanaged(self):
        os.environ["BULSAJO_AGENT_SOCK"] = ""
        self.assertFalse(bulsajo.managed())
        self.assertIsNone(bulsajo.step(1))
        self.assertIsNone(bulsajo._sock)

    def test_managed(self):
        os.environ["BULSAJO_AGENT_SOCK"] = "@x"
        self.assertTrue(bulsajo.managed())

    def test_version(self):
        self.assertEqual(bulsajo.__version__, "0.1.0")


if __name__ == "__main__":
    unittest.main()
