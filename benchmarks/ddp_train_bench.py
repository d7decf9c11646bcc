"""A torchrun-style DDP training loop that measures its own throughput (used by ddp_throughput.py).

Synthetic data in memory, an MLP, DDP over gloo (CPU) or nccl (GPU). After ``--warmup`` steps, rank 0
times ``--steps`` steps between two barriers and prints ``THROUGHPUT <samples/s>`` (global samples);
every rank prints ``WEIGHTS <sha256>`` at the end. Nothing here knows who launched it.
"""

import argparse
import hashlib
import os
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="gloo", choices=["gloo", "nccl"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=256, help="per rank")
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cpu")
    if args.backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend, timeout=timedelta(seconds=300))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, args.width), nn.ReLU(), nn.Linear(args.width, args.width), nn.ReLU(),
                          nn.Linear(args.width, 1)).to(device)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimiser = torch.optim.SGD(ddp.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch * 8, 64, generator=gen).to(device)
    y = torch.randn(args.batch * 8, 1, generator=gen).to(device)

    def step(i: int) -> None:
        lo = (i % 8) * args.batch
        optimiser.zero_grad()
        nn.functional.mse_loss(ddp(x[lo:lo + args.batch]), y[lo:lo + args.batch]).backward()
        optimiser.step()

    for i in range(args.warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        print(f"THROUGHPUT {args.steps * args.batch * world / elapsed:.1f}", flush=True)
    digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()
    print(f"WEIGHTS {digest}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
