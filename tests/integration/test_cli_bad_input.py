"""Every command-line error a user can make ends the same way: exit code != 0, one message that names what was
wrong, and no traceback. The installed ``mltf-flow`` (and ``luigi --module pipelines``) in subprocesses, as a
user types them; nothing runs a pipeline."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.helpers import BIN, EXAMPLE, REPO, MlflowServer, run_cmd, run_luigi, run_mltf

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


def test_bad_invocations_say_what_without_a_traceback(busy_port: int, tmp_path: Path,
                                                     mlflow_server: MlflowServer) -> None:
    # All at once (each is a process start, mostly imports): the table costs the suite seconds, not ~40.
    file = tmp_path / "a-file"
    file.write_text("not a directory\n")
    env = {"PYTHONPATH": str(REPO)}
    cases = [([_fill(a, busy_port, file) for a in args], _fill(names, busy_port, file), env) for args, names in BAD]
    # The session's server: a new sqlite store would cost its migrations (seconds) for one error message.
    cases.append((["job", "0123456789abcdef0123456789abcdef"], "no MLflow run '0123456789abcdef0123456789abcdef'",
                  {**env, "MLTF_FLOW_TRACKING_URI": mlflow_server.uri}))
    with ThreadPoolExecutor(max_workers=4) as pool:
        # A bounded wait: `mltf-flow ui` on a taken port used to hang instead of failing.
        results = list(pool.map(lambda case: run_cmd([str(BIN / "mltf-flow"), *case[0]], env=case[2], timeout=120),
                                cases))
    wrong = [
        f"mltf-flow {' '.join(args)}: exit code {result.returncode}, expected a message naming {names!r}:\n"
        f"{result.output[-2000:]}"
        for (args, names, _), result in zip(cases, results, strict=True)
        if result.returncode == 0 or names not in result.output or "Traceback" in result.output
    ]
    assert not wrong, "\n\n".join(wrong)


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


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    # `mltf-flow profiles | grep -q local`: grep exits at its first match and the pipe is gone. Here the pipe's
    # reading end is closed before the command starts, so its first write meets the closed pipe every time.
    import os
    import subprocess

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([str(BIN / "mltf-flow"), "profiles"], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == "", proc.stderr
