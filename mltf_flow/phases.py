"""Named phases of a pipeline invocation, where a fault-injection test can stop it. **Test-only.**

Code calls :func:`reached` at points where an interruption is interesting (something is half done). With
``MLTF_PAUSE_AT`` unset (always, outside tests) a call costs one environment lookup and does nothing. When
``MLTF_PAUSE_AT`` names the phase (``PHASE``, or ``PHASE:STEP`` to stop only in that step), the process
writes the marker ``$MLTF_PAUSE_DIR/<PHASE>.reached`` (its pid, written atomically) and blocks until it is
killed or until ``$MLTF_PAUSE_DIR/<PHASE>.release`` exists; after a release that phase no longer pauses
anyone (so a resumed training passes its later epochs). The variables reach every process of the
invocation: step commands and Dask workers inherit them (``MLTF_*`` travels to workers,
:func:`mltf_flow.launch.dask_worker.step_env`).

Phases, in the order an invocation of the example pipeline passes them (tests/faults/test_kills.py):

==============================  ===================================================================
``cluster.started``             the keeper answered: the profile's Dask cluster runs, no step yet
``stage.checksummed``           staging listed and checksummed the files, manifest not yet written
``stage.done``                  manifest written, Luigi not yet told the staging task is done
``pipeline.parent_created``     the invocation's parent run exists (RUNNING), no step run yet
``step.run_created``            the step run exists (RUNNING), its command not started
``tensorfile.half_written``     a tensor file has its first array on disk, not the rest (in the command)
``tensorfile.loaded``           a command (a DDP rank) loaded its input tensors, no training yet
``checkpoint.saved``            a checkpoint is uploaded and its tags point at it (rank 0, after an epoch)
``step.command_exited``         the command ended, its log and outputs not yet logged or checked
``step.outputs_verified``       outputs logged and checked, the run not yet marked complete
``step.parent_told``            the parent run recorded the step's outcome, the step run not yet ended
``study.trial_told``            a study's driver told Optuna how a trial ended; other trials may still run
``gateway.accepted``            the gateway wrote a submission's row, its project not yet in place, not answered
``gateway.job_submitted``       sbatch answered the gateway with the job's id, the submission not yet told
==============================  ===================================================================
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT_ENV = "MLTF_PAUSE_AT"
PAUSE_DIR_ENV = "MLTF_PAUSE_DIR"

CLUSTER_STARTED = "cluster.started"
STAGE_CHECKSUMMED = "stage.checksummed"
STAGE_DONE = "stage.done"
PARENT_CREATED = "pipeline.parent_created"
RUN_CREATED = "step.run_created"
TENSORFILE_HALF_WRITTEN = "tensorfile.half_written"
TENSORFILE_LOADED = "tensorfile.loaded"
CHECKPOINT_SAVED = "checkpoint.saved"
COMMAND_EXITED = "step.command_exited"
OUTPUTS_VERIFIED = "step.outputs_verified"
PARENT_TOLD = "step.parent_told"
TRIAL_TOLD = "study.trial_told"
GATEWAY_ACCEPTED = "gateway.accepted"
GATEWAY_JOB_SUBMITTED = "gateway.job_submitted"

#: Every phase, in the order an invocation passes them.
PHASES = (CLUSTER_STARTED, STAGE_CHECKSUMMED, STAGE_DONE, PARENT_CREATED, RUN_CREATED, TENSORFILE_HALF_WRITTEN,
          TENSORFILE_LOADED, CHECKPOINT_SAVED, COMMAND_EXITED, OUTPUTS_VERIFIED, PARENT_TOLD)
#: Phases of a study's driver (mltf_flow.tune.study; killed there by tests/integration/test_tune.py).
STUDY_PHASES = (TRIAL_TOLD,)
#: Phases of the gateway's process (mltf_flow.gateway; killed there by tests/integration/test_gateway.py).
GATEWAY_PHASES = (GATEWAY_ACCEPTED, GATEWAY_JOB_SUBMITTED)


def reached(phase: str, step: str = "") -> None:
    """Mark that this process reached ``phase`` (of ``step``, if any); pause there if a test asks to."""
    wanted = os.environ.get(PAUSE_AT_ENV)
    if wanted and (wanted == phase or (step and wanted == f"{phase}:{step}")):
        _pause(phase)


def marker(phase: str, directory: Path) -> Path:
    return directory / f"{phase}.reached"


def release_file(phase: str, directory: Path) -> Path:
    return directory / f"{phase}.release"


def _pause(phase: str) -> None:
    from mltf_flow.atomic import write_atomic

    directory = Path(os.environ.get(PAUSE_DIR_ENV) or ".")
    release = release_file(phase, directory)
    if release.exists():
        return
    write_atomic(marker(phase, directory), f"{os.getpid()}\n")
    while not release.exists():
        time.sleep(0.05)


__all__ = ["PAUSE_AT_ENV", "PAUSE_DIR_ENV", "PHASES", "marker", "reached", "release_file"]
