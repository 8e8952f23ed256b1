"""Private machinery of live recovery (standard library only; see bulsajo.torch).

Two pieces live here because neither needs torch:

* :class:`AgentLink` — the worker's end of the agent control connection: one
  unix STREAM socket (``BULSAJO_AGENT_CTL``; ``@name`` = Linux abstract socket)
  carrying JSON lines both ways.  A daemon thread reads the agent's lines for
  the life of the process; sends from the training thread never block.
* :class:`Generations` — the latest generation assignment the agent sent, and
  the record of which sockets belong to which generation's process group, so
  that a newer generation can *abandon* an older group: every TCP connection
  the group opened is ``shutdown(SHUT_RD)`` (both sides when the job leaves
  the group), which makes a collective blocked on that group (a peer
  SIGSTOPped, or itself blocked) fail at once instead of after the 60 s
  timeout.  The sockets of a group are found by diffing this
  process's socket inodes (``/proc/self/fd``) just before and just after the
  group is created; listening sockets are never touched (the TCPStore server
  thread treats an event on its listening socket as fatal), nor are non-TCP
  sockets (the agent connection is a unix socket).  Each socket is asked
  itself (SO_ACCEPTCONN, its family and type): reading the namespace's
  /proc/net/tcp{,6} instead took 7 ms idle and 30+ ms under load, all of it
  on the path from a fault to the survivors' regroup.  A group can also carry
  an ``abort`` callable, called once, outside the lock, when it is abandoned
  (bulsajo.torch sets it: NCCL's communicator abort on torch 2.x; for gloo,
  the release of a collective still running after a grace, see _InFlight).
"""

import json
import os
import select
import socket
import sys
import threading
import time

# How often a group abandoned while being created has the sockets it opened
# since shut (Generations._sweep).
SWEEP_S = 0.02

# ---------------------------------------------------------------- /proc helpers

def socket_fds():
    """{fd: inode} for every socket file descriptor of this process."""
    out = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue  # closed meanwhile (or the listdir fd itself)
        if link.startswith("socket:[") and link.endswith("]"):
            try:
                out[int(name)] = int(link[8:-1])
            except ValueError:
                pass
    return out


def shutdown_fd(fd, inode, how=socket.SHUT_RDWR):
    """shutdown(how) the socket at ``fd`` if it still is socket ``inode``
    and is a TCP connection (not a listening socket, not unix or UDP).

    Works on a dup so the original descriptor stays open (its owner closes
    it); the inode check on the dup guards against the number having been
    closed and reused meanwhile.  Returns True when it shut the socket down.
    """
    try:
        dup = os.dup(fd)
    except OSError:
        return False
    try:
        if os.fstat(dup).st_ino != inode:
            return False
        s = socket.socket(fileno=dup)  # family and type read from the fd
        dup = None  # owned by s now
        try:
            if s.family not in (socket.AF_INET, socket.AF_INET6) \
                    or s.type != socket.SOCK_STREAM \
                    or s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                return False
            s.shutdown(how)
            return True
        except OSError:
            return False  # e.g. ENOTCONN: nothing to interrupt
        finally:
            s.close()  # closes the dup only
    except OSError:
        return False
    finally:
        if dup is not None:
            os.close(dup)


# ---------------------------------------------------------- process-group sockets

class GroupSockets(object):
    """The sockets one process group opened, for abandoning it later."""

    def __init__(self, gen, before):
        self.gen = gen
        self.before = before      # set of socket inodes that predate the group
        # Inodes that predate the next group's creation, when that began
        # before this one's ended (Generations.begin_group): what this
        # one can own.
        self.until = None
        self.sockets = None       # [(fd, inode)] once creation finished
        self.abandoned = False
        self.shut = 0             # how many sockets an abandon shut down
        self.abort = None         # callable: abort the group's communicators (or None)
        self._shut_rd = set()     # inodes already read-shut (a sweep repeats it)

    def take_abort(self):
        """The abort callable, once (called under Generations.cv)."""
        fn, self.abort = self.abort, None
        return fn

    def _candidates(self):
        if self.sockets is not None:
            return self.sockets
        if self.before is None:
            return []  # not yet begun (Generations.begin_group)
        # Still being created: everything opened since the snapshot.
        return [(fd, ino) for fd, ino in socket_fds().items() if self._owns(ino)]

    def _owns(self, ino):
        return ino not in self.before and (self.until is None or ino in self.until)

    def shutdown(self, keep=(), how=socket.SHUT_RDWR):
        n = 0
        for fd, ino in self._candidates():
            if ino in keep or (how == socket.SHUT_RD and ino in self._shut_rd):
                continue
            if shutdown_fd(fd, ino, how):
                n += 1
                if how == socket.SHUT_RD:
                    self._shut_rd.add(ino)
        self.shut += n
        return n


class Superseded(Exception):
    """A newer generation arrived while this one was being formed."""


