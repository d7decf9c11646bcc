"""`mltf-flow ui` as a user runs it in the background (`mltf-flow ui > ui.log &`, later `kill PID`): it says where
it serves and where the runs are, even into a file, and stopping its PID stops the server it started, so the
port is free again (before, `mlflow ui` and its uvicorn outlived it and kept the port)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import psutil

from tests.helpers import BIN, REPO, free_port, wait_until


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_ui_says_where_and_its_pid_stops_the_server(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "ui.log"
    env = {**os.environ, "MLTF_FLOW_WORK_DIR": str(tmp_path / "work"), "PYTHONPATH": str(REPO)}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "mltf-flow"), "ui", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    server: list[psutil.Process] = []
    try:
        wait_until(lambda: _answers(port), 120, f"the MLflow UI answering on port {port}")
        server = psutil.Process(proc.pid).children(recursive=True)
        assert server, "the UI server runs as a child of mltf-flow ui"
        text = log.read_text()  # written before the server's own lines, though stdout is a file
        assert f"MLflow UI on http://127.0.0.1:{port}" in text and "'Model training'" in text, text

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        wait_until(lambda: _port_free(port), 60, f"port {port} to be free after `kill {proc.pid}`")
        wait_until(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in server), 60,
                   "the server's processes to end")
    finally:
        for child in [proc.pid, *(p.pid for p in server)]:  # a failing test leaves nothing serving
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        proc.wait(timeout=30)
