"""The in-job wrapper against a real `mlflow server`: it writes its run over REST and never imports mlflow
(1.3 s of a job's own cost), with the credentials and TLS settings MLflow's client would use, and no secret
in the job's files. An authenticating front (Basic or Bearer, optionally over TLS with a self-signed
certificate) stands in for a site's proxy before the server: it refuses a request without the expected
``Authorization`` and forwards the rest to the real server."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from mltf_flow.backend.spec import JobSpec
from tests.helpers import REPO, MlflowServer

pytestmark = pytest.mark.server
FLAKY = REPO / "tests" / "integration" / "projects" / "flaky"
BIN = str(Path(sys.executable).parent)
SECRET = "pw-3c9d71e0"
TOKEN = "tok-77a1f0c4"


class AuthFront:
    """A reverse proxy on 127.0.0.1 that lets through only requests carrying ``authorization``."""

    def __init__(self, upstream: str, authorization: str, cert: tuple[Path, Path] | None = None) -> None:
        self.upstream = upstream
        self.authorization = authorization
        self.seen: list[tuple[str, str | None]] = []  # (method path, Authorization header)
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                auth = self.headers.get("Authorization")
                front.seen.append((f"{self.command} {self.path}", auth))
                if auth != front.authorization:
                    self.send_response(401)
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type",)}
                request = urllib.request.Request(front.upstream + self.path, data=body, method=self.command,
                                                 headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        status, data = answer.status, answer.read()
                except urllib.error.HTTPError as exc:
                    status, data = exc.code, exc.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*cert)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.uri = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA bundle)."""
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _spec(tmp_path: Path, server: MlflowServer, tracking_uri: str, command: str, fabric: Any = None) -> JobSpec:
    client = _client(server.uri)
    name = f"wrapper-rest-{tmp_path.name}"
    experiment_id = client.create_experiment(name)
    run = client.create_run(experiment_id, tags={"mltf.role": "step"})
    job_dir = tmp_path / "jobs" / run.info.run_id
    spec = JobSpec(run_id=run.info.run_id, experiment_id=experiment_id, tracking_uri=tracking_uri,
                   project_dir=str(FLAKY), command=command, display_command=command, job_dir=str(job_dir),
                   local_bin=BIN, fabric=fabric or {"kind": "none"})
    job_dir.mkdir(parents=True)
    spec.write(job_dir / "spec.json")
    return spec


def _run_wrapper(spec: JobSpec, env: dict[str, str], *python_flags: str) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MLFLOW_"))}
    full.update(env)
    with open(spec.log_path("local"), "ab") as log:
        proc = subprocess.Popen([sys.executable, *python_flags, "-m", "mltf_flow.backend.wrapper",
                                 str(Path(spec.job_dir) / "spec.json")],
                                stdout=log, stderr=subprocess.STDOUT, env=full, start_new_session=True)
    try:
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return code, spec.log_path("local").read_text()


