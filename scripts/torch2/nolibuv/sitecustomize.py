"""For torchrun's workers on a torch built without libuv (Debian 13's 2.6):
torchrun tells its workers to use its own store (TORCHELASTIC_USE_AGENT_STORE),
and torch's env:// rendezvous then makes that store's TCPStore client with
libuv whatever USE_LIBUV says. Put this directory on PYTHONPATH of a torchrun
run (bench/faults.py --torchrun-env PYTHONPATH=...) to make it without libuv.
bulsajo needs none of this (its workers make their own store).
"""
import os

if os.environ.get("USE_LIBUV") == "0":
    try:
        import functools
        import sys

        import torch.distributed.rendezvous  # noqa: F401 (the name is also a function)
        _r = sys.modules["torch.distributed.rendezvous"]
        _r.TCPStore = functools.partial(_r.TCPStore, use_libuv=False)
    except Exception:  # no torch here, or another layout: leave torch alone
        pass
