"""Dask worker preload: pin each worker process of a multi-GPU job to its own GPU.

dask-jobqueue starts ``--nworkers N`` processes per job and every one sees all of the job's GPUs. This
preload runs inside each worker process before any task (so before anything initialises CUDA) and
narrows ``CUDA_VISIBLE_DEVICES`` to one device, chosen by the worker's index within its job (the
``-<k>`` suffix dask gives grouped workers). Commands the worker launches inherit the setting.
"""

from __future__ import annotations

import os
import re
from typing import Any

_SUFFIX = re.compile(r"-(\d+)$")


def job_devices(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """The GPUs SLURM gave this job (CUDA_VISIBLE_DEVICES, else SLURM's GPU lists, else 0..N-1)."""
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        value = environ.get(var, "").strip()
        if value:
            return [d.strip() for d in value.split(",") if d.strip()]
    count = int(environ.get("SLURM_GPUS_ON_NODE") or environ.get("MLTF_GPUS_PER_JOB") or 0)
    return [str(i) for i in range(count)]


def device_for(worker_name: str, processes: int, devices: list[str]) -> str | None:
    """The device of worker ``worker_name`` (index from its ``-k`` suffix when the job has several)."""
    if not devices:
        return None
    index = 0
    if processes > 1:
        match = _SUFFIX.search(str(worker_name))
        index = int(match.group(1)) if match else 0
    return devices[index % len(devices)]


def dask_setup(worker: Any) -> None:
    processes = int(os.environ.get("MLTF_WORKERS_PER_JOB", "1"))
    device = device_for(str(worker.name), processes, job_devices(os.environ))
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
        os.environ["MLTF_GPU_DEVICE"] = device
