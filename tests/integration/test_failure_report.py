"""The failure report of a real invocation and its notifiers, against a real SMTP server (aiosmtpd) and a real
HTTP receiver: a failing `mltf-flow run` with two causes is reported once, grouped, on the console (without
Luigi's traceback wall), as artifacts of its parent run, by e-mail and by webhook, with no secret in any of them;
notifiers that cannot be reached warn once each and leave the exit code alone; successes are sent only when
asked for."""

from __future__ import annotations

import json
import os
import socket
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.config import load_settings
from mltf_flow.failure_report import report_outcome
from mltf_flow.notify import Message, send
from mltf_flow.notify.webhook import post_json
from tests.helpers import MlflowServer, git_project, run_mltf
from tests.integration.mlflow_queries import client
from tests.receivers import SmtpServer, WebhookReceiver

FLAKY = Path(__file__).parent / "projects" / "flaky"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _notify_env(smtp_url: str, webhook: str, password: str) -> dict[str, str]:
    return {"MLTF_FLOW_NOTIFY_EMAIL": "ops@example.org, oncall@example.org", "MLTF_FLOW_SMTP_URL": smtp_url,
            "MLTF_FLOW_SMTP_PASSWORD": password, "MLTF_FLOW_NOTIFY_WEBHOOK": webhook,
            "MLTF_FLOW_NOTIFY_FROM": "mltf@example.org"}


def _two_step_project(tmp_path: Path) -> tuple[Path, str]:
    """The flaky project with two independent steps under a third: one exits 3, one ends its own run FAILED."""
    project = git_project(FLAKY, tmp_path / "flaky")
    pipeline = f"report_{uuid.uuid4().hex[:8]}"  # its own experiment on the session's server
    (project / "pipeline.yaml").write_text(
        f"name: {pipeline}\nsteps:\n  exits: {{entry_point: main}}\n  fails_itself: {{entry_point: main}}\n"
        "  both: {entry_point: main, requires: [exits, fails_itself]}\n")
    return project, pipeline


def test_a_failing_run_is_reported_once_everywhere_grouped_and_without_secrets(
    tmp_path: Path, mlflow_server: MlflowServer, smtp_server: SmtpServer, webhook_receiver: WebhookReceiver,
) -> None:
    token, password, hook_token = (f"CANARY{i}-{uuid.uuid4().hex[:10]}" for i in range(3))
    project, pipeline = _two_step_project(tmp_path)
    env = {"MLTF_FLOW_TRACKING_URI": mlflow_server.uri,
           **_notify_env(smtp_server.url("bot"), f"{webhook_receiver.base}/hooks/{hook_token}", password)}
    result = run_mltf("run", str(project), "--step", "both", "-P", "exits.mode=exit3", "-P",
                      "fails_itself.mode=selffail", "-P", f"exits.api_token={token}", "-P",
                      f"fails_itself.api_token={token}", env=env)
    out = result.output
    assert result.returncode == 30, out[-4000:]

    # The console: the grouped report instead of Luigi's traceback wall, which is in the invocation's log.
    assert "Traceback" not in out, out[-4000:]
    assert f"pipeline {pipeline}, step both: FAILED, 2 failure(s), 2 cause(s)" in out
    assert f"step 'exits' (pipeline {pipeline}): exit code 3" in out
    assert f"step 'fails_itself' (pipeline {pipeline}): StepError" in out
    assert "      boom: calibration file missing" in out
    assert f"run: {mlflow_server.uri}/#/experiments/" in out
    (kept,) = [json.loads(p.read_text()) for p in Path(os.environ["MLTF_FLOW_WORK_DIR"]).glob(
        "invocations/*/failure_report.json")]
    tracebacks = Path(kept["traceback_log"])
    assert f"(StepFailed; traceback in {tracebacks})" in out and f"(StepError; traceback in {tracebacks})" in out
    logged = tracebacks.read_text()
    assert logged.count("Traceback (most recent call last):") == 2 and "mltf_flow.errors.StepFailed" in logged

    # Grouped: each cause with its run link and log path.
    groups = {g["step"]: g for g in kept["groups"]}
    assert set(groups) == {"exits", "fails_itself"} and kept["failures"] == 2
    assert groups["exits"]["cause"] == "exit code 3" and groups["exits"]["stderr"] == ["boom: calibration file missing"]
    assert groups["fails_itself"]["cause"] == "StepError"
    for group in groups.values():
        (occurrence,) = group["occurrences"]
        assert occurrence["run"] == (f"{mlflow_server.uri}/#/experiments/{_experiment_id(mlflow_server, pipeline)}"
                                     f"/runs/{occurrence['run_id']}?workflowType=machine_learning")
        assert occurrence["log_path"]

    # The artifacts on the invocation's parent run.
    artifacts = _parent_artifacts(mlflow_server, pipeline, kept["invocation_id"], tmp_path / "artifacts")
    assert set(artifacts) == {"failure_report.md", "failure_report.json", "pipeline.svg"}
    # The picture of the invocation (mltf_flow.pipeline_svg): every step with its outcome.
    svg = ET.fromstring(artifacts["pipeline.svg"])
    states = {g.get("data-step"): g.get("data-state") for g in svg.iter("{http://www.w3.org/2000/svg}g")}
    assert states == {"exits": "failed", "fails_itself": "failed", "both": "not run"}
    markdown = artifacts["failure_report.md"]
    assert "## [" in markdown and "boom: calibration file missing" in markdown

    # Exactly one e-mail and one webhook POST, each with the grouped report.
    (mail,) = smtp_server.mails
    assert sorted(mail.rcpt_tos) == ["oncall@example.org", "ops@example.org"] and mail.mail_from == "mltf@example.org"
    assert mail.message["Subject"] == f"[mltf-flow] pipeline {pipeline}, step both: FAILED, 2 failure(s), 2 cause(s)"
    assert "exit code 3" in mail.body and "StepError" in mail.body and "boom: calibration file missing" in mail.body
    assert smtp_server.logins == [("bot", password)]  # the password reached the server, and only there
    (post,) = webhook_receiver.posts
    assert post.path == f"/hooks/{hook_token}" and post.headers["Content-Type"] == "application/json"
    assert post.json["event"] == "failure" and len(post.json["report"]["groups"]) == 2
    assert "exit code 3" in post.json["text"]

    # No secret in any of them (tests/integration/test_secrets.py's PLACES: the failure report).
    places = {"console": out, "e-mail": mail.raw.decode(), "webhook body": post.body.decode(),
              "tracebacks.log": logged, **artifacts}
    hits = [(name, c) for name, text in places.items() for c in (token, password, hook_token) if c in text]
    assert hits == []


