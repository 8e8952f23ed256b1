#!/usr/bin/env python3
"""Small but real DDP training job, runnable unchanged under torchrun and bulsajo.

    torchrun --nproc_per_node=4 examples/ddp_train.py --steps 1500
    bulsajo  --nproc_per_node=4 examples/ddp_train.py --steps 1500

Properties the bulsajo tests rely on:

* Deterministic: the batch of global step s on rank r comes from a
  torch.Generator seeded from (seed, s, r), and checkpoints hold the model,
  the optimizer state and the step.  A run interrupted by faults and resumed
  from checkpoints therefore ends with bit-identical parameters to a fault-free
  run (same world size); compare the `params_sha256=` of the final line.
* Checkpoints are written atomically by rank 0 (temp file + os.replace) every
  --ckpt-every steps and after the last step; on start every rank loads the
  latest one and resumes at step+1.
* Progress is reported with bulsajo.step(step) after every optimizer step
  when the bulsajo SDK is importable (a no-op outside bulsajo).
* Gradients are averaged by a DDP comm hook that all-reduces each parameter
  separately (see per_param_allreduce): bit-identical resumes with >2 ranks.
* --fail-at-step S makes rank 0 raise at step S on every run: a deterministic
  crash loop (a resumed run restarts from a checkpoint before S).
  --abort-at-step S makes it abort() there instead (a native crash).
* Output (rank 0): `step {s} loss {loss:.4f}` every --log-every steps, then
  `timing steps_run={n} secs={t} step_ms={ms}` for the steps this run did, and
  finally exactly one line `done steps={N} loss={final_loss:.6f} params_sha256={hex}`.
  With --sample-log FILE every rank appends `gen step rank id...` per step
  (gen = $BULSAJO_GENERATION, else $TORCHELASTIC_RESTART_COUNT, else 0).
"""

import argparse
import hashlib
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

try:
    import bulsajo
except ImportError:
    bulsajo = None

IN_FEATURES = 64
CLASSES = 10


def parse_args():
    run_dir = os.environ.get("BULSAJO_RUN_DIR")
    default_ckpt = os.path.join(run_dir, "ckpt") if run_dir else "./ckpt"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    p.add_argument("--steps", type=int, default=1500, help="total training steps")
    p.add_argument("--ckpt-dir", default=default_ckpt,
                   help="checkpoint directory (default: $BULSAJO_RUN_DIR/ckpt or ./ckpt)")
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=32, help="per-rank batch size")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--sleep-ms", type=float, default=0.0,
                   help="extra sleep per step to simulate compute")
    p.add_argument("--sample-log", default=None,
                   help="append 'gen step rank sample_ids...' per step and rank")
    p.add_argument("--slow-save-s", type=float, default=0.0,
                   help="rank 0 computes this long (no progress) when it writes a checkpoint "
                        "at a multiple of 100 steps and at the end, as a large model's save would")
    p.add_argument("--fail-at-step", type=int, default=None,
                   help="rank 0 raises RuntimeError on reaching this step (every run)")
    p.add_argument("--abort-at-step", type=int, default=None,
                   help="rank 0 calls abort() on reaching this step (every run): a native "
                        "crash, SIGABRT, as an uncaught C++ exception in torch ends")
    return p.parse_args()


def busy(seconds):
    """Use a CPU for this long (a stand-in for serializing a large model)."""
    end = time.monotonic() + seconds
    x = 0
    while time.monotonic() < end:
        x += 1
    return x


def make_model(hidden):
    return nn.Sequential(
        nn.Linear(IN_FEATURES, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, CLASSES),
    )


def batch_for(seed, step, rank, batch, teacher):
    """Synthetic batch for (seed, step, rank): independent of restarts."""
    g = torch.Generator()
    g.manual_seed(((seed * 1000003 + step) * 1009 + rank) & 0x7FFFFFFFFFFFFFFF)
    ids = torch.randint(0, 2 ** 31 - 1, (batch,), generator=g)
    x = torch.randn(batch, IN_FEATURES, generator=g)
    y = (x @ teacher).argmax(dim=1)  # learnable labels from a fixed teacher
    return ids, x, y


