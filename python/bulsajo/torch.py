"""bulsajo.torch: live recovery for PyTorch DDP training.

Under ``bulsajo run --recovery live`` a worker that dies (or hangs and is
killed) does not take the others down: the surviving processes re-form the
process group in-process under a new *generation*, a replacement process
joins and receives the full training state from a survivor, and training
continues, losing at most the step that was in flight::

    import torch, bulsajo.torch as bj
    job = bj.init()                                   # process group of the generation the agent assigns
    model = bj.DistributedDataParallel(Net())         # DDP, rebuilt on every regroup
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = bj.State(model=model, optimizer=opt)      # what a replacement receives (+ state.extra[...])
    sampler = bj.ElasticSampler(len(dataset), global_batch=128, seed=0)
    for step in job.steps(total_steps, state):        # re-yields a step that failed, after regrouping
        idx = sampler.indices(step, job.rank, job.world_size)
        loss = loss_fn(model(x[idx]), y[idx]); opt.zero_grad(); loss.backward(); opt.step()
    job.close()

Outside bulsajo's live mode (no ``BULSAJO_AGENT_CTL``) the same script runs
under torchrun or plain python: ``init()`` makes a static ``env://`` group and
a failed collective raises as usual.

Rules for the loop body:

* Gradients are averaged by the wrapper's comm hook; when that all-reduce
  fails the step is marked failed, ``optimizer.step()`` does nothing, and the
  next iteration regroups and yields the same step again.
* Your own collectives should use :meth:`Job.all_reduce`, which returns False
  instead of raising when the group broke (a plain ``dist.all_reduce`` may
  raise or hang until the agent moves everyone to a new generation).
* Anything that must happen exactly once per committed step (logging which
  samples were used, metrics) belongs in a :meth:`Job.on_commit` callback.
* Ranks must not differ in whether they call ``optimizer.step()``.

The tests run gloo on torch 1.13 and 2.x.  With nccl (bench/gpu/nccl_check.sh)
a group is abandoned by aborting its communicators (torch 2.x), since
shutting its sockets does not interrupt a CUDA kernel, and the NCCL watchdog
is told to clean up without ending the process (``TORCH_NCCL_ASYNC_ERROR_HANDLING``
/ torch 1.13's ``NCCL_ASYNC_ERROR_HANDLING`` = 2, unless set): in live mode a
failed collective's process is a survivor.
"""

import atexit
import collections
import contextlib
import ctypes
import datetime
import faulthandler
import gc
import hashlib
import inspect
import io
import os
import queue
import socket
import sys
import threading
import time
import types
import weakref

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as _TorchDDP

from . import _live

__all__ = ["init", "current_job", "Job", "DistributedDataParallel", "State",
           "ElasticSampler", "StateDivergedError"]

FAILED_NOTICE_S = 3.0     # wait this long for a new generation before telling the agent
GENERATION_WAIT_S = 60.0  # give up waiting for a new generation after this long
# The agreement row (_sync): step, needs the state, regroups, counting, the
# SHA-256 digest (32 values), can heal (0 no, 1 if it pays, 2 always), a
# step's time for the whole batch and the state's send cost (µs, _heal_pays),
# the length of the state a grow's source serialized ahead (0: none).
_ROW_DIGEST = slice(4, 36)
_ROW_HEAL = 36
_ROW_BATCH_US = 37
_ROW_SEND_US = 38
_ROW_PAYLOAD = 39
# A joiner that is sent the state before its first step stops the members for
# the wire and its own decoding, loading and hashing of the state (each about
# one pass over it, as long as a holder's digest: _heal_pays); the wire is
# priced at 1 GB/s (10 Gb Ethernet; loopback is faster).
SEND_PASSES = 3
WIRE_BYTES_PER_S = 1e9
GROUP_TIMEOUT_S = 60.0    # process-group timeout (store and collectives)
# How long close() waits for a group formation it dropped (_end_prepared).
CLOSE_FORMING_S = 10.0
# After a newer generation abandons a group, a gloo collective still running
# this long is stuck and is released (see _InFlight).  gloo fails the others
# within tens of milliseconds of the sockets' shutdown.
ABANDON_GRACE_S = 2.0
WORK_WARMUP_STEPS = 3     # steps after a group forms that work reports leave out
WORK_REPORT_S = 1.0       # one work report per this many seconds (live mode)
# A regroup not done this long after its generation arrived dumps the stacks
# (_arm_stacks); the variable is for tests.
STACKS_AFTER_S = float(os.environ.get("BULSAJO_STACKS_AFTER_S") or 10.0)
# A grow's group is formed by a thread while the members train on (_Prepared).
# Past the grow's boundary step they switch once every member's thread is
# done; this long after the grow message they switch anyway and wait for it.
PREPARE_WAIT_S = 1.0

_JOB = None

# torch 1.x needs workarounds that 2.x does not (each use says which).
_TORCH_MAJOR = int(torch.__version__.split(".")[0])
# torch >= 2.4's TCPStore takes use_libuv (and defaults to True).
_HAS_USE_LIBUV = "use_libuv" in (getattr(dist.TCPStore.__init__, "__doc__", None) or "")
_NO_LIBUV = None   # this torch was built without libuv (probed once)
# pybind11 (pybind11#5473; torch fixed its bindings in 2.7, pytorch#143598)
# records a new Python object in its instance table without the GIL when the
# binding is a factory that releases the GIL: torch 2.x's TCPStore(...) and,
# on 1.13 and 2.x, ProcessGroupGloo(store, rank, size, timeout). Another
# thread that makes or drops a pybind11 object meanwhile (the training
# thread: every collective's Work and Future) corrupts the table, and the
# process aborts later: "pybind11_object_dealloc(): Tried to deallocate
# unregistered instance!" (rank 0 at a grow, twice; reproduced in a few
# seconds by bench/pybind_race.py). So gloo groups are made with the
# Options overload (a plain constructor: recorded with the GIL held), and on
# torch 2.x a store a forming thread needs is made by the training thread,
# where it makes no other (_StoreMaker). _QUIET is held by what drops a
# pybind11 object on another thread (a backend, a group formed for
# nothing) and by the training thread while it makes a store.
_STORE_CTOR_RELEASES_GIL = _TORCH_MAJOR >= 2
_QUIET = threading.Lock()


class StateDivergedError(RuntimeError):
    """After a recovery the ranks' parameters/optimizer state differ (a bug)."""


def current_job():
    """The Job made by :func:`init` in this process, or None."""
    return _JOB


def init(backend="auto"):
    """Join the job: returns the process's :class:`Job` (idempotent).

    Under bulsajo live recovery (``BULSAJO_AGENT_CTL`` set) this connects to
    the agent, waits for the generation it assigns and creates the default
    process group for it; a replacement process (one started to take a lost
    rank's place) does that when it enters :meth:`Job.steps`, so its
    ``rank`` and ``world_size`` are None until then.  Otherwise it creates (or adopts) a static
    ``env://`` group as torchrun expects; plain ``python script.py`` gets a
    world of one.  ``backend``: "auto" (nccl with CUDA, else gloo), "gloo" or
    "nccl".
    """
    global _JOB
    if _JOB is not None:
        return _JOB
    _JOB = Job(backend)
    atexit.register(_close_at_exit)
    return _JOB


def _close_at_exit():
    # A process group left to interpreter shutdown can abort the process
    # ("terminate called without an active exception"): close it first.
    job = _JOB
    if job is not None:
        try:
            job.close()
        except Exception:
            pass
    _drop_kept_stores(everything=True)


def _env_int(name, default):
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return default


def _now():
    return time.monotonic()


