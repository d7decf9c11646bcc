"""The failure report of an invocation: its failures grouped by cause, shown, kept with the runs, and sent.

After ``luigi.build`` returned, :func:`report_outcome` reads the failures the invocation's processes recorded
(:mod:`mltf_flow.failures`) and groups them by cause: the step, the exit code (a step's command that failed)
or the exception's class (anything else), SLURM's state and reason (tags ``mltf.slurm.state`` /
``mltf.slurm.reason`` of the step run, where a job set them) and the last lines of the step's stderr (where a
Python error or a crash says what happened; a failure without stderr is told apart by the first line of its
message). Each group lists its runs (a link on a tracking server; ``mltf-flow ui`` and the run id on a sqlite
store; "no MLflow run" when it failed before its run existed) and logs. The report is then

* printed on stderr (Luigi's traceback wall is in ``tracebacks.log``: :mod:`mltf_flow.luigi_log`);
* written as ``failure_report.md`` and ``.json`` into the invocation's directory and logged as artifacts
  ``mltf/failure_report.md`` / ``.json`` of its parent run(s) (one is made, FAILED, for an invocation that
  failed before it had one);
* sent through the configured channels (:mod:`mltf_flow.notify`) unless ``notify_on`` is ``never``.

A success is sent only when ``notify_on`` is ``always``. Nothing here changes an invocation's exit code: what
fails while reporting is said on the console and the report goes on without it. Every text in the report was
redacted when its failure was recorded; context lines and the title pass :func:`strip_credentials` here.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import re
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.atomic import write_atomic
from mltf_flow.failures import Failure, load, watch
from mltf_flow.invocation import invocation_dir
from mltf_flow.luigi_log import send_tracebacks_to_file, traceback_log
from mltf_flow.redaction import strip_credentials
from mltf_flow.tags import TAG_SLURM_REASON, TAG_SLURM_STATE

if TYPE_CHECKING:
    import luigi

    from mltf_flow.config import Settings
    from mltf_flow.notify import Message

_log = logging.getLogger(__name__)
#: Lines of a step's stderr that identify (and show) a cause; lines of a multi-process summary shown.
STDERR_LINES = 5
SUMMARY_LINES = 40
ARTIFACT_DIR = "mltf"
ARTIFACT_NAME = "failure_report"
_RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")


@dataclass(frozen=True)
class Occurrence:
    """One failed task of a group: where its run and its log are."""

    task: str
    run_id: str | None
    #: How to open the run: its URL on a tracking server, ``mltf-flow ui`` for a sqlite store, or why none.
    run: str
    log_path: str | None
    when: float


@dataclass(frozen=True)
class FailureGroup:
    """Failures with one cause."""

    step: str
    pipeline: str
    #: ``exit code 3``, or the exception's class (``StepTimedOut``, ``DatasetNotFound``, ``TaskProcessDied``).
    cause: str
    error: str
    exit_code: int | None
    slurm_state: str | None
    slurm_reason: str | None
    #: The last lines of the stderr (empty for failures without a command).
    stderr: tuple[str, ...]
    #: The first line of the first failure's message.
    headline: str
    #: How each process of a multi-process step ended (DDP ranks), when known.
    summary: str | None
    occurrences: tuple[Occurrence, ...]


@dataclass(frozen=True)
class FailureReport:
    """What :func:`report_outcome` printed, kept and sent (see the module docstring)."""

    title: str
    invocation_id: str
    host: str
    created: str
    groups: tuple[FailureGroup, ...]
    #: Where the tracebacks of the invocation are (Luigi's log records, :mod:`mltf_flow.luigi_log`).
    traceback_log: str
    context: Mapping[str, str] = field(default_factory=dict)
    #: What could not be found out (the tracking store did not answer, ...), said in the report.
    notes: tuple[str, ...] = ()
    #: Where the report was kept: parent run links (or ids), then the local copy.
    kept_at: tuple[str, ...] = ()

    @property
    def failures(self) -> int:
        return sum(len(group.occurrences) for group in self.groups)

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["failures"] = self.failures
        return data

    def summary_line(self) -> str:
        causes = len(self.groups)
        return (f"{self.title}: FAILED, {self.failures} failure(s), {causes} cause(s)" if causes
                else f"{self.title}: FAILED (no step failure was recorded)")


# -- grouping ------------------------------------------------------------------------------------------------


def cause_of(failure: Failure) -> str:
    """``exit code N`` for a command that failed; the exception's class otherwise."""
    if failure.error == "StepFailed" and failure.exit_code is not None:
        return f"exit code {failure.exit_code}"
    if failure.exit_code is not None and failure.error in ("StepTimedOut", "TaskProcessDied"):
        return f"{failure.error} (exit code {failure.exit_code})"
    return failure.error


