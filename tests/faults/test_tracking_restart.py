"""The tracking server is SIGKILLed mid-training and restarted (issue 14, item 8): no metric is lost.

Our own `mlflow server` (sqlite backend, proxied artifacts, 127.0.0.1, a free port) tracks the example
pipeline. Training pauses after epoch 0's checkpoint (``MLTF_PAUSE_AT=checkpoint.saved``); the server is
killed; training resumes and its next MLflow calls find no server (MLflow's client retries them:
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7, ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` 2, about 4 minutes in
all, every method including POST); once a client has tried the dead port, the server is started again on the
same port and backend. The pipeline must finish with every epoch's metrics stored
and the train run complete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mltf_flow import phases
from tests.faults.invocations import TAG_ENV, kill_group, orphans_after, start, store_state, wait_for_marker
from tests.helpers import BIN, free_port, wait_until
from tests.integration.mlflow_queries import client, step_runs

pytestmark = pytest.mark.slow
EPOCHS = 3


def _serve(root: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(root / "server.log", "ab")  # noqa: SIM115 - the server's output, kept across restarts
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/server.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    log.close()

    def healthy() -> bool:
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_until(healthy, 120, "mlflow server /health")
    return proc


def _kill(server: subprocess.Popen[bytes], port: int) -> None:
    """SIGKILL the server's process group and return once its port is free: the uvicorn worker holds the
    listening socket and, on a loaded machine, dies a moment after its parent (CI once bound the port too early)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    wait_until(lambda: _bindable(port), 30, f"port {port} to be free after the mlflow server's death")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _stand_in(port: int) -> Iterator[socket.socket]:
    """A bare listener on the dead server's port: the first client that tries to reach the server is seen
    (accepted, then reset), so the server comes back while a client is retrying, not by chance."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(180)
        yield listener


def test_server_killed_and_restarted_mid_training_loses_no_metric(tmp_path: Path, jet_sample: Path) -> None:
    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _serve(root, port)
    pause_dir, tag = tmp_path / "pause", uuid.uuid4().hex
    env = {"MLTF_FLOW_WORK_DIR": str(tmp_path / "work"), "MLTF_FLOW_TRACKING_URI": uri, TAG_ENV: tag}
    # One rank: only rank 0 logs to MLflow, so a second rank meets nothing of the server's death; it would
    # only cost another torch process on this 2-core machine.
    args = [str(BIN / "luigi"), "--module", "pipelines", "Train", "--dataset", str(jet_sample), "--epochs",
            str(EPOCHS), "--world-size", "1", "--local-scheduler", "--no-lock"]
    invocation = start(args, env, tmp_path / "pipeline.log", pause_at=phases.CHECKPOINT_SAVED, pause_dir=pause_dir)
    try:
        assert wait_for_marker(invocation, phases.CHECKPOINT_SAVED, pause_dir), invocation.output()
        _kill(server, port)  # the CLI and its uvicorn worker: nothing serves the port any more
        with _stand_in(port) as listener:
            phases.release_file(phases.CHECKPOINT_SAVED, pause_dir).touch()  # training goes on, no server
            client_socket, _ = listener.accept()  # a client of the dead server tries again (an event, not a wait)
            client_socket.close()  # its request fails with a reset: it is retried
        assert invocation.proc.poll() is None, invocation.output()
        server = _serve(root, port)
        assert invocation.proc.wait(timeout=600) == 0, invocation.output()
    finally:
        kill_group(invocation)
        assert orphans_after(tag) == []
    try:
        (train,) = step_runs(uri, "train")
        assert train.info.status == "FINISHED" and train.data.tags["mltf.complete"] == "true"
        for metric in ("train_loss", "val_loss", "val_accuracy"):
            history = client(uri).get_metric_history(train.info.run_id, metric)
            assert sorted(m.step for m in history) == list(range(EPOCHS)), metric
        assert store_state(uri).running == []
    finally:
        _kill(server, port)
