#!/usr/bin/env python3
"""Check: can a gloo group built directly (as a background thread of the SDK
would build the next generation's) be made c10d's default group, so that a
user's dist.get_rank(), dist.all_reduce(t), dist.barrier() and DDP without a
process_group still work? Answers the grow plan's "decide first" question
(docs/architecture.md, Known limits) on this torch.

    for r in 0 1 2; do python3 bench/pg_install_check.py $r 3 29650 & done; wait

Each rank forms two generations in a row this way (a thread builds the group,
the main thread installs it, checks collectives and DDP, destroys it), then
a plain init_process_group, and prints "rank R ... ok". Torch 1.13 and 2.6
(scripts/in-torch2.sh, USE_LIBUV=0) both pass (2026-12-05). The registration
touches c10d's private maps, which differ between 1.x and 2.x: what install()
sets is what the SDK would have to set."""
import datetime, os, sys, threading, time
import torch, torch.distributed as dist, torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
c10d = dist.distributed_c10d
MAJOR = int(torch.__version__.split(".")[0])
TO = datetime.timedelta(seconds=30)
KW = {"use_libuv": False} if MAJOR >= 2 else {}

def make_pg(store, rank, world):
    ps = dist.PrefixStore("0", store)
    if MAJOR < 2:
        return dist.ProcessGroupGloo(ps, rank, world, TO)
    pg = dist.ProcessGroup(ps, rank, world)
    be = dist.ProcessGroupGloo(ps, rank, world, TO)
    pg._set_default_backend(dist.ProcessGroup.BackendType.GLOO)
    pg._register_backend(torch.device("cpu"), dist.ProcessGroup.BackendType.GLOO, be)
    return pg

def install(pg, store, world):
    ranks = {i: i for i in range(world)}
    if MAJOR < 2:
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

def gen(rank, world, port, n):
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, TO, wait_for_workers=False, **KW)
    out = {}
    def form():
        out["pg"] = make_pg(store, rank, world)
    t = threading.Thread(target=form); t.start(); t.join()
    install(out["pg"], store, world)
    assert dist.is_initialized() and dist.get_rank() == rank and dist.get_world_size() == world
    x = torch.tensor([float(rank + 1)])
    dist.all_reduce(x); assert x.item() == world * (world + 1) / 2, x
    y = torch.tensor([float(rank)]); dist.broadcast(y, src=world - 1); assert y.item() == world - 1
    rows = [torch.zeros(1) for _ in range(world)]; dist.all_gather(rows, torch.tensor([float(rank)]))
    assert [r.item() for r in rows] == list(range(world))
    dist.barrier()
    assert dist.get_backend() == "gloo"
    torch.manual_seed(rank)
    m = DDP(nn.Linear(4, 2))
    for _ in range(3):
        m(torch.randn(8, 4)).sum().backward()
    g = m.module.weight.grad.clone(); dist.broadcast(g, src=0)
    assert torch.equal(g, m.module.weight.grad)
    del m
    dist.destroy_process_group()
    assert not dist.is_initialized()
    print("rank %d gen %d ok" % (rank, n), flush=True)

def main():
    rank, world, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    gen(rank, world, port, 1)
    gen(rank, world, port + 1, 2)
    # and the ordinary path still works after
    store = dist.TCPStore("127.0.0.1", port + 2, world, rank == 0, TO, wait_for_workers=False, **KW)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=TO)
    x = torch.ones(1); dist.all_reduce(x); assert x.item() == world
    dist.destroy_process_group()
    print("rank %d plain ok (torch %s)" % (rank, torch.__version__), flush=True)

main()