def stderr_excerpt(lines: Sequence[str], count: int = STDERR_LINES) -> tuple[str, ...]:
    """The last ``count`` non-blank lines of a stderr tail: where the error is said."""
    kept = [line.rstrip() for line in lines if line.strip()]
    return tuple(kept[-count:])


def _signature(failure: Failure) -> tuple[str, ...]:
    excerpt = stderr_excerpt(failure.stderr_tail)
    # Without stderr, the message tells causes apart; run ids in it differ between identical failures.
    return excerpt or (_RUN_ID.sub("<run>", failure.headline),)


@dataclass(frozen=True)
class RunFacts:
    """What the tracking store says about a failed step's run."""

    url: str | None
    experiment: str
    tags: Mapping[str, str]


def group_failures(failures: Sequence[Failure], runs: Mapping[str, RunFacts], work_dir: Path,
                   tracebacks: Path) -> tuple[FailureGroup, ...]:
    """``failures`` grouped by cause, groups in the order their first failure happened."""
    groups: dict[tuple[Any, ...], list[tuple[Failure, Occurrence]]] = {}
    for failure in sorted(failures, key=lambda f: f.when):
        facts = runs.get(failure.run_id or "")
        tags = facts.tags if facts else {}
        key = (failure.pipeline, failure.step, cause_of(failure), tags.get(TAG_SLURM_STATE),
               tags.get(TAG_SLURM_REASON), _signature(failure))
        groups.setdefault(key, []).append((failure, _occurrence(failure, facts, work_dir, tracebacks)))
    out = []
    for (pipeline, step, cause, state, reason, _), members in groups.items():
        first = members[0][0]
        out.append(FailureGroup(
            step=step, pipeline=pipeline, cause=cause, error=first.error, exit_code=first.exit_code,
            slurm_state=state, slurm_reason=reason, stderr=stderr_excerpt(first.stderr_tail),
            headline=first.headline, summary=first.summary, occurrences=tuple(o for _, o in members),
        ))
    return tuple(out)


def _occurrence(failure: Failure, facts: RunFacts | None, work_dir: Path, tracebacks: Path) -> Occurrence:
    if failure.run_id is None:
        run = ("no MLflow run: it failed while Luigi scheduled it" if failure.phase == "scheduling"
               else "no MLflow run: it failed before its run existed")
    elif facts is None:
        run = f"MLflow run {failure.run_id}"
    elif facts.url:
        run = facts.url
    else:
        run = f"MLflow run {failure.run_id} in experiment {facts.experiment!r}: see it with `mltf-flow ui`"
    log_path = failure.log_path
    if log_path is None and failure.run_id:  # a step run's log (mltf_flow.step_run) where the error names none
        candidate = work_dir / "logs" / failure.pipeline / f"{failure.step}-{failure.run_id}.log"
        log_path = str(candidate) if candidate.exists() else None
    return Occurrence(failure.task, failure.run_id, run, log_path or str(tracebacks), failure.when)


