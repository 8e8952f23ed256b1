"""Live recovery end to end, without the Go agent.

A fake agent (test_live_agent.FakeAgent) runs examples/live_ddp.py as 3 real
gloo workers, injects faults and assigns new generations the way the Go agent
does; the tests check that training completes with bit-identical parameters
on every rank, that every committed step's samples were logged exactly once
(no sample skipped or seen twice across world-size changes), and that at most
the step in flight was lost per recovery.

Run from the repository root:
    PYTHONPATH=python /usr/bin/python3 -m unittest discover -s python/tests -t python
"""

import collections
import json
import os
import signal
import textwrap
import time
import unittest

from tests.test_live_agent import TINY_JOB, FakeAgentCase, example_args, free_port, have_torch, proc_state

STEPS = 60
GLOBAL_BATCH = 48
SAMPLES = 50000


def read(path):
    with open(path) as f:
        return f.read()


def read_results(tmp):
    d = os.path.join(tmp, "results")
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name)) as f:
            r = json.load(f)
        out[r["rank"]] = r
    return out


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class RegroupTest(FakeAgentCase):
    tmp_prefix = "bulsajo-live-regroup-"

    def setUp(self):
        super().setUp()
        self.args = example_args(STEPS, self.tmp, global_batch=GLOBAL_BATCH, sleep_ms=25)

    def start(self, world=3):
        return self.start_world(self.args, world)

    def check_samples(self):
        """Every step 0..STEPS-1 logged exactly its global batch, once."""
        from bulsajo.torch import ElasticSampler
        sampler = ElasticSampler(SAMPLES, GLOBAL_BATCH, seed=0)
        per_step = collections.defaultdict(list)
        seen = collections.Counter()
        with open(os.path.join(self.tmp, "samples.log")) as f:
            for line in f:
                parts = line.split()
                step = int(parts[1])
                ids = [int(x) for x in parts[3:]]
                per_step[step].extend(ids)
                seen.update(ids)
        self.assertEqual(sorted(per_step), list(range(STEPS)), "steps logged")
        for s in range(STEPS):
            self.assertEqual(sorted(per_step[s]), sorted(sampler.global_indices(s)),
                             "samples of step %d" % s)
        dup = [i for i, n in seen.items() if n > 1]
        self.assertEqual(dup, [], "sample ids logged twice")
        self.assertEqual(sum(seen.values()), STEPS * GLOBAL_BATCH)

    def check_results(self, final_pids, regroups):
        a = self.agent
        codes = a.wait_exit(final_pids, 40)
        self.assertEqual(set(codes.values()), {0}, a.dump_logs())
        res = read_results(self.tmp)
        self.assertEqual(sorted(res), list(range(len(final_pids))), a.dump_logs())
        hashes = {r["params_sha256"] for r in res.values()}
        self.assertEqual(len(hashes), 1, "parameters differ across ranks: %r" % res)
        for r in res.values():
            self.assertEqual(r["step"], STEPS - 1)
            self.assertEqual(r["regroups"], regroups, r)
            for h in r["history"]:
                self.assertTrue(h["verified"])
                self.assertLessEqual(h["lost_steps"], 1, h)
        done = [l for l in a.log(final_pids[0]).splitlines() if l.startswith("done ")]
        self.assertEqual(len(done), 1, a.log(final_pids[0]))
        self.assertIn("regroups=%d" % regroups, done[0])
        self.assertIn(next(iter(hashes)), done[0])
        self.check_samples()
        return res

    def test_crash_then_hang(self):
        a = self.agent
        p0, p1, p2 = self.start()

        # Fault 1: rank 1 crashes (SIGKILL).  Survivors become ranks 0, 1 of
        # generation 2; a replacement joins as rank 2 on a new port.
        a.wait_for(lambda: a.all_reached([p0, p1, p2], 8), 40, "gen 1 steps")
        a.kill(p1)
        t_fault1 = time.monotonic()
        port2 = free_port()
        a.regroup(2, [p0, p2], port2, world=3)
        r2 = a.spawn(self.args, gen=2, rank=2, world=3, port=port2, join=True).pid
        a.wait_hello([r2])
        gen2 = [p0, p2, r2]
        a.wait_for(lambda: a.all_reached(gen2, 0, gen=2), 30, "gen 2 steps")
        recovered1 = time.monotonic() - t_fault1

        # Fault 2: gen-2 rank 1 (old rank 2) hangs (SIGSTOP).  The others block
        # in the gradient all-reduce until generation 3 arrives and they
        # abandon the old group; the stopped process is only killed later.
        a.wait_for(lambda: a.all_reached(gen2, 25), 30, "gen 2 progress")
        a.kill(p2, signal.SIGSTOP)
        a.wait_for(lambda: proc_state(p2) == "T", 5, "SIGSTOP")
        time.sleep(0.4)  # the others are now blocked waiting for p2
        stuck_at = max(a.max_step(p, gen=2) for p in gen2)
        port3 = free_port()
        t_fault2 = time.monotonic()
        a.regroup(3, [p0, r2], port3, world=3)
        r3 = a.spawn(self.args, gen=3, rank=2, world=3, port=port3, join=True).pid
        a.wait_hello([r3])
        gen3 = [p0, r2, r3]
        a.wait_for(lambda: a.all_reached(gen3, stuck_at + 2, gen=3), 30, "gen 3 steps")
        recovered2 = time.monotonic() - t_fault2
        self.assertEqual(proc_state(p2), "T")  # recovered while it was still hung
        a.kill(p2)

        res = self.check_results(gen3, regroups=2)
        self.assertEqual(a.messages(type="collective_failed"), [])
        # rank 0 (p0) went through both regroups; its history says how long they took
        h = res[0]["history"]
        self.assertEqual([x["gen"] for x in h], [2, 3])
        print("\n  regroup seconds (fault -> verified, incl. replacement start): %s; "
              "fault -> first step: %.2f s, %.2f s"
              % ([x["seconds"] for x in h], recovered1, recovered2))

    def test_agent_silent_then_fault_during_regroup(self):
        a = self.agent
        p0, p1, p2 = self.start()
        a.wait_for(lambda: a.all_reached([p0, p1, p2], 5), 40, "gen 1 steps")

        # Rank 2 dies and the agent says nothing: the survivors report
        # collective_failed after ~3 s.
        a.kill(p2)
        t_kill = time.monotonic()
        a.wait_for(lambda: {m["rank"] for m in a.messages(type="collective_failed")} == {0, 1},
                   15, "collective_failed from both survivors")
        waited = time.monotonic() - t_kill
        self.assertGreaterEqual(waited, 2.5)
        for m in a.messages(type="collective_failed"):
            self.assertEqual(m["gen"], 1)
            self.assertEqual(set(m), {"type", "gen", "rank", "detail"})
            self.assertTrue(m["detail"])

        # Generation 2 = the survivors + a replacement that is never started;
        # while the survivors wait in the rendezvous, survivor p1 dies too.
        port2 = free_port()
        a.send_generation(p1, a.generation(2, 1, 3, port2))
        a.send_generation(p0, a.generation(2, 0, 3, port2))
        time.sleep(0.5)
        a.kill(p1)

        # Generation 3: p0 alone keeps the state; two replacements join.
        port3 = free_port()
        a.send_generation(p0, a.generation(3, 0, 3, port3))
        r1 = a.spawn(self.args, gen=3, rank=1, world=3, port=port3, join=True).pid
        r2 = a.spawn(self.args, gen=3, rank=2, world=3, port=port3, join=True).pid
        a.wait_hello([r1, r2])
        res = self.check_results([p0, r1, r2], regroups=1)
        h = res[0]["history"]
        self.assertEqual(len(h), 1)
        self.assertEqual(h[0]["gen"], 3)
        self.assertEqual(h[0]["attempts"], 2)   # generation 2 failed while forming
        self.assertEqual(h[0]["source"], 0)
        self.assertTrue(res[1]["history"][0]["replacement"])
        self.assertGreater(res[1]["history"][0]["transferred_bytes"], 0)


    def test_a_stuck_regroup_writes_its_stacks_and_a_finished_one_leaves_no_file(self):
        a = self.agent
        run = os.path.join(self.tmp, "run")
        logs = os.path.join(run, "logs")
        os.makedirs(logs)
        env = {"BULSAJO_RUN_DIR": run, "BULSAJO_STACKS_AFTER_S": "1"}
        port = free_port()
        p0 = a.spawn(self.args, gen=1, rank=0, world=2, port=port, env=env).pid
        p1 = a.spawn(self.args, gen=1, rank=1, world=2, port=port, env=env).pid
        a.wait_hello([p0, p1])
        a.wait_for(lambda: a.all_reached([p0, p1], 3), 40, "gen 1 steps")

        # Generation 2 is told to p0 only: it hosts the new group and waits
        # in its rendezvous for a rank 1 that never comes.
        a.send_generation(p0, a.generation(2, 0, 2, free_port()))
        path = os.path.join(logs, "stacks-gen2-pid%d.txt" % p0)
        a.wait_for(lambda: os.path.exists(path) and "most recent call first" in read(path),
                   20, "the stuck regroup's stacks")
        text = read(path)
        self.assertIn("_create_group", text, text)
        self.assertIn("_recover", text, text)

        # Generation 3 for both: the regroup completes, its file goes.
        port3 = free_port()
        a.send_generation(p0, a.generation(3, 0, 2, port3))
        a.send_generation(p1, a.generation(3, 1, 2, port3))
        self.check_results([p0, p1], regroups=1)
        self.assertEqual(sorted(os.listdir(logs)), ["stacks-gen2-pid%d.txt" % p0],
                         "only the stuck regroup's dump is left")