class Job(object):
    """A worker's membership in the training job (made by :func:`init`).

    Attributes: ``rank``, ``world_size``, ``generation`` (current), ``live``
    (True under bulsajo live recovery), ``regroups`` (recoveries the job has
    been through, agreed by all ranks), ``history`` (one dict per recovery
    this process took part in: generation, seconds, source rank, bytes
    transferred, resumed step, steps lost, verified digest, and ``phases``:
    seconds spent leaving the old group, forming the new one, agreeing,
    transferring state, rebuilding DDP and verifying).
    """

    def __init__(self, backend="auto"):
        if backend in (None, "auto"):
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        self.backend = backend
        self.live = bool(os.environ.get("BULSAJO_AGENT_CTL"))
        self.regroups = 0
        self.history = []
        self._t_start = _now()
        self._device = torch.device("cpu")
        if backend == "nccl":
            local = _env_int("LOCAL_RANK", 0)
            torch.cuda.set_device(local)
            self._device = torch.device("cuda", local)
        if backend == "nccl" and self.live:
            # The watchdog aborts a failed or timed-out communicator but leaves
            # the process alive (CleanUpOnly); torch 2.x's default (3) and
            # torchrun's (1) end it, and here it is a survivor.
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
            os.environ.setdefault("NCCL_ASYNC_ERROR_HANDLING", "2")  # torch 1.13's name
        self._wrappers = []
        self._commit_cbs = []
        self._state = None
        self._pg = None
        self._group = None          # _live.GroupSockets of the current group (live)
        self._prepared = None       # _Prepared: a grow's group being formed (live, gloo)
        self._prep_lock = threading.Lock()
        self._switch_vote = None    # ((gen, step), switch?) of the last vote (_switch_now)
        self._switch_clean = None   # that vote's generation, if all formed and the old group healthy
        self._vote = None           # ((gen, step), future, sum): the vote in flight (_switch_now)
        self._vote_wait = 0.0       # how long the switch waited for it
        self._first_after = None    # (end of the last _sync, its history entry)
        self._reaper = _Reaper()    # frees lazily left groups' backends
        self._stores = _StoreMaker()  # forming threads' stores, made here (torch 2.x)
        self._formed_ahead = False  # the current group was formed by a thread (_forms_ahead)
        self._grow = False          # the current group is a grow's (no member lost)
        self._healing = None        # _Heal / _HealPeer: the next step is a healing one
        self._sending = []          # the source's isend works to healing joiners
        self._running = None        # _InFlight of the current group (live, gloo)
        self._own_store = None      # rank 0: the current group's server store (_forget_store)
        self._synced = False
        self._stacks = None      # (gen, file, path): the armed stack dump (_arm_stacks)
        self._stacks_lock = threading.Lock()
        self._closed = False
        self._ending = False        # training done: no group is formed ahead any more
        # per-step bookkeeping (training thread; the comm hook may set _broken
        # from a gloo thread)
        self._in_step = False
        self._broken = None         # why the current group is unusable, or None
        self._opt_called = False
        self._applied = False
        self._skipped = False
        self._dirty = False         # an optimizer step was applied in a step that failed
        self._inflight = None       # (step, rank, world, gen) of the step being run
        self._gen = None
        self._rank = None
        self._world = None
        self.replacement = False
        self._has_state = True
        self._meter = _WorkMeter(self._device.type == "cuda") if self.live else None
        if self.live:
            self._init_live()
        else:
            self._init_static()

    # ------------------------------------------------------------ properties
    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        """The number of ranks the current step's batch is split over: the
        group's size, except in a grow's healing step, where the members
        compute the step without the joiners (see _Heal)."""
        h = self._healing
        if h is not None and not h.joiner and self._in_step:
            return h.contributors  # a healing step: split over the ranks that compute one
        return self._world

    @property
    def generation(self):
        return self._gen

    # ---------------------------------------------------------------- static
    def _init_static(self):
        if not dist.is_initialized():
            if _libuv_missing():
                os.environ["USE_LIBUV"] = "0"  # or torch's env:// store fails
            if "WORLD_SIZE" not in os.environ and "MASTER_PORT" not in os.environ:
                # plain `python script.py`: a world of one on a free port
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    os.environ["MASTER_PORT"] = str(s.getsockname()[1])
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            dist.init_process_group(self.backend, init_method="env://")
            self._owns_pg = True
        else:
            self._owns_pg = False
        self._pg = dist.group.WORLD
        self._rank = dist.get_rank()
        self._world = dist.get_world_size()
        self._gen = _env_int("BULSAJO_GENERATION", _env_int("TORCHELASTIC_RESTART_COUNT", 0))

    # ------------------------------------------------------------------ live
    def _init_live(self):
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
            os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "False"  # rank 0 hosts each store
        self._gens = _live.Generations()
        self._link = _live.AgentLink(os.environ["BULSAJO_AGENT_CTL"], self._on_message)
        self._gens.keep.add(self._link.inode)
        # A replacement (a joiner, BULSAJO_JOIN=1) asks to be admitted only
        # once it enters steps(): the survivors keep training while it builds
        # its data, model and optimizer, and stop for it only to form the
        # group and hand it the state.
        self.replacement = os.environ.get("BULSAJO_JOIN") == "1"
        hello = {"type": "hello", "pid": os.getpid(),
                 "gen": _env_int("BULSAJO_GENERATION", 0), "rank": _env_int("RANK", -1)}
        if self.replacement:
            hello["wait"] = True
        if not self._link.send(hello, timeout=10.0):
            # Unsent, the agent would never know this process: fail now, not
            # after waiting out GENERATION_WAIT_S for a generation.
            raise RuntimeError("bulsajo: could not send hello to the agent at %s within 10 s"
                               % os.environ["BULSAJO_AGENT_CTL"])
        self._link.start()
        if self.replacement:
            self._has_state = False
            return
        self._join_first()

    def _join_first(self):
        """Wait for this process's first generation and form its group."""
        first = self._gens.wait_newer(None, GENERATION_WAIT_S)
        if first is None:
            raise RuntimeError("bulsajo: the agent sent no generation within %d s of %s"
                               % (GENERATION_WAIT_S, "ready" if self.replacement else "hello"))
        if first.get("join"):
            self.replacement = True
            self._has_state = False
        msg = first
        while True:
            try:
                self._create_group(msg)
                return
            except Exception as e:  # the generation broke while forming
                detail = "forming generation %s: %r" % (msg.get("gen"), e)
                self._leave_group()
                msg = self._wait_generation(int(msg["gen"]), _now(), detail,
                                            rank=msg.get("rank"))

    def _on_message(self, msg):  # reader thread
        if msg.get("type") != "generation":
            return
        # A grow's group is formed ahead, by a thread. It is registered before
        # the message is offered: the training thread, once it sees the
        # generation, must find it rather than form a second one.
        prep = None
        if self._synced and not self._ending and self._forms_ahead(msg):
            prep = _Prepared(msg)
            with self._prep_lock:
                old, self._prepared = self._prepared, prep
            if old is not None:
                self._release(old)
        if self._gens.offer(msg, committed=self._committed_step):
            if self._synced:
                self._arm_stacks(int(msg["gen"]))
            if prep is not None:
                self._start_prepared(prep)
        elif prep is not None:  # stale: never formed
            with self._prep_lock:
                if self._prepared is prep:
                    self._prepared = None
            prep.error = _live.Superseded("stale generation %d" % prep.gen)
            prep.done.set()

    # ------------------------------------------------- a grow formed ahead
    def _forms_directly(self, msg):
        """Whether the group of generation ``msg`` is built directly (not by
        init_process_group): a regroup's (a grow's or a fault's, any
        generation after the first), on gloo. The same answer on every
        member, from the message alone, so all meet in the same rendezvous."""
        regroup = bool(msg.get("grow")) or int(msg.get("gen", 1)) > 1
        return regroup and self.backend == "gloo" and _direct_gloo()

    def _forms_ahead(self, msg):
        """A member (not a joiner) forms a regroup's group in a thread: a
        grow's while it trains on in the old group; a fault's while it
        finishes the step that failed (the rest of its backward, which no
        failed collective cuts short: a large model's whole pause otherwise)."""
        if not self._forms_directly(msg) or msg.get("join"):
            return False
        return msg.get("at_step") is not None if msg.get("grow") else True

    def _start_prepared(self, prep):
        t = threading.Thread(target=self._run_prepared, args=(prep,), daemon=True,
                             name="bulsajo-form-gen%d" % prep.gen)
        try:
            t.start()
        except RuntimeError as e:  # no thread: formed at the switch instead
            prep.error = e
            prep.done.set()
            self._stores.poke()

    def _run_prepared(self, prep):
        """Thread: form generation prep.gen's group while training goes on."""
        try:
            prep.group = group = self._gens.begin_group(prep.gen)
        except Exception as e:
            prep.error = e
            prep.done.set()
            self._stores.poke()
            return
        box = []
        store = None
        try:
            store, pg = self._form_direct(prep.msg)
            box.append(pg)
            del pg
        except Exception as e:
            prep.error = e
        finally:
            if not self._gens.end_group(group) and prep.error is None:
                prep.error = _live.Superseded("generation %d superseded while forming" % prep.gen)
        with prep.lock:
            prep.seconds = _now() - prep.t0
            keep = prep.error is None and not prep.released
            if keep:
                prep.store, prep.pg = store, box.pop()
            prep.done.set()
            released = prep.released
        self._stores.poke()  # the training thread may be waiting for it
        with _QUIET:
            store = None  # the last reference when not kept
        if box:
            _free_group(box)  # formed for nothing
        if released:
            self._gens.forget(group)

    def _release(self, prep):
        """Drop a prepared group that will not be used (now, or when its
        thread ends)."""
        with prep.lock:
            prep.released = True
            done = prep.done.is_set()
            box = [prep.pg] if prep.pg is not None else []
            store, prep.pg, prep.store = prep.store, None, None
        with _QUIET:
            store = None
        if box:
            _free_group(box)
        if done and prep.group is not None:
            self._gens.forget(prep.group)

    def _take_prepared(self, gen):
        """The group prepared for generation ``gen``, if any; an older one is
        released. A newer one stays for its generation: the reader thread
        prepared it just now, and this one is superseded (taken, it would be
        formed a second time, on a port its own thread holds). None: all go."""
        with self._prep_lock:
            prep = self._prepared
            if prep is None or (gen is not None and prep.gen > gen):
                return None
            self._prepared = None
        if prep.gen == gen:
            return prep
        self._release(prep)
        return None

    def _end_prepared(self):
        """Drop a group still being formed ahead (a grow that came as the job
        finished) and wait for its thread: a process that exits while a
        thread is inside gloo's or the store's constructor aborts
        ("terminate called without an active exception"). Its sockets are
        shut so that it fails at once: nobody will use it."""
        with self._prep_lock:
            prep, self._prepared = self._prepared, None
        if prep is None:
            return
        self._release(prep)
        self._gens.close()  # a formation not yet begun does not begin
        g = prep.group
        if g is not None and not prep.done.is_set():
            self._gens.abandon(g)
            self._gens.sweep(g)
        prep.done.wait(CLOSE_FORMING_S)

    def _switch_now(self):
        """Past a grow's boundary: switch after this step? The members decide
        together, by a sum over the old group, so that all switch after the
        same step: once every one's thread has formed the new group, or at
        once when one's failed or took longer than PREPARE_WAIT_S (the switch
        then waits for it, as a group formed at the switch would).

        The sum is taken after committing a step and read after the next one:
        it runs while that step computes instead of stopping every member
        before it (0.3-6 ms of scheduling per vote on 2 cores). Every member
        that has the grow message when it commits the boundary step takes the
        first sum there, in the same place among the group's collectives; one
        that learns of the grow later abandons the old group (offer), as
        before. So the switch comes one step later than the vote's view."""
        with self._gens.cv:
            msg = dict(self._gens.latest)
        if not (msg.get("grow") and self._forms_ahead(msg)):
            return True  # formed at the switch, or not a grow (no switch to agree on)
        gen = int(msg["gen"])
        step = self._state.step
        key = (gen, step)
        if self._switch_vote is not None and self._switch_vote[0] == key:
            return self._switch_vote[1]
        pending, self._vote = self._vote, None
        switch = False
        if pending is not None and pending[0] == (gen, step - 1):
            _, fut, t = pending
            t_vote = _now()
            ok = fut.wait()
            self._vote_wait = _now() - t_vote
            switch = not ok or int(t[0].item()) == 0 or int(t[1].item()) > 0
            # Every member's group is formed and the old one is healthy: it may
            # be left lazily (_leave_group(lazy=True)).
            clean = ok and switch and int(t[0].item()) == 0 and self._broken is None
            self._switch_clean = gen if clean else None
        if not switch:
            with self._prep_lock:
                prep = self._prepared
            if prep is None or prep.gen != gen:
                ready, go = False, True
            else:
                done = prep.done.is_set()
                ready = done and prep.error is None
                go = (done and prep.error is not None) or _now() - prep.t0 > PREPARE_WAIT_S
            t = torch.tensor([0 if ready else 1, 1 if go else 0], dtype=torch.int64,
                             device=self._device)
            fut = self._all_reduce_async(t, "switch vote")
            if fut is None:
                switch = True  # the old group is broken: leave it now
            else:
                self._vote = (key, fut, t)
        self._switch_vote = (key, switch)
        return switch

    def _all_reduce_async(self, tensor, what):
        """Start a sum over the current group (live, gloo); a future of True
        (done) or False (failed: the step in flight will not commit), or None
        when the group is already broken."""
        group, running = self._group, self._running
        if (running is None or self._broken is not None or self._pg is None
                or (group is not None and group.abandoned)):
            return None
        try:
            fut = dist.all_reduce(tensor, group=self._pg, async_op=True).get_future()
        except Exception as e:
            self._note_failure(what, e)
            return None

        def done(f):
            try:
                f.value()
                return True
            except Exception as e:
                if self._group is group:  # not a later group's step
                    self._note_failure(what, e)
                return False
        return running.wrap(fut, False, done)

    def _arm_stacks(self, gen):
        """A regroup takes well under a second. If this process has not
        finished the one into ``gen`` STACKS_AFTER_S after its message came,
        every thread's Python stack goes to logs/stacks-gen{gen}-pid{pid}.txt
        in the run dir: what a stuck regroup was doing, before the hang
        detector kills the process and the answer with it. faulthandler's
        watchdog is a C thread: it writes even while this process holds the
        GIL. Reader thread; disarmed by the end of that regroup or a later
        one (an empty file is removed)."""
        run = os.environ.get("BULSAJO_RUN_DIR")
        if not run:
            return
        with self._stacks_lock:
            self._disarm_locked()
            path = os.path.join(run, "logs", "stacks-gen%d-pid%d.txt" % (gen, os.getpid()))
            try:
                f = open(path, "w")
                faulthandler.dump_traceback_later(STACKS_AFTER_S, repeat=False, file=f)
            except (OSError, ValueError, RuntimeError):
                return
            self._stacks = (gen, f, path)

    def _disarm_stacks(self, upto=None):
        """Disarm the watchdog armed for a generation <= upto (None: any)."""
        with self._stacks_lock:
            if self._stacks is not None and (upto is None or self._stacks[0] <= upto):
                self._disarm_locked()

    def _disarm_locked(self):
        armed, self._stacks = self._stacks, None
        if armed is None:
            return
        _, f, path = armed
        try:
            faulthandler.cancel_dump_traceback_later()
            empty = os.fstat(f.fileno()).st_size == 0
            f.close()
            if empty:
                os.unlink(path)
        except OSError:
            pass

    def _committed_step(self):  # called under self._gens.cv
        return -1 if self._state is None else self._state.step

    def _send(self, msg, timeout=None):
        if self.live and not self._closed:
            self._link.send(msg, timeout=timeout)

    def _wait_generation(self, after, t_fault, detail, rank=None):
        """Wait for a generation newer than ``after``; tell the agent after 3 s."""
        told = False
        t0 = _now()
        while True:
            msg = self._gens.wait_newer(after, 0.1 if not told else 1.0)
            if msg is not None:
                return msg
            waited = _now() - t0
            if not told and waited >= FAILED_NOTICE_S:
                told = True
                self._send({"type": "collective_failed", "gen": after,
                            "rank": self._rank if rank is None else rank,
                            "detail": str(detail)[:500]}, timeout=5.0)
            if waited >= GENERATION_WAIT_S:
                raise RuntimeError(
                    "bulsajo: the process group of generation %s failed (%s) and the agent "
                    "assigned no new generation within %d s" % (after, detail, GENERATION_WAIT_S))

    def _wait_store(self, addr, port, gen):
        """Non-zero ranks: wait until rank 0's store listens (torch would retry
        for the whole timeout), giving up as soon as a newer generation exists."""
        deadline = _now() + GROUP_TIMEOUT_S
        while True:
            if self._gens.newer_than(gen):
                raise _live.Superseded("generation %d superseded" % gen)
            try:
                s = socket.create_connection((addr, port), timeout=1.0)
                s.close()
                return
            except OSError:
                pass
            if _now() > deadline:
                raise RuntimeError("bulsajo: store %s:%s of generation %d never listened"
                                   % (addr, port, gen))
            time.sleep(0.005)  # a refused connect costs microseconds; waiting here is the pause

    def _open_store(self, msg, timeout):
        """Generation ``msg``'s TCPStore: rank 0 hosts it, the others connect.

        What init_method="tcp://addr:port" does. The waiting is done by our
        probe (rank > 0: it gives up as soon as a newer generation exists,
        and spares the log torch 2.x's retries write), by the group's own
        rendezvous, never in the store constructor."""
        gen, rank, world = int(msg["gen"]), int(msg["rank"]), int(msg["world_size"])
        addr = str(msg.get("master_addr") or "127.0.0.1")
        port = int(msg["master_port"])
        gave_up = lambda: self._gens.newer_than(gen)  # noqa: E731
        if rank == 0:
            return self._stores.make(lambda: _tcp_store(addr, port, world, True, timeout),
                                     gave_up, gen)
        self._wait_store(addr, port, gen)

        def connect():
            # Its server listens, so this takes a millisecond. The short
            # connect timeout bounds what a server gone since costs: the
            # training thread that makes it (torch 2.x, _StoreMaker), or on
            # torch 1.x, whose constructor holds the GIL while it retries, the
            # reader thread that would abandon this group.
            store = _tcp_store(addr, port, world, False, datetime.timedelta(seconds=5))
            store.set_timeout(timeout)
            return store
        return self._stores.make(connect, gave_up, gen)

    def _form_direct(self, msg):
        """(store, gloo group) of generation ``msg``, built without
        init_process_group, so that a thread can do it while the default
        group still trains (_install_default makes it the default later)."""
        timeout = datetime.timedelta(seconds=GROUP_TIMEOUT_S)
        store = self._open_store(msg, timeout)
        try:
            return store, _direct_gloo_group(store, int(msg["rank"]), int(msg["world_size"]),
                                             timeout)
        except BaseException:
            with _QUIET:
                store = None  # not by the traceback, later, on this thread
            raise

    def _create_group(self, msg):
        gen = int(msg["gen"])
        rank = int(msg["rank"])
        world = int(msg["world_size"])
        ph = getattr(self, "_phases", None)
        if ph is None:
            ph = {}
        self._formed_ahead = False
        self._grow = bool(msg.get("grow"))
        prep = self._take_prepared(gen)
        ahead = prep is not None
        if prep is None and self._gens.newer_than(gen):
            # The message was the latest when taken; a newer one came since.
            raise _live.Superseded("generation %d superseded before forming" % gen)
        if prep is None and self._forms_directly(msg):
            # Formed by a thread here too, so that a newer generation ends
            # this wait at once: a formation that waits for a peer that died
            # mid-rendezvous would otherwise hold this process (a joiner, a
            # member at its switch) for the group's whole timeout.
            prep = _Prepared(msg)
            self._start_prepared(prep)
        if prep is not None:
            # Formed by a thread (while training went on, when ahead): wait
            # for it (it has its own timeouts) or a newer generation, then
            # make it the default group.
            t = _now()
            deadline = t + GROUP_TIMEOUT_S + 10
            while not prep.done.is_set():
                self._stores.wait(0.05)  # a store asked for, the group formed, or 50 ms
                self._stores.serve()
                if self._gens.newer_than(gen) or _now() > deadline:
                    break
            ph["form_wait" if ahead else "form_direct"] = _now() - t
            group = prep.group
            if prep.done.is_set():
                err = prep.error
            elif self._gens.newer_than(gen):
                err = _live.Superseded("generation %d superseded while forming" % gen)
            else:
                err = RuntimeError("bulsajo: the group of generation %d was not formed" % gen)
            if err is None and group.abandoned:
                err = _live.Superseded("generation %d superseded" % gen)
            if err is not None:
                self._release(prep)  # what it formed goes, now or when its thread ends
                raise err
            with prep.lock:
                prep.released = True  # taken: its thread must not free it
                store, pg, prep.store, prep.pg = prep.store, prep.pg, None, None
            self._group = group
            self._gen, self._rank, self._world = gen, rank, world
            _install_default(pg, store, world)
            self._own_store = store if rank == 0 else None
            del store, pg
            self._formed_ahead = ahead
            if ahead:
                ph["formed_ahead_s"] = prep.seconds
        else:
            group = self._gens.begin_group(gen)
            self._group = group
            self._gen, self._rank, self._world = gen, rank, world
            ok = False
            timeout = datetime.timedelta(seconds=GROUP_TIMEOUT_S)
            try:
                t = _now()
                store = self._open_store(msg, timeout)
                ph["form_store"] = _now() - t  # rank > 0: waiting for rank 0 too
                t = _now()
                with _prompt_init_barrier():
                    dist.init_process_group(self.backend, store=store, rank=rank,
                                            world_size=world, timeout=timeout)
                ph["form_init"] = _now() - t
                self._own_store = store if rank == 0 else None
                del store
                ok = True
            finally:
                if not self._gens.end_group(group) and ok:
                    raise _live.Superseded("generation %d superseded while forming" % gen)
        self._pg = dist.group.WORLD
        if self.backend == "gloo":
            self._running = running = _InFlight(self, gen)
            group.abort = running.abandoned
        if self.backend == "nccl":
            abort = _nccl_abort(self._pg)
            if abort is not None:
                def abandon(abort=abort, gen=gen):
                    # What an aborted NCCL collective leaves in its output is
                    # garbage, not an error: the step must not commit.
                    if self._gen == gen:
                        self._note_failure("NCCL", RuntimeError("generation %d abandoned" % gen))
                    abort()
                group.abort = abandon
        self._broken = None

    def _leave_group(self, abandon=True, lazy=False):
        """Drop the current group (ignoring errors): shut its sockets so that
        no collective or destructor can wait on a dead peer (abandon), drop
        the DDP wrappers' inner modules, destroy the default group.

        lazy: a grow's switch, with every member's new group formed and the
        old one healthy (_switch_clean): its sockets are not shut (nobody
        waits on them) and there is no collection (DDP holds no reference
        cycle; its reducers went with the wrappers). Either way the backend
        is freed by a thread: 10-30 ms that were a pause of every member."""
        ph = getattr(self, "_phases", None)
        if ph is None:
            ph = {}
        t = _now()
        for w in self._wrappers:
            w._drop()
        ph["leave_drop"] = _now() - t
        group, self._group = self._group, None
        self._vote = None  # a vote in flight on it: its future goes with running.left()
        own_store, self._own_store = self._own_store, None
        if group is not None and abandon and not lazy:
            self._gens.abandon(group)
        self._pg = None
        ph["leave_abandon"] = _now() - t
        t = _now()
        backend = _hold_backend(self._device)
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass
        _reset_group_counter()
        ph["leave_destroy"] = _now() - t
        if own_store is not None and abandon and not lazy:
            # Not kept (see STORE_KEEP_S): it formed, so every client has
            # connected. Kept, torch 1.x's own client of it spins on the
            # socket the abandon shut. The backend, which holds it too, is
            # its last owner: it goes with it, on the reaper, without the
            # GIL (a destructor that joins the store's threads under the GIL
            # would hold up this thread). A group left lazily keeps its
            # store a while: nothing of it was shut, and closed now it would
            # end the other members' connections to it while they switch
            # (their 1.x callback threads spin on that EOF until they let go).
            _forget_store(own_store)
        del own_store
        running, self._running = self._running, None
        stuck = running.left() if running is not None else []
        heal, self._healing = self._healing, None
        if heal is not None and heal.joiner and not heal.done.is_set():
            stuck.append(heal)  # its thread's receive ends when the sockets shut
        stuck.extend(self._sending)  # never waited for: a fault came first
        self._sending = []
        if lazy:
            # The destructor joins the backend's worker threads and closes
            # its sockets without the GIL (see _hold_backend), on the reaper.
            holder, backend = [backend], None
            if stuck:
                _free_when_done(holder, stuck)
            else:
                self._reaper.free(holder)
            del holder
        else:
            t = _now()
            gc.collect()  # the reducers and the ProcessGroupGloo go now, not later
            if self._synced:
                # What is left lives on (see steps()): the next regroup's
                # collection scans only what this one and the steps after it make.
                gc.freeze()
            # The backend's destructor (joining its threads, closing its
            # sockets: 15-20 ms on this machine) runs on another thread while
            # this one takes the new group, which is formed by then or being
            # formed (_forms_ahead).
            holder, backend = [backend], None
            if stuck:
                # Its worker threads still run a released collective: the backend
                # goes when that ends (the group's timeout).
                _free_when_done(holder, stuck)
            else:
                self._reaper.free(holder)
            del holder
            ph["leave_gc"] = _now() - t
        if group is not None:
            self._gens.forget(group)

    # ------------------------------------------------------------- failures
    def _note_failure(self, what, exc):
        """A collective failed (any thread). The step will not commit."""
        if self._broken is None:
            self._broken = "%s: %s" % (what, str(exc).splitlines()[0] if str(exc) else repr(exc))

    def _superseded(self):
        """A newer generation must be joined now (a grow waits for its step)."""
        if not (self.live and self._gen is not None and self._gens.newer_than(self._gen)):
            return False
        at = self._gens.pending_boundary(self._gen)
        if at is None or self._state is None:
            return True
        return self._state.step >= at and self._switch_now()

    def all_reduce(self, tensor, op=None):
        """All-reduce ``tensor`` in place over the current group.

        Returns True on success.  Under live recovery a failure returns False
        (the step will not commit and the job regroups at the next
        iteration); outside it the exception propagates.
        """
        if op is None:
            op = dist.ReduceOp.SUM
        group = self._group
        if self.live and (self._broken is not None or self._pg is None
                          or (group is not None and group.abandoned)):
            if self._broken is None:
                self._note_failure("all_reduce", RuntimeError("group abandoned"))
            return False
        heal = self._healing
        if heal is not None and heal.joiner and self._in_step:
            _fill_identity(tensor, op)  # a healing step: the others' result, unchanged
        t = _now()
        try:
            running = self._running if self.live else None
            if running is None:
                dist.all_reduce(tensor, op=op, group=self._pg)
                return True
            fut = dist.all_reduce(tensor, op=op, group=self._pg, async_op=True).get_future()

            def done(f):
                try:
                    f.value()
                    return True
                except Exception as e:
                    self._note_failure("all_reduce", e)
                    return False
            return running.wrap(fut, False, done).wait()
        except Exception as e:
            if not self.live:
                raise
            self._note_failure("all_reduce", e)
            return False
        finally:
            if self._meter is not None and self._in_step:
                self._meter.waited += _now() - t  # a collective: waiting, not work

    def on_commit(self, callback):
        """Call ``callback(step, rank, world_size, generation)`` once for every
        step whose result this rank's share of the batch went into.

        It runs right after the step commits, with the rank, world size and
        generation the step ran under.  When this rank's copy of a step failed
        but the step committed on other ranks (the failure hit the very end of
        the gradient all-reduce), it runs during the regroup that adopts that
        step, still with the rank/world/generation the step ran under.  A step
        that failed and is redone is reported once, for the run that committed.
        A joiner's healing step (its first, with zero gradients) is not
        reported: no share of it was this rank's.
        """
        self._commit_cbs.append(callback)
        return callback

    def _committed(self, step, rank, world, gen):
        for cb in self._commit_cbs:
            cb(step, rank, world, gen)

    # ---------------------------------------------------------------- steps
    def steps(self, total, state):
        """Yield the global step numbers state.step+1 .. total-1.

        After each step the job checks whether it committed (no collective
        failed before ``optimizer.step()``).  On a fault (live mode) it
        regroups under the next generation, reconciles the state and yields
        the first uncommitted step again.

        Live mode: the first call runs ``gc.freeze()``, so that the garbage
        collection each regroup does scans only objects made since (reference
        cycles among objects made before training starts are not collected).
        """
        if not isinstance(state, State):
            raise TypeError("steps() needs a bulsajo.torch.State")
        self._state = state
        state._job = self
        self._stores.owner = threading.get_ident()  # the thread that serves (_StoreMaker)
        if not self._synced:
            if self.live:
                # Every regroup runs gc.collect() to drop the old group and
                # DDP reducers at once; over the whole heap of a process that
                # imported torch that takes 0.5-1 s on a busy machine, all of
                # it a pause for the survivors. Everything made so far (torch,
                # the user's data and model) lives for the whole job: leave it
                # out of collections, which then only scan what regroups made.
                gc.freeze()
                self._reaper.start()  # now, not at a grow's switch
            if self._gen is None:  # a replacement: admitted now (see _init_live)
                if not self._link.send({"type": "ready"}, timeout=10.0):
                    raise RuntimeError("bulsajo: could not tell the agent this replacement "
                                       "is ready within 10 s")
                _warm_up(self._wrappers)  # while the members are told (they train on)
                self._join_first()
            self._first_sync()
        while True:
            step = state.step + 1
            self._stores.serve()  # between steps: a store a forming thread needs
            # A newer generation is joined before anything else; at the end
            # even a grow whose boundary lies beyond the last step (the
            # joiners must not be left waiting for members that are done).
            if self._superseded() or (step >= total and self.live and self._gens.newer_than(self._gen)):
                self._recover("generation %d superseded" % self._gen)
                continue
            if step >= total:
                if self._healing is not None:
                    # A grow at the very end: a joiner loads the state now.
                    ok = self._finish_heal(keep_grads=False)
                    self._healing = None
                    if not ok:
                        self._recover(self._broken)
                        continue
                if self._finish(total):
                    return
                continue
            self._broken = None
            self._opt_called = self._applied = self._skipped = False
            healing = self._healing
            self._in_step = True
            self._inflight = (step, self._rank, self.world_size, self._gen)
            meter = self._meter
            if meter is not None:
                meter.begin()
            try:
                yield step
            finally:
                self._in_step = False
            committed = self._applied or (not self._opt_called and self._broken is None)
            if self._applied and self._skipped:
                committed = False
                self._dirty = True
            if self._sending and healing is None and self._broken is None:
                self._wait_sends()  # done: the joiners took part in this step
            if committed and healing is not None and healing.joiner and not healing.loaded:
                # No optimizer.step() in it: the state before it is the state after.
                committed = self._finish_heal(keep_grads=False)
            self._healing = None
            if meter is not None:
                rep = meter.end(committed and self._broken is None, self._world)
                if rep is not None:
                    rep.update({"type": "work", "gen": self._gen, "rank": self._rank})
                    self._send(rep)
            if committed:
                if self.live:
                    with self._gens.cv:  # ordered with a grow message's boundary check
                        state.step = step
                else:
                    state.step = step
                inflight, self._inflight = self._inflight, None
                if healing is None or not healing.joiner:  # a joiner's healing step had no share
                    self._committed(*inflight)
                first, self._first_after = self._first_after, None
                if first is not None and first[1] is not None:
                    # a regroup's first step, from the end of _sync to its commit
                    first[1]["phases"]["first_step"] = round(_now() - first[0], 4)
                if self.live:
                    self._send({"type": "step", "gen": self._gen, "rank": self._rank,
                                "step": step})
                else:
                    _report_static_progress(step)
            if self._broken is not None or self._superseded():
                if not self.live:
                    raise RuntimeError("bulsajo: collective failed: %s" % self._broken)
                self._recover(self._broken or "generation %d superseded" % self._gen)

    def _finish(self, total):
        """All ranks agree the last step committed everywhere (live mode)."""
        if not self.live:
            return True
        t = torch.tensor([self._state.step], dtype=torch.int64, device=self._device)
        if self.all_reduce(t, op=dist.ReduceOp.MIN) and int(t.item()) >= total - 1:
            self._wait_sends()  # every joiner has loaded the state by now
            self._ending = True
            # Teardown from here: no step will follow, and that is no hang.
            self._send({"type": "finished", "gen": self._gen, "rank": self._rank,
                        "step": self._state.step})
            return True
        self._recover(self._broken or "final check: a rank is behind")
        return False

    def _first_sync(self):
        if not self.live:
            self._sync(counting=False, t0=self._t_start)
            return
        try:
            self._sync(counting=self.replacement, t0=self._t_start)
        except StateDivergedError:
            raise
        except Exception as e:
            self._recover("first sync: %r" % (e,), t0=self._t_start)

    def _recover(self, reason, t0=None):
        """Regroup under the next generation; loops until a group formed,
        the state is reconciled and verified."""
        t_fault = _now() if t0 is None else t0
        failed_gen, failed_rank = self._gen, self._rank
        attempts = 0
        detail = reason
        while True:
            ph = self._phases = {}
            ph["vote_wait"], self._vote_wait = self._vote_wait, 0.0
            t = _now()
            # A clean grow switch leaves lazily; a retry (the new group
            # failed), or a newer generation than the grow's (a fault came
            # first), leaves as after any fault.
            with self._gens.cv:
                latest = self._gens.latest
            lazy = (attempts == 0 and self._broken is None and latest is not None
                    and self._switch_clean == int(latest["gen"]))
            self._switch_clean = None
            self._leave_group(lazy=lazy)
            ph["leave"] = _now() - t
            t = _now()
            msg = self._wait_generation(failed_gen, t_fault, detail, rank=failed_rank)
            ph["wait_generation"] = _now() - t
            attempts += 1
            try:
                t = _now()
                self._create_group(msg)
                ph["form_group"] = _now() - t
                self._sync(counting=True, t0=t_fault, attempts=attempts)
                return
            except StateDivergedError:
                raise
            except Exception as e:
                detail = "regroup into generation %s: %r" % (msg.get("gen"), e)
                failed_gen, failed_rank = int(msg["gen"]), int(msg["rank"])

    def _sync(self, counting, t0, attempts=1):
        """Reconcile the state over the new group, rebuild DDP, verify."""
        state = self._state
        if state is None:
            raise RuntimeError("bulsajo: job.steps() was not started")
        dev = self._device
        ph = getattr(self, "_phases", None)
        if ph is None:
            ph = self._phases = {}
        t = _now()
        holder = self._has_state and not self._dirty
        # Buffers are in no digest (broadcast_buffers=False keeps them per rank):
        # a module with any gets DDP's own broadcast, at the same point on every rank.
        buffers = any(True for w in self._wrappers for _ in w.module.buffers())
        built = False
        if not holder and self.live and not buffers and _ddp_init_sync_skippable():
            # A replacement builds its DDP (no collective in it then) before
            # the agreement, where it waits for the members anyway, rather
            # than between the state's arrival and its first step, which
            # every member waits for (1-3 ms of a first build on 2 cores).
            t_b = _now()
            with _no_ddp_init_sync():
                for w in self._wrappers:
                    w._build(self._pg)
            built = True
            ph["ddp_build_early"] = _now() - t_b
        # A holder's digest goes with its step: when nobody needs the state
        # (a shrink: every survivor holds the same step), this one round
        # both agrees and verifies.
        t_hash = _now()
        digest = state.digest() if holder else bytes(32)
        ph["digest"] = _now() - t_hash
        send_us = 0
        if holder:  # the state's send priced by this digest's time (_heal_pays)
            hashed = ph["digest"]
            nbytes = getattr(state, "_digest_bytes", 0)
            send_us = int(1e6 * (SEND_PASSES * hashed + nbytes / WIRE_BYTES_PER_S))
        batch = self._meter.batch_time() if self._meter is not None else 0.0
        # A grow's source is rank 0 (every member holds the boundary step):
        # it serializes the state now and gives its length in its row, so
        # that the joiner needs one message, not a length and then the state.
        payload = None
        if self.live and self._grow and holder and self._rank == 0:
            payload = state._serialize()
        mine = torch.tensor([state.step, 0 if holder else 1, self.regroups,
                             1 if counting else 0] + list(digest)
                            + [self._can_heal(), int(1e6 * batch), send_us,
                               len(payload) if payload is not None else 0],
                            dtype=torch.int64, device=dev)
        rows = [torch.zeros_like(mine) for _ in range(self._world)]
        dist.all_gather(rows, mine, group=self._pg)
        rows = [[int(v) for v in r.tolist()] for r in rows]
        holders = [(r, row[0]) for r, row in enumerate(rows) if row[1] == 0]
        if not holders:
            raise StateDivergedError("bulsajo: no rank of generation %d holds the training "
                                     "state (all are replacements)" % self._gen)
        best = max(s for _, s in holders)
        source = min(r for r, s in holders if s == best)
        # Holders of the same step whose states differ (models initialised
        # without a common seed; a silent corruption) all take the source's.
        differ = any(rows[r][_ROW_DIGEST] != rows[source][_ROW_DIGEST]
                     for r, s in holders if s == best)
        # Who takes the source's state: replacements, holders behind it, and
        # holders at its step whose digest is not its.
        needy = [r for r, row in enumerate(rows)
                 if row[1] or row[0] != best or row[_ROW_DIGEST] != rows[source][_ROW_DIGEST]]
        transfer = bool(needy)
        # A few (a grow's joiner, a rank behind) get it point to point and
        # check it against the source's digest (in the agreement's rows)
        # themselves: the others neither receive it nor wait for its check,
        # and go on to their next step, where they wait for the receivers
        # while they compute it. Many (a first group whose models differ)
        # get one broadcast and one all-gathered check.
        p2p = 0 < len(needy) <= max(1, self._world // 4)
        # Joiners (replacements, the last ranks: a grow's) that every rank can
        # heal do not stop the others: they take part in their first step with
        # zero gradients while the state arrives, and load it before that
        # step's optimizer.step() (see _Heal).
        contributors = self._world - len(needy)
        heal = (p2p and needy == list(range(contributors, self._world))
                and all(rows[r][1] for r in needy) and all(row[_ROW_HEAL] for row in rows))
        estimate = None
        if heal:
            # Only where the members' extra compute costs no more than stopping
            # them for the state (the same rows on every rank: the same choice).
            pays, estimate = _heal_pays(rows, len(needy), self._world)
            heal = pays or any(row[_ROW_HEAL] == 2 for row in rows)
        counting = any(row[3] for row in rows)
        if differ and counting and self._rank == 0:
            _live._warn("bulsajo: ranks at step %d held different parameters or optimizer "
                        "state; all took rank %d's (generation %d)" % (best, source, self._gen))
        ph["agree"] = _now() - t
        t = _now()
        nbytes = 0
        receives = self._rank in needy if p2p else (transfer and self._rank != source)
        healing = None
        if heal and receives:
            # The source's state arrives on a thread; loaded in _finish_heal.
            healing = _Heal(self._gen, source, bytes(rows[source][_ROW_DIGEST]),
                            rows[source][_ROW_PAYLOAD])
            healing.start(self._pg, dev)
            receives = False
            state.step = best  # the step this one is yielded after

        def move(x):  # the source's tensor x to the receivers: each (few), or all
            if not p2p:
                dist.broadcast(x, src=source, group=self._pg)
            elif self._rank == source and heal:
                # To healing joiners: sent while this rank goes on to its
                # step (each work keeps x alive; dropped once completed).
                self._sending.extend(dist.isend(x, dst=r, group=self._pg) for r in needy)
            elif self._rank == source:
                for r in needy:
                    dist.send(x, dst=r, group=self._pg)
            else:
                dist.recv(x, src=source, group=self._pg)
        if transfer and (self._rank == source or receives):
            nbytes = rows[source][_ROW_PAYLOAD]  # serialized ahead: known to all
            if self._rank == source and payload is None:
                payload = state._serialize()
            if nbytes == 0:
                if self._rank == source:
                    n = torch.tensor([len(payload)], dtype=torch.int64, device=dev)
                else:
                    n = torch.zeros(1, dtype=torch.int64, device=dev)
                move(n)
                nbytes = int(n.item())
            if self._rank == source:
                buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(dev)
            else:
                buf = torch.empty(nbytes, dtype=torch.uint8, device=dev)
            move(buf)
            if receives:
                state._load(_tensor_bytes(buf))
                digest = None  # replaced: hashed again below
        if healing is None:
            self._has_state = True
            self._dirty = False
        ph["transfer"] = _now() - t
        t = _now()
        if not built:
            with contextlib.nullcontext() if buffers else _no_ddp_init_sync():
                for w in self._wrappers:
                    w._build(self._pg)
        ph["ddp_build"] = _now() - t
        t = _now()
        if p2p:
            # A receiver whose state is not the source's stops here, before
            # it trains: it fails, and the others go on without it. (A
            # healing one checks when it has loaded it: _finish_heal.)
            if self._rank in needy and healing is None:
                digest = state.digest()
                if list(digest) != rows[source][_ROW_DIGEST]:
                    raise StateDivergedError(
                        "bulsajo: after receiving rank %d's state in generation %d this rank's "
                        "parameters and optimizer state are not bit-identical to it" % (source, self._gen))
            same = True
        elif transfer:
            if digest is None:
                digest = state.digest()
            d = torch.tensor(list(digest), dtype=torch.uint8, device=dev)
            ds = [torch.zeros_like(d) for _ in range(self._world)]
            dist.all_gather(ds, d, group=self._pg)
            same = all(torch.equal(x.cpu(), d.cpu()) for x in ds)
        else:
            same = True  # every rank holds the best step, and their digests matched
        if not same:
            raise StateDivergedError(
                "bulsajo: after recovery into generation %d the ranks' parameters and "
                "optimizer state are not bit-identical" % self._gen)
        ph["verify"] = _now() - t
        self._phases = None
        self._disarm_stacks(upto=self._gen)
        # Success: account for it.
        if self._meter is not None:
            self._meter.reset()  # a new group warms up again (DDP rebuilds its buckets)
        self._synced = True
        self._broken = None
        # The next step is a healing one: the joiners' gradients are zeros
        # and the others' are averaged over themselves (_allreduce_hook),
        # who see the world they split the batch over without the joiners.
        self._healing = healing or (_HealPeer(self._gen, contributors) if heal else None)
        inflight, self._inflight = self._inflight, None
        lost = 0
        if inflight is not None:
            if state.step >= inflight[0]:
                self._committed(*inflight)   # committed elsewhere: adopted, not redone
            else:
                lost = 1                      # the step in flight is redone
        if counting:
            self.regroups = max(row[2] for row in rows) + 1
            self.history.append({
                "gen": self._gen, "rank": self._rank, "world_size": self._world,
                "seconds": round(_now() - t0, 4), "attempts": attempts,
                "replacement": not holder,
                "source": source, "transferred_bytes": nbytes, "step": state.step,
                "lost_steps": lost, "verified": healing is None,
                "digest": digest.hex()[:16] if healing is None else None,
                "states_differed": differ,
                # the group was formed by a thread while training (a grow) or the
                # failed step (a fault) went on
                "formed_ahead": self._formed_ahead,
                "grow": self._grow,
                # where the regroup's time went, in seconds (this rank's view)
                "phases": {k: round(v, 4) for k, v in ph.items()},
                # a joiner that took part in its first step with zero gradients
                "healed": healing is not None,
                # a grow that could heal: [the members' extra compute in a healing
                # step, stopping them for the state] in ms, as estimated (_heal_pays)
                "heal_estimate": estimate,
                # the state's length came in the agreement (serialized ahead by
                # a grow's source): the receivers took one message, not two
                "length_agreed": transfer and rows[source][_ROW_PAYLOAD] > 0,
            })
            if healing is not None:
                healing.record = self.history[-1]  # completed by _finish_heal
        self._first_after = (_now(), self.history[-1] if counting else None)
        return True

    def _wait_sends(self):
        """The source: wait for its sends to healing joiners (gloo completes
        a send's work only in wait()). Called once a joiner has loaded the
        state (a step after its healing step committed, or the end), when it
        returns at once; a fault hands them to _leave_group instead."""
        sending, self._sending = self._sending, []
        for w in sending:
            w.wait()

    def _can_heal(self):
        """Whether this rank can take part in a healing step (_Heal): gloo,
        the gradients all-reduced by our DDP hook, the state loaded at
        optimizer.step(). 0: it cannot (or BULSAJO_HEAL=0); 1: where it pays
        (_heal_pays); 2: always (BULSAJO_HEAL=1)."""
        st = self._state
        if not (self.backend == "gloo" and bool(self._wrappers) and st is not None
                and st.optimizer is not None):
            return 0
        return {"0": 0, "1": 2}.get(os.environ.get("BULSAJO_HEAL", ""), 1)

    def _finish_heal(self, keep_grads):
        """A healing joiner: take the source's state (received by the
        thread), check it against the source's digest. False: not received
        (the group broke): the step fails. keep_grads: loaded inside the
        step, before optimizer.step() applies the step's averaged gradient."""
        h = self._healing
        if h is None or not h.joiner or h.loaded:
            return True
        t = _now()
        if not h.done.wait(GROUP_TIMEOUT_S):
            self._note_failure("state transfer", RuntimeError(
                "the state from rank %d did not arrive within %d s" % (h.source, GROUP_TIMEOUT_S)))
            return False
        if h.error is not None:
            self._note_failure("state transfer", h.error)
            return False
        waited = _now() - t
        t = _now()
        state = self._state
        state._apply(h.data, keep_grads=keep_grads)
        h.data = None
        self._has_state = True
        self._dirty = False
        loaded = _now() - t
        t = _now()
        digest = state.digest()
        if digest != h.expect:
            raise StateDivergedError(
                "bulsajo: after receiving rank %d's state in generation %d this rank's "
                "parameters and optimizer state are not bit-identical to it" % (h.source, h.gen))
        h.loaded = True
        rec = h.record
        if rec is not None:
            rec["transferred_bytes"] = h.nbytes
            rec["verified"] = True
            rec["digest"] = digest.hex()[:16]
            rec["phases"].update({"heal_wait": round(waited, 4), "heal_load": round(loaded, 4),
                                  "verify": round(_now() - t, 4)})
        return True

    def close(self):
        """Leave the job: destroy the group, close the agent connection."""
        global _JOB
        if self._closed:
            return
        if self.live:
            self._disarm_stacks()
            self._ending = True
            self._stores.close()  # a formation still asking for its store ends
            self._end_prepared()  # a grow the job ended before: dropped
            self._leave_group(abandon=False)  # graceful: peers may still be finishing
            self._reaper.drain(10)  # a group left lazily goes before the interpreter
            self._closed = True
            self._link.close()
        else:
            self._closed = True
            for w in self._wrappers:
                w._drop()
            self._pg = None
            backend = None
            if getattr(self, "_owns_pg", False) and dist.is_initialized():
                backend = _hold_backend(self._device)
                try:
                    dist.destroy_process_group()
                except Exception:
                    pass
            gc.collect()  # the group goes now, not during interpreter shutdown
            del backend   # the last reference: freed without the GIL (see _hold_backend)
        if _JOB is self:
            _JOB = None


@contextlib.contextmanager
def _prompt_init_barrier():
    """torch 1.x ends init_process_group with a store barrier that polls every
    10 ms; every rank of a regroup waits in it.  Here the last rank to arrive
    sets a key the others wait on (Store.wait wakes at once, without the GIL,
    and fails at once when an abandon shuts the store's connection).  torch
    2.x has no such barrier by default (TORCH_DIST_INIT_BARRIER)."""
    c10d = dist.distributed_c10d
    orig = getattr(c10d, "_store_based_barrier", None)
    if _TORCH_MAJOR >= 2 or orig is None or \
            list(inspect.signature(orig).parameters) != ["rank", "store", "timeout"]:
        yield  # not the barrier this replaces
        return

    def barrier(rank, store, timeout):
        key = "bulsajo_init_barrier:%d" % c10d._group_count
        if store.add(key, 1) >= c10d.get_world_size():
            store.set(key + ":all", "1")
        store.wait([key + ":all"], timeout)

    c10d._store_based_barrier = barrier
    try:
        yield
    finally:
        c10d._store_based_barrier = orig


def _reset_group_counter():
    """torch (1.13 and 2.x alike) names a group's store prefix and barrier key
    after a private counter that only destroy_process_group() resets; an
    init_process_group that failed half-way leaves it raised (and no default
    group to destroy), and the next group's rendezvous would then never meet a
    fresh replacement's.  Put it back to 0.  There is no public API for it."""
    if dist.is_initialized():
        return
    c10d = dist.distributed_c10d
    try:
        w = getattr(c10d, "_world", None)
        if _TORCH_MAJOR >= 2 and w is not None and hasattr(w, "group_count"):
            w.group_count = 0                      # 2.x: _World's property
            return
        # torch 1.13: module globals, and the half-made group's entries
        c10d._group_count = 0
        for name in ("_pg_map", "_pg_names", "_pg_group_ranks"):
            d = getattr(c10d, name, None)
            if isinstance(d, dict):
                d.clear()
    except Exception:
        pass


def _hold_backend(device):
    """A reference to the default group's backend (ProcessGroupGloo/NCCL),
    to be dropped once the group is destroyed and its DDP reducers collected,
    so that the backend's destructor runs without the GIL.  None when there
    is no group.

    That destructor joins the backend's worker threads.  A worker finishing a
    collective whose tensor only it still holds (Python dropped its tensor)
    takes the GIL to free that tensor's Python object, so the destructor run
    under the GIL deadlocks: the process never exits (torch 2.6: in close()
    after crash-then-hang, about 1 run in 4).  The backend's Python binding
    releases the GIL in its destructor, but nothing else that may hold the
    last reference does: on torch 2.x the ProcessGroup that wraps the backend
    (destroy_process_group() drops it), on any version a DDP reducer (gc).
    On torch 1.13 the default group is the backend itself."""
    if not dist.is_initialized():
        return None
    pg = dist.group.WORLD
    if _TORCH_MAJOR < 2:
        return pg
    try:
        return pg._get_backend(device)
    except Exception:
        return None


def _libuv_missing():
    """True when this torch (>= 2.4) was built without libuv, its TCPStore's
    default backend (Debian 13's 2.6): a server store on port 0 says so at
    once.  Not probed when the user set USE_LIBUV."""
    global _NO_LIBUV
    if _NO_LIBUV is None:
        _NO_LIBUV = False
        if _HAS_USE_LIBUV and "USE_LIBUV" not in os.environ:
            try:
                dist.TCPStore("127.0.0.1", 0, None, True, datetime.timedelta(seconds=5),
                              wait_for_workers=False, use_libuv=True)
            except Exception as e:
                _NO_LIBUV = "libuv" in str(e)
    return _NO_LIBUV


def _tcp_store(addr, port, world, is_master, timeout):
    """A TCPStore that works with and without libuv: use_libuv=False where the
    argument exists and libuv is absent or USE_LIBUV=0 (as torch's env://)."""
    kw = {"wait_for_workers": False}
    if _HAS_USE_LIBUV and (os.environ.get("USE_LIBUV") == "0" or _libuv_missing()):
        kw["use_libuv"] = False
    if is_master and _TORCH_MAJOR < 2:
        _drop_kept_stores(port)
    store = dist.TCPStore(addr, port, world, is_master, timeout, **kw)
    if is_master and _TORCH_MAJOR < 2:
        with _kept_lock:
            _kept_stores.append((_now(), port, store))
    return store


# torch 1.x: a TCPStore client's background thread (its callback channel)
# aborts the whole process ("terminate called after throwing an instance of
# 'std::system_error' what(): Connection reset by peer") when that
# connection is reset, and a server store that closes while a client's
# connection still waits in its listen backlog resets it: rank 0 dropping a
# formation superseded while the others connect (seen once in
# TestLiveSecondFaultWhileAGrowForms, which lost the joiner to it). So a
# server store lives STORE_KEEP_S after it was made at least: its
# generation's clients connect as soon as it listens, or give up when a newer
# generation exists. torch 2.x's client has no such thread.
#
# That thread also spins at full speed once its connection is at EOF (it
# peeks 0 bytes and polls again): rank 0's own client of a kept store, whose
# socket an abandon shut (_live.GroupSockets), took half a core until the
# store was dropped, up to one more fault later at faults 5 s apart. So a
# group's store is let go when the group is abandoned (_forget_store): it
# formed, so no client of it is left to connect.
STORE_KEEP_S = 5.0
_kept_stores = collections.deque()  # (made at, port, store), oldest first
_kept_lock = threading.Lock()


def _drop_kept_stores(port=None, everything=False):
    """Let go of the server stores kept past STORE_KEEP_S, those on ``port``
    (a fixed --master-port: the next generation's store binds it), or all.
    A store still in use stays alive through its group."""
    now = _now()
    with _kept_lock:
        drop = [e for e in _kept_stores
                if everything or now - e[0] > STORE_KEEP_S or (port and e[1] == port)]
        for e in drop:
            _kept_stores.remove(e)
    del drop  # destructors outside the lock


def _forget_store(store):
    """Stop keeping ``store`` (by identity: a fixed --master-port is reused).
    The caller holds it still: its destructor does not run here."""
    with _kept_lock:
        for e in [e for e in _kept_stores if e[2] is store]:
            _kept_stores.remove(e)


class _StoreMaker(object):
    """Makes the TCPStores that forming threads need on the training thread,
    between steps or while it waits for a group (serve), where it makes and
    drops no pybind11 object itself (see _QUIET): torch 2.x's constructor
    records the store without the GIL. A client's store is asked for once
    its server listens (_wait_store), so making it takes a millisecond.
    On torch 1.x (its constructor holds the GIL) and on the training thread
    itself the caller makes it; once the job ends (close) none is made."""

    def __init__(self):
        self._lock = threading.Lock()
        self._asked = []          # [make, result, error, done Event]
        self.wake = threading.Event()  # something asked for, or a group formed (poke)
        self.owner = threading.get_ident()
        self.closed = False

    def make(self, fn, gave_up, gen):
        if not _STORE_CTOR_RELEASES_GIL or threading.get_ident() == self.owner:
            return fn()
        req = [fn, None, None, threading.Event()]
        with self._lock:
            self._asked.append(req)
        self.wake.set()
        while not req[3].wait(0.01):
            with self._lock:
                if req in self._asked and (self.closed or gave_up()):
                    self._asked.remove(req)
                    raise _live.Superseded("generation %d %s" % (
                        gen, "not formed: the job is ending" if self.closed else "superseded"))
        if req[2] is not None:
            raise req[2]
        return req[1]

    def wait(self, timeout):
        self.wake.wait(timeout)
        self.wake.clear()

    def poke(self):
        self.wake.set()

    def serve(self):
        """Training thread: make what is asked for."""
        if not self._asked:
            return
        with self._lock:
            asked, self._asked = self._asked, []
        for req in asked:
            with _QUIET:
                try:
                    req[1] = req[0]()
                except Exception as e:
                    req[2] = e
            req[3].set()

    def close(self):
        """No more serving (the job is ending): what is asked for is not made."""
        self.closed = True


class _Prepared(object):
    """A generation's group, formed by a thread (Job._run_prepared): a
    grow's or a fault's ahead, while the members train on or finish the
    failed step; any other direct formation too, so that the training
    thread's wait for it can end when a newer generation comes (it may not:
    see Generations.begin_group). ``lock`` orders the thread's hand-over
    with a release."""

    def __init__(self, msg):
        self.msg = msg
        self.gen = int(msg["gen"])
        self.t0 = _now()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.group = None      # _live.GroupSockets
        self.store = None
        self.pg = None
        self.error = None
        self.seconds = None    # from the message to the group formed
        self.released = False  # not to be used (or taken): the thread frees what it formed


_DIRECT_GLOO = None


def _direct_gloo():
    """Whether this torch has what building a gloo group directly and making
    it c10d's default group takes (private names; checked once)."""
    global _DIRECT_GLOO
    if _DIRECT_GLOO is None:
        c10d = dist.distributed_c10d
        ok = (hasattr(dist, "ProcessGroupGloo") and hasattr(dist, "PrefixStore")
              and callable(getattr(c10d, "_update_default_pg", None)))
        if ok and _TORCH_MAJOR < 2:
            ok = all(isinstance(getattr(c10d, n, None), dict)
                     for n in ("_pg_map", "_pg_names", "_pg_group_ranks"))
        elif ok:
            w = getattr(c10d, "_world", None)
            ok = (w is not None and callable(getattr(c10d, "_register_process_group", None))
                  and hasattr(dist.ProcessGroup, "_register_backend")
                  and hasattr(dist.ProcessGroup, "_set_group_name")
                  and all(hasattr(w, n) for n in ("pg_map", "pg_names", "pg_group_ranks",
                                                  "pg_backend_config", "tags_to_pg",
                                                  "pg_to_tag", "group_count")))
        _DIRECT_GLOO = bool(ok)
    return _DIRECT_GLOO


def _direct_gloo_group(store, rank, world, timeout, prefix="0"):
    """A gloo group on ``store`` under key prefix ``prefix`` ("0": the one
    init_process_group gives the default group). torch 1.x: ProcessGroupGloo
    is a ProcessGroup; 2.x: a ProcessGroup with a gloo backend registered for
    the CPU. The constructor does gloo's rendezvous without holding the GIL.
    (bench/ uses it too.)"""
    ps = dist.PrefixStore(prefix, store)
    if _TORCH_MAJOR < 2:
        return dist.ProcessGroupGloo(ps, rank, world, _gloo_options(timeout))
    pg = dist.ProcessGroup(ps, rank, world)
    be = dist.ProcessGroupGloo(ps, rank, world, _gloo_options(timeout))
    pg._set_default_backend(dist.ProcessGroup.BackendType.GLOO)
    pg._register_backend(torch.device("cpu"), dist.ProcessGroup.BackendType.GLOO, be)
    return pg


def _gloo_options(timeout):
    """What ProcessGroupGloo(store, rank, size, timeout) builds, for its
    Options overload: that one records the new object with the GIL held,
    the timeout one without it (see _QUIET)."""
    G = dist.ProcessGroupGloo
    o = G._Options()
    o._timeout = timeout
    names = os.environ.get("GLOO_SOCKET_IFNAME", "")
    if len(names) > 1:  # as torch: interfaces listed there, else the hostname's
        o._devices = [G.create_device(interface=n) for n in names.split(",") if n]
    else:
        o._devices = [G.create_default_device()]
    o._threads = 2 * len(o._devices)
    return o


def _install_default(pg, store, world):
    """Make ``pg`` c10d's default group, as init_process_group would have:
    dist.get_rank(), dist.all_reduce(t), DDP without a group and
    destroy_process_group() then work on it (bench/pg_install_check.py
    checks it)."""
    c10d = dist.distributed_c10d
    ranks = {i: i for i in range(world)}
    if _TORCH_MAJOR < 2:
        c10d._pg_map[pg] = (dist.Backend.GLOO, store)
        c10d._pg_names[pg] = "0"
        c10d._pg_group_ranks[pg] = ranks
        c10d._group_count = 1
        c10d._update_default_pg(pg)
        return
    w = c10d._world
    pg._set_group_name("0")
    if hasattr(pg, "_set_group_desc"):
        pg._set_group_desc("default_pg")
    c10d._register_process_group("0", pg)
    w.pg_map[pg] = (dist.Backend.GLOO, store)
    w.pg_names[pg] = "0"
    w.pg_group_ranks[pg] = ranks
    w.pg_backend_config[pg] = "cpu:gloo"
    w.tags_to_pg.setdefault("", []).append(pg)
    w.pg_to_tag[pg] = ""
    w.group_count = 1
    c10d._update_default_pg(pg)


def _free_group(box):
    """Free the group in ``box`` (a list holding its only reference), one
    that never became the default group, so that its gloo backend's
    destructor runs without the GIL (see _hold_backend)."""
    with _QUIET:
        pg = box.pop()
        be = pg
        if _TORCH_MAJOR >= 2:
            try:
                be = pg._get_backend(torch.device("cpu"))
            except Exception:
                be = None
        del pg   # 2.x: the ProcessGroup goes; the backend lives on in be
        del be   # the last reference: freed without the GIL


def _nccl_abort(pg):
    """What aborts an NCCL group's communicators from another thread, so that
    a collective stuck on a dead peer (a CUDA kernel: closing sockets does not
    reach it) fails now; None where torch offers none.  Called at most once,
    by _live.Generations when the group is abandoned."""
    if _TORCH_MAJOR < 2:
        return None  # torch 1.13 has no public abort: the watchdog's timeout ends it
    abort = getattr(pg, "abort", None)             # newer torch: ProcessGroup.abort()
    if not callable(abort):
        try:                                       # 2.x: the backend's abort (ncclCommAbort)
            abort = pg._get_backend(torch.device("cuda")).abort
        except Exception:
            return None
    return abort


class _InFlight(object):
    """The gloo collectives of one group still running (live mode), each
    handed to its caller as a future of our own.

    When a newer generation abandons the group, its sockets are shut and gloo
    fails every collective within milliseconds, except one kind: a send gloo
    queued after its peer reset the connection.  On the error that follows,
    gloo's tcp::Pair wakes bound buffers and pending operations, not an
    unbound buffer already in its transmit queue, so that send waits out the
    group's whole timeout (native stacks on torch 2.6: a survivor held in
    backward while the others waited 60 s for it in the next group; a peer's
    crash opens the same window).  ABANDON_GRACE_S after the abandon, what is
    still running is released: its future completes with the local value and
    the step is marked failed (it will not commit).  The backend that still
    runs it is freed once it ends (_free_when_done)."""

    def __init__(self, job, gen):
        self.job = job
        self.gen = gen
        self.lock = threading.Lock()
        self.ops = {}        # key -> (our future, fallback value, gloo future)
        self.stuck = []      # gloo futures released while running
        self.timer = None

    def wrap(self, fut, fallback, done):
        """Our future for gloo's ``fut``: done(fut)'s value, or ``fallback``
        if released first."""
        out = torch.futures.Future()
        key = object()
        with self.lock:
            self.ops[key] = (out, fallback, fut)

        def finish(f):
            with self.lock:
                if self.ops.pop(key, None) is None:
                    return  # released: its group is gone, and so is its step
            out.set_result(done(f))
        fut.add_done_callback(finish)
        return out

    def abandoned(self):
        """A newer generation abandoned the group (the reader thread)."""
        t = threading.Timer(ABANDON_GRACE_S, self.release)
        t.daemon = True
        with self.lock:
            self.timer = t
        t.start()

    def release(self):
        with self.lock:
            ops = list(self.ops.values())
            self.ops = {}
            self.stuck.extend(f for _, _, f in ops)
        if not ops:
            return
        job = self.job
        if job._gen == self.gen:
            job._note_failure("collective", RuntimeError(
                "still running %.0f s after generation %d was abandoned" % (ABANDON_GRACE_S, self.gen)))
        _live._warn("bulsajo: released %d collective(s) of generation %d still running %.0f s "
                    "after it was abandoned" % (len(ops), self.gen, ABANDON_GRACE_S))
        for out, fallback, _ in ops:
            out.set_result(fallback)

    def left(self):
        """The job left the group: the gloo futures released unfinished."""
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
            return [f for f in self.stuck if not f.done()]


class _HealPeer(object):
    """A rank that computes a healing step: its gradient is averaged over
    the ``contributors`` ranks that compute one (the first ranks)."""
    joiner = False

    def __init__(self, gen, contributors):
        self.gen = gen
        self.contributors = contributors


class _Heal(object):
    """A grow's joiner in its healing step (torchft's name): the first step
    of its group, in which it does not stop the others. It takes part in the
    step's collectives with zero gradients (an identity for job.all_reduce)
    while a thread receives the source's state point to point; at the
    step's optimizer.step() it loads that state, checks it against the
    source's digest from the agreement, and applies the gradient the others
    averaged, so that it ends the step where they do. The others compute the
    step as the world without the joiners (job.world_size), so it is the
    same step they would have taken before the grow: no sample is skipped."""
    joiner = True

    def __init__(self, gen, source, expect, nbytes=0):
        self.gen = gen
        self.source = source
        self.expect = expect      # the source's digest (the agreement's row)
        self.known = nbytes       # the state's length, if the agreement gave it
        self.done = threading.Event()
        self.data = None
        self.nbytes = 0
        self.error = None
        self.loaded = False
        self.record = None        # this regroup's history entry

    def start(self, pg, device):
        t = threading.Thread(target=self._run, args=([pg], device), daemon=True,
                             name="bulsajo-heal-gen%d" % self.gen)
        try:
            t.start()
        except RuntimeError as e:
            self.error = e
            self.done.set()

    def _run(self, box, device):
        try:
            pg = box.pop()
            n = self.known
            if not n:
                t = torch.zeros(1, dtype=torch.int64, device=device)
                dist.recv(t, src=self.source, group=pg)
                n = int(t.item())
            buf = torch.empty(n, dtype=torch.uint8, device=device)
            dist.recv(buf, src=self.source, group=pg)
            self.nbytes = n
            self.data = _decode_state(_tensor_bytes(buf))  # here, not in the step
        except Exception as e:
            self.error = e
        finally:
            pg = None  # never the last reference to the group (see _HookState)
            self.done.set()

    def wait(self):  # for _free_when_done
        self.done.wait()


def _fill_identity(tensor, op):
    """Fill ``tensor`` with op's identity (SUM, PRODUCT, MIN, MAX)."""
    R = dist.ReduceOp
    if op == R.SUM:
        tensor.zero_()
    elif op == R.PRODUCT:
        tensor.fill_(1)
    elif op in (R.MIN, R.MAX):
        big = torch.finfo(tensor.dtype).max if tensor.is_floating_point() else \
            torch.iinfo(tensor.dtype).max
        low = -big if tensor.is_floating_point() else torch.iinfo(tensor.dtype).min
        tensor.fill_(big if op == R.MIN else low)


class _Reaper(object):
    """One thread that frees the backends of groups left lazily (a clean
    grow's old group), so that the switch only hands one over: starting a
    thread there takes milliseconds on a busy machine. Started before
    training; close() waits for what it was given."""

    def __init__(self):
        self._q = queue.Queue()
        self._lock = threading.Lock()
        self._thread = None
        self.freed = 0  # backends whose last Python reference it dropped

    def start(self):
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bulsajo-reaper",
                                                daemon=True)
                self._thread.start()

    def free(self, holder):
        self.start()
        self._q.put(holder)

    def drain(self, timeout):
        if self._thread is None:
            return
        done = threading.Event()
        self._q.put(done)
        done.wait(timeout)

    def _run(self):
        while True:
            item = self._q.get()
            if isinstance(item, threading.Event):
                item.set()
            else:
                try:
                    ref = weakref.ref(item[0])
                except TypeError:
                    ref = None
                with _QUIET:
                    del item[:]  # the last reference: freed without the GIL
                if ref is not None and ref() is None:
                    self.freed += 1
            del item


