"""The wrapper's status record: ``status.json`` in the job's directory.

The wrapper writes it when the job starts and again when it ends, *before* it tells MLflow (a file on
the shared filesystem needs no network). A job that SLURM no longer lists is resolved from it:

* ``phase: ended``   the wrapper finished: its ``status``, ``exit_code`` and ``reason`` are final;
* ``phase: running`` the wrapper started but never finished: the job was killed with SIGKILL or its
  node died (SLURM sends SIGTERM first for scancel, time limits and preemption, and the wrapper records
  those);
* ``phase: requeued`` SLURM stopped this attempt to run the job again (the next attempt starts over);
* ``phase: continued`` the command stopped for the time limit after a checkpoint and the wrapper submitted
  ``next_job`` to continue it (:mod:`mltf_flow.continuation`);
* no file            the job never reached the wrapper (it failed before starting, or never ran).

``tracked`` says whether the wrapper also set the MLflow run's status; if not (tracking server down),
whoever reads the record sets it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mltf_flow.atomic import write_json

RUNNING, ENDED, REQUEUED, CONTINUED = "running", "ended", "requeued", "continued"


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    phase: str
    #: MLflow run status the wrapper decided (FINISHED only for exit code 0).
    status: str | None = None
    exit_code: int | None = None
    #: SLURM's view when the wrapper ended: state and reason (e.g. TIMEOUT, TimeLimit).
    slurm_state: str | None = None
    reason: str | None = None
    tracked: bool = False
    host: str | None = None
    #: The job that continues this one (phase ``continued``).
    next_job: str | None = None
    updated: float = 0.0

    def write(self, path: Path) -> None:
        write_json(path, {**asdict(self), "updated": time.time()})


def read_record(path: Path) -> JobRecord | None:
    """The record at ``path``, or None when there is none (or it is unreadable: treated as missing)."""
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(JobRecord)}
        return JobRecord(**{k: v for k, v in data.items() if k in known})  # a newer writer may add fields
    except (OSError, ValueError, TypeError, AttributeError):
        return None