RACE_WORKER = textwrap.dedent("""\
    import hashlib, json, os, sys
    import torch, torch.nn as nn
    import bulsajo.torch as bj
    log, out = sys.argv[1], sys.argv[2]
    job = bj.init()
    torch.manual_seed(0)
    net = nn.Linear(8, 4)
    model = bj.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = bj.State(model=model, optimizer=opt)
    sampler = bj.ElasticSampler(1000, 8, seed=0)
    data = torch.randn(1000, 8, generator=torch.Generator().manual_seed(1))
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    job.on_commit(lambda step, rank, world, gen: os.write(fd, (
        "%d %d %d %s\\n" % (gen, step, rank, " ".join(map(str, sampler.indices(step, rank, world))))
    ).encode()))
    for step in job.steps(10, state):
        idx = sampler.indices(step, job.rank, job.world_size)
        opt.zero_grad()
        model(data[idx]).pow(2).sum().backward()
        if step == 4 and job.rank == 1 and job.generation == 1:
            # as if the all-reduce had failed here at its very end, after
            # rank 0 had already received everything and committed
            job._note_failure("injected", RuntimeError("late failure"))
        opt.step()
    h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters()))
    with open(out % job.rank, "w") as f:
        json.dump({"sha": h.hexdigest(), "history": job.history, "step": state.step}, f)
    job.close()
""")


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class CommitRaceTest(FakeAgentCase):
    tmp_prefix = "bulsajo-live-race-"

    def test_step_committed_on_one_rank_is_adopted_not_redone(self):
        a = self.agent
        script = self.script("race_worker.py", RACE_WORKER)
        log = os.path.join(self.tmp, "samples.log")
        out = os.path.join(self.tmp, "result%d.json")
        port = free_port()
        p0, p1 = [a.spawn([script, log, out], gen=1, rank=r, world=2, port=port).pid
                  for r in range(2)]
        a.wait_hello([p0, p1])
        # rank 1 regroups at once; rank 0 fails step 5; nobody died, so the
        # agent learns of it from collective_failed and regroups both.
        a.wait_for(lambda: len(a.messages(type="collective_failed")) >= 1, 20,
                   "collective_failed")
        a.regroup(2, [p0, p1], free_port())
        codes = a.wait_exit([p0, p1], 30)
        self.assertEqual(set(codes.values()), {0}, a.dump_logs())
        r0, r1 = [json.loads(read(out % r)) for r in range(2)]
        self.assertEqual(r0["sha"], r1["sha"])
        self.assertEqual((r0["step"], r1["step"]), (9, 9))
        h0, h1 = r0["history"][0], r1["history"][0]
        self.assertEqual(h0["source"], 0)
        self.assertEqual(h0["lost_steps"], 1)     # rank 0's step 5 is redone
        self.assertEqual(h1["lost_steps"], 0)     # rank 1's step 4 is adopted
        self.assertGreater(h1["transferred_bytes"], 0)
        self.assertEqual(a.max_step(p0, gen=1), 4)
        self.assertEqual(a.max_step(p1, gen=1), 3)
        # each step's samples logged exactly once; step 4 of rank 1 under gen 1
        lines = [l.split() for l in read(log).splitlines()]
        keys = sorted((int(l[1]), int(l[2])) for l in lines)
        self.assertEqual(keys, [(s, r) for s in range(10) for r in range(2)])
        self.assertIn(("1", "4", "1"), [tuple(l[:3]) for l in lines])
        from bulsajo.torch import ElasticSampler
        sampler = ElasticSampler(1000, 8, seed=0)
        for step in range(10):
            ids = sorted(int(x) for l in lines if int(l[1]) == step for x in l[3:])
            self.assertEqual(ids, sorted(sampler.global_indices(step)))


