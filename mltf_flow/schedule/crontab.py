"""``via: cron`` and ``via: scrontab``: a schedule as a block of lines in the user's crontab or scrontab.

Each schedule owns one block, between a begin and an end comment that carry its name and id; ``add``
replaces it, ``remove`` deletes it, and every other line of the table is kept as it was. Both tables are
read with ``-l`` and written back whole from a file, as the tools expect.

* cron (a login node's ``cron`` daemon): one line, ``<cron expression> cd <dir> && <python> -m mltf_flow.cli
  schedule fire <definition> >> <logs>/cron.log 2>&1``. cron runs it with an almost empty environment: the
  fire takes the variables the schedule kept (:data:`mltf_flow.schedule.spec.KEPT_VARIABLES`).
* scrontab (SLURM's cron, where the site's SLURM ships it and enables it): the same command, with ``#SCRON``
  lines for the job's name, partition, account, time limit and log. Debian 12's SLURM 22.05 client has no
  ``scrontab``: :func:`scrontab_path` says so and points at ``--via slurm``.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from mltf_flow.errors import CommandError, ConfigError
from mltf_flow.schedule.slurm_chain import fire_command
from mltf_flow.schedule.spec import Schedule
from mltf_flow.schedule.store import log_dir

_NO_TABLE = ("no crontab for", "no scrontab for", "no crontab")


def _tool(via: str) -> str:
    if via == "scrontab":
        return scrontab_path()
    path = shutil.which("crontab")
    if path is None:
        raise ConfigError("`crontab` is not on PATH: install cron (Debian: apt-get install cron) or use "
                          "--via slurm on a SLURM login node.")
    return path


def scrontab_path() -> str:
    path = shutil.which("scrontab")
    if path is None:
        sbatch = shutil.which("sbatch")
        where = (f"this SLURM's client tools ({Path(sbatch).parent}) have no scrontab (Debian 12's SLURM 22.05 "
                 "ships none)" if sbatch else "neither scrontab nor sbatch is on PATH")
        raise ConfigError(f"--via scrontab: {where}. Use --via slurm (a self-resubmitting job, any SLURM) or "
                          "--via cron (a login node's cron).")
    return path


def block(schedule: Schedule, definition: Path, via: str) -> list[str]:
    """The lines of the schedule's block."""
    command = (f"cd {shlex.quote(schedule.cwd)} && {shlex.join(fire_command(schedule, definition))}")
    lines = [_begin(schedule)]
    if via == "scrontab":
        lines.append(f"#SCRON --job-name={schedule.job_name}")
        lines.append(f"#SCRON --output={log_dir(definition)}/fire-%j.log")
        for flag, value in (("partition", schedule.slurm.partition), ("account", schedule.slurm.account),
                            ("time", schedule.slurm.time_limit), ("mem", schedule.slurm.mem)):
            if value:
                lines.append(f"#SCRON --{flag}={value}")
    else:
        command = (f"cd {shlex.quote(schedule.cwd)} && MLTF_SCHEDULE_STARTED_BY=cron "
                   f"{shlex.join(fire_command(schedule, definition))} >> "
                   f"{shlex.quote(str(log_dir(definition) / 'cron.log'))} 2>&1")
    # cron turns an unescaped % into a newline (the rest becomes the command's stdin).
    lines.append(f"{schedule.when.cron_expression(via)} {command.replace('%', chr(92) + '%')}")
    lines.append(_end(schedule))
    return lines


def read(via: str) -> list[str]:
    """The user's table, as lines (empty when there is none yet)."""
    args = [_tool(via), "-l"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        if any(words in proc.stderr.lower() for words in _NO_TABLE):
            return []
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.splitlines()


def write(via: str, lines: list[str]) -> None:
    tool = _tool(via)
    if not any(line.strip() for line in lines):  # nothing left: no table, as before the first schedule
        proc = subprocess.run([tool, "-r"], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0 and not any(words in proc.stderr.lower() for words in _NO_TABLE):
            raise CommandError([tool, "-r"], proc.returncode, proc.stdout, proc.stderr)
        return
    with tempfile.NamedTemporaryFile("w", prefix="mltf-crontab-", suffix=".txt") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        args = [tool, handle.name]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise CommandError(args, proc.returncode, proc.stdout, proc.stderr)


def without(lines: list[str], schedule: Schedule) -> list[str]:
    """``lines`` without the schedule's block (other lines untouched)."""
    kept, inside = [], False
    for line in lines:
        if line == _begin(schedule):
            inside = True
        elif inside and line == _end(schedule):
            inside = False
        elif not inside:
            kept.append(line)
    return kept


def install(schedule: Schedule, definition: Path, via: str) -> str:
    lines = without(read(via), schedule) + block(schedule, definition, via)
    write(via, lines)
    return f"{'scrontab' if via == 'scrontab' else 'crontab'} line '{schedule.when.cron_expression(via)} ...'"


def uninstall(schedule: Schedule, via: str) -> bool:
    """Remove the block; whether there was one."""
    lines = read(via)
    kept = without(lines, schedule)
    if kept == lines:
        return False
    write(via, kept)
    return True


def installed(schedule: Schedule, via: str) -> bool:
    return _begin(schedule) in read(via)


def _begin(schedule: Schedule) -> str:
    return f"# mltf_flow schedule {schedule.name} {schedule.id} (mltf-flow schedule remove {schedule.name})"


def _end(schedule: Schedule) -> str:
    return f"# end of mltf_flow schedule {schedule.name} {schedule.id}"
