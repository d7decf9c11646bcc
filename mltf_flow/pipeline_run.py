"""Running one pipeline invocation the way ``mltf-flow run`` does, for every caller that starts one: the
``run`` command and each fire of a schedule (:mod:`mltf_flow.schedule.fire`).

The target is built and checked before anything runs (parameters, environments, profiles, datasets, the
tracking server); then Luigi runs it with the local scheduler or a central ``luigid``, and its result
becomes the front end's exit code (``configs/luigi.cfg``'s ``[retcode]`` values).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mltf_flow.errors import EXIT_ALREADY_RUNNING, ConfigError
from mltf_flow.redaction import strip_credentials

#: ``mltf-flow`` hides a secret ``-P`` value from ``ps``: the value moves into this variable's environment
#: (suffix: the argument's position) and the argument reads ``@@<variable>@@`` (mltf_flow.cli).
CLI_SECRET_PREFIX = "MLTF_SECRET_CLI_"
RETCODES = {"FAILED": 30, "FAILED_AND_SCHEDULING_FAILED": 30, "SCHEDULING_FAILED": 35, "NOT_RUN": 25,
            "MISSING_EXT": 20}


@dataclass(frozen=True)
class Request:
    """What a user asks ``mltf-flow run`` for."""

    project_dir: str
    step: str
    params: Mapping[str, str] = field(default_factory=dict)
    allow_extra: bool = False
    profile: str | None = None
    env_manager: str | None = None
    #: An Optuna study whose best trial's parameters the step takes (``--from-study``).
    from_study: str | None = None


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    #: Luigi's execution summary, credentials stripped.
    summary: str
    #: The Luigi tasks this invocation ran to completion (task families; those found complete are not here).
    ran: tuple[str, ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``-P`` arguments (``KEY=VALUE`` or ``STEP.KEY=VALUE``) as a mapping, hidden secrets put back."""
    params: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if value.startswith(f"@@{CLI_SECRET_PREFIX}") and value.endswith("@@"):
            value = os.environ.get(value[2:-2], value)
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"-P {item!r}: expected KEY=VALUE or STEP.KEY=VALUE, e.g. -P epochs=3.")
        params[key] = value
    return params


def build_target(request: Request) -> Any:
    """The Luigi task of ``request``, with every input checked (a ConfigError before anything runs)."""
    from mltf_flow.input_check import check_tracking_server, validate_tree
    from mltf_flow.pipeline import load_pipeline, make_task

    spec = load_pipeline(request.project_dir)
    unknown_steps = ({k.partition(".")[0] for k in request.params if "." in k} - set(spec.steps)
                     - {request.step})
    if unknown_steps and spec.declared:
        raise ConfigError(f"-P names unknown step(s) {sorted(unknown_steps)}; steps are: {', '.join(spec.steps)}.")
    task = make_task(str(spec.root), request.step, dict(request.params), allow_extra=request.allow_extra,
                     profile=request.profile, env_manager=request.env_manager, from_study=request.from_study)
    validate_tree(task, set())  # parameters, environments, profiles, datasets: before Luigi starts anything
    check_tracking_server()
    return task


def pipeline_name(project_dir: str) -> str:
    """The pipeline (experiment) a project's runs go to: pipeline.yaml's name, else MLproject's."""
    from mltf_flow.pipeline import load_pipeline

    return load_pipeline(project_dir).name


def run_tasks(tasks: Sequence[Any], *, workers: int = 1, scheduler_host: str | None = None,
              log_level: str = "WARNING") -> Outcome:
    """Run ``tasks`` with Luigi in this process; the front end's exit code and Luigi's summary."""
    import luigi

    from mltf_flow.input_check import front_end

    in_progress = _watch_in_progress()
    if workers > 1:
        os.environ["MLTF_SCALE_AT_SCHEDULING"] = "1"  # forked task processes cannot scale clusters
    with front_end():  # an input error Luigi meets after all: one line, exit code 2
        result = luigi.build(
            list(tasks), local_scheduler=not scheduler_host, scheduler_host=scheduler_host or "localhost",
            workers=workers, detailed_summary=True, log_level=log_level,
        )
    _attach_picture(tasks, result)
    return _outcome(result, in_progress)


def run_luigi_args(args: Sequence[str]) -> Outcome:
    """Run a ``luigi`` command line (its arguments after ``luigi``) in this process, as the ``luigi`` command
    would, with the local scheduler unless it names a central one."""
    from luigi.cmdline_parser import CmdlineParser
    from luigi.interface import _schedule_and_run

    from mltf_flow.input_check import front_end

    argv = list(args)
    if not any(a.startswith(("--scheduler-host", "--scheduler-url", "--local-scheduler")) for a in argv):
        argv.append("--local-scheduler")
    if not any(a.startswith("--log-level") for a in argv):
        argv += ["--log-level", "WARNING"]  # as `mltf-flow run`: Luigi's default (DEBUG) fills the fire's log
    in_progress = _watch_in_progress()
    with front_end(), CmdlineParser.global_instance(argv) as parser:
        task = parser.get_task_obj()
        result = _schedule_and_run([task])
    _attach_picture([task], result)
    return _outcome(result, in_progress)


def _attach_picture(tasks: Sequence[Any], result: Any) -> None:
    """The DAG with each step's outcome, as ``mltf/pipeline.svg`` on the parent run (mltf_flow.pipeline_svg)."""
    from mltf_flow.config import load_settings
    from mltf_flow.invocation import invocation_id
    from mltf_flow.pipeline_svg import attach_picture, outcome_states

    attach_picture(load_settings(), invocation_id(), list(tasks), outcome_states(result.worker))


def _outcome(result: Any, in_progress: list[str]) -> Outcome:
    from luigi.execution_summary import _summary_dict

    summary = strip_credentials(result.summary_text)
    ran = tuple(sorted(task.task_family for task in _summary_dict(result.worker)["completed"]))
    name = result.status.name
    if name.startswith("SUCCESS"):
        return Outcome(0, summary, ran)
    return Outcome(EXIT_ALREADY_RUNNING if in_progress else RETCODES.get(name, 30), summary, ran)


def _watch_in_progress() -> list[str]:
    """Steps that failed because another invocation runs them (``--no-wait``), as Luigi reports them in
    this process (task processes forked for ``--workers`` > 1 report theirs there: exit code 30)."""
    import luigi

    from mltf_flow.errors import StepInProgress

    seen: list[str] = []

    def failed(task: luigi.Task, exc: BaseException) -> None:
        if isinstance(exc, StepInProgress):
            seen.append(task.task_id)

    luigi.Task.event_handler(luigi.Event.FAILURE)(failed)
    return seen
