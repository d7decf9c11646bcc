"""The failures of one invocation's steps, recorded where they happen: one JSON file each.

With ``--workers`` > 1 Luigi runs each task in a process forked for it, and only that process sees the
exception. So every failure of a step class that :func:`watch` was given (:class:`~mltf_flow.step.MLflowStep`,
:class:`~mltf_flow.staging.step.StageStep`) is written by the process that saw it, atomically and under a
name of its own, into ``<work_dir>/invocations/<invocation id>/failures/``; the failure report
(:mod:`mltf_flow.failure_report`) reads them all once ``luigi.build`` returned.

What Luigi tells us, and where (its task events):

=================  =====================================  ==================================================
event              when                                   recorded as
=================  =====================================  ==================================================
``FAILURE``        ``run()`` raised (task process)        the exception: class, message, and what our errors
                                                          carry (exit code, stderr tail, log path, run id)
``BROKEN_TASK``    ``complete()``/``deps()`` raised       the exception, phase ``scheduling``
``PROCESS_FAILURE`` the task's process died (SIGKILL, OOM) ``TaskProcessDied`` with Luigi's message
``TIMEOUT``        Luigi's own ``worker_timeout``          ``LuigiTimeout`` with Luigi's message
=================  =====================================  ==================================================

Every text passes :func:`mltf_flow.redaction.mask_text` first: the values of the task's secret parameters
(``api_token``, URLs with passwords) and any URL's password never reach the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import luigi

from mltf_flow.atomic import write_json
from mltf_flow.invocation import invocation_dir, invocation_id
from mltf_flow.redaction import is_secret_param, mask_text

_log = logging.getLogger(__name__)
_WATCHED: set[type[luigi.Task]] = set()
#: A message or summary is kept up to this many characters (a report quotes it; the log has it whole).
_MAX_TEXT = 8000


@dataclass(frozen=True)
class Failure:
    """One failed task of an invocation, as recorded (every text already redacted)."""

    #: Step name (``stage`` for staging) and pipeline; the task as Luigi names it.
    step: str
    pipeline: str
    task: str
    #: The exception's class name, or ``TaskProcessDied`` / ``LuigiTimeout`` for what Luigi saw happen.
    error: str
    message: str
    #: ``run`` (``run()`` raised), ``scheduling`` (``complete()``/``deps()`` raised), ``process`` (died or
    #: timed out by Luigi).
    phase: str = "run"
    exit_code: int | None = None
    stderr_tail: tuple[str, ...] = ()
    #: How each rank of a multi-process step ended (:attr:`mltf_flow.errors.StepFailed.summary`).
    summary: str | None = None
    log_path: str | None = None
    run_id: str | None = None
    when: float = 0.0
    pid: int = 0

    @property
    def headline(self) -> str:
        """What the report says of this failure: for a command that failed, the message's first line (the rest
        is the stderr tail the report shows apart); for an error of ours (a dataset, a configuration), its whole
        message on one line, since its later lines say what to do."""
        lines = [line.strip() for line in self.message.strip().splitlines() if line.strip()]
        if not lines:
            return self.error
        if self.stderr_tail or self.summary or self.exit_code is not None:
            return lines[0]
        return " ".join(lines[:8])

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Failure:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["stderr_tail"] = tuple(values.get("stderr_tail") or ())
        return cls(**values)


def failures_dir(work_dir: Path, invocation: str) -> Path:
    """Where the failures of ``invocation`` are recorded."""
    return invocation_dir(work_dir, invocation) / "failures"


def from_exception(task: luigi.Task, exc: BaseException, phase: str = "run") -> Failure:
    """The record of ``task`` failing with ``exc`` (what our exceptions carry, redacted)."""
    secrets = secret_values(task)
    step, pipeline = names(task)
    stderr: Iterable[str] = getattr(exc, "stderr_tail", None) or ()
    if not stderr and isinstance(getattr(exc, "stderr", None), str):  # a CommandError
        stderr = str(exc.stderr).strip().splitlines()[-30:]  # type: ignore[attr-defined]
    exit_code = getattr(exc, "exit_code", None)
    summary = getattr(exc, "summary", None)
    log_path = getattr(exc, "log_path", None)
    return Failure(
        step=getattr(exc, "step", None) or step, pipeline=pipeline, task=mask_text(str(task), secrets)[:500],
        error=type(exc).__name__, message=mask_text(str(exc), secrets)[:_MAX_TEXT], phase=phase,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        stderr_tail=tuple(mask_text(str(line), secrets) for line in stderr),
        summary=mask_text(summary, secrets)[:_MAX_TEXT] if isinstance(summary, str) and summary else None,
        log_path=str(log_path) if log_path else None, run_id=getattr(exc, "run_id", None) or None,
        when=time.time(), pid=os.getpid(),
    )


def from_message(task: luigi.Task, error: str, message: str, phase: str = "process") -> Failure:
    """The record of what Luigi saw happen to ``task``'s process (it died, or its own timeout stopped it)."""
    step, pipeline = names(task)
    code = re.search(r"exit code (-?\d+)", message)
    return Failure(step=step, pipeline=pipeline, task=mask_text(str(task), secret_values(task))[:500], error=error,
                   message=mask_text(message, secret_values(task)), phase=phase,
                   exit_code=int(code.group(1)) if code else None, when=time.time(), pid=os.getpid())


