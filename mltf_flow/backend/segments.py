"""The next segment of a backend job whose command stopped for the time limit (:mod:`mltf_flow.continuation`).

The job's wrapper calls :func:`continue_run` when its command exited with ``EXIT_CONTINUE`` after a checkpoint
(or SLURM's time limit stopped it after a newer checkpoint than the segment started from). The job's own script
(``job.sh``) is submitted again, from inside the job, with the job's environment (``--export=ALL``: the
secret values that reached this job reach the next one the same way, never written anywhere); the MLflow run
stays the same. The run records it before this job ends, so whoever watches the job finds the next one
(:class:`mltf_flow.backend.submitted.SlurmSubmittedRun`): ``mltf.slurm_job_ids`` gains the new job, and
``mltf.segments`` / ``mltf.segment.<n>`` say how each segment ended.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mltf_flow.backend.run_writer import RunWriter
from mltf_flow.backend.spec import JobSpec
from mltf_flow.tags import TAG_SLURM_JOB_IDS, TAG_SLURM_LOG

#: Set in the environment of every segment after the first (the wrapper clears the previous one's outcome).
SEGMENT_ENV = "MLTF_SEGMENT"


@dataclass(frozen=True)
class Continued:
    """What became of a job whose command stopped for the time limit: ``next_job`` continues it, else ``error``."""

    segment: int
    next_job: str | None = None
    error: str | None = None


def _jobs(tags: dict[str, str], job_id: str) -> list[str]:
    jobs = [j for j in tags.get(TAG_SLURM_JOB_IDS, "").split(",") if j]
    return jobs if job_id in jobs else [*jobs, job_id]


def continue_run(spec: JobSpec, job_id: str, writer: RunWriter, why: str) -> Continued:
    """Submit the next segment of ``job_id`` (the current job, segment N of the run), or say why not."""
    # Here, not at the top: the wrapper imports this module for SEGMENT_ENV on every job's critical path.
    from mltf_flow.continuation import Limits, exhausted, segment_tags
    from mltf_flow.slurm.sbatch import submit

    _, tags = writer.status_and_tags(spec.run_id)
    jobs = _jobs(tags, job_id)
    segment = len(jobs)
    limits = Limits(spec.max_restarts, spec.stop_margin, "backend config or profile, key 'max_restarts'")
    if segment > spec.max_restarts:
        writer.set_tags(spec.run_id, segment_tags(segment, [job_id], f"stopped: {why}; no restarts left"))
        return Continued(segment, error=exhausted(segment, limits))
    # The next job must not take this one's SLURM variables for its own (sbatch reads some, e.g. SLURM_MEM_*).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env[SEGMENT_ENV] = str(segment + 1)
    try:
        next_job = submit(spec.script_path, env)
    except Exception as exc:  # sbatch refused (the partition went down, a limit was reached): the run ends
        return Continued(segment, error=f"{why}; submitting the job again to continue failed: {exc}")
    writer.set_tags(spec.run_id, {**segment_tags(segment, [job_id], f"continued in job {next_job}: {why}"),
                                  TAG_SLURM_JOB_IDS: ",".join([*jobs, next_job]),
                                  TAG_SLURM_LOG: str(spec.log_path(next_job))})
    return Continued(segment, next_job=next_job)


__all__ = ["SEGMENT_ENV", "Continued", "continue_run"]