def build_report(settings: Settings, failures: Sequence[Failure], *, invocation_id: str, title: str,
                 context: Mapping[str, str] | None = None) -> FailureReport:
    """The report of ``failures``, with what the tracking store says about their runs."""
    runs, notes = run_facts(settings, sorted({f.run_id for f in failures if f.run_id}))
    tracebacks = traceback_log(settings.work_dir, invocation_id)
    return FailureReport(
        title=strip_credentials(title), invocation_id=invocation_id, host=socket.gethostname(),
        created=time.strftime("%Y-%m-%d %H:%M:%S %z"),
        groups=group_failures(failures, runs, settings.work_dir, tracebacks), traceback_log=str(tracebacks),
        context={strip_credentials(k): strip_credentials(v) for k, v in (context or {}).items()}, notes=tuple(notes),
    )


def run_facts(settings: Settings, run_ids: Sequence[str]) -> tuple[dict[str, RunFacts], list[str]]:
    """Link, experiment and tags of each run, and what could not be found out (said in the report)."""
    if not run_ids:
        return {}, []
    from mltf_flow.tracking import Tracker, run_url

    facts: dict[str, RunFacts] = {}
    silent = store_silence(settings)
    if silent:
        return facts, [silent]
    try:
        tracker = Tracker(settings)
        for run_id in run_ids:
            experiment_id, experiment, tags = tracker.run_place(run_id)
            facts[run_id] = RunFacts(run_url(settings.tracking_uri, experiment_id, run_id), experiment, tags)
    except Exception as exc:
        return facts, [f"the tracking store {strip_credentials(settings.tracking_uri)} did not say where the runs "
                       f"are ({type(exc).__name__}: {strip_credentials(str(exc)).splitlines()[0] if str(exc) else ''})"]
    return facts, []


def store_silence(settings: Settings) -> str | None:
    """Why the tracking server does not answer, after one quick try (the failure may well be that): then the
    report goes on without it instead of waiting through the client's retries. None when it answers."""
    if settings.is_local_store:
        return None
    from mltf_flow.tracking_server import silence

    why = silence(settings.tracking_uri)
    return None if why is None else (f"the tracking server {strip_credentials(settings.tracking_uri)} does not "
                                     f"answer ({why}): no run links, and the report is not on the parent run")


# -- rendering -------------------------------------------------------------------------------------------------


def _group_lines(number: int, group: FailureGroup, indent: str = "    ") -> list[str]:
    lines = [f"[{number}] step '{group.step}'" + (f" (pipeline {group.pipeline})" if group.pipeline else "")
             + f": {group.cause}" + (f", {len(group.occurrences)} failures" if len(group.occurrences) > 1 else ""),
             f"{indent}{group.headline}"]
    if group.slurm_state or group.slurm_reason:
        lines.append(f"{indent}SLURM: {group.slurm_state or '?'} (reason: {group.slurm_reason or '?'})")
    if group.summary:
        summary = group.summary.splitlines()
        lines.append(f"{indent}how each process ended:")
        lines += [f"{indent}  {line}" for line in summary[:SUMMARY_LINES]]
        if len(summary) > SUMMARY_LINES:
            lines.append(f"{indent}  ... ({len(summary) - SUMMARY_LINES} more lines in the log)")
    elif group.stderr:
        lines.append(f"{indent}stderr (last lines):")
        lines += [f"{indent}  {line}" for line in group.stderr]
    for occurrence in group.occurrences:
        lines.append(f"{indent}run: {occurrence.run}")
        lines.append(f"{indent}log: {occurrence.log_path}")
    return lines


def render_text(report: FailureReport) -> str:
    """The report for the console and the e-mail."""
    rule = "=" * 24
    lines = [f"{rule} mltf_flow failure report {rule}", report.summary_line(),
             f"invocation {report.invocation_id} on {report.host}, {report.created}"]
    lines += [f"{key}: {value}" for key, value in report.context.items()]
    for number, group in enumerate(report.groups, 1):
        lines += ["", *_group_lines(number, group)]
    if not report.groups:
        lines += ["", "No step recorded a failure: Luigi's summary and the log below say what failed."]
    lines += ["", f"Log with the tracebacks: {report.traceback_log}"]
    lines += [f"Note: {note}" for note in report.notes]
    lines += [f"This report: {place}" for place in report.kept_at]
    if report.groups:
        lines.append("Fix the causes and run the same command again: completed steps are not repeated.")
    return "\n".join(lines)


