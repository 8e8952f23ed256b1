# bulsajo standby worker shim.
#
# Why this exists: after a fault, the bulsajo agent has to start fresh
# workers, and each fresh Python worker pays ~1-2 s just for `import torch`
# before it can even reach init_process_group.  To take that off the recovery
# critical path the agent starts this shim *before* it is needed:
#
#     python3 .../bulsajo/_standby.py SCRIPT ARGS...
#     python3 .../bulsajo/_standby.py -m MODULE ARGS...
#
# The shim preloads heavy modules (env BULSAJO_PRELOAD, comma-separated;
# default "torch,torch.distributed,torch.nn.parallel,torch._dynamo"; "" = none;
# torch._dynamo only exists on torch 2.x, where the first optimizer imports it:
# 1.1 s of a restart on 2.6 when not preloaded; a name that fails is skipped), then blocks
# reading one line from the file descriptor named by env BULSAJO_ACTIVATE_FD.
# That line is a JSON object {"env": {"NAME": "value", ...}}: the shim applies
# the env (RANK, MASTER_PORT, BULSAJO_GENERATION, ...) and becomes the user's
# script exactly as `python3 SCRIPT ARGS` (or `python3 -m MODULE ARGS`) would.
# EOF before a full line means the agent discarded this standby: exit 0.
#
# Exit codes: 2 = usage / protocol error (no args, no BULSAJO_ACTIVATE_FD,
# unreadable fd, malformed activation); otherwise whatever the target does.
# Keep this file tiny: it is on the recovery path.

import os
import sys


def _fail(msg):
    sys.stderr.write("bulsajo standby: %s\n" % msg)
    sys.stderr.flush()
    os._exit(2)


def _drop_own_dir():
    # sys.path[0] is this file's directory (python/bulsajo); drop it so that
    # `bulsajo` and every other module resolve as they would for the target.
    here = os.path.dirname(os.path.realpath(__file__))
    sys.path[:] = [p for p in sys.path
                   if not (p and os.path.realpath(p) == here)]


def _preload():
    names = os.environ.get("BULSAJO_PRELOAD")
    if names is None:
        names = "torch,torch.distributed,torch.nn.parallel,torch._dynamo"
    # What the imports make in the temporary directory goes to the
    # launcher's, which it removes at its end (shimEnv in launcher.go).
    tmp = os.environ.pop("BULSAJO_IMPORT_TMPDIR", "")
    tempfile = None
    if tmp and os.path.isdir(tmp):
        import tempfile
        saved, tempfile.tempdir = tempfile.tempdir, tmp
    try:
        for name in names.split(","):
            name = name.strip()
            if not name:
                continue
            try:
                __import__(name)
            except Exception:
                pass
    finally:
        if tempfile is not None:
            tempfile.tempdir = saved


