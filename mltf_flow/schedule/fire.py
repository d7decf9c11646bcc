"""One fire of a schedule: ``mltf-flow schedule fire <definition>``, run by SLURM, scrontab, cron or a user.

In order:

1. read the definition; a paused or removed schedule does nothing (and, on SLURM, ends its chain);
2. on SLURM, submit the next fire first: a fire that fails or overruns does not end the schedule;
3. build and check the pipeline's target (a bad input is a failed fire, reported, before anything runs);
4. open the fire's parent run, tagged with the schedule, its slot and how it was started, and hold its
   lease (:mod:`mltf_flow.lease`) for the whole fire;
5. an earlier fire of the schedule that is still running: wait for it or skip (the schedule's
   ``if_running``), and say which on the parent run;
6. run the pipeline: a step whose inputs did not change is complete and does not run; a step another
   invocation is running (another fire, a user's ``mltf-flow run``, on any host) is waited for by its cache
   key (:mod:`mltf_flow.claim`), never run twice at once;
7. end the parent run with the outcome (``ran: <steps>``, ``nothing to do``, ``failed: ...``), and report a
   failure (grouped report on the console, as an artifact and to the configured notifiers).

The exit code is ``mltf-flow run``'s, so SLURM's job state and cron's mail say whether the fire failed.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from mltf_flow.config import Settings, load_settings
from mltf_flow.errors import EXIT_BAD_INPUT, ConfigError, MltfFlowError
from mltf_flow.pipeline_run import Outcome
from mltf_flow.redaction import strip_credentials
from mltf_flow.schedule import slurm_chain
from mltf_flow.schedule.record import FireRecord, FireRun
from mltf_flow.schedule.spec import Schedule
from mltf_flow.schedule.store import load
from mltf_flow.schedule.when import stamp
from mltf_flow.tags import (
    TAG_ERROR,
    TAG_EXIT_CODE,
    TAG_FAILED_STEPS,
    TAG_INVOCATION_ID,
    TAG_PIPELINE,
    TAG_SCHEDULE,
    TAG_SCHEDULE_ID,
    TAG_SCHEDULE_JOB_ID,
    TAG_SCHEDULE_NEXT,
    TAG_SCHEDULE_OUTCOME,
    TAG_SCHEDULE_OVERLAP,
    TAG_SCHEDULE_SLOT,
    TAG_SCHEDULE_VIA,
    TAG_STEPS_RUN,
)

_log = logging.getLogger(__name__)
#: Set by the cron line of a schedule (:mod:`mltf_flow.schedule.crontab`): who started the fire.
STARTED_BY_VARIABLE = "MLTF_SCHEDULE_STARTED_BY"
#: How often a fire that waits for an earlier one looks again.
WAIT_POLL_S = 2.0


def fire(definition: Path) -> int:
    """Run one fire of the schedule stored at ``definition``; the exit code."""
    schedule = load(definition)
    for name, value in schedule.environment.items():
        os.environ.setdefault(name, value)  # cron starts fires with almost no environment
    if schedule.cwd:
        os.chdir(schedule.cwd)
    now = time.time()
    slot = _slot(schedule, now)
    if schedule.paused:
        print(f"schedule {schedule.name!r} is paused: nothing to do (mltf-flow schedule resume {schedule.name})")
        return 0
    next_fire = _chain(schedule, definition, slot, now)
    settings = load_settings()
    from mltf_flow.invocation import new_invocation

    invocation = new_invocation()
    context = {"schedule": schedule.name, "slot": stamp(slot), "host": socket.gethostname(),
               "command": schedule.target.command()}
    target, error = _target(schedule)
    record = FireRecord(settings, settings.experiment_for(_pipeline(schedule)))
    try:
        parent_id = record.open(f"{schedule.name}-{stamp(slot)}", {
            **_owner(settings), TAG_INVOCATION_ID: invocation, TAG_PIPELINE: _pipeline(schedule),
            TAG_SCHEDULE: schedule.name, TAG_SCHEDULE_ID: schedule.id, TAG_SCHEDULE_SLOT: stamp(slot),
            TAG_SCHEDULE_VIA: _started_by(schedule), TAG_SCHEDULE_NEXT: next_fire,
            **({TAG_SCHEDULE_JOB_ID: os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}),
        })
    except MltfFlowError as exc:  # the tracking store does not answer: nothing can run, but say so to someone
        message = strip_credentials(str(exc))
        print(f"mltf-flow: the fire of schedule {schedule.name!r} for {stamp(slot)} cannot be recorded: {message}")
        _report(settings, invocation, schedule, slot, succeeded=False, context={**context, "error": message})
        return 1
    print(f"fire of schedule {schedule.name!r} for {stamp(slot)}: MLflow run {parent_id}")
    from mltf_flow.lease import renewer

    leases = renewer(settings.tracking_uri, settings.lease_seconds)
    leases.hold(parent_id)
    try:
        if error is not None:
            print(f"mltf-flow: error: {error}")
            record.close(parent_id, {TAG_SCHEDULE_OUTCOME: "failed: bad input (nothing ran)",
                                     TAG_ERROR: error[:5000], TAG_EXIT_CODE: str(EXIT_BAD_INPUT)}, "FAILED")
            _report(settings, invocation, schedule, slot, succeeded=False, context={**context, "error": error})
            return EXIT_BAD_INPUT
        overlap = _overlap(schedule, record, record.get(parent_id))
        if overlap is not None and overlap.startswith("skipped"):
            print(overlap)
            record.close(parent_id, {TAG_SCHEDULE_OVERLAP: overlap, TAG_SCHEDULE_OUTCOME: overlap}, "FINISHED")
            return 0
        if overlap is not None:
            print(overlap)
            record.set_tags(parent_id, {TAG_SCHEDULE_OVERLAP: overlap})
        outcome = _run(schedule, target)
        print(outcome.summary)
        tags = record.get(parent_id).tags
        record.close(parent_id, {TAG_SCHEDULE_OUTCOME: _describe(outcome, tags),
                                 TAG_EXIT_CODE: str(outcome.exit_code)},
                     "FINISHED" if outcome.succeeded else "FAILED")
        _report(settings, invocation, schedule, slot, succeeded=outcome.succeeded, context=context)
        return outcome.exit_code
    finally:
        leases.release(parent_id)


def _slot(schedule: Schedule, now: float) -> float:
    given = os.environ.get(slurm_chain.SLOT_VARIABLE, "")
    if given.isdigit() and os.environ.get("SLURM_JOB_NAME") == schedule.job_name:
        return float(given)
    return schedule.when.slot_at(now)


def _chain(schedule: Schedule, definition: Path, slot: float, now: float) -> str:
    """Submit the next fire when this one is the schedule's SLURM job; what holds the next fire, in words."""
    if schedule.via != "slurm":
        return schedule.via
    try:
        job_id = slurm_chain.chain_next(schedule, definition, slot, now)
    except MltfFlowError as exc:  # the fire still runs; the report and the parent run say the chain broke
        message = strip_credentials(str(exc))
        print(f"mltf-flow: the next fire of schedule {schedule.name!r} could not be submitted: {message}")
        return f"not submitted: {message}"[:500]
    if job_id is None:
        return "not submitted by this fire (not the schedule's job, or the next fire is pending already)"
    return f"SLURM job {job_id} at {stamp(schedule.when.next_slot(max(slot, now)))}"