DIVERGE_WORKER = TINY_JOB + textwrap.dedent("""\
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    state = bj.State(model=model, optimizer=opt)
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    for step in job.steps(400, state):
        opt.zero_grad()
        model(data).pow(2).mean().backward()
        opt.step()
        if step == 10 and job.rank == 1 and job.generation == 1:
            with torch.no_grad():  # a silent corruption: no collective sees it
                opt.state[net.bias]["momentum_buffer"].add_(1e-3)
        time.sleep(0.02)
    with open(out % job.rank, "w") as f:
        json.dump({"digest": state.digest().hex(), "history": job.history}, f)
    job.close()
""")


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class DivergenceTest(FakeAgentCase):
    """Ranks at the same step whose states differ are found at the next
    regroup, by the agreement round itself, and all take the source's state:
    with nobody to hand the state to (a shrink), as with a joiner.  The
    corruption is in the optimizer state, which DDP never synchronises."""
    tmp_prefix = "bulsajo-live-diverge-"

    def run_case(self, joiner):
        a = self.agent
        script = self.script("diverge_worker.py", DIVERGE_WORKER)
        out = os.path.join(self.tmp, "result%d.json")
        pids = self.start_world([script, out])
        a.wait_for(lambda: a.all_reached(pids, 16), 40, "gen 1 steps")
        a.kill(pids[2])
        port2 = free_port()
        members, world = pids[:2], 2
        if joiner:
            world = 3
            a.regroup(2, members, port2, world=world)
            r = a.spawn([script, out], gen=2, rank=2, world=world, port=port2, join=True).pid
            a.wait_hello([r])
            members = members + [r]
        else:
            a.regroup(2, members, port2, world=world)
        codes = a.wait_exit(members, 60)
        self.assertEqual(set(codes.values()), {0}, a.dump_logs())
        res = [json.loads(read(out % r)) for r in range(world)]
        self.assertEqual(len({x["digest"] for x in res}), 1, res)
        for r in range(world):
            h = res[r]["history"]
            self.assertEqual(len(h), 1, h)
            self.assertTrue(h[0]["states_differed"], h)
            self.assertEqual(h[0]["source"], 0)
            self.assertTrue(h[0]["verified"])
        self.assertGreater(res[1]["history"][0]["transferred_bytes"], 0)
        self.assertIn("held different parameters or optimizer state", a.log(pids[0]))

    def test_shrink_repairs_divergence(self):
        self.run_case(joiner=False)

    def test_grow_repairs_divergence(self):
        self.run_case(joiner=True)


