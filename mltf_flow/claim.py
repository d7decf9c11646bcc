"""Claiming a step's cache key: of all invocations that need one step with the same inputs, one runs it and
the others wait for its result (DESIGN.md, "Liveness"; the rules for a live owner are in :mod:`mltf_flow.lease`).

A claim is checked and made under a lock on the key (the processes of this machine), and checked again once
the new run exists (other machines, which do not share the lock): of two runs created at once for one key,
the later one (by start time, then id) is withdrawn and its invocation waits for the other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from mltf_flow.backend.liveness import submitted_job_alive
from mltf_flow.errors import StepInProgress
from mltf_flow.file_lock import file_lock
from mltf_flow.progress import report_status
from mltf_flow.run_index import RunRef, run_index

if TYPE_CHECKING:
    import luigi

    from mltf_flow.config import Settings
    from mltf_flow.tracking import Holder, Tracker

_log = logging.getLogger(__name__)

__all__ = ["Claim", "claim"]


class _NewRun(Protocol):
    @property
    def run_id(self) -> str: ...
    @property
    def parent_id(self) -> str: ...
    @property
    def reopened(self) -> bool: ...


R = TypeVar("R", bound=_NewRun)


@dataclass(frozen=True)
class Claim:
    """What is claimed: a step's key in an experiment."""

    step: str
    key: str
    experiment: str
    experiment_id: str
    settings: Settings
    #: No run of the key existed when this invocation started looking (a study's new trial point): nothing to
    #: reap before the run is created, so no search for it; the check once the run exists still finds another
    #: invocation's live run of the key (and a run it left since is reaped by the next claim of the key).
    fresh: bool = False


def claim(want: Claim, tracker: Tracker, reporter: luigi.Task, *, create: Callable[[list[str]], R]) -> R | None:
    """The run ``create`` made once the key is ours (it gets the ids of the stale runs reaped on the way), or
    None when another invocation held the key and completed the step while we waited."""
    reaped: list[str] = []
    fresh = want.fresh
    while True:
        with file_lock(want.settings.work_dir / "locks" / f"key-{want.key[:40]}.lock"):
            holder: Holder | None = None
            if not fresh:  # a second round (after waiting for another invocation) always looks
                stale, holder = tracker.reap_stale(want.experiment, want.key, job_alive=submitted_job_alive)
                reaped += stale
            fresh = False
            if holder is None:
                run = create(reaped)
                holder = tracker.earlier_claim(want.experiment_id, want.key, run.run_id)
                if holder is None:
                    return run
                tracker.withdraw(run.run_id, reopened=run.reopened)
                if run.parent_id:  # a trial's parent is its study run, settled by the study alone
                    tracker.settle_parent(run.parent_id, step="", ok=True)
        if _await(want, holder, tracker, reporter):
            return None


def _await(want: Claim, holder: Holder, tracker: Tracker, reporter: luigi.Task) -> bool:
    """Wait until the run that holds our key ends: True when it completed the step (its result is ours),
    False when it did not (failed, killed, or its owner's lease ran out): then the key is claimed again.
    With ``wait_for_running: false`` raise StepInProgress (exit code 10 from ``mltf-flow run``) instead."""
    if not want.settings.wait_for_running:
        raise StepInProgress(
            f"step '{want.step}' is already running with the same inputs in another invocation: MLflow run "
            f"{holder.run_id}, {holder.owner}. Wait for it (run again without --no-wait, or with "
            "MLTF_FLOW_WAIT_FOR_RUNNING=true), or stop it.", step=want.step, run_id=holder.run_id,
        )
    message = (f"step '{want.step}' is already running with the same inputs in another invocation (MLflow run "
               f"{holder.run_id}, {holder.owner}): waiting for its result")
    _log.warning(message)
    report_status(reporter, message)
    poll = min(2.0, want.settings.lease_seconds / 6)
    said = time.monotonic()
    while (outcome := tracker.holder_outcome(holder)) is None:
        time.sleep(poll)  # another process's progress: nothing to wait on but the store
        if time.monotonic() - said > 600:
            _log.warning(f"{message} (still)")
            said = time.monotonic()
    if outcome != "complete":
        _log.warning(f"step '{want.step}': MLflow run {holder.run_id} of the other invocation ended {outcome}; "
                     "running the step here")
        return False
    run_index(want.settings.tracking_uri, want.settings.prefetch_limit).remember(
        want.experiment_id, RunRef(holder.run_id, "FINISHED", want.key, int(time.time() * 1000)))
    _log.warning(f"step '{want.step}': the other invocation completed it (MLflow run {holder.run_id}); "
                 "using its result")
    report_status(reporter, f"done by another invocation: MLflow run {holder.run_id}", percent=100)
    return True
