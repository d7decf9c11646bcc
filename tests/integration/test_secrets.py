"""Secrets nowhere (issue 14, item 2): a real `mltf-flow run` on the local profile with a secret-named parameter
and a URL with a password. While the step runs (it waits at a fifo the test controls), no process's argv
holds either; afterwards neither is in the MLflow store, the artifacts, the work dir, the console output or
files the run created in its temporary directories; the entry point itself received both (it recorded their
hashes). A failing run's failure report (console, the parent run's artifacts, the e-mail a real SMTP server
received, the webhook POST) holds none either. Also `mltf-flow config` and `mltf-flow render --backend-config`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BIN, REPO, Luigid, git_project, run_mltf
from tests.integration.mlflow_queries import runs, sqlite_uri
from tests.receivers import SmtpServer, WebhookReceiver

SECRETS = Path(__file__).parent / "projects" / "secrets"
#: Where the canary secrets are looked for (tests below; `mltf-flow render` of a backend job script included).
PLACES = (
    "argv of every process (ps) while the step runs",
    "the MLflow store (sqlite bytes) and run params",
    "the artifacts",
    "the step logs and work dir",
    "the console output",
    "the run's TMPDIR",
    "/tmp (files written while it ran)",
    "error lines of a failing step",
    "the failure report: console, parent run artifacts, e-mail (SMTP server), webhook POST",
    "Luigi's tracebacks in the invocation's log",
    "`mltf-flow config`",
    "a rendered SLURM backend job script",
    "luigid HTTP API: task lists, search, workers, resources",
    "luigid HTTP API: dependency graphs and task parameters",
    "luigid HTTP API: task error messages",
    "luigid state file and logs",
)
_LUIGID: dict[str, Luigid] = {}


@pytest.fixture
def luigid_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real `luigid` with its state file and logs under ``tmp_path``/luigid."""
    server = Luigid(tmp_path / "luigid")
    _LUIGID[server.base] = server
    try:
        yield server.base, tmp_path / "luigid"
    finally:
        _stop_luigid(server.base)


def _stop_luigid(base: str) -> None:
    """SIGTERM: luigid writes its state file on the way out."""
    server = _LUIGID.pop(base, None)
    if server is not None:
        server.stop()


def _canaries() -> tuple[str, str, str]:
    token = f"CANARY-{uuid.uuid4().hex[:12]}"
    password = f"CANARY2{uuid.uuid4().hex[:12]}"
    return token, password, f"postgresql://u:{password}@h/db"


def _argv_hits(canaries: tuple[str, ...]) -> list[str]:
    hits = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        hits += [f"pid {proc.name}: {argv[:300]!r}" for c in canaries if c.encode() in argv]
    return hits


def _files_with(roots: list[Path], canaries: tuple[str, ...], since: float | None = None) -> list[str]:
    found = []
    for root in roots:
        # os.walk, not rglob: a test running beside this one removes its temp dirs mid-walk, and os.walk skips
        # a directory that vanished where rglob raises.
        paths = [root] if root.is_file() else [Path(d, f) for d, _, files in os.walk(root) for f in files]
        for path in paths:
            try:
                if not path.is_file() or path.is_symlink() or path.stat().st_size > 50_000_000:
                    continue
                if since is not None and path.stat().st_mtime < since:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path} holds {c}" for c in canaries if c.encode() in data]
    return found