STUCK_WORKER = TINY_JOB + textwrap.dedent("""\
    where, marker = sys.argv[2], sys.argv[3]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    state = bj.State(model=model, optimizer=opt)
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    real = dist.all_reduce

    class Stuck(object):
        # What gloo leaves when it queues a send after its peer reset the
        # connection: a collective that nothing but the group's timeout ends
        # (here, nothing at all).
        def __init__(self):
            self.fut = torch.futures.Future()
        def get_future(self):
            return self.fut

    def stuck_once(*args, **kwargs):
        dist.all_reduce = real
        open(marker, "w").close()
        return Stuck()

    def arm(here):
        if here == where and step == 12 and job.rank == 1 and job.generation == 1:
            dist.all_reduce = stuck_once

    posted = None
    for step in job.steps(200, state):
        opt.zero_grad()
        if where.startswith("abandoned") and step == 12 and job.rank == 1 and job.generation == 1:
            # The step runs on after its group was abandoned: it must post
            # no collective there (gloo may queue a send it never wakes),
            # neither from the gradient hook nor from job.all_reduce alone.
            open(marker, "w").close()
            while not job._gens.newer_than(1):
                time.sleep(0.01)
            calls = []
            dist.all_reduce = lambda *a, **k: calls.append(1) or real(*a, **k)
            if where == "abandoned":
                model(data).pow(2).mean().backward()
            job.all_reduce(torch.ones(1))
            dist.all_reduce = real
            posted = len(calls)
            continue
        arm("hook")
        model(data).pow(2).mean().backward()
        arm("all_reduce")
        job.all_reduce(torch.ones(1))
        opt.step()
        time.sleep(0.02)
    with open(out % job.rank, "w") as f:
        json.dump({"digest": state.digest().hex(), "history": job.history,
                   "posted": posted}, f)
    job.close()
""")


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class StuckCollectiveTest(FakeAgentCase):
    """A collective of an abandoned group that gloo never ends (a send queued
    after its peer reset the connection) is released by the SDK soon after
    the abandon: the survivor regroups instead of waiting out the group's
    timeout, and its process still exits although the collective never ends.
    And a step that runs on after its group was abandoned posts no collective
    there at all, whether backward() or job.all_reduce comes first."""
    tmp_prefix = "bulsajo-live-stuck-"

    def run_case(self, where):
        a = self.agent
        script = self.script("stuck_worker.py", STUCK_WORKER)
        out = os.path.join(self.tmp, "result%d.json")
        marker = os.path.join(self.tmp, "stuck")
        pids = self.start_world([script, out, where, marker])
        a.wait_for(lambda: os.path.exists(marker), 60, "rank 1's stuck collective")
        a.kill(pids[2])
        a.regroup(2, pids[:2], free_port(), world=2)
        # The fake collective never ends: without the release this waits out.
        codes = a.wait_exit(pids[:2], 60)
        self.assertEqual(set(codes.values()), {0}, a.dump_logs())
        res = [json.loads(read(out % r)) for r in range(2)]
        self.assertEqual(res[0]["digest"], res[1]["digest"])
        for r in range(2):
            h = res[r]["history"]
            self.assertEqual(len(h), 1, h)
            self.assertTrue(h[0]["verified"], h)
        if where.startswith("abandoned"):
            self.assertEqual(res[1]["posted"], 0)
        else:
            self.assertIn("released 1 collective(s) of generation 1", a.log(pids[1]))

    def test_stuck_gradient_all_reduce_is_released(self):
        self.run_case("hook")

    def test_stuck_job_all_reduce_is_released(self):
        self.run_case("all_reduce")

    def test_no_collective_is_posted_on_an_abandoned_group(self):
        self.run_case("abandoned")

    def test_job_all_reduce_alone_posts_nothing_on_an_abandoned_group(self):
        self.run_case("abandoned_all_reduce")


