"""The gateway's MLflow proxy (mltf_flow.gateway.mlflow_proxy) in front of a real `mlflow server`, used by MLflow's
own client: identity stamped on runs, identity tags not forgeable, artifacts up and down through the prefix,
errors in MLflow's format, the caller's credentials kept from the upstream."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import MlflowServer, free_port, wait_until
from tests.receivers import WebhookReceiver

pytestmark = pytest.mark.server

ALICE_TOKEN = "alice-token-" + uuid.uuid4().hex
JOB_TOKEN = "job-token-" + uuid.uuid4().hex


@dataclass
class Gateway:
    """The test's gateway app: the proxy at /mlflow (the real server), /echo (a receiver that records what it
    gets) and /dead (an upstream that does not answer), served by uvicorn on 127.0.0.1."""

    url: str
    paths: list[str] = field(default_factory=list)

    @property
    def tracking_uri(self) -> str:
        return f"{self.url}/mlflow"


@pytest.fixture(scope="module")
def _echo() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="module")
def gateway(mlflow_server: MlflowServer, _echo: WebhookReceiver) -> Iterator[Gateway]:
    import uvicorn
    from fastapi import FastAPI, Request
    from starlette.types import ASGIApp, Receive, Scope, Send

    from mltf_flow.errors import AuthError
    from mltf_flow.gateway.identity import Identity
    from mltf_flow.gateway.mlflow_proxy import mlflow_proxy_router

    identities = {ALICE_TOKEN: Identity("alice"), JOB_TOKEN: Identity("bob", submission="s1")}

    # The app's seam (token checks are another module's): two fixed bearer strings.
    async def authenticate(request: Request) -> Identity:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise AuthError("no bearer token: run `mltf-flow login`")
        if token not in identities:
            raise AuthError("the bearer token is not valid")
        return identities[token]

    gateway = Gateway(url=f"http://127.0.0.1:{free_port()}")
    dead = f"http://operator:hunter2@127.0.0.1:{free_port()}"  # nothing listens there

    app = FastAPI()
    app.include_router(mlflow_proxy_router(mlflow_server.uri, authenticate), prefix="/mlflow")
    app.include_router(mlflow_proxy_router(_echo.base, authenticate), prefix="/echo")
    app.include_router(mlflow_proxy_router(dead, authenticate, timeout=5), prefix="/dead")

    def recording(inner: ASGIApp) -> ASGIApp:
        async def record(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                gateway.paths.append(scope["path"])
            await inner(scope, receive, send)

        return record

    port = int(gateway.url.rsplit(":", 1)[1])
    server = uvicorn.Server(uvicorn.Config(recording(app), host="127.0.0.1", port=port, log_level="warning",
                                           ws="none", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True, name="gateway")
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 60, "the gateway to serve")
    assert server.started, "the gateway's uvicorn stopped before serving"
    try:
        yield gateway
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive(), "the gateway's uvicorn did not stop"


@pytest.fixture
def as_user(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Callable[[str | None], None]:
    """Point MLflow's client at the gateway with a token (None: no token). No retries: an error is final."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", gateway.tracking_uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

    def use(token: str | None) -> None:
        if token is None:
            monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
        else:
            monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)

    use(ALICE_TOKEN)
    return use


def _experiment(name: str) -> str:
    from mlflow.tracking import MlflowClient

    return str(MlflowClient().create_experiment(f"{name}-{uuid.uuid4().hex[:8]}"))


FORGED = {"mlflow.user": "mallory", "mltf.user": "mallory", "mltf.gateway.submission": "forged", "keep": "me"}


def test_run_is_stamped_with_the_callers_identity(as_user: Callable[[str | None], None],
                                                  mlflow_server: MlflowServer) -> None:
    from mlflow.tracking import MlflowClient

    experiment_id = _experiment("stamp")
    run = MlflowClient().create_run(experiment_id, tags=FORGED)

    upstream = MlflowClient(mlflow_server.uri).get_run(run.info.run_id)  # read directly, not through the proxy
    assert upstream.info.user_id == "alice"
    assert upstream.data.tags["mlflow.user"] == "alice"
    assert upstream.data.tags["mltf.user"] == "alice"
    assert "mltf.gateway.submission" not in upstream.data.tags  # a user's own run: no submission
    assert upstream.data.tags["keep"] == "me"


