"""A tracking server that does not answer fails fast and says so (mltf_flow.tracking_server): bounded
retries with a console line each, then one message naming the URI (credentials masked) and the fix."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from mltf_flow.errors import ConfigError, ServerUnreachable
from mltf_flow.tracking_server import check_server
from tests.helpers import MlflowServer, git_project, run_mltf

FLAKY = Path(__file__).parent / "projects" / "flaky"


@pytest.fixture
def closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A server that accepts connections and never answers (a hung or firewalled proxy)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


def test_a_closed_port_fails_after_bounded_retries_saying_each(closed_port: int,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    uri = f"http://alice:s3cret-pw@127.0.0.1:{closed_port}"
    with caplog.at_level(logging.WARNING, logger="mltf_flow.tracking_server"), \
            pytest.raises(ServerUnreachable) as info:
        check_server(uri, attempts=3, timeout_s=1.0)
    message = str(info.value)
    assert f"http://alice:***@127.0.0.1:{closed_port}" in message and "after 3 tries" in message
    assert "MLTF_FLOW_TRACKING_URI" in message and "s3cret-pw" not in message
    retries = [r.getMessage() for r in caplog.records]
    assert len(retries) == 2 and all("does not answer" in line and "s3cret" not in line for line in retries)
    assert isinstance(info.value, ConfigError)  # the front ends report it as one line, exit 2


def test_a_server_that_accepts_but_never_answers_times_out(silent_server: int) -> None:
    with pytest.raises(ServerUnreachable, match="timed out"):
        check_server(f"http://127.0.0.1:{silent_server}", attempts=2, timeout_s=0.5)


def test_a_running_server_passes(mlflow_server: MlflowServer) -> None:
    check_server(mlflow_server.uri, attempts=1, timeout_s=5.0)


def test_mltf_flow_run_against_a_closed_port_exits_2_with_one_message(tmp_path: Path, closed_port: int) -> None:
    project = git_project(FLAKY, tmp_path / "flaky")  # needs no data: only the server can be wrong
    result = run_mltf("run", str(project), "--step", "main",
                      env={"MLTF_FLOW_TRACKING_URI": f"http://127.0.0.1:{closed_port}"})
    assert result.returncode == 2, result.output
    assert f"MLflow server http://127.0.0.1:{closed_port} does not answer" in result.output
    assert "Traceback" not in result.output