def _target(schedule: Schedule) -> tuple[object | None, str | None]:
    """The pipeline's task (the project form), or the error that stops this fire before anything runs."""
    if schedule.target.project_dir is None:
        return None, None  # the luigi form: Luigi parses its own command line when it runs
    from mltf_flow.pipeline_run import Request, build_target

    request = Request(schedule.target.project_dir, schedule.target.step or "", dict(schedule.target.params),
                      profile=schedule.target.profile, env_manager=schedule.target.env_manager)
    try:
        return build_target(request), None
    except ConfigError as exc:
        return None, strip_credentials(str(exc))


def _pipeline(schedule: Schedule) -> str:
    return schedule.target.pipeline


def _owner(settings: Settings) -> dict[str, str]:
    from mltf_flow.lease import lease_tags, process_identity

    return {**process_identity(), **lease_tags(settings.lease_seconds)}


def _started_by(schedule: Schedule) -> str:
    if os.environ.get("SLURM_JOB_NAME") == schedule.job_name:
        return schedule.via  # slurm or scrontab
    return os.environ.get(STARTED_BY_VARIABLE) or "manual"


def _overlap(schedule: Schedule, record: FireRecord, mine: FireRun) -> str | None:
    """An earlier fire still running: wait for it to end (``if_running: wait``) or skip this fire."""
    earlier = record.unfinished(schedule.id, mine)
    if not earlier:
        return None
    first = earlier[-1]
    what = f"fire {first.run_id} (slot {first.tags.get(TAG_SCHEDULE_SLOT, '?')}) is still running"
    if schedule.if_running == "skip":
        return f"skipped: {what}"
    print(f"{what}: waiting for it to end (the schedule's if_running is wait)")
    started = time.monotonic()
    while record.unfinished(schedule.id, mine):
        time.sleep(WAIT_POLL_S)
    return (f"waited {time.monotonic() - started:.0f} s for fire {first.run_id} (slot "
            f"{first.tags.get(TAG_SCHEDULE_SLOT, '?')}) to end")


def _run(schedule: Schedule, target: object | None) -> Outcome:
    from mltf_flow.pipeline_run import run_luigi_args, run_tasks

    try:
        if target is None:
            if schedule.cwd not in sys.path:
                sys.path.insert(0, schedule.cwd)  # `luigi --module M` typed in that directory finds M there
            return run_luigi_args(schedule.target.luigi_args)
        return run_tasks([target], workers=schedule.target.workers)
    except SystemExit as exc:  # an input error Luigi met after all (mltf_flow.input_check): said, exit code 2
        return Outcome(exc.code if isinstance(exc.code, int) else 1, "")


def _describe(outcome: Outcome, tags: Mapping[str, str]) -> str:
    ran = [s for s in tags.get(TAG_STEPS_RUN, "").split(",") if s]
    if "StageStep" in outcome.ran and "stage" not in ran:
        ran.insert(0, "stage")  # a local dataset is staged without a run of its own: Luigi says it ran
    failed = [s for s in tags.get(TAG_FAILED_STEPS, "").split(",") if s]
    if not outcome.succeeded:
        return f"failed: {', '.join(failed) or f'exit code {outcome.exit_code}'}"
    if ran:
        return f"ran: {', '.join(ran)}"
    if outcome.ran:  # Luigi tasks that are not mltf_flow steps (a luigi target: RangeDaily and its days)
        counts = Counter(outcome.ran)
        return "ran: " + ", ".join(f"{family} x{n}" if n > 1 else family for family, n in sorted(counts.items()))
    return "nothing to do"


def _report(settings: Settings, invocation: str, schedule: Schedule, slot: float, *, succeeded: bool,
            context: Mapping[str, str]) -> None:
    from mltf_flow.failure_report import report_outcome

    report_outcome(settings, invocation_id=invocation, succeeded=succeeded,
                   title=f"schedule {schedule.name} fire {stamp(slot)}", context=context)