def test_job_run_carries_its_submission(as_user: Callable[[str | None], None], mlflow_server: MlflowServer) -> None:
    import mlflow

    experiment_id = _experiment("job")
    as_user(JOB_TOKEN)
    with mlflow.start_run(experiment_id=experiment_id, tags=FORGED) as run:
        mlflow.log_param("lr", "0.1")
        mlflow.log_metric("loss", 0.5)

    upstream = mlflow.MlflowClient(mlflow_server.uri).get_run(run.info.run_id)
    assert upstream.info.user_id == "bob"
    assert upstream.data.tags["mlflow.user"] == "bob"
    assert upstream.data.tags["mltf.user"] == "bob"
    assert upstream.data.tags["mltf.gateway.submission"] == "s1"
    assert upstream.data.params == {"lr": "0.1"}
    assert upstream.data.metrics == {"loss": 0.5}
    assert upstream.info.status == "FINISHED"


def test_ajax_api_create_with_json_field_names_is_stamped(gateway: Gateway, as_user: Callable[[str | None], None],
                                                          mlflow_server: MlflowServer) -> None:
    """The UI's ajax-api and protobuf's JSON spelling (``userId``) of the field are stamped too."""
    from mlflow.tracking import MlflowClient

    experiment_id = _experiment("ajax")
    answer = httpx.post(f"{gateway.tracking_uri}/ajax-api/2.0/mlflow/runs/create",
                        json={"experiment_id": experiment_id, "userId": "mallory",
                              "tags": [{"key": "mlflow.user", "value": "mallory"}]},
                        headers={"Authorization": f"Bearer {ALICE_TOKEN}"})
    assert answer.status_code == 200, answer.text
    upstream = MlflowClient(mlflow_server.uri).get_run(answer.json()["run"]["info"]["run_id"])
    assert (upstream.info.user_id, upstream.data.tags["mlflow.user"]) == ("alice", "alice")


def test_identity_tags_cannot_be_forged(as_user: Callable[[str | None], None], mlflow_server: MlflowServer) -> None:
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_id = _experiment("forge")
    run_id = client.create_run(experiment_id).info.run_id
    attempts: dict[str, tuple[str, Callable[[], Any]]] = {
        "set-tag": ("mltf.user", lambda: client.set_tag(run_id, "mltf.user", "mallory")),
        "log-batch": ("mlflow.user", lambda: client.log_batch(run_id, tags=[RunTag("ok", "1"),
                                                                             RunTag("mlflow.user", "mallory")])),
        "delete-tag": ("mltf.user", lambda: client.delete_tag(run_id, "mltf.user")),
        "set-experiment-tag": ("mltf.gateway.submission",
                               lambda: client.set_experiment_tag(experiment_id, "mltf.gateway.submission", "s9")),
        "create-experiment": ("mltf.user", lambda: client.create_experiment(
            f"forged-{uuid.uuid4().hex[:8]}", tags={"mltf.user": "mallory"})),
    }
    for name, (tag, attempt) in attempts.items():
        with pytest.raises(MlflowException) as refused:
            attempt()
        assert refused.value.get_http_status_code() == 403, name
        assert "PERMISSION_DENIED" in str(refused.value) and repr(tag) in str(refused.value), name

    client.set_tag(run_id, "mltf.note", "fine")  # other tags are the client's
    upstream = MlflowClient(mlflow_server.uri).get_run(run_id)
    assert upstream.data.tags["mltf.user"] == "alice"
    assert upstream.data.tags["mlflow.user"] == "alice"
    assert upstream.data.tags["mltf.note"] == "fine"
    assert "ok" not in upstream.data.tags  # the refused batch was not applied in part


def test_double_encoded_body_is_checked_too(gateway: Gateway, as_user: Callable[[str | None], None]) -> None:
    """MLflow's server decodes a JSON string body a second time (old clients): so does the proxy."""
    from mlflow.tracking import MlflowClient

    run_id = MlflowClient().create_run(_experiment("double")).info.run_id
    body = json.dumps(json.dumps({"run_id": run_id, "key": "mlflow.user", "value": "mallory"}))
    answer = httpx.post(f"{gateway.tracking_uri}/api/2.0/mlflow/runs/set-tag", content=body,
                        headers={"Authorization": f"Bearer {ALICE_TOKEN}", "Content-Type": "application/json"})
    assert answer.status_code == 403
    assert answer.json()["error_code"] == "PERMISSION_DENIED"


