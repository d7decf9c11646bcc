"""Whether the SLURM job behind a run that ``mlflow run --backend mltf`` submitted is still alive.

The tracker asks before it reaps a RUNNING run with a step's key
(:meth:`mltf_flow.tracking.Tracker.reap_stale`): such a run's launcher (the ``mlflow run`` CLI) exited
right after submission, so the run is live exactly while SLURM queues or runs its job. This is the
backend's :data:`~mltf_flow.tracking.JobLiveness`; the tracker's caller passes it in.
"""

from __future__ import annotations


def submitted_job_alive(run_id: str, tracking_uri: str) -> bool:
    """True while the run's SLURM job is pending or running; a job that is over gets its run's real final
    status here (reconciled by :class:`~mltf_flow.backend.submitted.SlurmSubmittedRun`)."""
    from mltf_flow.backend.submitted import SlurmSubmittedRun

    status = SlurmSubmittedRun.from_run(run_id, tracking_uri).get_status()
    return status in ("SCHEDULED", "RUNNING")
