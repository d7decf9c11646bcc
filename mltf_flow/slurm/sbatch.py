"""The SLURM commands that change things: ``sbatch`` (submit) and ``scancel``.

Each failure carries SLURM's own words. The pre-flight ``sbatch --test-only``, which changes nothing, is
in :mod:`mltf_flow.slurm.preflight`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from mltf_flow.errors import CommandError, ConfigError

_SUBMITTED = re.compile(r"^(\d+)(?:;\S+)?\s*$", re.M)  # --parsable: "123" or "123;cluster"


def sbatch_path(hint: str = "") -> str:
    """The ``sbatch`` executable; ``hint`` completes the error when it is not on PATH."""
    path = shutil.which("sbatch")
    if path is None:
        raise ConfigError(
            "`sbatch` is not on PATH: submit from a SLURM login node (or load the SLURM module)"
            + (f"; {hint}" if hint else ".")
        )
    return path


def submit(script_path: Path, env: Mapping[str, str], options: Sequence[str] = ()) -> str:
    """Submit ``script_path``; return the job id. ``env`` is sbatch's environment (with ``--export=ALL``
    the job's): values that must not be written into the script travel this way. ``options`` go before
    the script (``--begin=...``: what changes from one submission of the same script to the next)."""
    args = [sbatch_path(), "--parsable", *options, str(script_path)]
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
