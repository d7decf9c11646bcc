"""Two invocations that need one step: claimed by cache key with leases (mltf_flow.lease), not by Luigi's lock.

A step held at a gate (FLAKY_GATE, see projects/flaky/step.py) stands for a long training; the second
invocation is started while it holds the key.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BIN, git_project, read_until, run_mltf, wait_until
from tests.integration.mlflow_queries import client, runs, sqlite_uri

FLAKY = Path(__file__).parent / "projects" / "flaky"
STEP = ["--module", "mltf_flow.pipeline", "PipelineStep", "--run-step", "main", "--overrides", "{}",
        "--local-scheduler"]


@pytest.fixture
def flaky(tmp_path: Path) -> Path:
    return git_project(FLAKY, tmp_path / "flaky")


def store() -> str:
    return sqlite_uri(os.environ["MLTF_FLOW_WORK_DIR"])


def step_runs() -> list[Any]:
    return [r for r in runs(store(), "flaky") if r.data.tags.get("mltf.role") == "step"]


def start(project: Path, *, gate: Path | None = None, prefix: list[str] | None = None, lock: bool = False,
          env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`luigi --module mltf_flow.pipeline PipelineStep --project-dir . ...` in the project (the same command
    line for every project), in its own process group."""
    full = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    if gate is not None:
        full["FLAKY_GATE"] = str(gate)
    command = [str(BIN / "luigi"), *STEP, "--project-dir", "."] + ([] if lock else ["--no-lock"])
    return subprocess.Popen([*(prefix or []), *command], cwd=project, env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen[str], seen: str = "") -> tuple[int, str]:
    out = proc.communicate(timeout=180)[0]
    return proc.returncode, seen + out


def test_a_second_invocation_waits_for_the_first_and_uses_its_run(flaky: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    first = start(flaky, gate=gate)
    seen_first = read_until(first, "AT GATE")
    try:
        second = start(flaky)
        seen_second = read_until(second, "waiting for its result")
        told_not_to_wait = run_mltf("run", str(flaky), "--step", "main", "--no-wait")
    finally:
        gate.touch()
    rc, out = finish(first, seen_first)
    assert rc == 0, out
    rc, out = finish(second, seen_second)
    assert rc == 0, out
    (run,) = step_runs()  # one run for the key: neither the second nor the third invocation launched one
    assert run.info.status == "FINISHED" and run.data.tags["mltf.complete"] == "true"
    assert f"MLflow run {run.info.run_id}" in out
    assert told_not_to_wait.returncode == 10, told_not_to_wait.output
    assert (f"already running with the same inputs in another invocation: MLflow run {run.info.run_id}"
            in told_not_to_wait.output)


def test_when_the_holder_is_stopped_the_waiting_invocation_runs_the_step(flaky: Path, tmp_path: Path) -> None:
    first = start(flaky, gate=tmp_path / "never")
    seen_first = read_until(first, "AT GATE")
    second = start(flaky)
    seen_second = read_until(second, "waiting for its result")
    os.killpg(first.pid, signal.SIGTERM)  # the user stops the first: its run ends KILLED
    rc, out = finish(first, seen_first)
    assert rc != 0, out
    rc, out = finish(second, seen_second)
    assert rc == 0, out
    killed, done = sorted(step_runs(), key=lambda r: r.info.start_time)
    assert killed.info.status == "KILLED"
    assert done.info.status == "FINISHED" and done.data.tags["mltf.complete"] == "true"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="another host name needs a UTS namespace (root and unshare)")
def test_an_owner_on_another_machine_is_judged_by_its_lease_alone(flaky: Path, tmp_path: Path) -> None:
    # The first invocation runs under another host name (its own UTS namespace): its pid means nothing here.
    lease = {"MLTF_FLOW_LEASE_SECONDS": "3"}
    other_host = ["unshare", "--uts", "--fork", "sh", "-c", 'hostname node-b-of-test && exec "$@"', "sh"]
    first = start(flaky, gate=tmp_path / "never", prefix=other_host, env=lease)
    read_until(first, "AT GATE")
    (held,) = step_runs()
    assert held.data.tags["mltf.host"] == "node-b-of-test"
    second = start(flaky, env=lease)
    seen_second = read_until(second, "waiting for its result")
    # While its owner lives, its lease is renewed past several lease lengths and the run is left alone.
    renewals: set[str] = set()

    def renewed_three_times() -> bool:
        renewals.add(client(store()).get_run(held.info.run_id).data.tags["mltf.lease_expires"])
        return len(renewals) >= 4

    wait_until(renewed_three_times, 60, "three lease renewals")
    assert client(store()).get_run(held.info.run_id).info.status == "RUNNING"
    assert second.poll() is None
    os.killpg(first.pid, signal.SIGKILL)  # the other machine dies: nothing ends its run, its lease runs out
    first.communicate(timeout=60)
    rc, out = finish(second, seen_second)
    assert rc == 0, out
    old = client(store()).get_run(held.info.run_id)
    assert old.info.status == "KILLED" and old.data.tags["mltf.error"] == "the lease of its owner expired"
    done = next(r for r in step_runs() if r.data.tags.get("mltf.complete") == "true")
    assert done.data.tags["mltf.replaces_run_ids"] == held.info.run_id


def test_the_same_command_line_in_two_projects_runs_side_by_side(tmp_path: Path) -> None:
    # Luigi's own lock keys on the command line: without mltf_flow's default (no_lock) the second exits 10.
    one = git_project(FLAKY, tmp_path / "one")
    two = git_project(FLAKY, tmp_path / "two")
    (two / "step.py").write_text((two / "step.py").read_text() + "\n# another project\n")  # another key
    gate = tmp_path / "gate"
    first = start(one, gate=gate, lock=True)
    seen = read_until(first, "AT GATE")
    try:
        rc, out = finish(start(two, lock=True))
    finally:
        gate.touch()
    assert rc == 0, out
    rc, out = finish(first, seen)
    assert rc == 0, out
    assert sorted(r.data.tags["mltf.complete"] for r in step_runs()) == ["true", "true"]
