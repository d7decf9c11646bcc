"""Commands that start a Dask scheduler only to get an address (`mltf-flow render`, `mltf-flow doctor`) and
clusters whose profile has no dashboard bind no fixed dashboard port: Dask reads ``dashboard_address=None``
as ":8787" (mltf_flow.clusters.dashboard). The port is held here while they run; they must still work and
must not report that 8787 is taken."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import luigi
import pytest

from tests.helpers import WriteProfiles, isolate_profiles, run_mltf

DASHBOARD_PORT = 8787
TAKEN = f"Port {DASHBOARD_PORT} is already in use"
PROFILES = """\
ci-cpu:
  extends: slurm
  partition: debug
  cores: 1
  memory: 1GB
nodash:
  kind: local
  workers: 1
  dashboard_address: null
"""


@pytest.fixture
def port_held() -> Iterator[None]:
    """127.0.0.1:8787 is taken while the test runs (by us, or already by someone else: the same for Dask)."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", DASHBOARD_PORT))
        sock.listen()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
    try:
        yield
    finally:
        sock.close()


@pytest.fixture
def profiles_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_profiles: WriteProfiles) -> Path:
    isolate_profiles(tmp_path, monkeypatch)
    return write_profiles(PROFILES)


@pytest.mark.usefixtures("port_held", "profiles_file")
def test_render_binds_no_dashboard_port() -> None:
    result = run_mltf("render", "--profile", "ci-cpu")
    assert result.returncode == 0, result.output
    assert "#SBATCH" in result.stdout
    assert TAKEN not in result.output


@pytest.mark.slurm
@pytest.mark.usefixtures("port_held", "profiles_file")
def test_doctor_binds_no_dashboard_port() -> None:
    result = run_mltf("doctor", "--profile", "ci-cpu")
    assert result.returncode == 0, result.output
    assert "ok    sbatch --test-only" in result.stdout
    assert TAKEN not in result.output


@pytest.mark.usefixtures("port_held", "profiles_file")
def test_local_cluster_without_dashboard() -> None:
    """A local profile with ``dashboard_address: null``: no port 8787, no dashboard link; its workers start
    without Dask's malloc trim threshold but with its BLAS thread limits (mltf_flow.clusters.worker_env)."""
    from mltf_flow.clusters import session
    from mltf_flow.clusters.profiles import get_profile

    def worker_env() -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}

    session.mark_main_process()
    profile = get_profile("nodash")
    try:
        client = session.client_for(profile)
        client.wait_for_workers(1, timeout=60)
        assert session.dashboard_link(profile) == ""
        # What a step records as its mltf.dask_dashboard: nothing, not a link to a server without a dashboard.
        from mltf_flow.step_run import connect

        assert connect(profile, luigi.Task()).dashboard == ""
        assert list(client.run(worker_env).values()) == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}]
        http = client.scheduler_info()["services"]["dashboard"]
        assert http != DASHBOARD_PORT
    finally:
        session.close_all()
