"""The failure report from real exceptions of real tasks: records (redacted, from forked processes too), grouping
by cause, the console/markdown/JSON renderings, Luigi's tracebacks moved to the invocation's log, and a report
kept on a parent run made for an invocation that failed before it had one (a real sqlite store)."""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import uuid
from pathlib import Path

import pytest

from mltf_flow.config import load_settings
from mltf_flow.errors import DatasetNotFound, StepFailed, StepTimedOut
from mltf_flow.failure_report import RunFacts, build_report, group_failures, keep, render_markdown, render_text
from mltf_flow.failures import Failure, from_exception, load, record
from mltf_flow.invocation import invocation_id
from mltf_flow.luigi_log import LUIGI_LOGGER, TracebacksToFile, traceback_log
from mltf_flow.pipeline import PipelineStep
from mltf_flow.staging.step import StageStep
from mltf_flow.tags import TAG_SLURM_REASON, TAG_SLURM_STATE

FLAKY = Path(__file__).resolve().parents[1] / "integration" / "projects" / "flaky"
SERVER = "http://127.0.0.1:5000"


def _step(**overrides: str) -> PipelineStep:
    return PipelineStep(project_dir=str(FLAKY), run_step="main", overrides=overrides)


def _failed(run_id: str, code: int = 3, stderr: tuple[str, ...] = ("boom: calibration file missing",)) -> StepFailed:
    return StepFailed(step="main", run_id=run_id, exit_code=code, stderr_tail=["Traceback (most recent call last):",
                      "  File step.py, line 3", *stderr, ""], log_path=f"/logs/main-{run_id}.log")


def _facts(*run_ids: str, state: str | None = None) -> dict[str, RunFacts]:
    tags = {TAG_SLURM_STATE: state, TAG_SLURM_REASON: "TimeLimit"} if state else {}
    return {r: RunFacts(f"{SERVER}/#/experiments/1/runs/{r}", "flaky", tags) for r in run_ids}


def test_failures_group_by_step_cause_slurm_state_and_stderr(tmp_path: Path) -> None:
    task = _step()
    a, b, c, d, e = (uuid.uuid4().hex for _ in range(5))
    timed_out = StepTimedOut(step="main", run_id=d, exit_code=-15, stderr_tail=["epoch 7"], log_path="/logs/t.log",
                             timeout="1h", source="profile 'local'")
    failures = [from_exception(task, exc) for exc in (
        _failed(a), _failed(b),                      # the same cause twice: one group, two runs
        _failed(c, code=1, stderr=("RuntimeError: kaboom",)), timed_out,
        _failed(e),                                  # as a and b, but SLURM ended its job: a cause of its own
        DatasetNotFound("dataset file:///nope: /nope does not exist"),
    )]
    tracebacks = tmp_path / "tracebacks.log"
    groups = group_failures(failures, {**_facts(a, b, c, d), **_facts(e, state="TIMEOUT")}, tmp_path, tracebacks)

    assert [(g.cause, len(g.occurrences)) for g in groups] == [
        ("exit code 3", 2), ("exit code 1", 1), ("StepTimedOut (exit code -15)", 1), ("exit code 3", 1),
        ("DatasetNotFound", 1)]
    same = groups[0]
    assert same.step == "main" and same.pipeline == "flaky"
    assert same.stderr[-1] == "boom: calibration file missing"  # the last lines: where the error is said
    assert [o.run for o in same.occurrences] == [f"{SERVER}/#/experiments/1/runs/{r}" for r in (a, b)]
    assert [o.log_path for o in same.occurrences] == [f"/logs/main-{a}.log", f"/logs/main-{b}.log"]
    assert (groups[3].slurm_state, groups[3].slurm_reason) == ("TIMEOUT", "TimeLimit")
    assert groups[2].headline.startswith("step 'main' timed out after 1h")
    no_run = groups[4].occurrences[0]
    assert no_run.run_id is None and "no MLflow run" in no_run.run and no_run.log_path == str(tracebacks)


