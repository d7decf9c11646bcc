"""The pre-flight check: would SLURM accept a job script? (``sbatch --test-only``).

``sbatch --test-only`` asks the controller whether it would accept a script (partition, account, gres,
memory, time limit against the partition) in milliseconds and creates no job. Both submitters run it on
the exact script before anything is recorded or submitted: the Dask cluster profiles
(:func:`mltf_flow.clusters.slurm.preflight`: dask-jobqueue only *logs* a rejected ``sbatch``) and the
MLflow backend (:func:`mltf_flow.backend.submit.preflight`: no run exists yet). Each says in its own words
what was asked for; the verdict and SLURM's answer come from here.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable

from mltf_flow.errors import SlurmRejected
from mltf_flow.slurm.sbatch import sbatch_path


def would_accept(script: str, *, hint: str = "") -> tuple[bool, str]:
    """(accepted, SLURM's answer) for ``script`` under ``sbatch --test-only``; no job is created.

    ``hint`` completes the error when ``sbatch`` is not on PATH."""
    sbatch = sbatch_path(hint)
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="mltf-preflight-", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        proc = subprocess.run([sbatch, "--test-only", path], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(path)
    return proc.returncode == 0, (proc.stderr or proc.stdout).strip()


def check(script: str, rejection: Callable[[str], str], *, hint: str = "") -> str:
    """SLURM's answer for an accepted ``script``; a rejected one raises :class:`SlurmRejected` with
    ``rejection(answer)`` as its message (the caller's words around SLURM's own)."""
    accepted, answer = would_accept(script, hint=hint)
    if not accepted:
        raise SlurmRejected(rejection(answer))
    return answer
