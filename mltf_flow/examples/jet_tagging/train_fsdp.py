"""Entry point ``train_fsdp``: a small transformer encoder over jet constituents, sharded across ranks with FSDP2.

The model-parallel counterpart of ``train.py``: a torchrun-style script (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
``nccl`` with GPUs, ``gloo`` without, through ``mltf_flow.ddp.init_process_group``) that runs as one process,
under ``torchrun`` and under mltf_flow's launcher. ``--parallel fsdp`` shards every encoder block and the
root with ``torch.distributed.fsdp.fully_shard`` (parameters, gradients and optimiser state split across
ranks); ``--parallel ddp`` trains the same model replicated with DistributedDataParallel, for comparison.
On GPU, FSDP computes in bfloat16 and reduces gradients in float32 (``--precision auto``; ``fp32`` turns it off).

Every epoch each rank trains on its own shard of the same shuffled order (shuffled from ``--seed`` and the
epoch, so a resumed run sees the orders an uninterrupted one would). Deterministic on CPU given ``--seed``.
After every epoch a sharded checkpoint (``mltf_flow.sharded_checkpoint``: each rank writes its shard, the
run's artifact ``checkpoints/epoch-<N>/``) is saved; a retried step resumes after the last one, with any
number of ranks. Rank 0 logs ``train_loss``, ``val_loss`` and ``val_accuracy`` at step = epoch, and at the
end ``metrics.json`` and the tag ``weights_sha256`` (of the gathered full weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from mltf_flow import checkpoint, sharded_checkpoint
from mltf_flow.ddp.rank import init_process_group
from mltf_flow.fabric.tensorfile import load_arrays, local_copy, read_index


class Block(nn.Module):
    """Pre-norm transformer encoder block; padded constituents are masked out of the attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


