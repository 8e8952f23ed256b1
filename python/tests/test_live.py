"""Unit tests of live recovery (bulsajo.torch, bulsajo._live): the elastic
sampler, abandoning a group's sockets, the comm hook that marks a step failed
instead of raising, and a blocked all_reduce released by a new generation.

Run from the repository root:
    PYTHONPATH=python /usr/bin/python3 -m unittest discover -s python/tests -t python
"""

import json
import os
import signal
import socket
import textwrap
import threading
import time
import unittest

from bulsajo import _live
from tests.test_live_agent import TINY_JOB, FakeAgentCase, free_port, have_torch, proc_state


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class ServerStoreKeptTest(unittest.TestCase):
    """torch 1.x: a server store outlives its last reference by STORE_KEEP_S,
    so that no client connecting to a superseded formation is reset (which
    aborts the client process: torch 1.x's callback thread)."""

    def setUp(self):
        import bulsajo.torch as bt
        if bt._TORCH_MAJOR >= 2:
            self.skipTest("torch 2.x's store client has no callback thread: nothing kept")
        self.bt = bt
        self.addCleanup(bt._drop_kept_stores, everything=True)

    def server(self, port):
        import datetime
        return self.bt._tcp_store("127.0.0.1", port, 2, True, datetime.timedelta(seconds=5))

    def listens(self, port):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return True
        except OSError:
            return False

    def test_a_dropped_server_store_still_serves_its_clients(self):
        import datetime
        port = free_port()
        s = self.server(port)
        s.set("k", b"v")
        del s  # a formation superseded on rank 0
        c = self.bt._tcp_store("127.0.0.1", port, 2, False, datetime.timedelta(seconds=5))
        self.assertEqual(c.get("k"), b"v")

    def test_a_server_on_the_same_port_replaces_the_kept_one(self):
        port = free_port()
        s = self.server(port)
        del s
        s2 = self.server(port)  # a fixed --master-port: the next generation binds it
        s2.set("k", b"2")
        self.assertEqual(s2.get("k"), b"2")

    def test_kept_stores_go_after_the_keep(self):
        saved = self.bt.STORE_KEEP_S
        self.addCleanup(setattr, self.bt, "STORE_KEEP_S", saved)
        self.bt.STORE_KEEP_S = 0.05
        port = free_port()
        s = self.server(port)
        del s
        self.assertTrue(self.listens(port))
        time.sleep(0.1)
        keep = self.server(free_port())  # the next store lets the old one go
        self.assertFalse(self.listens(port))
        del keep


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class ElasticSamplerTest(unittest.TestCase):
    def sampler(self, n=1000, b=64, seed=0):
        from bulsajo.torch import ElasticSampler
        return ElasticSampler(n, b, seed=seed)

    def test_ranks_partition_the_global_batch(self):
        s = self.sampler()
        for step in (0, 1, 7, 15, 16, 40):
            g = s.global_indices(step)
            self.assertEqual(len(g), 64)
            for world in (1, 2, 3, 5, 7):
                shares = [s.indices(step, r, world) for r in range(world)]
                self.assertTrue(all(isinstance(x, list) for x in shares))
                flat = [i for sh in shares for i in sh]
                self.assertEqual(len(flat), len(set(flat)), "overlap, world %d" % world)
                self.assertEqual(sorted(flat), sorted(g), "gap, world %d" % world)
                sizes = [len(sh) for sh in shares]
                self.assertLessEqual(max(sizes) - min(sizes), 1)

    def test_epoch_is_a_permutation_even_when_the_world_changes(self):
        n, b = 960, 64          # 15 steps per epoch exactly
        s = self.sampler(n, b)
        worlds = [3] * 4 + [2] * 5 + [4] * 6   # regroups at steps 4 and 9
        seen = []
        for step, world in enumerate(worlds):
            for r in range(world):
                seen.extend(s.indices(step, r, world))
        self.assertEqual(sorted(seen), list(range(n)))

    def test_epoch_wrap(self):
        n, b = 10, 4
        s = self.sampler(n, b, seed=3)
        p0, p1, p2 = s.permutation(0), s.permutation(1), s.permutation(2)
        self.assertEqual(sorted(p0), list(range(n)))
        self.assertNotEqual(p0, p1)
        self.assertEqual(s.global_indices(0), p0[0:4])
        self.assertEqual(s.global_indices(1), p0[4:8])
        self.assertEqual(s.global_indices(2), p0[8:10] + p1[0:2])   # crosses the boundary
        self.assertEqual(s.global_indices(4), p1[6:10])
        self.assertEqual(s.global_indices(5), p2[0:4])
        self.assertEqual(s.epoch(2), 0)
        self.assertEqual(s.epoch(3), 1)
        # every position of the stream is used once: 5 steps = 2 epochs exactly
        stream = [i for st in range(5) for i in s.global_indices(st)]
        self.assertEqual(sorted(stream[:10]), list(range(n)))
        self.assertEqual(sorted(stream[10:]), list(range(n)))
        # a batch larger than the data set spans several epochs
        big = self.sampler(3, 7, seed=1)
        self.assertEqual(big.global_indices(0),
                         big.permutation(0) + big.permutation(1) + big.permutation(2)[:1])

    def test_deterministic(self):
        a, b = self.sampler(seed=5), self.sampler(seed=5)
        for step in (0, 3, 100, 15, 2):   # out of order: no dependence on history
            self.assertEqual(a.indices(step, 1, 3), b.indices(step, 1, 3))
        self.assertNotEqual(self.sampler(seed=6).global_indices(0), a.global_indices(0))

    def test_bad_rank(self):
        with self.assertRaises(ValueError):
            self.sampler().indices(0, 3, 3)