def _start(project: Path, tmp_path: Path, *params: str,
           env_more: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], Path]:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    console = tmp_path / "console.txt"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp), **(env_more or {})}
    args = [str(BIN / "mltf-flow"), "run", str(project), "--step", "main", "--log-level", "INFO"]
    for param in params:
        args += ["-P", param]
    with open(console, "wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, console


def test_secret_values_reach_the_step_by_environment_and_are_stored_nowhere(tmp_path: Path) -> None:
    token, password, url = canaries = _canaries()
    project = git_project(SECRETS, tmp_path / "secrets")
    ready, gate, out = tmp_path / "ready", tmp_path / "gate", tmp_path / "got.txt"
    os.mkfifo(ready)
    os.mkfifo(gate)
    started = time.time()
    proc, console = _start(project, tmp_path, f"api_token={token}", f"db_url={url}", f"ready={ready}",
                           f"gate={gate}", f"out={out}")
    opened: list[str] = []
    reader = threading.Thread(target=lambda: opened.append(ready.read_text()), daemon=True)
    reader.start()
    while reader.is_alive() and proc.poll() is None:
        reader.join(timeout=1.0)
    if reader.is_alive():  # the run ended before its step reached the gate
        os.close(os.open(ready, os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError(f"the step never reached its gate:\n{console.read_text()[-4000:]}")
    # The step is running and blocked at its gate: every process's argv, ours and everyone's.
    in_argv = _argv_hits((token, password))
    gate.write_text("go\n")
    assert proc.wait(timeout=300) == 0, console.read_text()[-4000:]
    assert not in_argv, in_argv

    # The entry point got the real values.
    sha = [hashlib.sha256(v.encode()).hexdigest() for v in (token, url)]
    assert out.read_text().split() == sha

    work = Path(os.environ["MLTF_FLOW_WORK_DIR"])
    (run,) = [r for r in runs(sqlite_uri(str(work)), "secrets") if r.data.tags.get("mltf.role") == "step"]
    assert run.data.params["api_token"] == "***"
    assert run.data.params["db_url"] == "postgresql://u:***@h/db"
    output = console.read_text()
    assert "got token *** and url ***" in output  # the whole URL is a secret value to the launcher
    # The MLflow store (sqlite bytes), artifacts, logs, storage: all under the work dir; the console; the
    # run's TMPDIR; and files in /tmp written while it ran.
    places = [work, console, tmp_path / "tmpdir", project]
    assert not _files_with(places, canaries)
    assert not _files_with([Path("/tmp")], (token, password), since=started)


def test_a_failing_step_shows_no_secret_in_error_lines_nor_its_failure_report(
    tmp_path: Path, smtp_server: SmtpServer, webhook_receiver: WebhookReceiver,
) -> None:
    token, _password, url = _canaries()
    smtp_password, hook_token = f"CANARY4{uuid.uuid4().hex[:12]}", f"CANARY5{uuid.uuid4().hex[:12]}"
    canaries = (token, url, smtp_password, hook_token)
    project = git_project(SECRETS, tmp_path / "secrets")
    notify = {"MLTF_FLOW_NOTIFY_EMAIL": "ops@example.org", "MLTF_FLOW_SMTP_URL": smtp_server.url("bot"),
              "MLTF_FLOW_SMTP_PASSWORD": smtp_password,
              "MLTF_FLOW_NOTIFY_WEBHOOK": f"{webhook_receiver.base}/hooks/{hook_token}"}
    proc, console = _start(project, tmp_path, f"api_token={token}", f"db_url={url}", "fail=yes", env_more=notify)
    assert proc.wait(timeout=300) == 30
    output = console.read_text()
    assert "failing with token *** url ***" in output, output[-4000:]
    assert "ERROR" in output and "mltf_flow failure report" in output
    # The report's artifacts (sqlite store: under the work dir, searched with it), the invocation's log of
    # Luigi's tracebacks (there too), the e-mail and the webhook POST that were received.
    work = Path(os.environ["MLTF_FLOW_WORK_DIR"])
    assert list(work.glob("artifacts/*/*/artifacts/mltf/failure_report.md"))
    assert list(work.glob("invocations/*/tracebacks.log"))
    (mail,) = smtp_server.mails
    (post,) = webhook_receiver.posts
    assert "exit code 4" in mail.body and "exit code 4" in post.json["text"]
    assert not [c for c in canaries for text in (mail.raw.decode(), post.body.decode()) if c in text]
    assert not _files_with([work, console], canaries)


def test_config_masks_a_tracking_password_and_the_notifiers_secrets(tmp_path: Path) -> None:
    result = run_mltf("config", env={"MLTF_FLOW_TRACKING_URI": "http://alice:CANARY3pw@127.0.0.1:5999",
                                     "MLTF_FLOW_NOTIFY_WEBHOOK": "https://hooks.example.org/services/CANARY6tok",
                                     "MLTF_FLOW_SMTP_URL": "smtps://bot@mail.example.org",
                                     "MLTF_FLOW_SMTP_PASSWORD": "CANARY7pw"})
    assert result.returncode == 0, result.output
    assert "CANARY3pw" not in result.output and "http://alice:***@127.0.0.1:5999" in result.output
    assert "notify_webhook: https://hooks.example.org/***" in result.output
    assert "smtp_url: smtps://bot@mail.example.org" in result.output
    assert "CANARY6tok" not in result.output and "CANARY7pw" not in result.output


def test_rendered_backend_job_script_holds_no_secret(tmp_path: Path) -> None:
    token, _password, url = canaries = _canaries()
    result = run_mltf("render", "--backend-config", '{"partition": "debug"}', str(SECRETS), "-e", "main",
                      "-P", f"api_token={token}", "-P", f"db_url={url}")
    assert result.returncode == 0, result.output
    assert "@@MLTF_SECRET_API_TOKEN@@" not in result.output or "command:" in result.output
    assert not any(c in result.output for c in canaries), result.output


def _luigid_answers(base: str, canaries: tuple[str, ...]) -> tuple[int, str, list[str]]:
    """Every task luigid knows, through its HTTP API (lists by status, search, details, dependency graphs,
    errors, workers, resources): how many tasks it answered about, all answers as text, and the answers that
    hold a canary."""
    from tests.helpers import luigid_api as api

    answers: list[tuple[str, Any]] = []
    tasks: dict[str, Any] = {}
    for status in ("PENDING", "RUNNING", "DONE", "FAILED", "DISABLED"):
        listed = api(base, "task_list", {"status": status, "upstream_status": "", "search": ""})
        answers.append((f"task_list {status}", listed))
        tasks.update(listed)
    answers.append(("task_search", api(base, "task_search", {"task_str": ""})))
    answers.append(("worker_list", api(base, "worker_list", {})))
    answers.append(("resource_list", api(base, "resource_list", {})))
    for task_id in tasks:
        answers.append((f"dep_graph {task_id}", api(base, "dep_graph", {"task_id": task_id, "include_done": True})))
        answers.append((f"inverse_dep_graph {task_id}",
                        api(base, "inverse_dep_graph", {"task_id": task_id, "include_done": True})))
        answers.append((f"fetch_error {task_id}", api(base, "fetch_error", {"task_id": task_id})))
    hits = [f"{what}: {json.dumps(answer)[:300]}" for what, answer in answers
            if any(c in json.dumps(answer) for c in canaries)]
    return len(tasks), json.dumps(answers), hits


def test_luigid_sees_no_secret_value(luigid_server: tuple[str, Path], tmp_path: Path) -> None:
    """A run and a failing run against a real `luigid`: its API answers (task lists, parameters, dependency
    graphs, error messages), its state file and its logs hold neither canary."""
    base, state_dir = luigid_server
    token, _password, url = canaries = _canaries()
    port = base.rsplit(":", 1)[1]
    config = tmp_path / "luigi.cfg"
    config.write_text((REPO / "configs" / "luigi.cfg").read_text().replace(
        "[core]\n", f"[core]\ndefault_scheduler_port = {port}\n", 1))
    project = git_project(SECRETS, tmp_path / "secrets")
    env = {"LUIGI_CONFIG_PATH": str(config)}
    ok = run_mltf("run", str(project), "--step", "main", "--scheduler-host", "127.0.0.1", "-P", f"api_token={token}",
                  "-P", f"db_url={url}", env=env)
    assert ok.returncode == 0, ok.output
    failed = run_mltf("run", str(project), "--step", "main", "--scheduler-host", "127.0.0.1", "-P",
                      f"api_token={token}", "-P", f"db_url={url}", "-P", "fail=yes", env=env)
    assert failed.returncode == 30, failed.output
    n_tasks, text, hits = _luigid_answers(base, canaries)
    assert n_tasks >= 2  # both runs reached luigid
    assert "step 'main' failed" in text or "exit code 4" in text  # the error message is among the answers
    assert r'\"fail\": \"yes\"' in text  # so are parameters (the overrides, JSON in JSON): a secret would show
    assert hits == []
    assert not any(c in ok.output + failed.output for c in canaries)
    assert not _files_with([Path(os.environ["MLTF_FLOW_WORK_DIR"])], canaries)
    _stop_luigid(base)
    assert (state_dir / "luigid-state.pickle").exists()  # written when luigid stops
    assert not _files_with([state_dir], canaries)