def _warm_up(wrappers):
    """A replacement's first backward costs 10-15 ms more than the next on
    this machine (a fork's intra-op thread pool and autograd's first use
    start then): at its first step, the members wait for it. A small
    product and a backward through the model's parameters (their .grad put
    back) take that cost while the replacement waits to be admitted. Uses
    no random numbers and changes no parameter."""
    try:
        with torch.enable_grad():
            w = torch.full((64, 64), 0.5, requires_grad=True)
            (w @ w).relu().sum().backward()
            params = [p for x in wrappers for p in x.module.parameters() if p.requires_grad]
            if params:
                saved = [p.grad for p in params]
                sum(p.sum() for p in params).backward()
                for p, g in zip(params, saved):
                    p.grad = g
    except Exception:
        pass  # only a warm-up


def _free_when_done(holder, futs):
    """Drop the backend in ``holder`` once ``futs`` are done, on a thread of
    its own (the backend's destructor joins the worker threads that run them;
    it releases the GIL, see _hold_backend)."""
    def run():
        for f in futs:
            try:
                f.wait()
            except Exception:
                pass  # the group's timeout: what ends a stuck send
        with _QUIET:
            del holder[:]
    threading.Thread(target=run, name="bulsajo-free-backend", daemon=True).start()


def _report_static_progress(step):
    """Restart mode under bulsajo: the datagram progress SDK (a no-op elsewhere)."""
    try:
        import bulsajo
        bulsajo.step(step)
    except Exception:
        pass


