#!/usr/bin/env python3
"""DDP training that survives worker faults in-process (bulsajo live recovery).

    bulsajo run --recovery live --nproc-per-node 4 -- python3 examples/live_ddp.py --steps 1500
    torchrun --nproc_per_node=4 examples/live_ddp.py --steps 1500     # static group, no recovery
    python3 examples/live_ddp.py --steps 100                          # a world of one

Uses exactly the public API of bulsajo.torch.  Properties the tests rely on:

* Deterministic data: a synthetic data set of --samples rows generated from
  --seed; the global batch of step s is fixed by bulsajo.torch.ElasticSampler,
  and each rank takes its share [rank::world].  The loss is scaled so that the
  averaged gradient is the mean over the whole global batch whatever the world
  size.
* --sample-log FILE: every rank appends "gen step rank id1 id2 ..." once per
  committed step, from a job.on_commit callback: a step that failed and was
  redone appears once (for the run that committed), so across the file every
  step's ids are exactly its global batch.
* --step-log FILE: every rank appends "time step rank world_size gen" once
  per committed step (time.time() at the commit), for measuring what a
  fault costs from the steps' own timeline (bench/live_cost.py).
* Output: rank 0 prints `step {s} loss {x}` every --log-every steps and at the
  end exactly one line
  `done steps={N} loss={x:.6f} params_sha256={hex} regroups={K}`.
* --result-dir DIR: every rank also writes DIR/rank{R}.json with its final
  parameter hash and recovery history (for tests).
* --model transformer: a small transformer encoder (each row read as 16
  tokens of 4 features) trained with AdamW and a warmup-cosine LR schedule,
  the scheduler carried in the State like the optimizer; --model mlp (the
  default) is a 3-layer MLP with SGD.
"""

import argparse
import hashlib
import json
import math
import os
import time

import torch
import torch.nn as nn

import bulsajo.torch as bj

IN_FEATURES = 64
CLASSES = 10


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    p.add_argument("--steps", type=int, default=1500, help="total training steps")
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--samples", type=int, default=50000, help="size of the synthetic data set")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--model", choices=["mlp", "transformer"], default="mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--sleep-ms", type=float, default=0.0,
                   help="sleep per step before computing (simulates data loading)")
    p.add_argument("--sample-log", default=None,
                   help="append 'gen step rank sample_ids...' per committed step and rank")
    p.add_argument("--step-log", default=None,
                   help="append 'time step rank world_size gen' per committed step and rank")
    p.add_argument("--result-dir", default=None,
                   help="write rank{R}.json (params hash, history) per rank at the end")
    return p.parse_args()


def make_model(hidden):
    return nn.Sequential(
        nn.Linear(IN_FEATURES, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, CLASSES),
    )


TOKENS = 16  # a row of IN_FEATURES read as TOKENS tokens


class SmallTransformer(nn.Module):
    """A 2-layer transformer encoder classifying a row read as tokens."""

    def __init__(self, d_model=64):
        super().__init__()
        self.embed = nn.Linear(IN_FEATURES // TOKENS, d_model)
        self.pos = nn.Parameter(torch.zeros(TOKENS, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=4 * d_model,
                                           dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(d_model, CLASSES)

    def forward(self, x):
        h = self.embed(x.view(x.shape[0], TOKENS, -1)) + self.pos
        return self.head(self.encoder(h).mean(dim=1))


def make_optimizer(kind, params, steps):
    """The optimizer, and an LR scheduler (None for the MLP)."""
    if kind == "mlp":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9), None
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    warmup = max(1, steps // 20)

    def lr_at(step):  # linear warmup, then cosine to 10%
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def make_dataset(n, seed):
    g = torch.Generator().manual_seed(seed + 4242)
    x = torch.randn(n, IN_FEATURES, generator=g)
    teacher = torch.randn(IN_FEATURES, CLASSES, generator=g)
    y = (x @ teacher).argmax(dim=1)  # learnable labels from a fixed teacher
    return x, y


def params_sha256(module):
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main():
    args = parse_args()
    job = bj.init(backend=args.backend)
    device = torch.device("cpu")
    if job.backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())

    x_all, y_all = make_dataset(args.samples, args.seed)
    torch.manual_seed(args.seed)
    net = (SmallTransformer() if args.model == "transformer" else make_model(args.hidden)).to(device)
    model = bj.DistributedDataParallel(
        net, **({"device_ids": [device.index]} if device.type == "cuda" else {}))
    # The scheduler is made before the State, the usual order (the State's
    # wrapping of optimizer.step must not make torch warn about it).
    opt, sched = make_optimizer(args.model, model.parameters(), args.steps)
    state = bj.State(model=model, optimizer=opt, **({"sched": sched} if sched else {}))
    state.extra["loss"] = float("nan")
    sampler = bj.ElasticSampler(args.samples, global_batch=args.global_batch, seed=args.seed)

    if args.sample_log:
        fd = os.open(args.sample_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

        @job.on_commit
        def log_samples(step, rank, world_size, gen):
            ids = sampler.indices(step, rank, world_size)
            line = "%s %d %d %s\n" % (gen, step, rank, " ".join(map(str, ids)))
            os.write(fd, line.encode())  # one O_APPEND write: lines never interleave

    if args.step_log:
        sfd = os.open(args.step_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

        @job.on_commit
        def log_step(step, rank, world_size, gen):
            os.write(sfd, ("%.6f %d %d %d %s\n" % (time.time(), step, rank, world_size, gen)).encode())

    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for step in job.steps(args.steps, state):
        if args.sleep_ms > 0:
            time.sleep(args.sleep_ms / 1000.0)
        idx = sampler.indices(step, job.rank, job.world_size)
        xb, yb = x_all[idx].to(device), y_all[idx].to(device)
        # sum over this rank's share * world / global batch: after the hook
        # averages over ranks the gradient is the mean over the global batch.
        loss_sum = loss_fn(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        (loss_sum * (job.world_size / args.global_batch)).backward()
        opt.step()
        if sched is not None:
            sched.step()
        local_mean = loss_sum.item() / max(len(idx), 1)
        state.extra["loss"] = local_mean
        if job.rank == 0 and (step % args.log_every == 0 or step == args.steps - 1):
            print("step %d loss %.4f" % (step, local_mean), flush=True)

    digest = params_sha256(net)
    if args.result_dir:
        os.makedirs(args.result_dir, exist_ok=True)
        with open(os.path.join(args.result_dir, "rank%d.json" % job.rank), "w") as f:
            json.dump({"rank": job.rank, "pid": os.getpid(), "gen": job.generation,
                       "world_size": job.world_size, "step": state.step,
                       "params_sha256": digest, "regroups": job.regroups,
                       "history": job.history}, f)
    if job.rank == 0:
        print("done steps=%d loss=%.6f params_sha256=%s regroups=%d"
              % (args.steps, state.extra["loss"], digest, job.regroups), flush=True)
    job.close()


if __name__ == "__main__":
    main()