if __name__ == "__main__":
    unittest.main()


GROW_WORKER = TINY_JOB + textwrap.dedent("""\
    import threading
    made_on_main = []  # each regroup's TCPStore: made by the main thread?
    tcp_store = bj._tcp_store
    def recording_tcp_store(*a, **kw):
        made_on_main.append(threading.current_thread() is threading.main_thread())
        return tcp_store(*a, **kw)
    bj._tcp_store = recording_tcp_store
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    state = bj.State(model=model, optimizer=opt)
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    steps, go = int(sys.argv[2]), sys.argv[3]
    if os.environ.get("BAD_LOAD"):  # a receiver whose copy comes out different
        apply = bj.State._apply
        def bad_apply(self, payload, keep_grads=False):
            apply(self, payload, keep_grads)
            with torch.no_grad():
                net.bias.add_(1e-3)
        bj.State._apply = bad_apply
    gens = []
    worlds = {}  # step -> the world size the step saw (job.world_size)
    sums = {}    # step -> job.all_reduce's sum of rank + 1
    for step in job.steps(steps, state):
        if not gens or gens[-1][0] != job.generation:
            gens.append((job.generation, step))
        worlds[step] = job.world_size
        ranks = torch.tensor([float(job.rank + 1)])
        if job.all_reduce(ranks):
            sums[step] = ranks.item()  # a healing joiner adds nothing
        while job.generation == 2 and step >= 30 and not os.path.exists(go):
            time.sleep(0.01)  # the members wait for their joiner, however slow its start
        hold = os.environ.get("HOLD_HEAL")
        if hold and gens[-1] == (3, step):  # a joiner held in its healing step
            open(hold + ".in", "w").close()
            while not os.path.exists(hold):
                time.sleep(0.01)
        opt.zero_grad()
        model(data).pow(2).mean().backward()
        opt.step()
        time.sleep(0.02)
    with open(out % job.rank, "w") as f:
        json.dump({"digest": state.digest().hex(), "history": job.history,
                   "gens": gens, "step": state.step, "reaped": job._reaper.freed,
                   "stores_on_main": made_on_main,
                   "torch_major": int(torch.__version__.split(".")[0]),
                   "worlds": worlds, "sums": sums}, f)
    job.close()
""")