def test_artifacts_go_through_the_prefix(gateway: Gateway, as_user: Callable[[str | None], None],
                                         mlflow_server: MlflowServer, tmp_path: Path) -> None:
    """MLflow's client keeps the tracking URI's path (/mlflow) for ``mlflow-artifacts:/`` URIs: uploads and
    downloads reach the server's artifact API through the proxy, byte for byte."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run = client.create_run(_experiment("artifacts"))
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
    payload = tmp_path / "weights.bin"
    payload.write_bytes(os.urandom(6 * 1024 * 1024))
    gateway.paths.clear()

    client.log_artifact(run.info.run_id, str(payload), artifact_path="model")
    stored = mlflow_server.root / "artifacts" / run.info.experiment_id / run.info.run_id / "artifacts"
    assert (stored / "model" / "weights.bin").read_bytes() == payload.read_bytes()  # what the upstream got
    back = Path(client.download_artifacts(run.info.run_id, "model/weights.bin", str(tmp_path / "back")))
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(payload.read_bytes()).digest()

    artifact_api = f"/mlflow/api/2.0/mlflow-artifacts/artifacts/{run.info.experiment_id}/{run.info.run_id}"
    assert any(p.startswith(artifact_api) for p in gateway.paths), gateway.paths
    assert all(p.startswith("/mlflow/") for p in gateway.paths), gateway.paths


def test_chunked_upload_is_streamed_to_the_upstream(gateway: Gateway, as_user: Callable[[str | None], None],
                                                    mlflow_server: MlflowServer) -> None:
    """An upload without Content-Length (chunked) reaches the server's artifact store intact."""
    from mlflow.tracking import MlflowClient

    run = MlflowClient().create_run(_experiment("chunked"))
    chunks = [os.urandom(256 * 1024) for _ in range(12)]
    url = (f"{gateway.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/{run.info.experiment_id}/"
           f"{run.info.run_id}/artifacts/chunked.bin")
    answer = httpx.put(url, content=iter(chunks), headers={"Authorization": f"Bearer {ALICE_TOKEN}"})
    assert answer.status_code == 200, answer.text
    stored = mlflow_server.root / "artifacts" / run.info.experiment_id / run.info.run_id / "artifacts"
    assert (stored / "chunked.bin").read_bytes() == b"".join(chunks)


def test_no_token_is_401_in_mlflows_format(gateway: Gateway, as_user: Callable[[str | None], None]) -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    answer = httpx.get(f"{gateway.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.json() == {"error_code": "UNAUTHENTICATED", "message": "no bearer token: run `mltf-flow login`"}

    as_user(None)
    with pytest.raises(MlflowException, match="UNAUTHENTICATED: no bearer token") as refused:
        MlflowClient().search_experiments(max_results=1)
    assert refused.value.get_http_status_code() == 401


def test_callers_credentials_are_not_forwarded(gateway: Gateway, _echo: WebhookReceiver) -> None:
    _echo.clear()
    answer = httpx.post(f"{gateway.url}/echo/hook/a%20b?x=1&y=2", content=b"payload",
                        headers={"Authorization": f"Bearer {ALICE_TOKEN}", "Cookie": "session=secret",
                                 "X-Request-Id": "r1", "Connection": "keep-alive, X-Hop", "X-Hop": "h"})
    assert answer.status_code == 200 and answer.content == b"ok"
    (post,) = _echo.posts
    assert post.path == "/hook/a%20b?x=1&y=2"
    assert post.body == b"payload"
    headers = {k.lower(): v for k, v in post.headers.items()}
    assert "authorization" not in headers and "cookie" not in headers and "x-hop" not in headers
    assert headers["x-request-id"] == "r1"
    assert headers["host"] == _echo.base.removeprefix("http://")


def test_unreachable_upstream_is_502_without_its_credentials(gateway: Gateway) -> None:
    answer = httpx.get(f"{gateway.url}/dead/api/2.0/mlflow/experiments/search",
                       headers={"Authorization": f"Bearer {ALICE_TOKEN}"})
    assert answer.status_code == 502
    error = answer.json()
    assert error["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert "http://operator:***@127.0.0.1:" in error["message"] and "unreachable" in error["message"]
    assert "hunter2" not in answer.text


def test_tokens_never_reach_the_mlflow_server(as_user: Callable[[str | None], None], mlflow_server: MlflowServer,
                                              tmp_path: Path) -> None:
    import mlflow

    as_user(JOB_TOKEN)
    payload = tmp_path / "notes.txt"
    payload.write_text("through the gateway\n")
    with mlflow.start_run(experiment_id=_experiment("tokens")):
        mlflow.log_param("p", "1")
        mlflow.log_artifact(str(payload))

    files = [p for p in mlflow_server.root.rglob("*") if p.is_file()]
    assert any(p.name == "notes.txt" for p in files)  # the store being searched is the one written to
    for token in (ALICE_TOKEN, JOB_TOKEN):
        assert not [p for p in files if token.encode() in p.read_bytes()], token
