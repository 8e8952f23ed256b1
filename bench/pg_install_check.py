#!/usr/bin/env python3
"""Check: can a gloo group built directly (as a background thread of the SDK
would build the next generation's) be made c10d's default group, so that a
user's dist.get_rank(), dist.all_reduce(t), dist.barrier() and DDP without a
process_group still work? Answers the grow plan's "decide first" question
(docs/architecture.md, Known limits) on this torch.

    for r in 0 1 2; do python3 bench/pg_install_check.py $r 3 29650 & done; wait

Each rank forms two generations in a row this way (a thread builds the group,
the main thread installs it, checks collectives and DDP, destroys it), then
a plain init_process_group, and prints "rank R ... ok". The registration
touches c10d's private maps, which differ between 1.x and 2.x; it is the
SDK's own (bulsajo.torch._install_default), so this checks what a grow does.

Seen on 2026-12-05: torch 1.13 passed 3 of 3 runs. Torch 2.6
(scripts/in-torch2.sh, USE_LIBUV=0) passed the two installed generations in 5
of 5 runs, but in 2 of 5 the plain init_process_group after them hung: rank 0
waited for rank 1's gloo address (key /0//cpu//0/1). Found the same day with
gdb on a hung rank (7 hangs in 26 runs): its main thread was in
~ProcessGroupGloo, joining a gloo worker, under the GIL (the ProcessGroup
dropped as generation()'s frame was freed), and that worker waited for the
GIL to free a tensor's Python object: the deadlock the SDK's _hold_backend
avoids. Nothing to do with installing the group. With the backend held until
the group is destroyed and collected, 11 of 12 runs passed; the twelfth met
another process on its fixed port (a test suite ran beside it)."""
import datetime
import gc
import sys
import threading

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gloo_group import direct_gloo_group, install_default  # bench/ is sys.path[0]

MAJOR = int(torch.__version__.split(".")[0])
TIMEOUT = datetime.timedelta(seconds=30)
STORE_KW = {"use_libuv": False} if MAJOR >= 2 else {}  # Debian's 2.6 has no libuv


def check(what, ok):
    if not ok:
        sys.exit("pg_install_check: %s failed (torch %s)" % (what, torch.__version__))


def generation(rank, world, port, n):
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, TIMEOUT,
                          wait_for_workers=False, **STORE_KW)
    out = {}

    def form():  # "0": the prefix init_process_group gives the default group's keys
        out["pg"] = direct_gloo_group(store, "0", rank, world, TIMEOUT)
    t = threading.Thread(target=form)
    t.start()
    t.join()
    install_default(out["pg"], store, world)
    check("get_rank/get_world_size", dist.is_initialized() and dist.get_rank() == rank
          and dist.get_world_size() == world and dist.get_backend() == "gloo")
    x = torch.tensor([float(rank + 1)])
    dist.all_reduce(x)
    check("all_reduce", x.item() == world * (world + 1) / 2)
    y = torch.tensor([float(rank)])
    dist.broadcast(y, src=world - 1)
    check("broadcast", y.item() == world - 1)
    rows = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(rows, torch.tensor([float(rank)]))
    check("all_gather", [r.item() for r in rows] == list(range(world)))
    dist.barrier()
    torch.manual_seed(rank)
    m = DDP(nn.Linear(4, 2))  # the default group
    for _ in range(3):
        m(torch.randn(8, 4)).sum().backward()
    g = m.module.weight.grad.clone()
    dist.broadcast(g, src=0)
    check("DDP's averaged gradient", torch.equal(g, m.module.weight.grad))
    del m
    # The last reference to the gloo backend is dropped here, after the group
    # is destroyed and collected: its destructor joins its worker threads, and
    # run under the GIL (as the ProcessGroup's is, on 2.x) it can wait forever
    # on a worker that needs the GIL to free a tensor (the SDK's _hold_backend).
    pg = out.pop("pg")
    backend = pg if MAJOR < 2 else pg._get_backend(torch.device("cpu"))
    del pg
    dist.destroy_process_group()
    check("destroy_process_group", not dist.is_initialized())
    gc.collect()
    del backend  # the binding releases the GIL in the destructor
    print("rank %d gen %d ok" % (rank, n), flush=True)


def main():
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    generation(rank, world, port, 1)
    generation(rank, world, port + 1, 2)
    # and the ordinary path still works after
    store = dist.TCPStore("127.0.0.1", port + 2, world, rank == 0, TIMEOUT,
                          wait_for_workers=False, **STORE_KW)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=TIMEOUT)
    x = torch.ones(1)
    dist.all_reduce(x)
    check("init_process_group after", x.item() == world)
    dist.destroy_process_group()
    print("rank %d plain ok (torch %s)" % (rank, torch.__version__), flush=True)


if __name__ == "__main__":
    main()
