"""Where schedules live: ``<work_dir>/schedules/<name>/`` holds ``schedule.json`` (the definition), the
rendered job script of SLURM fires and ``logs/`` (one log per fire).

The definition is written atomically and only by ``mltf-flow schedule`` commands; fires read it. It is
the one place a schedule is known by name, so ``list`` and ``remove`` need nothing from SLURM or cron to
find it (they then ask those what is installed).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from mltf_flow.atomic import write_atomic
from mltf_flow.errors import ConfigError
from mltf_flow.schedule.spec import Schedule, check_name

DEFINITION = "schedule.json"


def schedules_dir(work_dir: Path) -> Path:
    return work_dir / "schedules"


def definition_path(work_dir: Path, name: str) -> Path:
    return schedules_dir(work_dir) / check_name(name) / DEFINITION


def log_dir(definition: Path) -> Path:
    return definition.parent / "logs"


def save(schedule: Schedule, path: Path) -> None:
    write_atomic(path, json.dumps(schedule.to_json(), indent=1, sort_keys=True) + "\n")
    os.chmod(path, 0o600)  # not secret, but nobody else's business either
    log_dir(path).mkdir(parents=True, exist_ok=True)


def load(path: Path) -> Schedule:
    """The schedule stored at ``path``; a ConfigError names what is missing and how to see what exists."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no schedule {path.parent.name!r} ({path} does not exist). `mltf-flow schedule list` "
                          "shows the schedules of this work directory.") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}). Remove the schedule and add it again.") from None
    return Schedule.from_json(data, str(path))


def find(work_dir: Path, name: str) -> tuple[Schedule, Path]:
    path = definition_path(work_dir, name)
    return load(path), path


def all_schedules(work_dir: Path) -> list[tuple[Schedule, Path]]:
    found = []
    for path in sorted(schedules_dir(work_dir).glob(f"*/{DEFINITION}")):
        found.append((load(path), path))
    return found


def forget(path: Path) -> None:
    """Remove a schedule's directory (definition, job script, logs)."""
    shutil.rmtree(path.parent, ignore_errors=True)
