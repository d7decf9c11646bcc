"""Leases (mltf_flow.lease): when a RUNNING run's owner counts as gone, and renewal against a real store."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import pytest

from mltf_flow.lease import boot_id, is_stale, lease_tags, process_identity, renewer
from tests.helpers import wait_until

NOW = 1_000_000.0


def owner(**tags: str) -> dict[str, str]:
    return {**process_identity(), **tags}


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_live_owner_on_this_machine_is_alive_even_with_an_expired_lease() -> None:
    # Its renewals may be failing while the tracking server restarts: the process itself is the better witness.
    assert not is_stale(owner(**lease_tags(60, now=NOW - 3600)), None, 60, now=NOW)


def test_a_gone_owner_on_this_machine_is_stale_at_once() -> None:
    tags = owner(**lease_tags(60, now=NOW), **{"mltf.pid": str(dead_pid())})
    assert is_stale(tags, None, 60, now=NOW)


def test_a_reused_pid_is_not_its_owner() -> None:
    tags = owner(**lease_tags(60, now=NOW), **{"mltf.pid_start": "12.00"})  # this pid, another start time
    assert is_stale(tags, None, 60, now=NOW)


def test_an_owner_elsewhere_is_judged_by_its_lease_alone() -> None:
    elsewhere = {"mltf.host": "node-that-is-not-here", "mltf.pid": str(dead_pid()), "mltf.pid_start": "1.00"}
    assert not is_stale({**elsewhere, **lease_tags(60, now=NOW)}, None, 60, now=NOW + 59)
    assert is_stale({**elsewhere, **lease_tags(60, now=NOW)}, None, 60, now=NOW + 61)


def test_the_same_host_name_on_another_machine_is_judged_by_its_lease() -> None:
    assert boot_id()  # Linux
    other_boot = owner(**{"mltf.boot_id": "another-machine", "mltf.pid": str(dead_pid())}, **lease_tags(60, now=NOW))
    assert not is_stale(other_boot, None, 60, now=NOW + 30)
    assert is_stale(other_boot, None, 60, now=NOW + 90)


def test_a_run_without_a_lease_counts_from_its_start() -> None:
    elsewhere = {"mltf.host": "node-that-is-not-here", "mltf.pid": "1", "mltf.pid_start": "1.00"}
    assert not is_stale(elsewhere, int(NOW * 1000), 60, now=NOW + 59)
    assert is_stale(elsewhere, int(NOW * 1000), 60, now=NOW + 61)


def test_the_renewer_keeps_a_held_lease_ahead_and_stops_when_released(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("lease", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(exp, tags=lease_tags(3)).info.run_id
    first = float(client.get_run(run_id).data.tags["mltf.lease_expires"])
    leases = renewer(uri, 3)
    leases.hold(run_id, run_id)  # held twice (a parent run of two steps): released twice
    wait_until(lambda: float(client.get_run(run_id).data.tags["mltf.lease_expires"]) > first, 30, "a renewal")
    assert float(client.get_run(run_id).data.tags["mltf.lease_expires"]) > time.time()
    leases.release(run_id)
    assert leases.held() == [run_id]
    leases.release(run_id)
    assert leases.held() == []


def test_a_server_that_does_not_answer_is_said_once_on_the_console(caplog: pytest.LogCaptureFixture) -> None:
    # A step's own MLflow calls retry silently for minutes; the renewer tells the console at its next beat.
    from tests.helpers import free_port

    leases = renewer(f"http://127.0.0.1:{free_port()}", 3)
    with caplog.at_level(logging.WARNING, logger="mltf_flow.lease"):
        leases.hold("0123456789abcdef")
        wait_until(lambda: "does not answer" in caplog.text, 30, "the warning")
        leases.release("0123456789abcdef")
    (line,) = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
    assert "MLflow run(s) 0123456789abcdef" in line and "keeps retrying" in line