class AbandonSocketsTest(unittest.TestCase):
    """_live.Generations shuts down exactly the sockets a group opened."""

    def test_newer_generation_shuts_the_groups_connections(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        unrelated = socket.socket()          # opened before the group: untouched
        unrelated.connect(("127.0.0.1", port))
        u_peer, _ = listener.accept()

        gens = _live.Generations()
        gens.offer({"type": "generation", "gen": 1})
        g = gens.begin_group(1)
        mine = socket.socket()               # "the group's" connection
        mine.connect(("127.0.0.1", port))
        m_peer, _ = listener.accept()
        gens.keep.add(os.fstat(m_peer.fileno()).st_ino)  # the peer: another process's
        own_listener = socket.socket()       # a listening socket of the group
        own_listener.bind(("127.0.0.1", 0))
        own_listener.listen(1)
        ux, ux_peer = socket.socketpair()    # a unix socket of the group: not TCP
        v6 = []                              # an IPv6 connection of the group
        l6 = None                            # (where this host has IPv6 loopback)
        try:
            l6 = socket.socket(socket.AF_INET6)
            l6.bind(("::1", 0))
        except OSError:
            if l6 is not None:
                l6.close()
            l6 = None
        if l6 is not None:
            l6.listen(1)
            mine6 = socket.create_connection(("::1", l6.getsockname()[1]))
            m6_peer, _ = l6.accept()
            gens.keep.add(os.fstat(m6_peer.fileno()).st_ino)
            v6 = [l6, mine6, m6_peer]
        self.assertTrue(gens.end_group(g))
        ino = os.fstat(mine.fileno()).st_ino
        self.assertIn(ino, [i for _, i in g.sockets])

        got = []
        t = threading.Thread(target=lambda: got.append(mine.recv(10)))
        t.start()                            # blocked like a gloo recv
        time.sleep(0.1)
        self.assertFalse(gens.offer({"type": "generation", "gen": 1}))  # not newer
        self.assertTrue(t.is_alive())
        t0 = time.monotonic()
        self.assertTrue(gens.offer({"type": "generation", "gen": 2}))
        t.join(2)
        self.assertFalse(t.is_alive())
        self.assertEqual(got, [b""])
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertTrue(g.abandoned)
        # Only the read side was shut: a send posted in that instant still
        # goes through (gloo would queue an EPIPE and never wake it).
        mine.sendall(b"late")
        self.assertEqual(m_peer.recv(10), b"late")
        if v6:
            mine6.settimeout(5)
            self.assertEqual(mine6.recv(10), b"")     # IPv6 alike
        # Leaving it on purpose shuts both sides: the peer sees EOF.
        self.assertEqual(gens.abandon(g), 2 if v6 else 1)
        m_peer.settimeout(5)
        self.assertEqual(m_peer.recv(10), b"")
        if v6:
            m6_peer.settimeout(5)
            self.assertEqual(m6_peer.recv(10), b"")
        # the fd itself stays open (its owner closes it) ...
        os.fstat(mine.fileno())
        # ... the unrelated connection and the listener still work
        unrelated.sendall(b"x")
        self.assertEqual(u_peer.recv(1), b"x")
        c = socket.create_connection(("127.0.0.1", own_listener.getsockname()[1]))
        c.close()
        ux.sendall(b"u")                     # the unix pair was not shut
        self.assertEqual(ux_peer.recv(1), b"u")
        for s in [listener, unrelated, u_peer, mine, m_peer, own_listener, ux, ux_peer] + v6:
            s.close()

    def test_inode_guard(self):
        a = socket.socket()
        fd, ino = a.fileno(), os.fstat(a.fileno()).st_ino
        a.close()
        b = socket.socket()                  # likely reuses the fd number
        try:
            self.assertFalse(_live.shutdown_fd(fd, ino))
        finally:
            b.close()

    def test_superseded_while_forming(self):
        gens = _live.Generations()
        gens.offer({"type": "generation", "gen": 5})
        with self.assertRaises(_live.Superseded):
            gens.begin_group(4)
        g = gens.begin_group(5)
        gens.offer({"type": "generation", "gen": 6})   # arrives during creation
        self.assertFalse(gens.end_group(g))

    def creating_gen2(self):
        """A listener to connect to, and generation 2's group being created."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        gens = _live.Generations()
        gens.offer({"type": "generation", "gen": 2})
        return listener, listener.getsockname()[1], gens, gens.begin_group(2)

    def test_an_abandoned_creation_keeps_only_its_own_sockets(self):
        """A group formed by a thread is superseded while it is still being
        created (waiting, say, for a peer that died mid-rendezvous, which no
        shutdown wakes), and the next one begins at once, without waiting
        for it. The first one's end, abandoned, shuts the sockets it opened
        and not the second one's."""
        listener, port, gens, g2 = self.creating_gen2()
        first = socket.create_connection(("127.0.0.1", port))   # generation 2's
        f_peer, _ = listener.accept()
        self.assertTrue(gens.offer({"type": "generation", "gen": 3}))
        g3 = gens.begin_group(3, timeout=1)  # at once: generation 2's still runs
        sock = socket.create_connection(("127.0.0.1", port))   # generation 3's
        peer, _ = listener.accept()
        self.assertFalse(gens.end_group(g2))
        self.assertTrue(gens.end_group(g3))
        owned = [i for _, i in g3.sockets]
        self.assertIn(os.fstat(sock.fileno()).st_ino, owned)
        self.assertNotIn(os.fstat(first.fileno()).st_ino, owned)
        sock.sendall(b"3")                   # generation 3's connection works
        self.assertEqual(peer.recv(1), b"3")
        f_peer.settimeout(5)
        self.assertEqual(f_peer.recv(1), b"")  # generation 2's was shut
        for x in (listener, first, f_peer, sock, peer):
            x.close()

    def test_a_socket_opened_after_the_abandon_is_shut_too(self):
        """A group abandoned while it is being created can open a socket
        just after the abandon (its store client connecting a moment later)
        and wait on it in a rendezvous nobody else attends. That socket is
        shut as well: the creation fails at once."""
        listener, port, gens, g2 = self.creating_gen2()
        self.assertTrue(gens.offer({"type": "generation", "gen": 3}))  # nothing open yet
        late = socket.create_connection(("127.0.0.1", port))
        peer, _ = listener.accept()
        late.settimeout(30)                  # the rendezvous' own timeout
        out = {}

        def creation():                      # blocked on the store, then ends
            try:
                out["got"] = late.recv(10)
            except OSError as e:
                out["got"] = e
            out["ended"] = gens.end_group(g2)
        t = threading.Thread(target=creation)
        t.start()
        t.join(10)
        self.assertEqual(out, {"got": b"", "ended": False})
        for x in (listener, late, peer):
            x.close()

    def test_closed_no_group_begins_and_one_being_created_is_shut(self):
        """The job leaving (close() with a grow's group still forming): no
        creation begins any more, and what the one under way opened, or
        opens after, is shut, so its thread ends before the process does."""
        listener, port, gens, g2 = self.creating_gen2()
        gens.close()
        with self.assertRaises(_live.Superseded):
            gens.begin_group(3)
        gens.abandon(g2)
        gens.sweep(g2)
        late = socket.create_connection(("127.0.0.1", port))  # opened after the abandon
        peer, _ = listener.accept()
        late.settimeout(30)
        self.assertEqual(late.recv(10), b"")
        self.assertFalse(gens.end_group(g2))
        for x in (listener, late, peer):
            x.close()

    def test_abort_is_called_once_outside_the_lock(self):
        """A group's abort (NCCL communicators on torch 2.x) runs once when a
        newer generation abandons it, not again when the job leaves it, and
        not under the lock (the training thread may be waiting on it)."""
        gens = _live.Generations()
        gens.offer({"type": "generation", "gen": 1})
        g = gens.begin_group(1)
        self.assertTrue(gens.end_group(g))
        calls = []

        def abort():
            got = gens.cv.acquire(blocking=False)
            if got:
                gens.cv.release()
            calls.append(got)
            raise RuntimeError("a failing abort is reported, not raised")

        g.abort = abort
        self.assertTrue(gens.offer({"type": "generation", "gen": 2}))
        self.assertEqual(calls, [True])
        gens.abandon(g)
        self.assertEqual(calls, [True])
        # abandon() is the other way in, for a group left on purpose
        g2 = gens.begin_group(2)
        gens.end_group(g2)
        g2.abort = lambda: calls.append("g2")
        gens.abandon(g2)
        gens.abandon(g2)
        self.assertEqual(calls, [True, "g2"])


HOOK_WORKER = TINY_JOB + textwrap.dedent("""\
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = bj.State(model=model, optimizer=opt)
    committed = []
    job.on_commit(lambda step, rank, world, gen: committed.append(step))
    res = {}
    for step in job.steps(10, state):
        x = torch.randn(4, 8)
        loss = model(x).sum()
        opt.zero_grad()
        if step == 3 and job.rank == 1:
            os._exit(0)   # dies: rank 0 waits for it in the gradient all-reduce
        before = [p.detach().clone() for p in net.parameters()]
        t0 = time.monotonic()
        loss.backward()   # must not raise
        res = {"step": step, "backward_s": time.monotonic() - t0, "broken": job._broken,
               "has_grads": all(p.grad is not None for p in net.parameters())}
        opt.step()
        res["params_unchanged"] = all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
        if job._broken is not None:
            break         # leave before the job regroups
    res["state_step"] = state.step
    res["committed"] = committed
    with open(out, "w") as f:
        json.dump(res, f)
    os._exit(0)
""")

ABANDON_WORKER = textwrap.dedent("""\
    import json, os, signal, sys, time
    import torch, torch.distributed as dist
    import bulsajo.torch as bj
    out = sys.argv[1]
    job = bj.init()
    t = torch.ones(4)
    dist.all_reduce(t)
    if job.rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)   # hangs (until the test kills it)
        time.sleep(60)
        os._exit(3)
    print("blocking", flush=True)
    res = {}
    try:
        dist.all_reduce(t)   # blocks on the stopped peer until generation 2 arrives
        res["raised"] = False
    except Exception as e:
        res.update(raised=True, t_raised=time.monotonic(), error=str(e)[:300])
    with job._gens.cv:  # the reader thread records the abandon under cv, after the shutdown
        res["abandoned"] = [n for (_, g, n) in job._gens.abandons]
    res["link_ok"] = job._link.send({"type": "step", "gen": 1, "rank": 0, "step": 777}, timeout=5)
    with open(out, "w") as f:
        json.dump(res, f)
    os._exit(0)
""")


CLOSE_WORKER = textwrap.dedent("""\
    import sys, time
    import torch, torch.distributed as dist
    import bulsajo.torch as bj
    job = bj.init(backend="gloo")
    t = torch.ones(1000)
    if job.rank == 0:
        # In flight on a gloo worker thread until rank 1 joins in (1 s);
        # once `t` is dropped only that thread holds the tensor, so it
        # needs the GIL to free it when the collective ends.
        dist.all_reduce(t, group=job._pg, async_op=True)
        del t
        print("closing", flush=True)
        job.close()
        print("closed", flush=True)
    else:
        time.sleep(1.0)
        dist.all_reduce(t, group=job._pg)
        job.close()
""")


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class PreparedGroupTest(unittest.TestCase):
    """The training thread takes the generation that was the latest when it
    looked; the reader thread may have prepared a newer one's group since
    (a second fault right after the first). Forming the older one must
    neither release the newer one's nor form one itself: the newer one's
    thread holds its store's port, and a second formation of it found
    that port in use, which failed the regroup after 3 s."""

    def job(self):
        import bulsajo.torch as bt
        job = bt.Job.__new__(bt.Job)  # the few fields _create_group reads first
        job._prep_lock = threading.Lock()
        job._prepared = None
        job._gens = _live.Generations()
        return bt, job

    def test_a_newer_generations_group_stays_for_it(self):
        bt, job = self.job()
        msg = lambda gen: {"type": "generation", "gen": gen, "rank": 0, "world_size": 2,
                           "master_port": 1, "grow": gen == 3, "at_step": 100}
        job._gens.offer(msg(3))
        newer = bt._Prepared(msg(4))   # what _on_message registers before offering
        job._prepared = newer
        job._gens.offer(msg(4))
        with self.assertRaises(_live.Superseded):
            job._create_group(msg(3))
        self.assertIs(job._prepared, newer)
        self.assertFalse(newer.released)
        self.assertIs(job._take_prepared(4), newer)  # taken by its own generation
        self.assertIsNone(job._prepared)

    def test_an_older_generations_group_is_released(self):
        bt, job = self.job()
        older = bt._Prepared({"gen": 3})
        job._prepared = older
        self.assertIsNone(job._take_prepared(4))
        self.assertTrue(older.released)
        self.assertIsNone(job._prepared)


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class CollectiveFailureTest(FakeAgentCase):
    tmp_prefix = "bulsajo-live-unit-"

    def test_comm_hook_marks_failure_instead_of_raising(self):
        a = self.agent
        w = self.script("hook_worker.py", HOOK_WORKER)
        out = os.path.join(self.tmp, "hook.json")
        port = free_port()
        p0 = a.spawn([w, out], gen=1, rank=0, world=2, port=port)
        p1 = a.spawn([w, out + ".r1"], gen=1, rank=1, world=2, port=port)
        a.wait_hello([p0.pid, p1.pid])
        codes = a.wait_exit([p0.pid, p1.pid], 30)
        self.assertEqual(codes[p0.pid], 0, a.dump_logs())
        with open(out) as f:
            res = json.load(f)
        self.assertEqual(res["step"], 3, res)
        self.assertTrue(res["broken"], res)                 # the failure was noted ...
        self.assertIn("all-reduce", res["broken"])
        self.assertTrue(res["has_grads"])                   # ... backward completed ...
        self.assertLess(res["backward_s"], 5.0)
        self.assertTrue(res["params_unchanged"], res)       # ... and the update was skipped
        self.assertEqual(res["state_step"], 2)
        self.assertEqual(res["committed"], [0, 1, 2])

    def test_close_while_a_collective_is_in_flight(self):
        # Destroying a group joins its gloo worker threads; one finishing a
        # collective must be able to take the GIL (torch 2.x deadlocked here:
        # a finished worker never exited).
        a = self.agent
        w = self.script("close_worker.py", CLOSE_WORKER)
        port = free_port()
        p0 = a.spawn([w], gen=1, rank=0, world=2, port=port)
        p1 = a.spawn([w], gen=1, rank=1, world=2, port=port)
        a.wait_hello([p0.pid, p1.pid])
        codes = a.wait_exit([p0.pid, p1.pid], 30)
        self.assertEqual(codes, {p0.pid: 0, p1.pid: 0}, a.dump_logs())
        self.assertIn("closed", a.log(p0.pid))

    def test_new_generation_releases_a_blocked_all_reduce(self):
        a = self.agent
        w = self.script("abandon_worker.py", ABANDON_WORKER)
        out = os.path.join(self.tmp, "abandon.json")
        port = free_port()
        p0 = a.spawn([w, out], gen=1, rank=0, world=2, port=port)
        p1 = a.spawn([w, out + ".r1"], gen=1, rank=1, world=2, port=port)
        a.wait_hello([p0.pid, p1.pid])
        a.wait_for(lambda: proc_state(p1.pid) == "T" and "blocking" in a.log(p0.pid),
                   30, "rank 1 stopped and rank 0 blocked")
        time.sleep(0.5)
        self.assertIsNone(p0.poll())                         # really blocked
        t_sent = time.monotonic()
        a.send_generation(p0.pid, a.generation(2, 0, 1, free_port()))
        codes = a.wait_exit([p0.pid], 20)
        self.assertEqual(codes[p0.pid], 0, a.dump_logs())
        with open(out) as f:
            res = json.load(f)
        self.assertTrue(res["raised"], res)
        latency = res["t_raised"] - t_sent
        self.assertGreater(latency, 0)
        self.assertLess(latency, 2.0, res)
        self.assertEqual(len(res["abandoned"]), 1)
        self.assertGreater(res["abandoned"][0], 0)           # sockets were shut down
        self.assertTrue(res["link_ok"])                      # the agent connection was not
        a.wait_for(lambda: any(m.get("step") == 777 for m in a.messages(p0.pid, "step")),
                   5, "message after the abandon")
        self.assertEqual(proc_state(p1.pid), "T")
        print("\n  blocked all_reduce raised %.0f ms after the new generation was sent"
              % (latency * 1000))


if __name__ == "__main__":
    unittest.main()
