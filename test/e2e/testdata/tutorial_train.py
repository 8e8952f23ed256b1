#!/usr/bin/env python3
"""A training script as the PyTorch DDP tutorial writes it (multigpu_torchrun.py),
on CPU with gloo, and nothing bulsajo-specific: no SDK, no step numbers a
launcher could read. It prints one line per epoch per rank, saves a snapshot
every --save-every epochs and resumes from it on start.

    torchrun --nproc_per_node=4 tutorial_train.py 20 2
    bulsajo run --nproc-per-node 4 -- python3 tutorial_train.py 20 2

--fail MODE turns it into a crash loop, for tests: "import" (an ImportError
at start), "step0" (raises at the first step), "exit-after-2s" (rank 0 exits 1
two seconds after starting).
"""

import argparse
import os
import sys
import time

if "--fail" in sys.argv and sys.argv[sys.argv.index("--fail") + 1] == "import":
    import torch_helpers_that_do_not_exist  # noqa: F401

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class MyTrainDataset(Dataset):
    def __init__(self, size):
        g = torch.Generator().manual_seed(0)
        self.data = [(torch.rand(64, generator=g), torch.rand(1, generator=g)) for _ in range(size)]

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        return self.data[index]


class Trainer:
    def __init__(self, model, train_data, optimizer, save_every, snapshot_path, fail):
        self.rank = int(os.environ["RANK"])
        self.model = model
        self.train_data = train_data
        self.optimizer = optimizer
        self.save_every = save_every
        self.epochs_run = 0
        self.snapshot_path = snapshot_path
        self.fail = fail
        if os.path.exists(snapshot_path):
            print("Loading snapshot")
            self._load_snapshot(snapshot_path)
        self.model = DDP(self.model)

    def _load_snapshot(self, snapshot_path):
        snapshot = torch.load(snapshot_path)
        self.model.load_state_dict(snapshot["MODEL_STATE"])
        self.epochs_run = snapshot["EPOCHS_RUN"]
        print(f"Resuming training from snapshot at Epoch {self.epochs_run}")

    def _run_batch(self, source, targets):
        if self.fail == "step0":
            raise RuntimeError("loss is not a tensor: the batch was never moved to the device")
        self.optimizer.zero_grad()
        output = self.model(source)
        loss = F.mse_loss(output, targets)
        loss.backward()
        self.optimizer.step()

    def _run_epoch(self, epoch):
        b_sz = len(next(iter(self.train_data))[0])
        print(f"[GPU{self.rank}] Epoch {epoch} | Batchsize: {b_sz} | Steps: {len(self.train_data)}")
        self.train_data.sampler.set_epoch(epoch)
        for source, targets in self.train_data:
            self._run_batch(source, targets)

    def _save_snapshot(self, epoch):
        snapshot = {"MODEL_STATE": self.model.module.state_dict(), "EPOCHS_RUN": epoch}
        tmp = self.snapshot_path + ".tmp"
        torch.save(snapshot, tmp)
        os.replace(tmp, self.snapshot_path)
        print(f"Epoch {epoch} | Training snapshot saved at {self.snapshot_path}")

    def train(self, max_epochs):
        for epoch in range(self.epochs_run, max_epochs):
            self._run_epoch(epoch)
            if self.rank == 0 and epoch % self.save_every == 0:
                self._save_snapshot(epoch)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("total_epochs", type=int)
    p.add_argument("save_every", type=int)
    p.add_argument("--batch_size", default=32, type=int)
    p.add_argument("--samples", default=1024, type=int)
    p.add_argument("--hidden", default=256, type=int)
    p.add_argument("--snapshot", default="snapshot.pt")
    p.add_argument("--fail", choices=["import", "step0", "exit-after-2s"])
    args = p.parse_args()

    dist.init_process_group(backend="gloo")
    if args.fail == "exit-after-2s":
        time.sleep(2)
        if int(os.environ["RANK"]) == 0:
            sys.exit(1)
    dataset = MyTrainDataset(args.samples)
    model = torch.nn.Sequential(torch.nn.Linear(64, args.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(args.hidden, args.hidden), torch.nn.ReLU(),
                                torch.nn.Linear(args.hidden, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    data = DataLoader(dataset, batch_size=args.batch_size, pin_memory=False, shuffle=False,
                      sampler=DistributedSampler(dataset))
    trainer = Trainer(model, data, optimizer, args.save_every, args.snapshot, args.fail)
    trainer.train(args.total_epochs)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