class Generations(object):
    """Latest assignment from the agent + the groups that may need abandoning.

    ``offer`` runs on the reader thread; everything else on the training
    thread.  All state is guarded by ``cv``; socket shutdowns happen under it
    too (a few syscalls), which makes "creation finished" and "abandoned"
    mutually ordered.
    """

    def __init__(self, keep_inodes=()):
        self.cv = threading.Condition()
        self.latest = None        # the newest generation message (dict)
        self.groups = []          # live GroupSockets, oldest first
        self.keep = set(keep_inodes)
        self.abandons = []        # (monotonic time, gen, sockets shut) for diagnostics
        self.creating = None      # the GroupSockets being created (begin_group..end_group)
        self.closed = False       # the job is leaving: no group begins

    def offer(self, msg, committed=None):
        """A generation message arrived.  Newer than every known one: adopt it
        and abandon every group of an older generation.  Returns True if adopted.

        A *grow* message (no member was lost: replacements join) is carried
        out at a step boundary instead: the group is not abandoned while this
        process has not yet committed step ``at_step`` (``committed()``, read
        under ``cv`` so that a commit and this check are ordered); the steps
        loop regroups after committing it.  A process already past the
        boundary abandons at once, as for a fault (at most one step lost).

        The reader thread shuts only the read side (SHUT_RD).  That wakes every
        receive blocked on the group (EOF), and gloo then closes the socket,
        which sends the peer its FIN.  Shutting the write side too would make
        a send the training thread posts in that same instant fail with EPIPE,
        which gloo's async pair queues without an error and never wakes when
        the EOF comes: the rank would wait out the group's whole timeout.
        ``abandon`` (the training thread, which sends nothing then) shuts both.
        A peer's reset can still leave such a send; bulsajo.torch releases it
        (``abort``, _InFlight)."""
        try:
            gen = int(msg["gen"])
        except (KeyError, TypeError, ValueError):
            return False
        aborts = []
        sweep = []
        with self.cv:
            if self.latest is not None and gen <= int(self.latest["gen"]):
                return False
            self.latest = msg
            at = msg.get("at_step")
            boundary = (msg.get("grow") and committed is not None and at is not None
                        and committed() < int(at))
            if not boundary:
                for g in self.groups:
                    if g.gen < gen and not g.abandoned:
                        g.abandoned = True
                        n = g.shutdown(self.keep, socket.SHUT_RD)
                        self.abandons.append((time.monotonic(), g.gen, n))
                        aborts.append(g.take_abort())
                        sweep.append(g)  # if still being created (sweep)
            self.cv.notify_all()
        _call_aborts(aborts)
        for g in sweep:
            self.sweep(g)
        return True

    def close(self):
        with self.cv:
            self.closed = True
            self.cv.notify_all()

    def sweep(self, g):
        """Shut what group ``g``, abandoned, still opens until its creation
        ends (a thread: _sweep). Nothing when it is not being created."""
        if g.sockets is not None or g.before is None:
            return
        t = threading.Thread(target=self._sweep, args=(g,), daemon=True,
                             name="bulsajo-sweep-gen%d" % g.gen)
        try:
            t.start()
        except RuntimeError:  # no thread: its creation ends at its own timeout
            pass

    def _sweep(self, g):
        """Thread: group ``g``, abandoned while it was being created, can
        still open sockets after the abandon's snapshot (a store client that
        connects a moment later), and wait on it for the group's whole
        timeout in a rendezvous nobody else attends: shut what it opens
        until its creation ends (end_group)."""
        with self.cv:
            while g.sockets is None:
                g.shutdown(self.keep, socket.SHUT_RD)
                self.cv.wait(SWEEP_S)

    def pending_boundary(self, gen):
        """The step after which to switch to a newer grow generation, or None
        when the newer generation (if any) must be joined now."""
        with self.cv:
            m = self.latest
            if m is None or int(m["gen"]) <= gen or not m.get("grow") or m.get("at_step") is None:
                return None
            if any(g.abandoned for g in self.groups if g.gen == gen):
                return None  # abandoned after all (a fault came too)
            return int(m["at_step"])

    def latest_gen(self):
        with self.cv:
            return None if self.latest is None else int(self.latest["gen"])

    def newer_than(self, gen):
        with self.cv:
            return self.latest is not None and int(self.latest["gen"]) > gen

    def wait_newer(self, after, timeout):
        """The latest message if its gen > after, waiting up to timeout s; else None."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while self.latest is None or (after is not None and int(self.latest["gen"]) <= after):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cv.wait(left)
            return dict(self.latest)

    def begin_group(self, gen, timeout=60.0):
        """Snapshot sockets before creating generation ``gen``'s group.

        A group's sockets are those opened between its begin and its end.
        An older creation still going on was abandoned when this generation
        was offered, but it may not end for the group's whole timeout: a
        rendezvous waiting for a peer that died before it connected waits
        on gloo's listener, which no shutdown wakes. This one begins at
        once; the old one is left what it opened before now (``until``),
        so that its end, abandoned, cannot shut this one's sockets. A
        creation not abandoned (none should overlap) is waited for."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                if self.latest is not None and int(self.latest["gen"]) > gen:
                    raise Superseded("generation %d superseded by %s" % (gen, self.latest["gen"]))
                if self.closed:
                    raise Superseded("generation %d: the job is leaving" % gen)
                old = self.creating
                if old is None or old.abandoned:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError("generation %d: the group of generation %d was still "
                                       "being created after %.0f s" % (gen, self.creating.gen, timeout))
                self.cv.wait(left)
            g = GroupSockets(gen, None)
            self.groups.append(g)
            self.creating = g
        before = set(socket_fds().values())
        with self.cv:
            g.before = before
            if old is not None and old.sockets is None:
                old.until = before
            if g.abandoned:  # a newer generation came during the snapshot
                self.creating = None
                self.groups.remove(g)
                self.cv.notify_all()
                raise Superseded("generation %d superseded by %s" % (gen, self.latest["gen"]))
        return g

    def end_group(self, g):
        """Creation returned (or failed): record the group's sockets.
        Returns False when the group was abandoned meanwhile."""
        after = socket_fds()
        with self.cv:
            if self.creating is g:
                self.creating = None
            self.cv.notify_all()  # begin_group, a sweep
            g.sockets = [(fd, ino) for fd, ino in after.items() if g._owns(ino)]
            if g.abandoned:
                g.shutdown(self.keep)  # sockets opened after the abandon too
                return False
            return True

    def abandon(self, g):
        """Leave a group on purpose: shut its sockets so peers blocked on this
        process fail at once and its destructor cannot wait on a dead peer."""
        with self.cv:
            # Again when a newer generation abandoned it: that shut only the
            # read side (see offer).
            g.abandoned = True
            n = g.shutdown(self.keep)
            fn = g.take_abort()
        _call_aborts([fn])
        return n

    def forget(self, g):
        with self.cv:
            if g in self.groups:
                self.groups.remove(g)


