"""Secrets nowhere (issue 14, item 2): a real `mltf-flow run` on the local profile with a secret-named parameter
and a URL with a password. While the step runs (it waits at a fifo the test controls), no process's argv
holds either; afterwards neither is in the MLflow store, the artifacts, the work dir, the console output or
files the run created in its temporary directories; the entry point itself received both (it recorded their
hashes). Also `mltf-flow config` and `mltf-flow render --backend-config`."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

from tests.helpers import BIN, REPO, git_project, run_mltf
from tests.integration.mlflow_queries import runs, sqlite_uri

SECRETS = Path(__file__).parent / "projects" / "secrets"


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
        for path in [root] if root.is_file() else root.rglob("*"):
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


def _start(project: Path, tmp_path: Path, *params: str) -> tuple[subprocess.Popen[bytes], Path]:
    tmp = tmp_path / "tmpdir"
    tmp.mkdir(exist_ok=True)
    console = tmp_path / "console.txt"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp)}
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


def test_a_failing_step_shows_no_secret_in_error_lines(tmp_path: Path) -> None:
    token, _password, url = canaries = _canaries()
    project = git_project(SECRETS, tmp_path / "secrets")
    proc, console = _start(project, tmp_path, f"api_token={token}", f"db_url={url}", "fail=yes")
    assert proc.wait(timeout=300) == 30
    output = console.read_text()
    assert "failing with token *** url ***" in output, output[-4000:]
    assert "ERROR" in output
    assert not _files_with([Path(os.environ["MLTF_FLOW_WORK_DIR"]), console], canaries)


def test_config_masks_a_tracking_password(tmp_path: Path) -> None:
    result = run_mltf("config", env={"MLTF_FLOW_TRACKING_URI": "http://alice:CANARY3pw@127.0.0.1:5999"})
    assert result.returncode == 0, result.output
    assert "CANARY3pw" not in result.output and "http://alice:***@127.0.0.1:5999" in result.output


def test_rendered_backend_job_script_holds_no_secret(tmp_path: Path) -> None:
    token, _password, url = canaries = _canaries()
    result = run_mltf("render", "--backend-config", '{"partition": "debug"}', str(SECRETS), "-e", "main",
                      "-P", f"api_token={token}", "-P", f"db_url={url}")
    assert result.returncode == 0, result.output
    assert "@@MLTF_SECRET_API_TOKEN@@" not in result.output or "command:" in result.output
    assert not any(c in result.output for c in canaries), result.output
