"""Continuation: a training that stops for its job's time limit goes on in a new job, in the same MLflow run.

The command's side is :mod:`mltf_flow.time_limit`: near the end of its SLURM job it exits with
``EXIT_CONTINUE`` (75) right after a checkpoint. This module is the other side, for both ways mltf_flow runs
commands in SLURM jobs:

* ``mlflow run --backend mltf``: the job's wrapper submits the job's script again
  (:mod:`mltf_flow.backend.wrapper`);
* a pipeline step on Dask workers (:func:`run_segments`, from :mod:`mltf_flow.step_run`): the workers whose
  jobs are about to end are retired, the cluster's keeper submits fresh jobs in their place
  (:mod:`mltf_flow.clusters.keeper`), and the command is launched again once they are there.

Either way the command starts over in the same run and finds its checkpoint (``checkpoint.load_latest``); its
metrics continue at the epochs it logs. The run counts its segments (tags ``mltf.segments`` and
``mltf.segment.<n>``: each segment's jobs and how it ended). After ``max_restarts`` continuations the run ends
FAILED with "time limit, N segments"; running the step again continues from the last checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mltf_flow.launch.base import LaunchResult
from mltf_flow.tags import TAG_CHECKPOINT_EPOCH, TAG_SEGMENT_PREFIX, TAG_SEGMENTS
from mltf_flow.time_limit import EXIT_CONTINUE, MARGIN_ENV

_log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Limits:
    """How a command is continued: at most ``max_restarts`` times, asked to stop ``margin_s`` before its job ends
    (``where`` names the setting, for messages)."""

    max_restarts: int
    margin_s: float
    where: str


def margin_seconds(limit_s: float | None, configured: int | None) -> int:
    """Seconds before the time limit at which a job is warned: ``configured`` (``pre_timeout_signal``), else
    2 minutes for real jobs and a tenth of very short limits (SLURM checks time limits about every 30 s)."""
    if configured is not None:
        return configured
    return 120 if limit_s is None else int(min(120, max(10, limit_s // 10)))


def segment_tags(segment: int, jobs: Sequence[str], how: str) -> dict[str, str]:
    """Tags recording that segment ``segment`` ran in ``jobs`` and ended ``how``."""
    where = f"job {jobs[0]}" if len(jobs) == 1 else f"jobs {','.join(jobs)}" if jobs else "no SLURM job"
    return {TAG_SEGMENTS: str(segment), f"{TAG_SEGMENT_PREFIX}{segment}": f"{where}: {how}"}


def exhausted(segments: int, limits: Limits) -> str:
    """The error of a run that reached ``max_restarts``."""
    return (f"time limit, {segments} segments: the training stopped for its job's time limit in each of {segments} "
            f"jobs and max_restarts={limits.max_restarts} ({limits.where}) allows no more. Raise max_restarts or the "
            "time limit; running the step again continues from its last checkpoint.")


def stopped_early(result: LaunchResult) -> str | None:
    """Why the command is to be continued, when it stopped for its time limit after a checkpoint (and was not
    stopped by our own timeout); else None."""
    return "time limit" if result.exit_code == EXIT_CONTINUE and not result.timed_out else None


def run_segments(launch: Callable[[], LaunchResult], renew: Callable[[], Sequence[str]] | None, limits: Limits,
                 record: Callable[[Mapping[str, str]], None], jobs: Callable[[], Sequence[str]],
                 done: int = 0, why: Callable[[LaunchResult], str | None] = stopped_early) -> LaunchResult:
    """Launch until the command ends other than by :data:`EXIT_CONTINUE` or ``max_restarts`` is reached.

    ``renew`` replaces the workers whose jobs end soon and returns the new ones' job ids (None: the command
    cannot be continued here, e.g. it runs in the pipeline's own process); ``jobs`` says the SLURM jobs the
    command runs on now; ``record`` sets tags on the run; ``done``: segments an earlier attempt of the run took
    (counted on, so every segment keeps its tag; ``max_restarts`` counts this attempt's continuations); ``why``
    says whether (and why) an ended segment is to be continued."""
    first = segment = done + 1
    if done:
        record({TAG_SEGMENTS: str(segment), f"{TAG_SEGMENT_PREFIX}{segment}": f"jobs {','.join(jobs())}: running"})
    result = launch()
    while (reason := why(result)) is not None:
        if renew is None:
            return replace(result, summary=(
                "the command stopped for its job's time limit (exit code 75) but runs in the pipeline's own "
                "process, which cannot move to a new job: run the step on Dask workers (run_on: worker or ddp), "
                "or run the pipeline again to continue from the last checkpoint."))
        if segment - first >= limits.max_restarts:
            record(segment_tags(segment, jobs(), f"stopped: {reason}; no restarts left"))
            return replace(result, summary=exhausted(segment - first + 1, limits))
        record(segment_tags(segment, jobs(), f"continued: {reason}"))
        _log.info(f"the command stopped for its job's time limit after segment {segment}; continuing on new workers")
        fresh = renew()
        segment += 1
        record({TAG_SEGMENTS: str(segment), f"{TAG_SEGMENT_PREFIX}{segment}": f"jobs {','.join(fresh)}: running"})
        result = launch()
    if segment > 1 or done:
        how = "finished" if result.exit_code == 0 else f"ended with exit code {result.exit_code}"
        record(segment_tags(segment, jobs(), how))
    return result


# -- the pipeline side: fresh Dask workers ------------------------------------------------------------------
def profile_limits(profile: Any) -> Limits | None:
    """How a step on ``profile``'s workers is continued; None for a profile without SLURM jobs.

    A worker with a ``lifetime`` retires that long after it started, before its job's end: the margin
    counts from the job's end, so it grows by the walltime the lifetime leaves unused (and the stagger)."""
    from mltf_flow.clusters.profiles import SlurmProfile
    from mltf_flow.config.units import duration_seconds, walltime_seconds

    if not isinstance(profile, SlurmProfile):
        return None
    walltime = walltime_seconds(profile.walltime)
    margin = float(margin_seconds(walltime, profile.pre_timeout_signal))
    if profile.lifetime:
        stagger = duration_seconds(profile.lifetime_stagger) if profile.lifetime_stagger else 0.0
        margin += max(0.0, walltime - duration_seconds(profile.lifetime)) + stagger
    return Limits(profile.max_restarts, margin, f"profile {profile.name!r}, key 'max_restarts' ({profile.origin})")


def _remaining() -> float | None:
    """Seconds this worker's SLURM job has left (runs on the worker); None without a time limit."""
    from mltf_flow.time_limit import job_end

    end = job_end()
    return None if end is None else end - time.time()


def renew_workers(client: Any, wait: Callable[[], None], margin_s: float) -> list[str]:
    """Retire the workers whose SLURM jobs end within ``2 * margin_s`` (the keeper replaces them), wait for the
    cluster to be whole again (``wait``), and return the job ids of the workers now there."""
    left: Mapping[str, float | None] = client.run(_remaining)
    ending = [addr for addr, seconds in left.items() if seconds is not None and seconds < 2 * margin_s]
    if ending:
        _log.info(f"retiring {len(ending)} worker(s) whose SLURM jobs end within {2 * margin_s:.0f} s")
        client.retire_workers(workers=ending, close_workers=True, remove=True)
    wait()
    from mltf_flow.clusters.session import worker_job_ids

    return worker_job_ids(client)


def continued(launch_once: Callable[[], LaunchResult], client: Any, profile: Any,
              record: Callable[[Mapping[str, str]], None], run_tags: Callable[[], Mapping[str, str]]) -> LaunchResult:
    """Launch a step's command, and continue it on fresh workers of ``client``'s cluster while it stops for its
    jobs' time limit (not for a profile without SLURM jobs: nothing ends them). ``run_tags`` reads the run's tags
    (its segments so far, when a failed run is reopened; its checkpoint)."""
    from mltf_flow.clusters import session

    limits = profile_limits(profile)
    if limits is None:
        return run_segments(launch_once, None, Limits(0, 0.0, ""), record, lambda: ())
    tags = run_tags()
    start_epoch = [tags.get(TAG_CHECKPOINT_EPOCH)]

    def why(result: LaunchResult) -> str | None:
        """Stopped for the time limit; or killed by it (the ranks' worker jobs ended TIMEOUT) after a newer
        checkpoint than the segment started from, as a script that does not ask in time is."""
        reason = stopped_early(result)
        if reason is None and result.lost_jobs and _timed_out(result.lost_jobs):
            epoch = run_tags().get(TAG_CHECKPOINT_EPOCH)
            if epoch is not None and epoch != start_epoch[0]:
                reason = "time limit (the workers' jobs ended at their limit after a newer checkpoint)"
        start_epoch[0] = run_tags().get(TAG_CHECKPOINT_EPOCH) if reason else start_epoch[0]
        return reason

    def renew() -> list[str]:
        return renew_workers(client, lambda: session.wait_for_workers(client, profile), limits.margin_s)

    return run_segments(launch_once, renew, limits, record, lambda: session.worker_job_ids(client),
                        int(tags.get(TAG_SEGMENTS, 0)), why)


def _timed_out(jobs: Sequence[str], wait_s: float = 30.0) -> bool:
    """Every job in ``jobs`` ended at its time limit (SLURM's state TIMEOUT, or the reason TimeLimit while it is
    being ended); waits up to ``wait_s`` for SLURM to say so."""
    from mltf_flow.slurm.query import job_state_now

    deadline = time.monotonic() + wait_s
    while True:
        states = [job_state_now(job) for job in jobs]
        if all(s is not None and (s.state == "TIMEOUT" or "TimeLimit" in str(s.reason)) for s in states):
            return True
        if all(s is not None and s.terminal for s in states) or time.monotonic() > deadline:
            return False
        time.sleep(1.0)


def margin_env(profile: Any) -> dict[str, str]:
    """The command's environment entry that tells :mod:`mltf_flow.time_limit` its margin on ``profile``'s
    workers (none for a profile without SLURM jobs)."""
    limits = profile_limits(profile)
    return {} if limits is None else {MARGIN_ENV: f"{limits.margin_s:g}"}


__all__ = ["Limits", "continued", "exhausted", "margin_env", "margin_seconds", "renew_workers",
           "run_segments", "segment_tags", "stopped_early"]