def _tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


# ------------------------------------------------------------------ work time

def _heal_pays(rows, k, world):
    """Whether a grow's k joiners (of world) should heal rather than be sent
    the state first, from the agreement's rows (so every rank decides alike),
    and the estimate [extra ms, send ms].  In a healing step the members
    compute the step as the world of world-k: batch/(world-k) each instead
    of batch/world, k*batch/(world*(world-k)) more, where batch is a step's
    time for the whole batch (a step's time times its world).  Sending first
    stops them for the state's send cost, as its holders priced it.  No
    timings yet (a grow before any step was timed): heal."""
    holders = [row for row in rows if row[1] == 0]
    batch = sorted(row[_ROW_BATCH_US] for row in holders if row[_ROW_BATCH_US] > 0)
    if not batch:
        return True, None
    extra = batch[len(batch) // 2] * k / (world * (world - k))
    send = max(row[_ROW_SEND_US] for row in holders)
    return extra <= send, [round(extra / 1e3, 2), round(send / 1e3, 2)]


class _WorkMeter(object):
    """A rank's work time: the time of its steps without the time it waited
    in collectives, reported to the agent once a second (live mode) for
    straggler detection.  A collective ends every rank's step at the same
    moment, so only the time a rank spends on its own shows who is slow.

    CPU: wall clock (a throttled process shows as more wall time).  The wait
    is from the moment the last gradient bucket was ready (backward's
    computation is done) to the moment the last bucket's all-reduce
    completed, plus the time in :meth:`Job.all_reduce`.  GPU: CUDA events
    around forward+backward on the compute stream (the all-reduce runs on
    NCCL's stream), read only once they completed, so nothing synchronises.
    Cost: a few clock reads per step and one small message a second.
    """

    def __init__(self, cuda):
        self.cuda = cuda
        # A committed step's wall time times its world (the whole batch's
        # time, comparable across worlds), over regroups: _heal_pays.
        self.batch_walls = collections.deque(maxlen=32)
        self.reset()

    def batch_time(self):
        """The median of batch_walls, seconds; 0.0 before any."""
        w = sorted(self.batch_walls)
        return w[len(w) // 2] if w else 0.0

    def reset(self):
        self.skip = WORK_WARMUP_STEPS
        self.steps = 0
        self.work = 0.0
        self.wall = 0.0
        self.t_window = _now()
        self.pending = []          # GPU: (start event, end event, wall) not yet read
        self.t0 = None
        self.ready_t = None
        self.reduced_t = None
        self.waited = 0.0
        self.ev0 = self.ev1 = None

    def begin(self):
        self.t0 = _now()
        self.ready_t = self.reduced_t = None
        self.waited = 0.0
        self.ev1 = None
        if self.cuda:
            self.ev0 = torch.cuda.Event(enable_timing=True)
            self.ev0.record()

    def bucket_ready(self):  # comm hook (backward's thread)
        self.ready_t = _now()
        if self.cuda:
            if self.ev1 is None:
                self.ev1 = torch.cuda.Event(enable_timing=True)
            self.ev1.record()  # re-recorded for each bucket: the last one counts

    def bucket_reduced(self):  # the all-reduce's completion (a gloo/NCCL thread)
        t = _now()
        if self.reduced_t is None or t > self.reduced_t:
            self.reduced_t = t

    def end(self, committed, world=1):
        """Account for the step just run (in a group of world ranks);
        returns a report to send, or None."""
        t1 = _now()
        if self.t0 is None:
            return None
        wall = t1 - self.t0
        self.t0 = None
        if not committed:
            return None
        if self.skip > 0:
            self.skip -= 1
            self.t_window = t1
            return None
        self.batch_walls.append(wall * world)
        if self.cuda:
            if self.ev1 is not None:
                self.pending.append((self.ev0, self.ev1, wall))
                del self.pending[:-256]  # never grows without bound
            else:
                self._add(wall, wall)
        else:
            wait = self.waited
            if self.ready_t is not None and self.reduced_t is not None and self.reduced_t > self.ready_t:
                wait += self.reduced_t - self.ready_t
            self._add(max(0.0, wall - wait), wall)
        if t1 - self.t_window < WORK_REPORT_S:
            return None
        if self.cuda:
            self._read_events()
        if self.steps == 0:
            return None
        rep = {"steps": self.steps, "work_s": round(self.work, 6), "wall_s": round(self.wall, 6)}
        self.steps, self.work, self.wall = 0, 0.0, 0.0
        self.t_window = t1
        return rep

    def _add(self, work, wall):
        self.steps += 1
        self.work += work
        self.wall += wall

    def _read_events(self):
        # Events complete in order on the stream: stop at the first that has
        # not (query() never blocks).
        done = 0
        for ev0, ev1, wall in self.pending:
            if not ev1.query():
                break
            self._add(ev0.elapsed_time(ev1) / 1000.0, wall)
            done += 1
        del self.pending[:done]


# ------------------------------------------------------------------ DDP wrapper

class _HookState(object):
    # Deliberately no reference to the process group: the hook's callback
    # runs, and is destroyed, on a gloo worker thread, and if it held the last
    # reference to the group, ~ProcessGroupGloo would run there and join its
    # own thread (std::system_error "Resource deadlock avoided" -> abort; seen
    # on torch 1.13).  The group is read from the job, which only drops it on
    # the main thread; that costs nothing on 2.x, so it holds for every version.
    __slots__ = ("job", "gen", "world", "live")

    def __init__(self, job, world):
        self.job = job
        self.gen = job._gen
        self.world = world
        self.live = job.live


def _done_future(t):
    f = torch.futures.Future()
    f.set_result(t)
    return f


def _allreduce_hook(hs, bucket):
    """Average the bucket over the group.  Live mode: a failed all-reduce marks
    the step failed and returns the local gradient, so backward() completes."""
    buf = bucket.buffer()
    job = hs.job
    live = hs.live
    group = job._group
    # An abandoned group (a newer generation arrived) gets no new send: one
    # posted on a socket being shut can wait out the group's timeout in gloo.
    if live and (job._broken is not None or job._pg is None or job._gen != hs.gen
                 or (group is not None and group.abandoned)):
        job._note_failure("gradient all-reduce", RuntimeError("group is gone"))
        return _done_future(buf)  # the group is already known broken
    heal = job._healing
    if live and heal is not None and heal.gen == hs.gen:
        if heal.joiner:
            buf.zero_()  # a healing step: this rank's gradient is not the model's
        else:
            buf.div_(heal.contributors)
    else:
        buf.div_(hs.world)
    meter = job._meter
    if meter is not None:
        meter.bucket_ready()
    try:
        fut = dist.all_reduce(buf, group=job._pg, async_op=True).get_future()
    except Exception as e:
        if not live:
            raise
        job._note_failure("gradient all-reduce", e)
        return _done_future(buf)
    running = job._running
    if live and running is not None:
        return running.wrap(fut, buf, _make_done(job, buf, live))
    return fut.then(_make_done(job, buf, live))


def _make_done(job, buf, live):
    meter = job._meter

    def done(f):
        if meter is not None:
            meter.bucket_reduced()
        try:
            return f.value()[0]
        except Exception as e:
            if not live:
                raise
            job._note_failure("gradient all-reduce", e)
            return buf
    return done


class DistributedDataParallel(nn.Module):
    """DDP that survives regroups.

    Wraps ``module`` (``self.module``; ``parameters()`` are the module's own
    tensors, so an optimizer made from them keeps working across regroups)
    and builds a ``torch.nn.parallel.DistributedDataParallel`` on the current
    group when training starts and after every regroup.  ``ddp_kwargs`` are
    passed to torch's DDP (e.g. ``device_ids=[local_rank]`` for nccl).
    Needs :func:`init` first.
    """

    def __init__(self, module, **ddp_kwargs):
        super().__init__()
        job = _JOB
        if job is None:
            raise RuntimeError("call bulsajo.torch.init() before DistributedDataParallel()")
        self.module = module
        object.__setattr__(self, "_ddp", None)
        object.__setattr__(self, "_ddp_kwargs", dict(ddp_kwargs))
        object.__setattr__(self, "_job", job)
        job._wrappers.append(self)

    def _build(self, pg):
        self._drop()
        ddp = _TorchDDP(self.module, process_group=pg, **self._ddp_kwargs)
        ddp.register_comm_hook(_HookState(self._job, dist.get_world_size(pg)), _allreduce_hook)
        object.__setattr__(self, "_ddp", ddp)

    def _drop(self):
        object.__setattr__(self, "_ddp", None)

    def forward(self, *args, **kwargs):
        job = self._job
        if self._ddp is None and job._pg is not None and job._broken is None \
                and (job._synced or not job.live):
            self._build(job._pg)  # static group, used before job.steps(): build now
        ddp = self._ddp
        if ddp is None or (job.live and job._broken is not None):
            return self.module(*args, **kwargs)  # this step will not commit anyway
        if not job.live:
            return ddp(*args, **kwargs)
        try:
            return ddp(*args, **kwargs)
        except Exception as e:
            # DDP's forward may run collectives (bucket rebuild, buffer sync).
            # Run the module alone: if it raises too, the error was the
            # user's and propagates; otherwise the group broke.
            out = self.module(*args, **kwargs)
            job._note_failure("DDP forward", e)
            return out

    def no_sync(self):
        """torch DDP's no_sync() (gradient accumulation without all-reduce)."""
        if self._ddp is None:
            return contextlib.nullcontext()
        return self._ddp.no_sync()


# ------------------------------------------------------------------------ state

# DDP's constructor collectives (module-level functions of its module).
_DDP_INIT_SYNC = ("_verify_param_shape_across_processes", "_sync_module_states")


def _ddp_init_sync_skippable():
    """Whether _no_ddp_init_sync skips both of DDP's constructor collectives
    on this torch (so a DDP built under it runs none)."""
    mod = sys.modules.get(_TorchDDP.__module__)
    return mod is not None and all(callable(getattr(mod, n, None)) for n in _DDP_INIT_SYNC)


@contextlib.contextmanager
def _no_ddp_init_sync():
    """torch's DDP constructor all-gathers the parameters' shapes and
    broadcasts rank 0's parameters and buffers: two collectives that _sync
    makes redundant for a module without buffers (after its agreement and
    transfer every rank holds the same state, and its digest check, which
    covers the parameters and their shapes, fails the regroup if not). Both are module-level functions of
    torch.nn.parallel.distributed in 1.13 and 2.x; if either is missing,
    nothing is skipped."""
    mod = sys.modules.get(_TorchDDP.__module__)
    saved = {n: getattr(mod, n, None) for n in _DDP_INIT_SYNC}
    if not _ddp_init_sync_skippable():
        yield
        return
    for n in _DDP_INIT_SYNC:
        setattr(mod, n, _skip)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(mod, n, f)


def _skip(*args, **kwargs):
    return None


def _unwrap(model):
    if isinstance(model, (DistributedDataParallel, _TorchDDP)):
        return model.module
    return model


class State(object):
    """What a replacement must receive: model, optimizer, step, RNG, extras.

    ``step`` is the last committed global step (-1 before the first); set it
    after loading a checkpoint.  ``extra`` holds picklable values; a value
    with ``state_dict()``/``load_state_dict()`` (an LR scheduler, a second
    optimizer) is transferred through those.  ``optimizer.step`` is wrapped
    (instance attribute) so that it does nothing in a step that failed.
    """

    def __init__(self, model, optimizer=None, **extra):
        self.model = model
        self.optimizer = optimizer
        self.extra = dict(extra)
        self.step = -1
        self._job = None
        self._digest_bytes = 0
        if optimizer is not None:
            self._wrap(optimizer)

    def _wrap(self, opt):
        orig = opt.step
        st = self

        def step(_opt, *args, **kwargs):
            job = st._job or _JOB
            if job is None or not job._in_step:
                return orig(*args, **kwargs)
            job._opt_called = True
            if job.live and job._broken is not None:
                job._skipped = True
                return None
            # A healing joiner: the state before this step, under the
            # gradient the others averaged (in .grad, kept by the load).
            if job.live and not job._finish_heal(keep_grads=True):
                job._skipped = True
                return None
            out = orig(*args, **kwargs)
            job._applied = True
            return out

        # Keep the marks an LR scheduler made on the method it wrapped
        # (torch 1.x `_with_counter`, 2.x `_wrapped_by_lr_sched`): without
        # them the scheduler, made before this State, warns that
        # optimizer.step() was overridden after it.
        for k, v in vars(getattr(orig, "__func__", orig)).items():
            if k != "__wrapped__":
                setattr(step, k, v)
        step.__wrapped__ = orig
        # a bound method, as LR schedulers expect (they re-wrap opt.step)
        opt.step = types.MethodType(step, opt)

    def _serialize(self):
        extra = {}
        for k, v in self.extra.items():
            if callable(getattr(v, "state_dict", None)) and callable(getattr(v, "load_state_dict", None)):
                extra[k] = ("state_dict", v.state_dict())
            else:
                extra[k] = ("value", v)
        payload = {
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "step": self.step,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available()
            and torch.cuda.is_initialized() else None,
            "extra": extra,
        }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    def _load(self, data, keep_grads=False):
        self._apply(_decode_state(data), keep_grads)

    def _apply(self, payload, keep_grads=False):
        _unwrap(self.model).load_state_dict(payload["model"])
        if self.optimizer is not None and payload["optimizer"] is not None:
            self.optimizer.load_state_dict(payload["optimizer"])
        self.step = int(payload["step"])
        torch.set_rng_state(payload["rng"])
        if payload.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(payload["cuda_rng"])
        for k, (kind, v) in payload["extra"].items():
            cur = self.extra.get(k)
            if kind == "state_dict" and callable(getattr(cur, "load_state_dict", None)):
                cur.load_state_dict(v)
            else:
                self.extra[k] = v
        if not keep_grads:
            for p in _unwrap(self.model).parameters():
                p.grad = None

    def digest(self):
        """SHA-256 over all parameters and optimizer state tensors (fixed order)."""
        h = hashlib.sha256()
        h.update(str(self.step).encode())
        n = 0
        params = list(_unwrap(self.model).parameters())
        for p in params:
            n += _hash_tensor(h, p)
        opt = self.optimizer
        if opt is not None:
            for group in opt.param_groups:
                for p in group["params"]:
                    st = opt.state.get(p, {})
                    for k in sorted(st, key=str):
                        h.update(str(k).encode())
                        v = st[k]
                        if torch.is_tensor(v):
                            n += _hash_tensor(h, v)
                        else:
                            h.update(repr(v).encode())
        self._digest_bytes = n  # what was hashed: about what a transfer sends
        return h.digest()


def _decode_state(data):
    """State._serialize's bytes back to its payload (tensors on the CPU)."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except TypeError:  # torch without weights_only
        return torch.load(io.BytesIO(data), map_location="cpu")


def _hash_tensor(h, t):
    """Hash t's dtype, shape and bytes into h; returns the bytes' count."""
    t = t.detach().cpu().contiguous()
    h.update(str(t.dtype).encode())
    h.update(str(tuple(t.shape)).encode())
    n = t.numel() * t.element_size()
    if n:
        h.update(ctypes.string_at(t.data_ptr(), n))
    return n


# ---------------------------------------------------------------------- sampler

class ElasticSampler(object):
    """Deterministic sample order that survives changes of the world size.

    The global batch of step s is positions [s*B, (s+1)*B) of an endless
    stream made of one permutation of range(N) per epoch (epoch e's
    permutation is seeded by (seed, e)); a batch that crosses an epoch
    boundary takes the tail of one permutation and the head of the next.
    Rank r of w gets ``global_indices(s)[r::w]``, so the ranks of any world
    size together use exactly the global batch, and a step redone after a
    regroup uses the same samples.
    """

    def __init__(self, num_samples, global_batch, seed=0):
        if num_samples <= 0 or global_batch <= 0:
            raise ValueError("num_samples and global_batch must be positive")
        self.num_samples = int(num_samples)
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        self._cache = {}

    def permutation(self, epoch):
        perm = self._cache.get(epoch)
        if perm is None:
            g = torch.Generator()
            g.manual_seed((self.seed * 1000003 + epoch) & 0x7FFFFFFFFFFFFFFF)
            perm = torch.randperm(self.num_samples, generator=g).tolist()
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = perm
        return perm

    def epoch(self, step):
        return (step * self.global_batch) // self.num_samples

    def global_indices(self, step):
        n, b = self.num_samples, self.global_batch
        pos = step * b
        out = []
        while len(out) < b:
            epoch, off = divmod(pos + len(out), n)
            take = min(b - len(out), n - off)
            out.extend(self.permutation(epoch)[off:off + take])
        return out

    def indices(self, step, rank, world_size):
        """This rank's share (a list) of the global batch of ``step``."""
        if not 0 <= rank < world_size:
            raise ValueError("rank %d outside world of %d" % (rank, world_size))
        return self.global_indices(step)[rank::world_size]