def record(task: luigi.Task, failure: Failure) -> Path | None:
    """Write ``failure`` into the invocation's directory; None (and a debug line) when that fails: recording
    must never become the error."""
    try:
        from mltf_flow.config import Settings, load_settings

        own = getattr(task, "settings", None)  # the settings the step ran with (ours: memoised per invocation)
        settings = own() if callable(own) else None
        if not isinstance(settings, Settings):
            settings = load_settings()
        name = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        return write_json(failures_dir(settings.work_dir, invocation_id()) / name, failure.as_dict())
    except Exception as exc:
        _log.debug(f"could not record the failure of {failure.task}: {exc}")
        return None


def load(work_dir: Path, invocation: str) -> list[Failure]:
    """The recorded failures of ``invocation``, oldest first (unreadable records are skipped)."""
    folder = failures_dir(work_dir, invocation)
    found: list[Failure] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            found.append(Failure.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            _log.debug(f"skipping failure record {path}: {exc}")
    return found


def names(task: luigi.Task) -> tuple[str, str]:
    """(step, pipeline) of a task, as well as it can tell: a step whose project cannot be read still fails
    with a name."""
    step = _ask(task, "step_name") or ("stage" if callable(getattr(task, "uri", None)) else str(task.task_family))
    pipeline = _ask(task, "pipeline_name") or str(getattr(task, "pipeline", None) or "")
    return step, pipeline


def _ask(task: luigi.Task, method: str) -> str | None:
    function = getattr(task, method, None)
    if not callable(function):
        return None
    try:
        return str(function())
    except Exception:
        return None


def secret_values(task: luigi.Task) -> list[str]:
    """The values of ``task``'s secret parameters (secret names, URLs with passwords), at any depth of its
    Luigi parameters (``PipelineStep``'s ``overrides``) and its entry-point parameters."""
    sources: list[Any] = [dict(getattr(task, "param_kwargs", {}) or {})]
    params = getattr(task, "params", None)
    if callable(params):
        with contextlib.suppress(Exception):  # the failure may be that they do not parse
            sources.append(params())
    values: list[str] = []
    while sources:
        source = sources.pop()
        for name, value in source.items():
            if isinstance(value, Mapping):
                sources.append(value)
            elif is_secret_param(str(name).rpartition(".")[2], value):
                values.append(str(value))
    return values


def watch(cls: type[luigi.Task]) -> None:
    """Record the failures of ``cls`` and its subclasses (once per process; forked task processes inherit it)."""
    if cls in _WATCHED:
        return
    _WATCHED.add(cls)
    cls.event_handler(luigi.Event.FAILURE)(_failed)
    cls.event_handler(luigi.Event.BROKEN_TASK)(_broken)
    cls.event_handler(luigi.Event.PROCESS_FAILURE)(_died)
    cls.event_handler(luigi.Event.TIMEOUT)(_timed_out)


def _failed(task: luigi.Task, exc: BaseException) -> None:
    record(task, from_exception(task, exc))


def _broken(task: luigi.Task, exc: BaseException) -> None:
    record(task, from_exception(task, exc, phase="scheduling"))


def _died(task: luigi.Task, message: str) -> None:
    record(task, from_message(task, "TaskProcessDied", str(message)))


def _timed_out(task: luigi.Task, message: str) -> None:
    record(task, from_message(task, "LuigiTimeout", str(message)))


__all__ = ["Failure", "failures_dir", "from_exception", "from_message", "load", "names", "record", "secret_values",
           "watch"]
