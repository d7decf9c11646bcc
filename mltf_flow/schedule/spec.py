"""A schedule as a value: what to run, when, where it is installed, and how its fires behave.

What runs is a pipeline invocation exactly as a user types it, in one of two forms:

* ``mltf-flow run PROJECT --step STEP -P k=v ...`` (:attr:`Target.project_dir` set), or
* ``luigi --module MODULE TASK --param ...`` (:attr:`Target.luigi_args`), for instance Luigi's own
  ``RangeDaily --of MyDatedTask --start 2026-12-01`` for date-partitioned pipelines.

A schedule is stored as JSON (``<work_dir>/schedules/<name>/schedule.json``, :mod:`mltf_flow.schedule.store`)
and read by every fire, so what a fire runs is what ``mltf-flow schedule show`` prints. It never holds a
secret: secret-looking parameters are refused when the schedule is added, and the variables it keeps for
fires (:data:`KEPT_VARIABLES`) are those without credentials.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mltf_flow.errors import ConfigError
from mltf_flow.redaction import has_credentials, is_secret_name, is_secret_param, shown_value
from mltf_flow.schedule.when import When

SCHEDULE_VERSION = 1
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
#: Where a schedule is installed (:mod:`mltf_flow.schedule.installers`).
VIAS = ("slurm", "scrontab", "cron", "none")
#: What a fire does when the schedule's previous fire is still running.
IF_RUNNING = ("wait", "skip")
#: Variables a fire runs with although the place that starts it (cron) does not set them: the settings
#: (``MLTF_FLOW_*``), the tracking URI, Luigi's config and PATH, as they were when the schedule was added.
KEPT_VARIABLES = ("MLFLOW_TRACKING_URI", "LUIGI_CONFIG_PATH", "PATH", "PYTHONPATH", "MLFLOW_ENV_ROOT",
                  "XDG_CACHE_HOME")
KEPT_PREFIXES = ("MLTF_FLOW_",)


@dataclass(frozen=True)
class Target:
    """The invocation a fire runs."""

    #: The ``mltf-flow run`` form: the project and the step to bring up to date.
    project_dir: str | None = None
    step: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    profile: str | None = None
    env_manager: str | None = None
    workers: int = 1
    #: The ``luigi`` form: its arguments after ``luigi``.
    luigi_args: tuple[str, ...] = ()
    #: The pipeline (MLflow experiment, unless setting ``experiment`` names one) that records the fires: read
    #: from the project when the schedule is added (a fire of a moved project is recorded all the same).
    pipeline: str = ""

    def command(self) -> str:
        """The command line a user would type for the same invocation."""
        if self.project_dir is not None:
            words = ["mltf-flow", "run", self.project_dir, "--step", self.step or ""]
            for key, value in self.params:
                words += ["-P", f"{key}={value}"]
            if self.profile:
                words += ["--profile", self.profile]
            if self.env_manager:
                words += ["--env-manager", self.env_manager]
            if self.workers != 1:
                words += ["--workers", str(self.workers)]
            return shlex.join(words)
        return shlex.join(["luigi", *self.luigi_args])


@dataclass(frozen=True)
class SlurmOptions:
    """How a fire's own job is submitted (``via: slurm`` and ``scrontab``): it runs the pipeline's driver,
    which asks for its GPU workers through the profile, so it needs little."""

    partition: str | None = None
    account: str | None = None
    #: The fire job's time limit (sbatch --time); None: the partition's default.
    time_limit: str | None = None
    #: The fire job's memory (sbatch --mem); None: the partition's default, on some sites the whole node.
    mem: str | None = None


@dataclass(frozen=True)
class Schedule:
    name: str
    id: str
    when: When
    target: Target
    via: str
    if_running: str = "wait"
    #: The directory fires run in (relative paths of the target are read from it).
    cwd: str = ""
    #: The Python that runs fires (the one that has mltf_flow installed).
    python: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)
    slurm: SlurmOptions = SlurmOptions()
    created: float = 0.0
    paused: bool = False

    @property
    def job_name(self) -> str:
        """The SLURM job name of its fires: the schedule's name and the start of its id (another schedule of
        the same name in another work directory is another job)."""
        return f"mltf-schedule-{self.name}-{self.id[:8]}"

    def to_json(self) -> dict[str, Any]:
        return {"version": SCHEDULE_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Schedule:
        if data.get("version") != SCHEDULE_VERSION:
            raise ConfigError(f"{where}: schedule format {data.get('version')!r} is not {SCHEDULE_VERSION}; this "
                              "mltf_flow cannot read it. Remove and add the schedule again.")
        try:
            target = dict(data["target"])
            target["params"] = tuple(tuple(p) for p in target.get("params", ()))
            target["luigi_args"] = tuple(target.get("luigi_args", ()))
            return cls(
                name=data["name"], id=data["id"], when=When(**data["when"]), target=Target(**target),
                via=data["via"], if_running=data["if_running"], cwd=data["cwd"], python=data["python"],
                environment=dict(data["environment"]), slurm=SlurmOptions(**data["slurm"]),
                created=float(data["created"]), paused=bool(data["paused"]),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{where}: not a schedule written by mltf_flow ({exc}). Remove it and add the "
                              "schedule again.") from None


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"schedule name {name!r}: use letters, digits, '.', '_' and '-' (at most 48, starting "
                          "with a letter or digit); it becomes part of file and SLURM job names.")
    return name


def check_params(params: Mapping[str, str]) -> None:
    """A schedule is stored in a file and runs from jobs: a secret parameter must not be kept in it."""
    for key, value in params.items():
        if is_secret_param(key.rpartition(".")[2], value):
            raise ConfigError(
                f"-P {key}: a secret (its name, or a URL with a password) would be stored in the schedule's file "
                "and shown by `mltf-flow schedule show`. Give the step its secret through the environment or a "
                "file only the fire's user can read, and leave it out of -P."
            )


def check_luigi_args(args: tuple[str, ...]) -> None:
    for arg in args:
        name, eq, value = arg.lstrip("-").partition("=")
        if has_credentials(arg) or (eq and is_secret_name(name) and value):
            raise ConfigError(f"luigi argument {arg.split('=')[0]}: a secret would be stored in the schedule's "
                              "file. Pass it through the environment instead.")
    for arg in args[:-1]:
        if arg.startswith("--") and is_secret_name(arg[2:].replace("-", "_")):
            raise ConfigError(f"luigi argument {arg}: a secret would be stored in the schedule's file. Pass it "
                              "through the environment instead.")


def kept_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables fires get from the schedule (see :data:`KEPT_VARIABLES`); never one with a secret."""
    kept: dict[str, str] = {}
    for name, value in environ.items():
        if name in KEPT_VARIABLES or name.startswith(KEPT_PREFIXES):
            if is_secret_name(name) or shown_value(name, value) != value:
                # A secret (a password, a token, a webhook URL whose path is its token): the fire gets it from
                # its own environment (sbatch exports it) or a file, or fails saying what is missing.
                continue
            kept[name] = value
    return kept


def current_python() -> str:
    import sys

    return os.path.abspath(sys.executable)
