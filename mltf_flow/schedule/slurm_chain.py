"""``via: slurm``: a schedule as a self-resubmitting SLURM job. Works on any SLURM (no scrontab needed).

One job is pending at a time, held by ``sbatch --begin=<slot>``. When it starts, the fire first submits
the job of the next slot (so a fire that fails or overruns does not end the chain), then runs the
pipeline. The job's name (``mltf-schedule-<name>-<id8>``) and comment (``mltf_flow schedule <name> <id>``)
identify the schedule in ``squeue``; ``remove`` and ``pause`` cancel every job of that name, the running
fire included, after the definition says the schedule is gone or paused, so a fire that is starting at
that moment does not resubmit.

The job script is rendered into the schedule's directory (``mltf-flow schedule show`` prints it). It holds
no secret: the environment ``sbatch`` exports (the user's at ``add``, then each fire's) carries the
credentials a fire needs, as for any job the user submits.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mltf_flow.atomic import write_atomic
from mltf_flow.errors import CommandError, SlurmUnavailable
from mltf_flow.schedule.spec import Schedule
from mltf_flow.schedule.store import log_dir
from mltf_flow.schedule.when import stamp

#: The variable that tells a fire which slot its job was submitted for.
SLOT_VARIABLE = "MLTF_SCHEDULE_SLOT"
SCRIPT = "fire.sbatch"


@dataclass(frozen=True)
class QueuedFire:
    job_id: str
    state: str
    begins: str


def fire_command(schedule: Schedule, definition: Path) -> list[str]:
    """The command of one fire, the same for every way a schedule is installed."""
    return [schedule.python, "-m", "mltf_flow.cli", "schedule", "fire", str(definition)]


def render(schedule: Schedule, definition: Path) -> str:
    """The job script of the schedule's fires."""
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={schedule.job_name}",
        f"#SBATCH --comment={shlex.quote(f'mltf_flow schedule {schedule.name} {schedule.id}')}",
        f"#SBATCH --output={log_dir(definition)}/fire-%j.log",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
    ]
    if schedule.slurm.partition:
        lines.append(f"#SBATCH --partition={schedule.slurm.partition}")
    if schedule.slurm.account:
        lines.append(f"#SBATCH --account={schedule.slurm.account}")
    if schedule.slurm.time_limit:
        lines.append(f"#SBATCH --time={schedule.slurm.time_limit}")
    if schedule.slurm.mem:
        lines.append(f"#SBATCH --mem={schedule.slurm.mem}")
    lines += [
        f"# A fire of schedule {schedule.name!r} ({schedule.when.describe()}): it submits the next fire, then runs",
        f"#   {schedule.target.command()}",
        "# Steps whose inputs did not change are not run again. `mltf-flow schedule remove "
        f"{schedule.name}` ends the chain.",
        f"cd {shlex.quote(schedule.cwd)}",
        f"exec {shlex.join(fire_command(schedule, definition))}",
    ]
    return "\n".join(lines) + "\n"


def script_path(definition: Path) -> Path:
    return definition.parent / SCRIPT


def preflight(schedule: Schedule, definition: Path) -> None:
    """Would SLURM take the fire's job? Its own answer, before anything is installed."""
    from mltf_flow.slurm.preflight import check

    check(render(schedule, definition),
          lambda answer: f"SLURM rejects the job of schedule {schedule.name!r}: {answer}. Fix --partition, "
          "--account or --time-limit (`mltf-flow schedule add --help`).",
          hint="--via slurm needs SLURM; use --via cron on a machine without it.")


def submit(schedule: Schedule, definition: Path, slot: float) -> str:
    """Submit the fire of ``slot``; its job id."""
    from mltf_flow.slurm.sbatch import submit as sbatch

    path = write_atomic(script_path(definition), render(schedule, definition))
    environment = {**os.environ, SLOT_VARIABLE: f"{slot:.0f}"}
    for name in ("SLURM_JOB_ID", "SLURM_JOBID"):  # submitted from a fire: a new job, not a step of this one
        environment.pop(name, None)
    return sbatch(path, environment, [f"--begin={stamp(slot)}"])


def queued(schedule: Schedule) -> list[QueuedFire]:
    """The schedule's jobs in ``squeue``: the pending next fire and a running one."""
    squeue = _tool("squeue")
    args = [squeue, "-h", f"--name={schedule.job_name}", "-o", "%i|%T|%S"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise SlurmUnavailable(f"squeue did not answer (exit {proc.returncode}): {proc.stderr.strip()}")
    fires = []
    for line in proc.stdout.splitlines():
        job_id, _, rest = line.partition("|")
        state, _, begins = rest.partition("|")
        if job_id.strip():
            fires.append(QueuedFire(job_id.strip(), state.strip(), begins.strip()))
    return fires


def install(schedule: Schedule, definition: Path, now: float) -> str:
    """Submit the first fire (unless one is pending already); what was done, in words."""
    pending = [f for f in queued(schedule) if f.state == "PENDING"]
    if pending:
        return f"SLURM job {pending[0].job_id} (pending, begins {pending[0].begins}) already holds the next fire"
    slot = first_slot(schedule, now)
    job_id = submit(schedule, definition, slot)
    return f"SLURM job {job_id} holds the next fire, at {stamp(slot)}"


def first_slot(schedule: Schedule, now: float) -> float:
    """The slot of a schedule's first fire: now when its start is now, else the next slot."""
    slot = schedule.when.slot_at(now)
    return slot if slot >= now - 1 else schedule.when.next_slot(now)


def chain_next(schedule: Schedule, definition: Path, slot: float, now: float) -> str | None:
    """In a fire's job: submit the next fire (the first slot after both this one and now: slots missed while
    nothing ran are not fired one by one). None when this process is not the schedule's job, or another
    fire is pending already; else the new job's id."""
    own = os.environ.get("SLURM_JOB_ID", "")
    if not own or os.environ.get("SLURM_JOB_NAME") != schedule.job_name:
        return None
    if any(f.state == "PENDING" and f.job_id != own for f in queued(schedule)):
        return None
    return submit(schedule, definition, schedule.when.next_slot(max(slot, now)))


def uninstall(schedule: Schedule, *, running_too: bool = True, timeout_s: float = 60.0) -> list[str]:
    """Cancel the schedule's jobs: the pending next fire, and a running one unless ``running_too`` is false
    (``pause`` lets it finish: it finds the schedule paused and submits no next fire). Wait until ``squeue``
    shows none of those cancelled; return their ids."""
    scancel = _tool("scancel")
    cancelled: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        left = [f for f in queued(schedule) if running_too or f.state == "PENDING"]
        if not left:
            return cancelled
        if time.monotonic() > deadline:
            raise SlurmUnavailable(f"jobs {', '.join(f.job_id for f in left)} of schedule {schedule.name!r} are "
                                   f"still in squeue after scancel; cancel them with `scancel --name="
                                   f"{schedule.job_name}`.")
        cancelled += [f.job_id for f in left if f.job_id not in cancelled]
        args = [scancel, f"--name={schedule.job_name}", *([] if running_too else ["--state=PENDING"])]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
        time.sleep(0.5)  # a cancelled job leaves squeue after its epilogue (MinJobAge)


def _tool(name: str) -> str:
    import shutil

    path = shutil.which(name)
    if path is None:
        raise SlurmUnavailable(f"`{name}` is not on PATH: manage SLURM schedules from a SLURM login node.")
    return path