def render_markdown(report: FailureReport) -> str:
    """The report as the parent run's ``mltf/failure_report.md`` (and a webhook's text)."""
    lines = [f"# {report.summary_line()}", "", f"Invocation `{report.invocation_id}` on `{report.host}`, "
             f"{report.created}."]
    lines += [f"- **{key}**: {value}" for key, value in report.context.items()]
    for number, group in enumerate(report.groups, 1):
        text = _group_lines(number, group, indent="")
        lines += ["", f"## {text[0]}", "", text[1]]
        body = text[2:]
        if body:
            lines += ["", "```", *body, "```"]
    lines += ["", f"Log with the tracebacks: `{report.traceback_log}`"]
    lines += [f"Note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def failure_message(report: FailureReport) -> Message:
    from mltf_flow.notify import Message

    text = render_text(report)
    return Message(subject=f"[mltf-flow] {report.summary_line()}", text=text + "\n",
                   payload={"event": "failure", "title": report.title, "invocation_id": report.invocation_id,
                            "text": render_markdown(report), "report": report.as_dict()})


def success_message(title: str, invocation_id: str, context: Mapping[str, str]) -> Message:
    from mltf_flow.notify import Message

    title = strip_credentials(title)
    shown = {strip_credentials(k): strip_credentials(v) for k, v in context.items()}
    lines = [f"{title}: succeeded", f"invocation {invocation_id} on {socket.gethostname()}",
             *(f"{k}: {v}" for k, v in shown.items())]
    return Message(subject=f"[mltf-flow] {title}: succeeded", text="\n".join(lines) + "\n",
                   payload={"event": "success", "title": title, "invocation_id": invocation_id, "context": shown,
                            "text": "\n".join(lines)})


# -- keeping it, and the entry point ----------------------------------------------------------------------------


def keep(settings: Settings, report: FailureReport, pipelines: Sequence[str]) -> FailureReport:
    """Write the report into the invocation's directory and onto its parent run(s) (made, FAILED, in the
    experiments of ``pipelines`` when it has none); ``kept_at`` says where."""
    folder = invocation_dir(settings.work_dir, report.invocation_id)
    files = [write_atomic(folder / f"{ARTIFACT_NAME}.md", render_markdown(report)),
             write_atomic(folder / f"{ARTIFACT_NAME}.json", json.dumps(report.as_dict(), indent=1, sort_keys=True))]
    kept: list[str] = []
    notes = list(report.notes)
    silent = store_silence(settings)
    if silent and silent not in notes:
        notes.append(silent)
    if not silent:
        try:
            from mltf_flow.tracking import Tracker, run_url

            tracker = Tracker(settings)
            parents = tracker.invocation_parents(report.invocation_id) or [
                tracker.failed_parent(pipeline, report.invocation_id) for pipeline in pipelines]
            for parent in parents:
                for path in files:
                    tracker.log_artifact(parent, path, ARTIFACT_DIR)
                experiment_id = tracker.run_place(parent)[0]
                where = run_url(settings.tracking_uri, experiment_id, parent) or f"MLflow run {parent} (`mltf-flow ui`)"
                kept.append(f"{where}, artifacts {ARTIFACT_DIR}/{ARTIFACT_NAME}.md and .json")
        except Exception as exc:
            notes.append(f"the report could not be logged to the parent run ({type(exc).__name__}: "
                         f"{strip_credentials(str(exc)).splitlines()[0] if str(exc) else ''})")
    kept.append(str(files[0]))
    return dataclasses.replace(report, kept_at=tuple(kept), notes=tuple(notes))


def report_outcome(settings: Settings, *, invocation_id: str, succeeded: bool, title: str,
                   context: Mapping[str, str] | None = None) -> FailureReport | None:
    """After luigi.build returned: on failure build the grouped report, print it, attach it to the parent run,
    notify; on success notify only when notify_on is 'always'. Returns the report (None on success).

    Never raises (but KeyboardInterrupt): the invocation's exit code is the pipeline's."""
    from mltf_flow.notify import configured, send

    if succeeded:
        if settings.notify_on == "always" and configured(settings):
            send(settings, success_message(title, invocation_id, context or {}))
        return None
    try:
        failures = load(settings.work_dir, invocation_id)
        report = build_report(settings, failures, invocation_id=invocation_id, title=title, context=context)
    except Exception as exc:
        _log.warning(f"warning: could not build the failure report: {type(exc).__name__}: {exc}")
        return None
    _REPORTED.add(invocation_id)
    try:
        report = keep(settings, report, sorted({f.pipeline for f in failures if f.pipeline}))
    except Exception as exc:  # an unwritable work dir: the report is still shown and sent
        report = dataclasses.replace(report, notes=(*report.notes, f"the report was not kept: {exc}"))
    print(render_text(report), file=sys.stderr, flush=True)
    if settings.notify_on != "never" and configured(settings):
        send(settings, failure_message(report))
    return report


# -- the front ends ----------------------------------------------------------------------------------------------

#: The root task made on Luigi's command line (``luigi --module``), reported on at exit.
_AT_EXIT: list[luigi.Task] = []
#: Invocations of this process reported already (a schedule's fire running a `luigi` command line in-process
#: reports it itself: the report at exit is not given twice).
_REPORTED: set[str] = set()


def watch_failures(task: luigi.Task, base: type[luigi.Task]) -> None:
    """Where a step is made (both front ends): record failures of ``base`` and its subclasses, tracebacks to the
    invocation's log; on ``luigi --module`` (which has no caller after ``luigi.build``), report the invocation's
    failures and draw its picture when its main process exits."""
    from mltf_flow.input_check import on_luigi_command_line

    watch(base)
    send_tracebacks_to_file()
    if not _AT_EXIT and on_luigi_command_line():
        _AT_EXIT.append(task)  # the first task made on Luigi's command line is the root
        # Imported now, not at exit: its import registers a hook with threading, which the interpreter refuses
        # once it is shutting down, and the report's MLflow client imports it (a few ms, stdlib only).
        import concurrent.futures.thread  # noqa: F401

        atexit.register(_report_at_exit)


def _report_at_exit() -> None:
    import multiprocessing

    from mltf_flow.config import load_settings
    from mltf_flow.invocation import invocation_id, parent_made

    if multiprocessing.parent_process() is not None or invocation_id() in _REPORTED:
        return
    try:
        settings = load_settings()
        failures = load(settings.work_dir, invocation_id())
        if parent_made(settings.work_dir, invocation_id()):  # else all was cached: nothing to draw, no mlflow
            from mltf_flow.pipeline_svg import attach_picture_from_store

            attach_picture_from_store(settings, invocation_id(), _AT_EXIT[:1], {f.step for f in failures})
        if not failures:
            return  # a success, or an input error Luigi never ran into: nothing to report (nor to know)
        pipelines = ", ".join(sorted({f.pipeline for f in failures if f.pipeline})) or "?"
        report_outcome(settings, invocation_id=invocation_id(), succeeded=False,
                       title=f"pipeline {pipelines}, luigi task {_AT_EXIT[0].task_family}")
    except Exception as exc:  # at exit nothing may escape: say it and go
        print(f"mltf_flow: could not report the failures: {strip_credentials(str(exc))}", file=sys.stderr)


__all__ = ["ARTIFACT_NAME", "FailureGroup", "FailureReport", "Occurrence", "build_report", "cause_of",
           "failure_message", "group_failures", "keep", "render_markdown", "render_text", "report_outcome",
           "stderr_excerpt", "success_message", "watch_failures"]
