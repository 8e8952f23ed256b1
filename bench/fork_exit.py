"""How long a torch process takes from its last line to being reaped: spawned
(it imported torch itself) vs forked from a process that imported it, as the
launcher's zygote forks standbys.  The parent freezes its objects
(gc.freeze) before forking, as the zygote does, unless `--no-freeze`.
With `--os-exit` the fork skips the interpreter's finalization (os._exit),
to see where the time goes; with `--skip-inherited-exit` it registers what
the zygote's forks register (bulsajo/_standby.py: _exit after Python's
finalization, before the destructors of the libraries loaded before the fork).

    /usr/bin/python3 bench/fork_exit.py [ROUNDS] [--os-exit | --skip-inherited-exit] [--no-freeze]
"""
import ctypes, os, subprocess, sys, time, gc
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
from bulsajo._standby import _skip_inherited_exit

CHILD = ("import torch,time,sys; m=torch.nn.Linear(512,512); "
         "[m(torch.randn(64,512)).sum().backward() for _ in range(20)]; "
         "print(time.time(), flush=True)")

def spawned():
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    t = float(p.stdout.readline()); p.wait()
    return time.time() - t

def forked():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        if SKIP:
            _skip_inherited_exit(ctypes.PyDLL(None))
        m = torch.nn.Linear(512, 512)
        for _ in range(20):
            m(torch.randn(64, 512)).sum().backward()
        os.write(w, b"%f" % time.time())
        if OS_EXIT:
            os._exit(0)
        raise SystemExit(0)  # normal interpreter finalization
    os.close(w)
    t = float(os.read(r, 64)); os.close(r)
    os.waitpid(pid, 0)
    return time.time() - t

OS_EXIT = "--os-exit" in sys.argv
SKIP = "--skip-inherited-exit" in sys.argv
if "--no-freeze" not in sys.argv:
    gc.freeze()
res = {"spawned": [], "forked": []}
for i in range(int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 5):
    res["spawned"].append(spawned())
    res["forked"].append(forked())
for k, v in res.items():
    v.sort()
    print(k, "exit s: median %.3f  all %s" % (v[len(v)//2], [round(x, 3) for x in v]))