def _call_aborts(fns):
    for fn in fns:
        if fn is not None:
            try:
                fn()
            except Exception as e:  # the group is being left anyway
                _warn("bulsajo: aborting an abandoned process group: %r" % (e,))


# ------------------------------------------------------------------ agent link

def ctl_address(value):
    """BULSAJO_AGENT_CTL -> address for AF_UNIX connect ("@x" is abstract)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value


def encode(msg):
    return (json.dumps(msg, separators=(",", ":"), sort_keys=True) + "\n").encode("utf-8")


class AgentLink(object):
    """The worker's JSON-lines connection to the agent.

    ``on_message(dict)`` runs on the reader thread for every line.  When the
    agent closes the connection (or it breaks) and :meth:`close` was not
    called, ``on_lost()`` runs; by default it exits the process at once,
    because a worker without its agent has nobody to tell it where to go.
    """

    def __init__(self, address, on_message, on_lost=None):
        self.address = address
        self.on_message = on_message
        self.on_lost = on_lost or _exit_lost
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.connect(ctl_address(address))
        except OSError:
            self.sock.close()
            raise
        self.inode = os.fstat(self.sock.fileno()).st_ino
        self._lock = threading.Lock()
        self._pending = b""     # tail of a partially sent line
        self._closing = False
        self._thread = None
        self.dropped = 0        # best-effort messages dropped

    def start(self):
        t = threading.Thread(target=self._read_loop, name="bulsajo-agent-link", daemon=True)
        self._thread = t
        t.start()

    def _read_loop(self):
        buf = b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while True:
                nl = buf.find(b"\n")
                if nl < 0:
                    break
                line, buf = buf[:nl], buf[nl + 1:]
                line = line.strip()
                if not line:
                    continue
                try:
                    msg = json.loads(line.decode("utf-8"))
                except ValueError:
                    continue
                if not isinstance(msg, dict):
                    continue
                try:
                    self.on_message(msg)
                except Exception as e:  # never let the reader die
                    _warn("bulsajo: error handling agent message %r: %r" % (msg, e))
        if not self._closing:
            self.on_lost()

    def _write(self, data, deadline):
        """Write all of data; None deadline = one non-blocking attempt.
        Returns the unsent tail."""
        while data:
            try:
                n = self.sock.send(data, socket.MSG_DONTWAIT)
                data = data[n:]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            if deadline is None:
                return data
            left = deadline - time.monotonic()
            if left <= 0:
                return data
            select.select([], [self.sock], [], left)
        return b""

    def send(self, msg, timeout=None):
        """Send one JSON line.  timeout None: best effort, never blocks (the
        message is dropped if the socket is busy).  Otherwise wait up to
        timeout seconds.  Returns True when the whole line went out.  Never
        raises."""
        data = encode(msg)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            try:
                if self._pending:
                    self._pending = self._write(self._pending, deadline)
                    if self._pending:
                        self.dropped += 1
                        return False
                rest = self._write(data, deadline)
                if rest == data:
                    self.dropped += 1
                    return False  # nothing sent: dropping is clean
                self._pending = rest  # partial line: finish it before the next
                return not rest
            except OSError:
                self.dropped += 1
                return False

    def close(self):
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def _warn(msg):
    try:
        sys.stderr.write(msg + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def _exit_lost():
    _warn("bulsajo: lost the connection to the bulsajo agent; exiting")
    os._exit(1)