def _torch_env():
    """Variables this torch needs that depend on how it was built, found out
    only when torch.distributed was preloaded (nothing is imported for it).

    USE_LIBUV=0: torch >= 2.4's TCPStore uses libuv unless told otherwise, and
    a torch built without it (Debian 13's 2.6) fails every env:// rendezvous.
    A server store on port 0 says so at once (torch 1.x: no such argument)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or "USE_LIBUV" in os.environ:
        return {}
    import datetime
    try:
        dist.TCPStore("127.0.0.1", 0, None, True, datetime.timedelta(seconds=5),
                      wait_for_workers=False, use_libuv=True)
    except TypeError:
        return {}   # torch without use_libuv: no libuv default either
    except Exception as e:
        if "libuv" in str(e):
            _tell_agent(b"torch nolibuv")
            return {"USE_LIBUV": "0"}
    return {}


def _tell_agent(msg):
    # One datagram to the launcher's progress endpoint (best effort).
    path = os.environ.get("BULSAJO_AGENT_SOCK")
    if not path:
        return
    import socket
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            s.sendto(msg, "\0" + path[1:] if path.startswith("@") else path)
        finally:
            s.close()
    except OSError:
        pass


# ---- zygote mode (env BULSAJO_ZYGOTE_FD) ----
#
# A refill that imports torch again costs ~1 s of CPU per standby, taken from
# training on a node whose CPUs the ranks fill (measured: steps 5-10 % slower
# for the seconds each refill lasts). In zygote mode the shim imports once and
# then forks a standby per request. Each fork is cloned with CLONE_PARENT, so
# the standby is the launcher's own child, as a standby it started itself
# would be: the launcher waits on it, and its parent-death signal is the
# launcher's, not the zygote's. The request (SOCK_SEQPACKET, fd
# BULSAJO_ZYGOTE_FD) carries the standby's stdout, stderr and activation pipe;
# the reply is "pid N" or "err WHY". The zygote forks only while it is the one
# thread of its process: a raw clone skips glibc's fork handlers, which is safe
# only when no other thread can hold a lock.

ZYGOTE_COMM = b"bulsajo-zygote"
_CLONE_SYSCALL = {"x86_64": 56, "aarch64": 220}
_CLONE_PARENT = 0x00008000
_SIGCHLD = 17
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _zygote():
    import ctypes
    import platform
    import socket
    fd = int(os.environ.pop("BULSAJO_ZYGOTE_FD"))
    sock = socket.socket(fileno=fd)
    libc = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held
    libc.syscall.restype = ctypes.c_long
    api = ctypes.pythonapi
    launcher = os.getppid()
    comm = _read("/proc/self/comm").strip().encode()
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(ZYGOTE_COMM), 0, 0, 0)
    _tell_agent(b"preloaded %d" % os.getpid())
    nr = _CLONE_SYSCALL.get(platform.machine())
    if not nr or not hasattr(socket, "recv_fds"):
        sock.send(b"err cannot fork standbys on %s, Python %s" % (
            platform.machine().encode(), platform.python_version().encode()))
        os._exit(0)
    cuda = getattr(sys.modules.get("torch"), "cuda", None)
    if cuda is not None and cuda.is_initialized():
        # A fork cannot use the CUDA context its parent made.
        sock.send(b"err the preload initialized CUDA: a fork could not use it")
        os._exit(0)
    # What the forks inherit from the import goes to the collector's
    # permanent generation: a fork's collections (and its finalization) then
    # leave those objects' pages shared. Its exit took 0.33-0.36 s without,
    # 0.19-0.20 s with (bench/fork_exit.py, on 2 cores).
    import gc
    gc.freeze()
    sock.send(b"ready %d" % os.getpid())
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 64, 3)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)  # the launcher closed its end
        if len(fds) != 3:
            for f in fds:
                os.close(f)
            sock.send(b"err bad request")
            continue
        if len(os.listdir("/proc/self/task")) != 1:
            for f in fds:
                os.close(f)
            sock.send(b"err zygote has threads")
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        api.PyOS_BeforeFork()
        pid = libc.syscall(ctypes.c_long(nr), ctypes.c_ulong(_CLONE_PARENT | _SIGCHLD),
                           ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_ulong(0))
        if pid == 0:
            api.PyOS_AfterFork_Child()
            _zygote_child(libc, sock, fds, launcher, comm)
            return
        err = ctypes.get_errno()
        api.PyOS_AfterFork_Parent()
        for f in fds:
            os.close(f)
        sock.send(b"pid %d" % pid if pid > 0 else b"err clone: " + os.strerror(err).encode())


def _zygote_child(libc, sock, fds, launcher, comm):
    import ctypes
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(comm[:15]), 0, 0, 0)
    sock.close()
    out, err, act = fds
    # As the launcher starts a standby: its own process group, killed with
    # the launcher, stdout/stderr to its pipes, the activation pipe on fd 3.
    os.setpgid(0, 0)
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if os.getppid() != launcher:
        os._exit(1)  # the launcher died before the signal was set
    os.dup2(out, 1)
    os.dup2(err, 2)
    os.dup2(act, 3)
    for f in fds:
        if f > 3:
            os.close(f)
    os.environ["BULSAJO_ACTIVATE_FD"] = "3"
    _skip_inherited_exit(libc)
    # torch 2.x's temporary directory (see _preload) is the zygote's, shared
    # by every fork: the first fork to exit normally would remove it under
    # the others. The launcher removes it at its end.
    tmp = getattr(sys.modules.get("torch.distributed.nn.jit.instantiator"), "_TEMP_DIR", None)
    if tmp is not None:
        try:
            tmp._finalizer.detach()
        except AttributeError:
            pass
    # What a fresh interpreter would not share with its siblings.
    np = sys.modules.get("numpy.random")
    if np is not None:
        try:
            np.seed()
        except Exception:
            pass


def _skip_inherited_exit(libc):
    """At exit, skip the C/C++ exit handlers of the libraries the zygote
    loaded (torch's static destructors). In a fork they free memory still
    shared with the zygote, copying it page by page: 0.35-0.45 s of a 0.6 s
    exit on 2 cores (bench/fork_exit.py), after the job's last step, for
    every worker started after a fault. exit() runs its handlers last
    registered first, so these two run after Python's finalization (files
    flushed, atexit done) and after the handlers of any library the script
    loads, but before the zygote's: flush C stdio, then _exit(status).
    BULSAJO_ZYGOTE=0 keeps the full exit (each standby imports for itself)."""
    import ctypes
    addr = ctypes.c_void_p
    try:
        libc.on_exit.argtypes = [addr, addr]
        libc.__cxa_atexit.argtypes = [addr, addr, addr]
        if libc.on_exit(ctypes.cast(libc._exit, addr), None) == 0:
            libc.__cxa_atexit(ctypes.cast(libc.fflush, addr), None, None)
    except AttributeError:
        pass  # not glibc: the full exit


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _read_activation():
    """Return the activation line (bytes, without the newline) or None on EOF."""
    raw = os.environ.get("BULSAJO_ACTIVATE_FD")
    if raw is None or raw.strip() == "":
        _fail("BULSAJO_ACTIVATE_FD is not set (this shim is started by the bulsajo agent)")
    try:
        fd = int(raw)
    except ValueError:
        _fail("BULSAJO_ACTIVATE_FD=%r is not a file descriptor number" % raw)
    buf = b""
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                import select
                select.select([fd], [], [])
                continue
            if not chunk:
                return None  # EOF: standby discarded
            buf += chunk
            nl = buf.find(b"\n")
            if nl >= 0:
                return buf[:nl]
    except OSError as e:
        _fail("cannot read activation fd %d: %s" % (fd, e))
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def main():
    _drop_own_dir()
    args = sys.argv[1:]
    if not args or (args[0] == "-m" and len(args) < 2):
        _fail("usage: _standby.py SCRIPT [ARGS...] | -m MODULE [ARGS...]")

    _preload()
    needs = _torch_env()
    if os.environ.get("BULSAJO_ZYGOTE_FD"):
        _zygote()  # returns in each forked standby
    # The launcher holds the other ranks until rank 0's store listens, for
    # at most 2 s from now (an import is not the script's time).
    _tell_agent(b"preloaded %d" % os.getpid())

    line = _read_activation()
    if line is None:
        sys.exit(0)
    os.environ.pop("BULSAJO_ACTIVATE_FD", None)
    os.environ.pop("BULSAJO_PRELOAD", None)

    import json
    try:
        msg = json.loads(line.decode("utf-8"))
        env = msg.get("env") or {}
        if not isinstance(env, dict):
            raise ValueError("env is not an object")
        env = {str(k): str(v) for k, v in env.items()}
    except Exception as e:
        _fail("malformed activation %r: %s" % (line[:200], e))
    os.environ.update(env)
    for k, v in needs.items():
        os.environ.setdefault(k, v)

    import runpy
    if args[0] == "-m":
        mod = args[1]
        sys.argv = [mod] + args[2:]
        sys.path.insert(0, os.getcwd())
        runpy.run_module(mod, run_name="__main__", alter_sys=True)
    else:
        script = args[0]
        sys.argv = [script] + args[1:]
        if not os.path.exists(script):
            # Same message and exit status as `python3 missing.py`.
            sys.stderr.write("%s: can't open file %r: [Errno 2] No such file "
                             "or directory\n" % (sys.executable, os.path.abspath(script)))
            sys.exit(2)
        if os.path.isdir(script):
            # Directory app (__main__.py inside): run_path handles sys.path.
            runpy.run_path(script, run_name="__main__")
            return
        sys.path.insert(0, os.path.dirname(os.path.realpath(script)))
        _run_file(script)


def _run_file(script):
    # Like runpy.run_path(script, run_name="__main__"), but exactly what
    # `python3 SCRIPT` does: argv[0] stays as given (run_path would rewrite
    # it), __file__ is absolute (Python >= 3.9), and the script's module stays
    # sys.modules["__main__"] (pickling, atexit, multiprocessing spawn).
    import builtins
    import io
    import types
    from importlib.machinery import SourceFileLoader
    path = os.path.abspath(script)
    with io.open_code(path) as f:
        source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    mod = types.ModuleType("__main__")
    mod.__file__ = path
    mod.__cached__ = None
    mod.__loader__ = SourceFileLoader("__main__", path)
    mod.__builtins__ = builtins
    sys.modules["__main__"] = mod
    exec(code, mod.__dict__)


if __name__ == "__main__":
    main()
