"""bulsajo: the training-side SDK of the bulsajo fault-tolerant launcher.

bulsajo is a drop-in replacement for ``torchrun``.  It restarts workers after
faults and detects hangs.  To let it tell a *hung* worker from a slow one, call
:func:`step` once per training step::

    import bulsajo

    for step in range(start, steps):
        ...                      # forward / backward / optimizer.step()
        bulsajo.step(step)       # report progress to the local bulsajo agent

The call is fire-and-forget: it sends one unix datagram
(``step {generation} {rank} {n}\\n``) to the agent socket named by the
``BULSAJO_AGENT_SOCK`` environment variable.  It never raises and never
blocks; when the script is not running under bulsajo (the variable is unset)
it is a no-op, so the same script still runs under plain ``torchrun`` or
``python``.
"""

import os
import socket

__version__ = "0.1.0"

__all__ = ["step", "managed", "__version__"]

# Cached state.  _pid is the process that built the cache: after os.fork()
# the child re-initialises (new socket, re-read env).
_pid = None
_sock = None      # non-blocking AF_UNIX/SOCK_DGRAM socket, or None when unmanaged
_addr = None      # address to sendto()
_prefix = b""     # b"step {gen} {rank} "


def _init():
    """(Re)build the cache for the current process.  Never raises."""
    global _pid, _sock, _addr, _prefix
    old = _sock
    _pid = os.getpid()
    _sock = None
    _addr = None
    if old is not None:
        try:
            old.close()
        except Exception:
            pass
    try:
        path = os.environ.get("BULSAJO_AGENT_SOCK")
        if not path:
            return
        if path.startswith("@"):
            addr = "\0" + path[1:]  # Linux abstract namespace
        else:
            addr = path
        try:
            gen = int(os.environ.get("BULSAJO_GENERATION", "0"))
        except ValueError:
            gen = 0
        try:
            rank = int(os.environ.get("RANK", "-1"))
        except ValueError:
            rank = -1
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        s.setblocking(False)
        _prefix = ("step %d %d " % (gen, rank)).encode("ascii")
        _addr = addr
        _sock = s
    except Exception:
        _sock = None
        _addr = None


def step(n):
    """Report that training step ``n`` has completed.

    Sends one datagram to the bulsajo agent.  Never raises, never blocks;
    a no-op when not running under bulsajo.
    """
    if _pid != os.getpid():
        _init()
    s = _sock
    if s is None:
        return
    try:
        s.sendto(_prefix + b"%d\n" % int(n), _addr)
    except Exception:
        # No listener (ECONNREFUSED/ENOENT), full queue (EAGAIN/ENOBUFS),
        # bad n, ...: progress reports are best effort.
        pass


def managed():
    """True when this process runs under bulsajo (BULSAJO_AGENT_SOCK is set)."""
    return bool(os.environ.get("BULSAJO_AGENT_SOCK"))