def _experiment_id(server: MlflowServer, experiment: str) -> str:
    return str(client(server.uri).get_experiment_by_name(experiment).experiment_id)


def _parent_artifacts(server: MlflowServer, experiment: str, invocation: str, dest: Path) -> dict[str, str]:
    mlflow = client(server.uri)
    (parent,) = mlflow.search_runs([_experiment_id(server, experiment)],
                                   f"tags.`mltf.invocation_id` = '{invocation}' and tags.`mltf.role` = 'pipeline'")
    assert parent.info.status == "FAILED"
    got: dict[str, str] = {}
    for info in mlflow.list_artifacts(parent.info.run_id, "mltf"):
        path = mlflow.download_artifacts(parent.info.run_id, info.path, str(dest))
        got[Path(info.path).name] = Path(path).read_text()
    return got


def test_notifiers_that_cannot_be_reached_warn_once_and_keep_the_exit_code(tmp_path: Path) -> None:
    token, password, hook_token = (f"CANARY{i}-{uuid.uuid4().hex[:10]}" for i in range(3))
    project = git_project(FLAKY, tmp_path / "flaky")
    smtp_port, hook_port = _closed_port(), _closed_port()
    env = _notify_env(f"smtp://bot@127.0.0.1:{smtp_port}", f"http://127.0.0.1:{hook_port}/hooks/{hook_token}",
                      password)
    result = run_mltf("run", str(project), "--step", "main", "-P", "mode=exit3", "-P", f"api_token={token}", env=env)
    out = result.output
    assert result.returncode == 30, out[-4000:]  # the step's failure, not the mail server's
    assert "[1] step 'main' (pipeline flaky): exit code 3" in out
    assert out.count("could not send the report") == 2, out[-3000:]
    assert (f"could not send the report by e-mail to 2 address(es) via smtp://bot@127.0.0.1:{smtp_port}: "
            "ConnectionRefusedError") in out
    assert f"could not send the report to webhook http://127.0.0.1:{hook_port}/***: URLError" in out
    assert not [c for c in (token, password, hook_token) if c in out]


# -- the notifiers alone -------------------------------------------------------------------------------------------


def _settings(smtp_server: SmtpServer, webhook_receiver: WebhookReceiver, **more: Any) -> Any:
    return load_settings(notify_email=("ops@example.org",), smtp_url=smtp_server.url(),
                         notify_webhook=f"{webhook_receiver.base}/hook", **more)


def test_a_success_is_sent_only_when_notify_on_is_always(smtp_server: SmtpServer,
                                                         webhook_receiver: WebhookReceiver) -> None:
    outcome = {"invocation_id": "inv-ok", "succeeded": True, "title": "schedule nightly fire 02:00",
               "context": {"schedule": "nightly", "slot": "2026-12-06T02:00"}}
    assert report_outcome(_settings(smtp_server, webhook_receiver), **outcome) is None  # type: ignore[arg-type]
    assert smtp_server.mails == [] and webhook_receiver.posts == []  # off by default
    assert report_outcome(_settings(smtp_server, webhook_receiver, notify_on="always"), **outcome) is None  # type: ignore[arg-type]
    (mail,) = smtp_server.mails
    assert mail.message["Subject"] == "[mltf-flow] schedule nightly fire 02:00: succeeded"
    assert "slot: 2026-12-06T02:00" in mail.body
    (post,) = webhook_receiver.posts
    assert post.json["event"] == "success" and post.json["context"]["schedule"] == "nightly"


def test_a_busy_webhook_receiver_is_tried_again(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.fail_next = 2  # two 503 answers, then 200
    assert post_json(f"{webhook_receiver.base}/hook", {"text": "x"}) == 200
    assert [p.json for p in webhook_receiver.posts] == [{"text": "x"}] * 3


def test_nothing_configured_sends_nothing_and_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    assert send(load_settings(), Message("s", "t", {"text": "t"})) == []
    assert not caplog.records
