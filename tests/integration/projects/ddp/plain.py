"""A plain torchrun-style DDP script: nothing mltf_flow-specific (reads RANK/WORLD_SIZE/LOCAL_RANK from the
environment, joins the group through env://), so it runs unchanged under `torchrun` and under the launcher.
DataLoader worker processes are started (non-daemonic ranks). Rank 0 logs to MLflow."""

import argparse
import hashlib
import os
from datetime import timedelta

import mlflow
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--loader-workers", type=int, default=1)
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(4096, 16, generator=gen)
    y = x @ torch.randn(16, 1, generator=gen) + 0.1 * torch.randn(4096, 1, generator=gen)
    data = TensorDataset(x, y)
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    loader = DataLoader(data, batch_size=64, sampler=sampler, num_workers=args.loader_workers,
                        persistent_workers=args.loader_workers > 0)
    model = DistributedDataParallel(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1)))
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01)
    if rank == 0:
        mlflow.start_run()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        total = torch.zeros(2, dtype=torch.float64)
        for xb, yb in loader:
            optimiser.zero_grad()
            loss = nn.functional.mse_loss(model(xb), yb)
            loss.backward()
            optimiser.step()
            total += torch.tensor([loss.item() * len(xb), len(xb)], dtype=torch.float64)
        dist.all_reduce(total)
        if rank == 0:
            mlflow.log_metric("loss", float(total[0] / total[1]), step=epoch)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.module.parameters())).hexdigest()
    print(f"rank {rank} local_rank {local_rank} world {world} final weights sha256 {digest}", flush=True)
    if rank == 0:
        mlflow.log_dict({"sha256": digest, "world_size": world}, "weights.json")
        mlflow.end_run()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