def test_a_task_s_secret_values_never_reach_its_record(tmp_path: Path) -> None:
    canary, password = f"CANARY-{uuid.uuid4().hex[:8]}", f"CANARYPW{uuid.uuid4().hex[:8]}"
    task = _step(api_token=canary, mode="exit3")
    error = StepFailed(step="main", run_id=uuid.uuid4().hex, exit_code=3, log_path="/l.log",
                       stderr_tail=[f"token was {canary}", f"db postgresql://u:{password}@h/db"])
    path = record(task, from_exception(task, error))
    assert path is not None and path.is_relative_to(Path(os.environ["MLTF_FLOW_WORK_DIR"]))
    text = path.read_text()
    assert canary not in text and password not in text
    assert "token was ***" in text and "postgresql://u:***@h/db" in text


def _record_in_child(step: str) -> None:
    task = StageStep(dataset=f"/data/{step}", pipeline="flaky")
    record(task, from_exception(task, DatasetNotFound(f"{step} is gone")))


def test_failures_recorded_by_forked_processes_are_all_read() -> None:
    invocation = invocation_id()  # fixed before the fork, as Luigi's task processes inherit it
    fork = multiprocessing.get_context("fork")
    children = [fork.Process(target=_record_in_child, args=(f"d{i}",)) for i in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    found = load(load_settings().work_dir, invocation)
    assert sorted(f.message for f in found) == ["d0 is gone", "d1 is gone", "d2 is gone"]
    assert {(f.step, f.pipeline, f.error) for f in found} == {("stage", "flaky", "DatasetNotFound")}
    assert len({f.pid for f in found}) == 3


def test_renderings_say_cause_stderr_run_and_log(tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    failures = [from_exception(_step(), _failed(run_id))]
    settings = load_settings(tracking_uri=SERVER)
    report = build_report(settings, failures, invocation_id="inv1", title="schedule nightly fire 02:00",
                          context={"schedule": "nightly", "url": "https://u:CANARYpw@h/x"})
    report = report.__class__(**{**report.__dict__, "groups": group_failures(
        failures, _facts(run_id), settings.work_dir, Path(report.traceback_log))})
    text = render_text(report)
    assert "schedule nightly fire 02:00: FAILED, 1 failure(s), 1 cause(s)" in text
    assert "[1] step 'main' (pipeline flaky): exit code 3" in text
    assert "    stderr (last lines):\n      Traceback (most recent call last):" in text
    assert f"run: {SERVER}/#/experiments/1/runs/{run_id}" in text and f"log: /logs/main-{run_id}.log" in text
    assert "schedule: nightly" in text and "CANARYpw" not in text
    assert f"Log with the tracebacks: {traceback_log(settings.work_dir, 'inv1')}" in text
    markdown = render_markdown(report)
    assert markdown.startswith("# schedule nightly fire 02:00: FAILED") and "## [1] step 'main'" in markdown
    data = json.loads(json.dumps(report.as_dict()))
    assert data["failures"] == 1 and data["groups"][0]["exit_code"] == 3
    assert data["groups"][0]["occurrences"][0]["run_id"] == run_id


def test_on_a_sqlite_store_the_run_is_found_with_mltf_flow_ui(tmp_path: Path) -> None:
    run_id = uuid.uuid4().hex
    facts = {run_id: RunFacts(None, "flaky", {})}
    (group,) = group_failures([from_exception(_step(), _failed(run_id))], facts, tmp_path, tmp_path / "t.log")
    assert group.occurrences[0].run == f"MLflow run {run_id} in experiment 'flaky': see it with `mltf-flow ui`"


def test_luigi_s_traceback_goes_to_the_invocation_log_and_the_console_keeps_one_line() -> None:
    logger = logging.getLogger(LUIGI_LOGGER)
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    moved = TracebacksToFile()
    logger.addFilter(moved)
    # A luigi.build earlier in this process (another test file) may have configured Luigi's logger away:
    # this test is about the filter, so it logs through a logger that is on.
    was = logger.disabled, logger.level
    logger.disabled, logger.level = False, logging.INFO
    try:
        try:
            raise StepFailed(step="main", run_id="r1", exit_code=3, stderr_tail=["boom"], log_path="/l.log")
        except StepFailed:
            logger.exception("[pid %s] Worker %s failed    %s", 42, "W", "Task(url=http://u:CANARYpw@h/x)")
    finally:
        logger.removeFilter(moved)
        logger.removeHandler(handler)
        logger.disabled, logger.level = was
    path = traceback_log(load_settings().work_dir, invocation_id())
    shown = console.getvalue()
    assert shown == f"ERROR: [pid 42] Worker W failed    Task(url=http://u:***@h/x) (StepFailed; traceback in {path})\n"
    logged = path.read_text()
    assert "Traceback (most recent call last):" in logged and "StepFailed: step 'main' failed" in logged
    assert "CANARYpw" not in logged


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("report-store")


def test_a_failure_before_any_run_gets_a_failed_parent_run_holding_the_report(store: Path) -> None:
    from mltf_flow.tracking import Tracker

    settings = load_settings(work_dir=str(store), tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    invocation = uuid.uuid4().hex
    failure = Failure(step="stage", pipeline="report", task="StageStep(dataset=/nope)", error="DatasetNotFound",
                      message="dataset /nope does not exist", when=1.0)
    report = keep(settings, build_report(settings, [failure], invocation_id=invocation, title="pipeline report"),
                  ["report"])
    tracker = Tracker(settings)
    (parent,) = tracker.invocation_parents(invocation)
    assert tracker.run_status(parent) == "FAILED"
    names = sorted(a.path for a in tracker.client.list_artifacts(parent, "mltf"))
    assert names == ["mltf/failure_report.json", "mltf/failure_report.md"]
    assert report.kept_at[0].startswith(f"MLflow run {parent} (`mltf-flow ui`)")
    local = tracker.artifact_local_path(parent, "mltf/failure_report.json", store / "got")
    assert json.loads(local.read_text())["groups"][0]["cause"] == "DatasetNotFound"
    # A second report of the same invocation goes to the same parent, which stays as it was.
    again = keep(settings, report, ["report"])
    assert tracker.invocation_parents(invocation) == [parent] and tracker.run_status(parent) == "FAILED"
    assert again.kept_at[0].startswith(f"MLflow run {parent} ")


def test_a_tracking_server_that_does_not_answer_leaves_the_report_without_links(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = load_settings(tracking_uri=f"http://alice:CANARYpw@127.0.0.1:{port}")
    run_id = uuid.uuid4().hex
    report = build_report(settings, [from_exception(_step(), _failed(run_id))], invocation_id="inv2", title="t")
    report = keep(settings, report, ["flaky"])
    (note,) = report.notes
    assert note.startswith(f"the tracking server http://alice:***@127.0.0.1:{port} does not answer")
    assert report.groups[0].occurrences[0].run == f"MLflow run {run_id}"
    assert report.kept_at == (str(settings.work_dir / "invocations" / "inv2" / "failure_report.md"),)
    assert "CANARYpw" not in render_text(report)


def test_the_report_goes_to_the_parent_the_invocation_has(store: Path) -> None:
    """A schedule's fire opens its parent run itself; an input error then fails it with no step failure."""
    from mltf_flow.tracking import Tracker

    settings = load_settings(work_dir=str(store), tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    invocation = uuid.uuid4().hex
    tracker = Tracker(settings)
    parent = tracker.parent_run(tracker.ensure_experiment("fires"), "fires", invocation)
    report = keep(settings, build_report(settings, [], invocation_id=invocation, title="schedule nightly fire",
                                         context={"error": "no such step"}), [])
    assert report.kept_at[0].startswith(f"MLflow run {parent} ")
    assert sorted(a.path for a in tracker.client.list_artifacts(parent, "mltf")) == [
        "mltf/failure_report.json", "mltf/failure_report.md"]
    assert "No step recorded a failure" in render_text(report) and "error: no such step" in render_text(report)