def _imported(log: str) -> set[str]:
    """Top-level packages in ``python -X importtime``'s report (the wrapper's own imports only: the flag is
    not inherited by the command the wrapper starts)."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)", log, re.M)}


def test_a_job_against_a_server_never_imports_mlflow(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    from mltf_flow.config.fabric import FabricSettings

    # The fabric section every profile gets by default, as submit writes it into spec.json.
    spec = _spec(tmp_path, mlflow_server, mlflow_server.uri, "echo job-ran", fabric=FabricSettings())
    code, log = _run_wrapper(spec, {}, "-X", "importtime")
    assert code == 0, log
    imported = _imported(log)
    assert "mltf_flow" in imported and "json" in imported  # the report is there ...
    assert "mlflow" not in imported, sorted(imported)  # ... and mlflow is not in it
    assert "pydantic" not in imported, sorted(imported)  # the default fabric section needs no validation
    run = _client(mlflow_server.uri).get_run(spec.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time
    assert run.data.tags["mltf.complete"] == "true" and run.data.tags["mltf.exit_code"] == "0"
    assert run.data.tags["mltf.slurm.state"] == "COMPLETED" and run.data.tags["mltf.slurm.job_id"] == "local"
    # The job's log went through the server's artifact proxy.
    assert {a.path for a in _client(mlflow_server.uri).list_artifacts(spec.run_id, "mltf")} == {"mltf/slurm-local.out"}


def test_a_failing_command_over_rest_is_failed_not_complete(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    spec = _spec(tmp_path, mlflow_server, mlflow_server.uri, "echo bad >&2; exit 3")
    code, _ = _run_wrapper(spec, {})
    assert code == 3
    run = _client(mlflow_server.uri).get_run(spec.run_id)
    assert run.info.status == "FAILED" and "mltf.complete" not in run.data.tags
    assert run.data.tags["mltf.exit_code"] == "3" and "bad" in run.data.tags["mltf.error"]


@pytest.mark.parametrize("auth", ["basic+ca-bundle", "bearer+insecure-tls"])
def test_credentials_and_tls_reach_the_server_and_no_secret_the_job_files(
        tmp_path: Path, mlflow_server: MlflowServer, certificate: tuple[Path, Path], auth: str) -> None:
    if auth == "basic+ca-bundle":
        expected = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
        env = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRET,
               "MLFLOW_TRACKING_SERVER_CERT_PATH": str(certificate[0]), "MLFLOW_TRACKING_TOKEN": "not-used"}
    elif auth == "bearer+insecure-tls":
        expected, env = f"Bearer {TOKEN}", {"MLFLOW_TRACKING_TOKEN": TOKEN, "MLFLOW_TRACKING_INSECURE_TLS": "true"}
    front = AuthFront(mlflow_server.uri, expected, certificate)
    try:
        spec = _spec(tmp_path, mlflow_server, front.uri, "echo job-ran")
        code, log = _run_wrapper(spec, env)
    finally:
        front.close()
    assert code == 0, log
    calls = [call for call, _ in front.seen]
    assert any(c.startswith("POST /api/2.0/mlflow/runs/update") for c in calls), calls
    assert any(c.startswith("PUT /api/2.0/mlflow-artifacts/artifacts/") for c in calls), calls
    assert all(header == expected for _, header in front.seen)  # every call, the log's upload included
    run = _client(mlflow_server.uri).get_run(spec.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["mltf.complete"] == "true"
    for secret in (SECRET, TOKEN):
        assert secret not in log
        assert all(secret not in path.read_text(errors="replace") for path in Path(spec.job_dir).rglob("*")
                   if path.is_file())


def test_an_unauthorised_job_keeps_its_outcome_in_the_record(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    from mltf_flow.backend.record import read_record

    front = AuthFront(mlflow_server.uri, f"Bearer {TOKEN}")
    try:
        spec = _spec(tmp_path, mlflow_server, front.uri, "exit 0")
        code, log = _run_wrapper(spec, {"MLFLOW_TRACKING_TOKEN": "tok-wrong-5d1e"})
    finally:
        front.close()
    assert code == 0
    assert "answered 401" in log and "keeps its outcome" in log and "tok-wrong-5d1e" not in log
    record = read_record(spec.record_path)
    assert record is not None and (record.phase, record.status, record.tracked) == ("ended", "FINISHED", False)


def test_the_run_index_sends_credentials_written_into_the_uri(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    from mltf_flow.run_index import RestRunIndex

    _client(mlflow_server.uri).create_experiment("wrapper-rest-uri-credentials")
    expected = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    front = AuthFront(mlflow_server.uri, expected)
    try:
        index = RestRunIndex(front.uri.replace("://", f"://alice:{SECRET}@"), prefetch_limit=0)
        assert index.experiment_id("wrapper-rest-uri-credentials") is not None
        assert index.find_complete("wrapper-rest-uri-credentials", "no-such-key") is None
    finally:
        front.close()
    api = [(call, header) for call, header in front.seen if call != "GET /health"]  # the reachability probe
    assert len(api) == 2 and all(header == expected for _, header in api)
