#!/usr/bin/env python3
"""A small DDP job (gloo, CPU) that behaves as a long training job should on
Slurm: it resumes from its checkpoint, and on SIGTERM (scancel, the time
limit, a pod's termination) it writes one at the next step boundary and exits
143, all ranks at the same step.

    bulsajo submit ... -- python3 examples/slurm/train.py --ckpt-dir DIR --steps 200

Output (rank 0): `resumed from step S world W` or `fresh start world W`,
`checkpoint step S (sigterm)`, and at the end `done steps=N`.
"""

import argparse
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

try:
    import bulsajo  # progress reports when run under bulsajo
except ImportError:
    bulsajo = None

term = False


def on_term(signum, frame):
    global term
    term = True


def save(path, model, step):
    tmp = path + ".tmp"
    torch.save({"model": model.state_dict(), "step": step}, tmp)
    os.replace(tmp, path)
    with open(path + ".step.tmp", "w") as f:  # for people and tests without torch at hand
        f.write(f"{step}\n")
    os.replace(path + ".step.tmp", path + ".step")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ckpt-dir", required=True)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--step-time", type=float, default=0.05)
    p.add_argument("--ckpt-every", type=int, default=10)
    # Test aid: rank R exits 1 at step S in generation 1 only (a bad node).
    p.add_argument("--crash-rank", type=int, default=-1)
    p.add_argument("--crash-at-step", type=int, default=-1)
    a = p.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 1)
    path = os.path.join(a.ckpt_dir, "ckpt.pt")
    start = 0
    if os.path.exists(path):
        ck = torch.load(path)
        model.load_state_dict(ck["model"])
        start = ck["step"]
        if rank == 0:
            print(f"resumed from step {start} world {world}", flush=True)
    elif rank == 0:
        print(f"fresh start world {world}", flush=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(start + 1, a.steps + 1):
        g = torch.Generator().manual_seed(step * 1000 + rank)
        x = torch.randn(8, 16, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        for q in model.parameters():
            dist.all_reduce(q.grad)
            q.grad /= world
        opt.step()
        if rank == a.crash_rank and step == a.crash_at_step and os.environ.get("BULSAJO_GENERATION") == "1":
            print(f"rank {rank} crashing at step {step} on {os.environ.get('SLURMD_NODENAME')}", flush=True)
            os._exit(1)
        time.sleep(a.step_time)
        if bulsajo is not None:
            bulsajo.step(step)
        # Every rank learns of a SIGTERM at the same step.
        stop = torch.tensor([1 if term else 0])
        dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item():
            if rank == 0:
                save(path, model, step)
                print(f"checkpoint step {step} (sigterm)", flush=True)
            dist.barrier()
            os._exit(143)
        if rank == 0 and step % a.ckpt_every == 0:
            save(path, model, step)
            print(f"step {step} loss {loss.item():.4f}", flush=True)
    if rank == 0:
        save(path, model, a.steps)
        print(f"done steps={a.steps}", flush=True)
    # Leave together and at once: a slow teardown after the last step reads
    # as a hang.
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
