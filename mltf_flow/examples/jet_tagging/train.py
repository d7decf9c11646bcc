"""Entry point ``train``: a small PyTorch quark/gluon classifier on the extracted features.

A plain torchrun-style DDP script: it reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and joins the process
group (``nccl`` with GPUs, ``gloo`` without), so it runs unchanged as one process, under
``torchrun --nproc-per-node N``, and under mltf_flow's launcher on the profile's GPU workers. Every epoch
each rank trains on its own shard of the same shuffled order (per-rank batch ``--batch-size``); DDP
averages the gradients, so every rank ends with the same weights.

Deterministic on CPU: random choices come from generators seeded by ``--seed``, one intra-op thread,
deterministic algorithms. Rank 0 owns the MLflow run: per-epoch ``train_loss`` (all ranks),
``val_loss``, ``val_accuracy``, the model (LoggedModel ``jet_tagger`` with signature and explicit pip
requirements), ``metrics.json``, the sha256 of the weights (tag ``weights_sha256``), and a checkpoint
per epoch (``mltf_flow.checkpoint``): a retried step resumes after the last epoch done, and a training that
reaches its SLURM job's time limit stops after a checkpoint and continues in a new job. The features come
from the aligned tensor file through ``mltf_flow.fabric.tensorfile`` (GPUDirect Storage onto the GPU where the
node has it, after a copy to node-local scratch when the profile configures one); the backend that ran and
the load throughput are logged (tag ``mltf.data.backend``, metric ``data_load_gbps``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
import torch.distributed as dist
from mlflow.models import infer_signature
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mltf_flow import checkpoint
from mltf_flow.fabric.tensorfile import load_arrays, local_copy


def weights_sha256(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device) from the torchrun variables; a single process without them."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device("cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", rank=rank, world_size=world, timeout=timedelta(minutes=10))
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(minutes=10))
    return rank, world, torch.device("cpu")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        return float(loss_fn(logits, y)), float((logits.argmax(dim=1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256, help="per rank")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    args = parser.parse_args()

    rank, world, device = setup_distributed()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # reductions split over threads can round differently
    torch.use_deterministic_algorithms(True)
    # The features file goes to node-local scratch first when the profile has one (gds.scratch), then
    # straight onto this rank's device: GPUDirect Storage where the node has it, POSIX reads otherwise.
    source = local_copy(args.features, os.environ.get("MLTF_GDS_SCRATCH"))
    arrays, loaded = load_arrays(source, ["X", "y"], device=str(device),
                                 backend=os.environ.get("MLTF_GDS_BACKEND", "auto"))
    x_all, y_all = arrays["X"].float(), arrays["y"].long()
    order = torch.from_numpy(np.random.default_rng(args.seed).permutation(len(y_all))).to(device)
    n_val = len(y_all) // 5
    val_t, tr_t = order[:n_val], order[n_val:]
    mean, std = x_all[tr_t].mean(dim=0), x_all[tr_t].std(dim=0, unbiased=False) + 1e-6
    x = (x_all - mean) / std
    y = y_all

    model: nn.Module = nn.Sequential(
        nn.Linear(x.shape[1], args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.hidden), nn.ReLU(),
        nn.Linear(args.hidden, 2),
    ).to(device)
    optimiser: torch.optim.Optimizer = (
        torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum) if args.optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=args.lr))
    shuffle = torch.Generator().manual_seed(args.seed)
    start = 0
    found = checkpoint.load_latest(map_location=device) if "MLFLOW_RUN_ID" in os.environ else None
    if found is not None:  # a retried step: continue after the last epoch done
        model.load_state_dict(found.state["model"])
        optimiser.load_state_dict(found.state["optimiser"])
        shuffle.set_state(found.state["shuffle"])
        start = found.epoch + 1
        print(f"rank {rank}: resuming after epoch {found.epoch} from {found.artifact_path}")
    net: nn.Module = DistributedDataParallel(model) if world > 1 else model
    loss_fn = nn.CrossEntropyLoss()

    run: Any = mlflow.start_run() if rank == 0 else None
    try:
        if rank == 0:
            mlflow.log_params({"n_train": len(tr_t), "n_val": len(val_t), "n_features": int(x.shape[1]),
                               "world_size": world})
            data_tags = {"mltf.data.backend": loaded.backend, "mltf.data.source": str(source),
                         "mltf.data.cufile_json": os.environ.get("CUFILE_ENV_PATH_JSON", "")}
            if loaded.compat is not None:  # None: no cuFile read happened (no tag rather than the word "None")
                data_tags["mltf.data.compat"] = str(loaded.compat).lower()
            mlflow.set_tags(data_tags)
            mlflow.log_metrics({"data_load_seconds": loaded.seconds, "data_load_gbps": loaded.gbps})
        for epoch in range(start, args.epochs):
            net.train()
            perm = tr_t[torch.randperm(len(tr_t), generator=shuffle).to(device)]
            usable = len(perm) - len(perm) % world  # equal shards: every rank takes the same number of steps
            shard = perm[rank:usable:world]
            total = torch.zeros(2, dtype=torch.float64, device=device)
            for begin in range(0, len(shard), args.batch_size):
                idx = shard[begin : begin + args.batch_size]
                optimiser.zero_grad()
                loss = loss_fn(net(x[idx]), y[idx])
                loss.backward()
                optimiser.step()
                total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64, device=device)
            if world > 1:
                dist.all_reduce(total)
            if rank == 0:
                val_loss, val_acc = evaluate(model, x[val_t], y[val_t], loss_fn)
                train_loss = float(total[0] / total[1])
                mlflow.log_metrics({"train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc},
                                   step=epoch)
                print(f"epoch {epoch + 1}/{args.epochs}: train_loss={train_loss:.4f} "
                      f"val_loss={val_loss:.4f} val_accuracy={val_acc:.4f}")
                checkpoint.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                                 "shuffle": shuffle.get_state()}, epoch)
            # Every rank: near the SLURM job's time limit, stop here; mltf_flow continues in a new job.
            checkpoint.stop_if_time_is_up()

        digest = weights_sha256(model)
        print(f"rank {rank} final weights sha256 {digest}")
        digests: list[Any] = [None] * world
        if world > 1:
            dist.all_gather_object(digests, digest)
        else:
            digests = [digest]
        if rank == 0:
            val_loss, val_acc = evaluate(model, x[val_t], y[val_t], loss_fn)
            _log_outputs(model, digest, digests, x[val_t[:8]], mean, std, val_acc, val_loss)
    finally:
        if run is not None:
            mlflow.end_run()
        if dist.is_initialized():
            dist.destroy_process_group()


def _log_outputs(model: nn.Module, digest: str, digests: list[Any], examples: torch.Tensor,
                 mean: torch.Tensor, std: torch.Tensor, val_acc: float, val_loss: float) -> None:
    model = model.cpu().eval()
    mlflow.set_tags({"weights_sha256": digest, "weights_identical_across_ranks": str(len(set(digests)) == 1).lower()})
    example = examples.cpu().numpy().astype(np.float32)
    with torch.no_grad():
        signature = infer_signature(example, model(torch.from_numpy(example)).numpy())
    mlflow.pytorch.log_model(
        model,
        name="jet_tagger",
        signature=signature,
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "metrics.json"
        out.write_text(json.dumps(
            {"val_accuracy": val_acc, "val_loss": val_loss, "weights_sha256": digest, "rank_digests": digests,
             "feature_mean": mean.cpu().tolist(), "feature_std": std.cpu().tolist()}, indent=1))
        mlflow.log_artifact(str(out))
    print(f"final val_accuracy={val_acc:.4f}, weights sha256 {digest}")


if __name__ == "__main__":
    main()
