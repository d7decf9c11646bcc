"""Every command-line error a user can make ends the same way: exit code != 0, one message that names what was
wrong, and no traceback. The installed ``mltf-flow`` (and ``luigi --module pipelines``) in subprocesses, as a
user types them; nothing runs a pipeline."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import EXAMPLE, REPO, MlflowServer, run_luigi, run_mltf

#: (command line, what the message must name). ``{busy_port}``: a port something listens on; ``{file}``: a file.
BAD = [
    (["ui", "--port", "{busy_port}"], "cannot serve the MLflow UI on 127.0.0.1:{busy_port}"),
    (["ui", "--port", "70000"], "--port 70000: not a TCP port"),
    (["run", "/nonexistent/project", "--step", "train"], "/nonexistent/project does not exist"),
    (["run", str(EXAMPLE), "--step", "nosuch"], "no step 'nosuch'"),
    (["run", str(EXAMPLE), "--step", "train", "--profile", "nosuch"], "no profile 'nosuch'"),
    (["run", str(EXAMPLE), "--step", "train", "-P", "epochs=abc"], "'abc' is not an integer"),
    (["run", str(EXAMPLE), "--step", "train", "-P", "stage.dataset=/nonexistent/data"], "/nonexistent/data"),
    (["render"], "render needs --profile NAME"),
    (["render", "--profile", "nosuch"], "no profile 'nosuch'"),
    (["render", "--profile", "local"], "'local' is a local profile"),
    (["render", "--backend-config", "{bad", str(EXAMPLE), "-e", "train"], "not valid JSON"),
    (["render", "--backend-config", "{}", "/nonexistent/project", "-e", "train"], "/nonexistent/project: no such"),
    (["doctor", "--profile", "nosuch"], "no profile 'nosuch'"),
    (["init", "{file}"], "is a file"),
    (["schedule", "show", "nosuch"], "no schedule 'nosuch'"),
    (["schedule", "add", "nightly", "--every", "bogus", str(EXAMPLE), "--step", "train"], "--every 'bogus'"),
]


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _fill(text: str, busy_port: int, file: Path) -> str:
    return text.replace("{busy_port}", str(busy_port)).replace("{file}", str(file))


@pytest.mark.parametrize(("args", "names"), BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_bad_invocation_says_what_without_a_traceback(args: list[str], names: str, busy_port: int,
                                                      tmp_path: Path) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a directory\n")
    result = run_mltf(*[_fill(a, busy_port, file) for a in args], env={"PYTHONPATH": str(REPO)})
    assert result.returncode != 0, result.output
    assert _fill(names, busy_port, file) in result.output, result.output
    assert "Traceback" not in result.output, result.output


def test_job_with_an_unknown_run_id(mlflow_server: MlflowServer) -> None:
    # The session's server: a new sqlite store would cost its migrations (seconds) for one error message.
    result = run_mltf("job", "0123456789abcdef0123456789abcdef", env={"MLTF_FLOW_TRACKING_URI": mlflow_server.uri})
    assert result.returncode != 0, result.output
    assert "no MLflow run '0123456789abcdef0123456789abcdef'" in result.stderr, result.output
    assert "Traceback" not in result.output, result.output


def test_unknown_profile_file_is_named(tmp_path: Path) -> None:
    result = run_mltf("profiles", env={"MLTF_FLOW_PROFILE_FILES": str(tmp_path / "missing.yaml")})
    assert result.returncode != 0, result.output
    assert f"{tmp_path / 'missing.yaml'}, which does not exist" in result.stderr
    assert "Traceback" not in result.output


def test_luigi_with_an_unknown_profile(tmp_path: Path) -> None:
    result = run_luigi("--module", "pipelines", "Train", "--profile", "nosuch", env={"PYTHONPATH": str(REPO)})
    assert result.returncode != 0, result.output
    assert "no profile 'nosuch'" in result.output
    assert "Traceback" not in result.output
