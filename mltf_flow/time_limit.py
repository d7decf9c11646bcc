"""For training scripts: is the time limit of the SLURM job this process runs in near?

A training that outlives its job continues in a new job, in the same MLflow run, from its last
checkpoint (:mod:`mltf_flow.continuation`). The script's part is one call after each checkpoint::

    checkpoint.save(state, epoch)
    checkpoint.stop_if_time_is_up()   # every rank; exits with EXIT_CONTINUE when the job ends soon

The time is up when either

* the job's end (SLURM's ``EndTime``, asked once per process) is less than ``MLTF_STOP_MARGIN`` seconds
  away; whoever starts the command sets the margin (the profile's or backend config's ``pre_timeout_signal``);
  this is what works for ranks on Dask workers, whose SLURM jobs each have their own end, or
* SIGUSR1 arrived (SLURM's ``--signal=USR1@N`` warning, where the job forwards it to the command): the
  handler is installed at the first call of :func:`time_is_up` (or :func:`watch`), in the main thread.

Under ``torch.distributed`` the answer is agreed by every rank (an all-reduce of the flags): ranks on
different jobs stop together, at the same epoch, after the same checkpoint. So every rank must call it,
at the same point of the loop.

Exit code 75 (``EX_TEMPFAIL`` of ``sysexits.h``: "try again later") is the contract: nothing else about the
run changes, and the launcher or the job's wrapper starts the command again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from types import FrameType

#: The exit code of a command that stopped for its job's time limit and must be continued.
EXIT_CONTINUE = 75
#: Seconds before the job's end at which the training is asked to stop (set by whoever starts it).
MARGIN_ENV = "MLTF_STOP_MARGIN"
DEFAULT_MARGIN_S = 60.0

_warned = threading.Event()
_end: dict[str, float | None] = {}


def _on_usr1(signum: int, frame: FrameType | None) -> None:
    _warned.set()


def watch() -> None:
    """Note SLURM's SIGUSR1 warning from now on (only from the main thread; a no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGUSR1) is not _on_usr1:
        signal.signal(signal.SIGUSR1, _on_usr1)


def margin_seconds() -> float:
    try:
        return float(os.environ.get(MARGIN_ENV, DEFAULT_MARGIN_S))
    except ValueError:
        return DEFAULT_MARGIN_S


def job_end(job_id: str | None = None) -> float | None:
    """When SLURM ends job ``job_id`` (``SLURM_JOB_ID`` by default), as a Unix time; None outside a job,
    without a time limit, or when SLURM cannot be asked. Asked once per job and process."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    if job_id not in _end:
        _end[job_id] = _ask_end(job_id)
    return _end[job_id]


def _ask_end(job_id: str) -> float | None:
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        out = subprocess.run([squeue, "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout.strip()
    try:  # SLURM prints local time without a zone; "Unknown"/"N/A" for jobs without an end
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def _due_here() -> bool:
    if _warned.is_set():
        return True
    end = job_end()
    return end is not None and time.time() >= end - margin_seconds()


def time_is_up() -> bool:
    """True when this job (or, under torch.distributed, any rank's job) must stop for its time limit.
    A collective when a process group is initialised: every rank calls it at the same point."""
    watch()
    due = _due_here()
    if "torch.distributed" not in sys.modules:
        return due
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return due
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    flag = torch.tensor([1 if due else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def stop_if_time_is_up() -> None:
    """Exit with :data:`EXIT_CONTINUE` when :func:`time_is_up` (call it right after a checkpoint)."""
    if not time_is_up():
        return
    rank = os.environ.get("RANK", "0")
    print(f"mltf_flow: rank {rank}: the job's time limit is near; stopping after the last checkpoint "
          "(mltf_flow continues the run in a new job)", flush=True)
    # No barrier needed: rank 0 joins time_is_up's all-reduce only after its checkpoint is stored. The process
    # group goes now: left to the interpreter's exit, its teardown waits on the other ranks' (seconds, while the
    # job's end is near).
    if "torch.distributed" in sys.modules:  # a script without torch stops too (importing it here could fail)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    raise SystemExit(EXIT_CONTINUE)


__all__ = ["EXIT_CONTINUE", "MARGIN_ENV", "job_end", "margin_seconds", "stop_if_time_is_up", "time_is_up",
           "watch"]
