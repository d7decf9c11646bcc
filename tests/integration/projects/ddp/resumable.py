"""DDP training that checkpoints every epoch with mltf_flow.checkpoint and resumes from the last one.

Test hooks (environment, so they do not change the step's cache key): MLTF_TEST_FAIL_RANK and
MLTF_TEST_FAIL_EPOCH make that rank raise at the start of that epoch; MLTF_TEST_HOLD_EPOCH and
MLTF_TEST_HOLD_FILE make every rank wait after that epoch's checkpoint until the file exists."""

import argparse
import hashlib
import os
import time
from datetime import timedelta

import mlflow
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from mltf_flow import checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(99)
    x = torch.randn(2048, 8, generator=gen)
    y = (x.sum(dim=1, keepdim=True) > 0).float()
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(data, batch_size=32, sampler=sampler)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    start = 0
    found = checkpoint.load_latest()
    if found is not None:
        net.load_state_dict(found.state["model"])
        optimiser.load_state_dict(found.state["optimiser"])
        start = found.epoch + 1
        print(f"rank {rank} resuming after epoch {found.epoch}", flush=True)
    model = DistributedDataParallel(net)
    if rank == 0:
        mlflow.start_run()
    for epoch in range(start, args.epochs):
        if os.environ.get("MLTF_TEST_FAIL_RANK") == str(rank) and os.environ.get("MLTF_TEST_FAIL_EPOCH") == str(epoch):
            print(f"INJECTED FAILURE at {time.time():.3f}", flush=True)
            raise RuntimeError(f"injected failure on rank {rank} at epoch {epoch}")
        sampler.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64)
        for xb, yb in loader:
            optimiser.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(model(xb), yb)
            loss.backward()
            optimiser.step()
            total += torch.tensor([loss.item() * len(xb), len(xb)], dtype=torch.float64)
        dist.all_reduce(total)
        if rank == 0:
            mlflow.log_metric("loss", float(total[0] / total[1]), step=epoch)
            checkpoint.save({"model": net.state_dict(), "optimiser": optimiser.state_dict()}, epoch)
        if os.environ.get("MLTF_TEST_HOLD_EPOCH") == str(epoch):
            print(f"rank {rank} HOLDING after epoch {epoch}", flush=True)
            while not os.path.exists(os.environ["MLTF_TEST_HOLD_FILE"]):
                time.sleep(0.1)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
    print(f"rank {rank} final weights sha256 {digest}", flush=True)
    if rank == 0:
        mlflow.log_dict({"sha256": digest}, "weights.json")
        mlflow.end_run()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
