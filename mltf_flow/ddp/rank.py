"""For training scripts: which rank am I, and a process group set up from the torchrun contract.

Works the same under ``torchrun``, under mltf_flow's launcher, and as a plain single process (rank 0 of
1). Only this module's functions import torch, and only when called::

    from mltf_flow.ddp import init_process_group, is_rank_zero

    backend = init_process_group()          # nccl with GPUs, gloo without; device = LOCAL_RANK
    ...
    if is_rank_zero():
        mlflow.log_metrics(...)             # rank 0 owns the MLflow run (MLFLOW_RUN_ID)
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def rank() -> int:
    """Global rank (``RANK``; 0 outside distributed training)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_rank_zero() -> bool:
    """True in the process that owns the MLflow run and writes outputs and checkpoints."""
    return rank() == 0


def rank_zero_only(fn: Callable[P, R]) -> Callable[P, R | None]:
    """Decorator: run ``fn`` on rank 0 only (other ranks get None)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        return fn(*args, **kwargs) if is_rank_zero() else None

    return wrapper


def init_process_group(backend: str | None = None, timeout_s: float = 1800.0) -> str:
    """Join the job's process group from ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/``WORLD_SIZE``.

    ``backend`` None: ``nccl`` when this process sees a GPU (after ``set_device(LOCAL_RANK)``), else
    ``gloo`` (the CPU fallback that makes everything testable without GPUs). Returns the backend.
    """
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return str(dist.get_backend())
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        if world_size() > 1:
            raise RuntimeError("MASTER_PORT is not set: start the script with torchrun or mltf_flow's launcher.")
        os.environ["MASTER_PORT"] = str(_free_port())
    dist.init_process_group(backend, rank=rank(), world_size=world_size(), timeout=timedelta(seconds=timeout_s))
    return backend


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