class JetTransformer(nn.Module):
    """Constituents [batch, n, 3] and their counts -> quark/gluon logits (mean over the real constituents)."""

    def __init__(self, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, c: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        # At least one position attends: a jet whose constituents were all cut would give NaN otherwise.
        mask = torch.arange(c.shape[1], device=c.device)[None, :] < n.clamp(min=1)[:, None]
        h = self.embed(c)
        for block in self.blocks:
            h = block(h, mask)
        h = self.norm(h) * mask[..., None]
        return self.head(h.sum(dim=1) / mask.sum(dim=1, keepdim=True))


def uses_bf16(args: argparse.Namespace, device: torch.device) -> bool:
    auto = args.precision == "auto" and device.type == "cuda"
    return args.parallel == "fsdp" and (args.precision == "bf16" or auto)


def build(args: argparse.Namespace, device: torch.device, world: int) -> nn.Module:
    """The model, the same on every rank (seeded), wrapped for ``args.parallel``."""
    torch.manual_seed(args.seed)
    model = JetTransformer(args.dim, args.heads, args.layers).to(device)
    if args.parallel == "ddp":
        return DistributedDataParallel(model) if world > 1 else model
    bf16 = uses_bf16(args, device)
    # Parameters in bf16 for compute, gradients reduced in fp32 (a bf16 sum over ranks loses digits).
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
              else MixedPrecisionPolicy())
    for block in model.blocks:  # one all-gather per block: only one block's full weights live at a time
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def full_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on CPU, on rank 0 (other ranks get an empty dict). A collective."""
    return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_data(path: Path, device: torch.device, max_constituents: int) -> tuple[torch.Tensor, ...]:
    arrays_in_file = read_index(path)["arrays"]
    if "C" not in arrays_in_file:
        print(f"error: {path} has no constituents (array C): it was made by an older features.py; rerun the "
              "features step (mltf-flow run DIR --step features) and then train_fsdp.", file=sys.stderr)
        sys.exit(2)
    source = local_copy(path, os.environ.get("MLTF_GDS_SCRATCH"))
    arrays, _ = load_arrays(source, ["C", "n_c", "y"], device=str(device),
                            backend=os.environ.get("MLTF_GDS_BACKEND", "auto"))
    c = arrays["C"][:, :max_constituents].float()
    return c, arrays["n_c"].clamp(max=max_constituents).long(), arrays["y"].long()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--max-constituents", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--parallel", choices=("fsdp", "ddp"), default="fsdp")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="fsdp only; auto: bf16 compute with fp32 reductions on GPU, fp32 on CPU")
    args = parser.parse_args()

    backend = init_process_group()  # always: fully_shard needs a process group, even of one rank
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    torch.set_num_threads(1)  # reductions split over threads can round differently
    torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    c_all, n_all, y_all = load_data(args.features, device, args.max_constituents)
    order = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(y_all))).to(device)
    n_val = len(y_all) // 5
    val_t, tr_t = order[:n_val], order[n_val:]
    real = torch.arange(c_all.shape[1], device=device)[None, :] < n_all[tr_t, None]
    mean, std = c_all[tr_t][real].mean(dim=0), c_all[tr_t][real].std(dim=0, unbiased=False) + 1e-6
    c = (c_all - mean) / std * (torch.arange(c_all.shape[1], device=device)[None, :] < n_all[:, None])[..., None]

    net = build(args, device, world)
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    model_state, optim_state = get_state_dict(net, optimiser)
    state = {"model": model_state, "optim": optim_state}
    done = sharded_checkpoint.load_latest_sharded(state) if "MLFLOW_RUN_ID" in os.environ else None
    if done is not None:  # a retried step: continue after the last epoch done, with this run's world size
        set_state_dict(net, optimiser, model_state_dict=state["model"], optim_state_dict=state["optim"])
        print(f"rank {rank}: resuming after epoch {done} (world size {world})", flush=True)
    start = 0 if done is None else done + 1
    loss_fn = nn.CrossEntropyLoss()

    run: Any = mlflow.start_run() if rank == 0 else None
    try:
        if rank == 0 and done is None:  # params are fixed once logged: a resumed run may have another world size
            mlflow.log_params({"n_train": len(tr_t), "n_val": len(val_t), "world_size": world,
                               "compute_dtype": "bfloat16" if uses_bf16(args, device) else "float32"})
        for epoch in range(start, args.epochs):
            net.train()
            shuffle = torch.Generator().manual_seed(args.seed * 100_003 + epoch)
            perm = tr_t[torch.randperm(len(tr_t), generator=shuffle).to(device)]
            usable = len(perm) - len(perm) % world  # equal shards: every rank takes the same number of steps
            shard = perm[rank:usable:world]
            total = torch.zeros(2, dtype=torch.float64, device=device)
            for begin in range(0, len(shard), args.batch_size):
                idx = shard[begin : begin + args.batch_size]
                optimiser.zero_grad()
                loss = loss_fn(net(c[idx], n_all[idx]).float(), y_all[idx])
                loss.backward()
                optimiser.step()
                total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64, device=device)
            val = evaluate(net, c, n_all, y_all, val_t[: len(val_t) - len(val_t) % world][rank::world], loss_fn,
                           args.batch_size, device)  # equal shards: FSDP's forward is a collective
            dist.all_reduce(total)
            dist.all_reduce(val)
            if rank == 0:
                metrics = {"train_loss": float(total[0] / total[1]), "val_loss": float(val[0] / val[2]),
                           "val_accuracy": float(val[1] / val[2])}
                mlflow.log_metrics(metrics, step=epoch)
                print(f"epoch {epoch + 1}/{args.epochs}: " + " ".join(f"{k}={v:.6f}" for k, v in metrics.items()),
                      flush=True)
            model_state, optim_state = get_state_dict(net, optimiser)
            sharded_checkpoint.save_sharded({"model": model_state, "optim": optim_state}, epoch)
            checkpoint.stop_if_time_is_up()  # every rank: exits 75 near the job's time limit, to continue later

        weights = full_state(net)
        if rank == 0:
            digest = weights_sha256(weights)
            print(f"final weights sha256 {digest}", flush=True)
            mlflow.set_tag("weights_sha256", digest)
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "metrics.json"
                last = mlflow.get_run(run.info.run_id).data.metrics
                out.write_text(json.dumps({"val_accuracy": last.get("val_accuracy"), "val_loss": last.get("val_loss"),
                                           "weights_sha256": digest, "world_size": world,
                                           "parallel": args.parallel}, indent=1))
                mlflow.log_artifact(str(out))
    finally:
        if run is not None:
            mlflow.end_run()
        dist.destroy_process_group()


def evaluate(net: nn.Module, c: torch.Tensor, n: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
             loss_fn: nn.Module, batch_size: int, device: torch.device) -> torch.Tensor:
    """[summed loss, correct, count] over this rank's ``rows`` (every rank runs the forward: FSDP gathers
    each block's weights from all ranks)."""
    net.eval()
    out = torch.zeros(3, dtype=torch.float64, device=device)
    with torch.no_grad():
        for begin in range(0, len(rows), batch_size):
            idx = rows[begin : begin + batch_size]
            logits = net(c[idx], n[idx]).float()
            out += torch.tensor([float(loss_fn(logits, y[idx])) * len(idx),
                                 float((logits.argmax(dim=1) == y[idx]).sum()), len(idx)],
                                dtype=torch.float64, device=device)
    return out


if __name__ == "__main__":
    main()
