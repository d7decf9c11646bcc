"""A deterministic training whose epochs take --epoch-seconds (a pause that changes no weight), checkpointed
every epoch; one process, or torchrun-style ranks (gloo) when WORLD_SIZE > 1."""

import argparse
import hashlib
import os
import time
from datetime import timedelta

import mlflow
import torch
import torch.distributed as dist
from torch import nn

from mltf_flow import checkpoint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--epoch-seconds", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    x = torch.randn(1024, 8, generator=torch.Generator().manual_seed(99))
    y = (x.sum(dim=1, keepdim=True) > 0).float()
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    shuffle = torch.Generator().manual_seed(args.seed)
    start = 0
    found = checkpoint.load_latest()
    if found is not None:
        net.load_state_dict(found.state["model"])
        optimiser.load_state_dict(found.state["optimiser"])
        shuffle.set_state(found.state["shuffle"])
        start = found.epoch + 1
        print(f"rank {rank} resuming after epoch {found.epoch} (job {os.environ.get('SLURM_JOB_ID')})", flush=True)
    if rank == 0:
        mlflow.start_run()
    for epoch in range(start, args.epochs):
        order = torch.randperm(len(x), generator=shuffle)
        shard = order[rank::world]
        total = torch.zeros(2, dtype=torch.float64)
        for begin in range(0, len(shard), 64):
            idx = shard[begin:begin + 64]
            optimiser.zero_grad()
            loss = nn.functional.binary_cross_entropy_with_logits(net(x[idx]), y[idx])
            loss.backward()
            if world > 1:  # plain gradient averaging: the same arithmetic on every rank
                for p in net.parameters():
                    dist.all_reduce(p.grad)
                    p.grad /= world
            optimiser.step()
            total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(total)
        time.sleep(args.epoch_seconds)
        if rank == 0:
            mlflow.log_metric("loss", float(total[0] / total[1]), step=epoch)
            checkpoint.save({"model": net.state_dict(), "optimiser": optimiser.state_dict(),
                             "shuffle": shuffle.get_state()}, epoch)
        checkpoint.stop_if_time_is_up()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()
    print(f"rank {rank} final weights sha256 {digest}", flush=True)
    if rank == 0:
        mlflow.log_dict({"sha256": digest}, "weights.json")
        mlflow.set_tag("weights_sha256", digest)
        mlflow.end_run()
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