def per_param_allreduce(process_group, bucket):
    """DDP comm hook: average each gradient with its own all_reduce.

    DDP's default hook all-reduces a whole flat bucket, and DDP re-lays out its
    buckets after the first iteration of every process.  With more than two
    ranks the ring all-reduce's summation order for an element depends on
    where it sits in the flat buffer, so a run resumed from a checkpoint (first
    iteration = initial layout) would drift from a fault-free run in the last
    bits.  Reducing every parameter's gradient separately makes the rounding
    independent of the bucket layout, so resumed runs stay bit-identical.

    Exit-hang workaround (PyTorch 1.13 + gloo, seen with gdb): the tensors
    handed to gloo here are Python objects; if a gloo worker thread drops the
    last reference to one it needs the GIL, while the main thread holds the
    GIL joining that very thread in ~ProcessGroupGloo when DDP is freed at
    exit.  So the gradient views stay referenced from Python (_HOOK_TENSORS)
    until the next backward, and the hook waits for its all_reduces itself
    rather than chaining Python callbacks (fut.then) onto gloo's threads.  A
    failed all_reduce (a peer died) raises from wait() and fails the step.
    """
    world = dist.get_world_size(process_group)
    grads = bucket.gradients()
    _HOOK_TENSORS[bucket.index()] = grads
    works = []
    for g in grads:
        g.div_(world)
        works.append(dist.all_reduce(g, group=process_group, async_op=True))
    for w in works:
        w.wait()
    fut = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


_HOOK_TENSORS = {}


def params_sha256(model):
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main():
    args = parse_args()

    # Plain `python ddp_train.py` works too: a world of one.
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    gen = os.environ.get("BULSAJO_GENERATION",
                         os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    backend = args.backend
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend)

    torch.manual_seed(args.seed)
    model = make_model(args.hidden)
    teacher = torch.randn(IN_FEATURES, CLASSES,
                          generator=torch.Generator().manual_seed(args.seed + 12345))
    ckpt_path = os.path.join(args.ckpt_dir, "latest.pt")

    # Resume: every rank reads the same file rank 0 wrote.
    ckpt = None
    if os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location="cpu")
        model.load_state_dict(ckpt["model"])
    model.to(device)
    ddp = DDP(model, device_ids=[local_rank] if backend == "nccl" else None)
    ddp.register_comm_hook(None, per_param_allreduce)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    start = 0
    last_loss = float("nan")
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"]) + 1
        last_loss = float(ckpt.get("loss", float("nan")))
        if rank == 0:
            print("resumed from %s at step %d" % (ckpt_path, start), flush=True)
    del ckpt
    dist.barrier()  # all ranks have read the checkpoint before anyone writes one
    if rank == 0:
        os.makedirs(args.ckpt_dir, exist_ok=True)
        for name in os.listdir(args.ckpt_dir):  # temp files of a save that was killed
            if name.startswith("latest.pt.tmp."):
                try:
                    os.unlink(os.path.join(args.ckpt_dir, name))
                except OSError:
                    pass

    sample_fd = None
    if args.sample_log:
        sample_fd = os.open(args.sample_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    loss_fn = nn.CrossEntropyLoss()
    loss = None
    t0 = time.monotonic()
    for step in range(start, args.steps):
        if args.fail_at_step is not None and step == args.fail_at_step and rank == 0:
            raise RuntimeError("injected failure at step %d" % step)
        if args.abort_at_step is not None and step == args.abort_at_step and rank == 0:
            os.abort()
        ids, x, y = batch_for(args.seed, step, rank, args.batch, teacher)
        x, y = x.to(device), y.to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(ddp(x), y)
        loss.backward()
        opt.step()
        if args.sleep_ms > 0:
            time.sleep(args.sleep_ms / 1000.0)
        if bulsajo is not None:
            bulsajo.step(step)
        if sample_fd is not None:
            line = "%s %d %d %s\n" % (gen, step, rank, " ".join(str(i) for i in ids.tolist()))
            os.write(sample_fd, line.encode())  # one O_APPEND write: lines never interleave
        last = step == args.steps - 1
        if rank == 0 and (step % args.log_every == 0 or last):
            print("step %d loss %.4f" % (step, loss.item()), flush=True)
        if rank == 0 and ((step + 1) % args.ckpt_every == 0 or last):
            if args.slow_save_s > 0 and ((step + 1) % 100 == 0 or last):
                busy(args.slow_save_s)
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "step": step, "loss": loss.item()}
            tmp = "%s.tmp.%d" % (ckpt_path, os.getpid())
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, ckpt_path)

    if loss is not None:
        last_loss = loss.item()
    if sample_fd is not None:
        os.close(sample_fd)
    digest = params_sha256(model)  # every rank computes it; rank 0 prints it
    if rank == 0:
        ran = args.steps - start
        secs = time.monotonic() - t0
        print("timing steps_run=%d secs=%.2f step_ms=%.2f"
              % (ran, secs, 1000.0 * secs / max(ran, 1)), flush=True)
        print("done steps=%d loss=%.6f params_sha256=%s" % (args.steps, last_loss, digest),
              flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
