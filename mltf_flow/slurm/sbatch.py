"""The three SLURM commands that change things: ``sbatch --test-only``, ``sbatch``, ``scancel``.

Each failure carries SLURM's own words. ``sbatch --test-only`` asks the controller whether it would
accept a script (partition, account, gres, memory, time limit against the partition) in milliseconds and
creates no job: it runs before anything is recorded or submitted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from mltf_flow.errors import CommandError, ConfigError

_SUBMITTED = re.compile(r"^(\d+)(?:;\S+)?\s*$", re.M)  # --parsable: "123" or "123;cluster"


def sbatch_path(hint: str = "") -> str:
    path = shutil.which("sbatch")
    if path is None:
        raise ConfigError(
            "`sbatch` is not on PATH: submit from a SLURM login node (or load the SLURM module)"
            + (f"; {hint}" if hint else ".")
        )
    return path


def would_accept(script: str, *, hint: str = "") -> tuple[bool, str]:
    """(accepted, SLURM's answer) for ``script`` under ``sbatch --test-only``; no job is created."""
    sbatch = sbatch_path(hint)
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="mltf-preflight-", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        proc = subprocess.run([sbatch, "--test-only", path], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(path)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def submit(script_path: Path, env: Mapping[str, str]) -> str:
    """Submit ``script_path``; return the job id. ``env`` is sbatch's environment (with ``--export=ALL``
    the job's): values that must not be written into the script travel this way."""
    args = [sbatch_path(), "--parsable", str(script_path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120, env=dict(env))
    match = _SUBMITTED.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
    return match.group(1)


def scancel(job_ids: Sequence[str]) -> None:
    """Cancel jobs; one that already ended is not an error."""
    path = shutil.which("scancel")
    if path is None:
        raise ConfigError("`scancel` is not on PATH: cancel from a SLURM login node.")
    args = [path, *job_ids]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "Invalid job id" not in proc.stderr and "already completing" not in proc.stderr:
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