@unittest.skipUnless(have_torch(), "needs torch (run with /usr/bin/python3)")
class GrowFormedAheadTest(FakeAgentCase):
    """A grow's group is formed by a thread while the members train on: they
    switch after the boundary step once every member's thread is done, all
    after the same step, and the joiner ends bit-identical. A fault while a
    grow is pending drops the group formed for it, and the job goes on."""
    tmp_prefix = "bulsajo-live-grow-"

    def shrink_then_joiner(self, script, out, steps, at_ahead, joiner_env=None, env=None):
        """3 ranks, rank 2 killed, the 2 survivors regrouped; a joiner made
        ready and the grow (generation 3) sent to all, at_ahead steps past
        the survivors' latest step. Returns (survivors, joiner pid, at_step).
        env: every rank's (BULSAJO_HEAL=1 by default: the grow heals)."""
        a = self.agent
        go = os.path.join(self.tmp, "go")
        argv = [script, out, str(steps), go]
        env = {"BULSAJO_HEAL": "1"} if env is None else env
        joiner_env = dict(env, **(joiner_env or {}))
        pids = self.start_world(argv, env=env)
        a.wait_for(lambda: a.all_reached(pids, 10), 60, "gen 1 steps")
        a.kill(pids[2])
        members = pids[:2]
        a.regroup(2, members, free_port())
        a.wait_for(lambda: a.all_reached(members, 29, gen=2), 60, "gen 2 steps")
        port3 = free_port()
        j = a.spawn(argv, gen=3, rank=2, world=3, port=port3,
                    join=True, grow=True, at_step=0, env=joiner_env).pid
        a.wait_for(lambda: j in a.readies, 60, "the joiner's ready")
        at = max(a.max_step(p, gen=2) for p in members) + at_ahead
        a.regroup(3, members, port3, world=3, grow=True, at_step=at)
        open(go, "w").close()
        return members, j, at

    def grow_to_the_end(self, steps, at_ahead, **kw):
        """shrink_then_joiner, then all 3 exit 0 at the last step with
        identical state. Returns (results by rank, at_step)."""
        a = self.agent
        script = self.script("grow_worker.py", GROW_WORKER)
        out = os.path.join(self.tmp, "result%d.json")
        members, j, at = self.shrink_then_joiner(script, out, steps, at_ahead, **kw)
        codes = a.wait_exit(members + [j], 90)
        self.assertEqual(set(codes.values()), {0}, a.dump_logs())
        res = [json.loads(read(out % r)) for r in range(3)]
        self.assertEqual(len({x["digest"] for x in res}), 1, res)
        self.assertEqual({x["step"] for x in res}, {steps - 1})
        return res, at

    def test_grow_switches_once_all_formed(self):
        res, at = self.grow_to_the_end(200, 2)
        first3 = set()
        for r in range(2):
            grow = [h for h in res[r]["history"] if h["gen"] == 3]
            self.assertEqual(len(grow), 1, res[r]["history"])
            self.assertTrue(grow[0]["formed_ahead"], grow)
            self.assertEqual(grow[0]["lost_steps"], 0, grow)
            self.assertEqual(grow[0]["source"], 0, grow)
            # the old group was left lazily: no collection at the switch
            self.assertNotIn("leave_gc", grow[0]["phases"], grow)
            # ... and its backend freed by the reaper thread (the last
            # reference), as was the backend of the group the shrink left
            self.assertEqual(res[r]["reaped"], 2, res[r])
            # Both regroups were formed by a thread. On torch 2.x their stores
            # were made by the training thread (the constructor records the
            # object without the GIL: bulsajo.torch._StoreMaker); on 1.x,
            # whose constructor keeps the GIL, by the forming thread.
            made = res[r]["stores_on_main"]
            self.assertEqual(len(made), 2, res[r])
            self.assertEqual(set(made), {res[r]["torch_major"] >= 2}, res[r])
            first3 |= {s for g, s in res[r]["gens"] if g == 3}
        # the members switched after the same step, past the boundary, and
        # the joiner's first step is that one's successor. The first vote is
        # taken after the boundary step and read after the next one (it runs
        # while that step computes): the switch is one step after its view.
        self.assertEqual(len(first3), 1, [x["gens"] for x in res])
        self.assertGreater(min(first3), at + 1, (first3, at))
        self.assertEqual([g for g in res[2]["gens"]], [[3, min(first3)]])
        jh = res[2]["history"]
        self.assertEqual(len(jh), 1, jh)
        self.assertFalse(jh[0]["formed_ahead"])
        self.assertTrue(jh[0]["replacement"])
        self.assertGreater(jh[0]["transferred_bytes"], 0)
        # the source serialized the state before the agreement, which gave
        # its length: the joiner received one message
        self.assertTrue(jh[0]["length_agreed"], jh)
        # the joiner built its DDP before the agreement (waiting there anyway)
        self.assertIn("ddp_build_early", jh[0]["phases"], jh)
        self.assertEqual(res[2]["reaped"], 0)
        # The joiner's first step was a healing one: it took part with zero
        # gradients while the state came, loaded and checked it at that
        # step's optimizer.step(); the members computed that step as the
        # world of 2 they were, and then as 3.
        s = min(first3)
        self.assertTrue(jh[0]["healed"], jh)
        self.assertTrue(jh[0]["verified"], jh)
        src = [h for h in res[0]["history"] if h["gen"] == 3][0]
        self.assertEqual(jh[0]["digest"], src["digest"])  # what it loaded is the source's
        self.assertIn("heal_load", jh[0]["phases"], jh)
        for r in range(2):
            self.assertEqual(res[r]["worlds"][str(s)], 2, (s, res[r]["worlds"]))
            self.assertEqual(res[r]["worlds"][str(s + 1)], 3)
        self.assertEqual(res[2]["worlds"][str(s)], 3)
        for r in range(3):  # the joiner's job.all_reduce gave the identity
            self.assertEqual(res[r]["sums"][str(s)], 3.0, (r, s))
            self.assertEqual(res[r]["sums"][str(s + 1)], 6.0, (r, s))

    def test_a_grow_heals_where_it_pays(self):
        """BULSAJO_HEAL unset: every rank prices the grow alike from the
        agreement's rows (the members' extra compute in a healing step
        against stopping them for the state), and it heals exactly when
        the first costs no more."""
        res, _ = self.grow_to_the_end(200, 2, env={})
        grow = [[h for h in res[r]["history"] if h["gen"] == 3][0] for r in range(3)]
        est = grow[0]["heal_estimate"]
        self.assertIsNotNone(est, grow)
        extra, send = est
        self.assertGreater(extra, 0, est)  # the members' steps were timed
        self.assertGreater(send, 0, est)   # and the state priced
        self.assertEqual([g["heal_estimate"] for g in grow], [est] * 3, grow)
        self.assertEqual(grow[2]["healed"], extra <= send, grow)
        s = res[2]["gens"][0][1]
        for r in range(2):  # a healing step is computed as the world of 2
            self.assertEqual(res[r]["worlds"][str(s)], 2 if extra <= send else 3, (r, s, est))

    def test_a_joiner_that_cannot_heal_is_sent_the_state_first(self):
        """One rank that cannot take part in a healing step (BULSAJO_HEAL=0
        here) and nobody does: the joiner receives and checks the state
        before its first step, which all compute as the world of 3."""
        res, _ = self.grow_to_the_end(200, 2, joiner_env={"BULSAJO_HEAL": "0"})
        jh = res[2]["history"]
        self.assertFalse(jh[0]["healed"], jh)
        self.assertTrue(jh[0]["verified"], jh)
        self.assertGreater(jh[0]["transferred_bytes"], 0)
        self.assertTrue(jh[0]["length_agreed"], jh)
        self.assertIn("ddp_build_early", jh[0]["phases"], jh)
        self.assertEqual(jh[0]["phases"]["ddp_build"], 0.0, jh)  # built only once
        s = res[2]["gens"][0][1]
        for r in range(3):
            self.assertEqual(res[r]["worlds"][str(s)], 3, (r, s, res[r]["worlds"]))

    def test_fault_while_grow_pending_drops_its_group(self):
        a = self.agent
        script = self.script("grow_worker.py", GROW_WORKER)
        out = os.path.join(self.tmp, "result%d.json")
        # a boundary far ahead: the grow is still pending when rank 1 dies
        members, j, at = self.shrink_then_joiner(script, out, 400, 10000)
        a.wait_for(lambda: a.max_step(members[0], gen=2) >= at - 10000 + 20, 60,
                   "training on past the grow message")
        a.kill(members[1])
        a.regroup(4, [members[0], j], free_port())  # the joiner takes rank 1
        codes = a.wait_exit([members[0], j], 90)
        self.assertEqual(set(codes.values()), {0}, a.dump_logs())
        res = [json.loads(read(out % r)) for r in range(2)]
        self.assertEqual(res[0]["digest"], res[1]["digest"])
        self.assertEqual({x["step"] for x in res}, {399})
        h = res[0]["history"]
        self.assertEqual([x["gen"] for x in h], [2, 4], h)
        # the fault's group, not the grow's: formed by a thread of its own
        # while the failed step finished (_forms_ahead)
        self.assertFalse(h[1]["grow"], h)
        self.assertTrue(h[1]["formed_ahead"], h)
        self.assertEqual([x["gen"] for x in res[1]["history"]], [4], res[1]["history"])

    def test_a_grow_past_the_last_step_heals_at_the_end(self):
        """A grow whose boundary lies past the last step: the members switch
        when done, and the joiner, which has no step left to heal in, loads
        and checks the state before the job ends."""
        res, _ = self.grow_to_the_end(120, 10000)
        self.assertEqual(res[2]["gens"], [])  # no step left for it
        jh = res[2]["history"]
        self.assertEqual([x["gen"] for x in jh], [3], jh)
        self.assertTrue(jh[0]["healed"] and jh[0]["verified"], jh)
        self.assertIn("heal_load", jh[0]["phases"], jh)
        for r in range(2):
            self.assertEqual([x["gen"] for x in res[r]["history"]], [2, 3], res[r]["history"])

    def fault_in_healing_step(self, victim):
        """The joiner held in its healing step (the source's state sent, not
        yet loaded) while member ``victim`` (0: the source) is killed: the
        step fails everywhere, the joiner is needy again in the next
        agreement and takes the surviving member's state, and both end
        bit-identical."""
        a = self.agent
        script = self.script("grow_worker.py", GROW_WORKER)
        out = os.path.join(self.tmp, "result%d.json")
        hold = os.path.join(self.tmp, "hold")
        members, j, at = self.shrink_then_joiner(script, out, 200, 2,
                                                 joiner_env={"HOLD_HEAL": hold})
        a.wait_for(lambda: os.path.exists(hold + ".in"), 60, "the joiner's healing step")
        a.kill(members[victim])
        survivor = members[1 - victim]
        a.regroup(4, [survivor, j], free_port())
        open(hold, "w").close()
        codes = a.wait_exit([survivor, j], 90)
        self.assertEqual(set(codes.values()), {0}, a.dump_logs())
        res = [json.loads(read(out % r)) for r in range(2)]
        self.assertEqual(res[0]["digest"], res[1]["digest"])
        self.assertEqual({x["step"] for x in res}, {199})
        jh = res[1]["history"]
        self.assertEqual([x["gen"] for x in jh], [3, 4], jh)
        self.assertTrue(jh[0]["healed"], jh)
        self.assertNotIn("heal_load", jh[0]["phases"], jh)  # never loaded in generation 3
        self.assertTrue(jh[1]["replacement"], jh)  # so it needed the state again
        self.assertTrue(jh[1]["verified"], jh)
        self.assertEqual(jh[1]["source"], 0, jh)
        # the healing step failed: the joiner's first committed step is in generation 4
        self.assertEqual([g for g, _ in res[1]["gens"]], [3, 4], res[1]["gens"])

    def test_fault_in_the_healing_step_of_a_member(self):
        self.fault_in_healing_step(1)

    def test_fault_in_the_healing_step_of_the_source(self):
        self.fault_in_healing_step(0)

    def test_a_receiver_whose_copy_differs_fails_alone(self):
        """The joiner checks the state it received against the source's
        digest itself; the members do not wait for that check. A copy that
        comes out different ends the joiner at its first (healing) step's
        optimizer.step(), before it applies anything, with the error, and
        the members go on without it, unchanged."""
        a = self.agent
        script = self.script("grow_worker.py", GROW_WORKER)
        out = os.path.join(self.tmp, "result%d.json")
        members, j, at = self.shrink_then_joiner(script, out, 200, 2, joiner_env={"BAD_LOAD": "1"})
        codes = a.wait_exit([j], 60)
        self.assertNotEqual(codes[j], 0)
        self.assertIn("not bit-identical to it", a.log(j))
        a.regroup(4, members, free_port())
        codes = a.wait_exit(members, 90)
        self.assertEqual(set(codes.values()), {0}, a.dump_logs())
        res = [json.loads(read(out % r)) for r in range(2)]
        self.assertEqual(res[0]["digest"], res[1]["digest"])
        self.assertEqual({x["step"] for x in res}, {199})
        self.assertFalse(os.path.exists(out % 2))

