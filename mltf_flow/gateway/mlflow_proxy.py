"""The gateway's MLflow proxy: MLflow's REST API (``/mlflow/...``), forwarded to a tracking server that only the
gateway can reach, with the caller's identity stamped on the runs it creates.

Users (their OIDC token) and jobs (their submission's credential) set ``MLFLOW_TRACKING_URI=<gateway>/mlflow``
and ``MLFLOW_TRACKING_TOKEN``; every method and path under the prefix is forwarded to the upstream server
(tracking API, ``ajax-api``, the proxied artifact API ``/api/2.0/mlflow-artifacts/...``, ``/api/3.0``...),
request and response bodies streamed (artifacts may be GBs). The caller's ``Authorization`` header (and
cookies) never reach the upstream. MLflow's client keeps the tracking URI's path for ``mlflow-artifacts:/``
URIs (``MlflowArtifactsRepository.resolve_uri``), so artifact traffic goes through the prefix as well, provided
the server proxies artifacts (``mlflow server --artifacts-destination``; a server whose runs have a plain
storage root would send clients straight to that storage).

What this module owns: who made a run, and who may change it. ``runs/create`` gets ``user_id``,
``mlflow.user`` and ``mltf.user`` set to the caller's user (and ``mltf.gateway.submission`` for a job),
whatever the client sent; a request that sets or deletes one of those tags anywhere else (``runs/set-tag``,
``runs/delete-tag``, ``runs/log-batch``, ``experiments/create``, ``experiments/set-experiment-tag``,
``experiments/delete-experiment-tag``) is refused (403).
A run is changed (tags, metrics, params, status, deletion, artifacts) only by its owner (its ``mltf.user``) or
an admin; experiments every user shares are deleted, restored or renamed only by admins. Reading is open to
every authenticated caller (MLflow has no per-experiment permissions here). Not checked: the model registry,
traces and logged models (their writes create new objects more than they change others'). Errors are answered
in MLflow's own format (``{"error_code": ..., "message": ...}``) so its client
shows the message.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, Response, StreamingResponse

from mltf_flow.errors import Forbidden, GatewayError, RequestRejected
from mltf_flow.gateway.identity import Identity
from mltf_flow.gateway.request_body import read_limited
from mltf_flow.redaction import strip_credentials
from mltf_flow.tags import MLFLOW_USER, TAG_GATEWAY_SUBMISSION, TAG_USER

log = logging.getLogger(__name__)

Authenticate = Callable[[Request], Awaitable[Identity]]

#: The tags that say who made a run: only the proxy writes them.
PROTECTED_TAGS = frozenset({MLFLOW_USER, TAG_USER, TAG_GATEWAY_SUBMISSION})
#: The endpoints whose (small, JSON) bodies are read and checked; every other body is streamed untouched.
#: Any API version and both prefixes: ``/api/2.0/mlflow/runs/create``, ``/ajax-api/2.0/mlflow/runs/create``.
_CHECKED = re.compile(
    r"(?:ajax-)?api/[0-9.]+/mlflow/(?P<endpoint>runs/create|runs/set-tag|runs/delete-tag|runs/log-batch|"
    r"experiments/create|experiments/set-experiment-tag|experiments/delete-experiment-tag|"
    r"runs/update|runs/delete|runs/restore|runs/log-metric|runs/log-parameter|runs/log-model|runs/log-inputs|"
    r"runs/outputs|experiments/delete|experiments/restore|experiments/update)"
)
#: Endpoints that change a run (named by ``run_id`` in the body): only its owner (``mltf.user``) or an admin.
_RUN_WRITES = frozenset({"runs/set-tag", "runs/delete-tag", "runs/log-batch", "runs/update", "runs/delete",
                         "runs/restore", "runs/log-metric", "runs/log-parameter", "runs/log-model",
                         "runs/log-inputs", "runs/outputs"})
#: Endpoints that change an experiment every user shares: admins only.
_ADMIN_ONLY = frozenset({"experiments/delete", "experiments/restore", "experiments/update"})
#: Artifact writes name their run in the path: ``api/2.0/mlflow-artifacts/artifacts/<experiment>/<run>/...``.
_ARTIFACT_RUN = re.compile(r"api/[0-9.]+/mlflow-artifacts/artifacts/[^/]+/(?P<run>[0-9a-f]{32})/.*")
#: A checked body larger than this is refused (MLflow's largest, a full log-batch, is well under 2 MB).
MAX_CHECKED_BODY = 16 * 1024 * 1024
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# RFC 9110 hop-by-hop headers, the Host (the upstream's is set by httpx), and the caller's credentials.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
    "trailer", "trailers", "transfer-encoding", "upgrade",
})
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "authorization", "cookie"}
# uvicorn writes its own Date and Server headers.
_NOT_RETURNED = _HOP_BY_HOP | {"date", "server"}
#: HTTP status -> MLflow's error code (as mlflow.exceptions maps them back), for errors the proxy answers.
_ERROR_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "RESOURCE_DOES_NOT_EXIST",
    409: "RESOURCE_CONFLICT", 413: "BAD_REQUEST", 422: "INVALID_PARAMETER_VALUE", 429: "REQUEST_LIMIT_EXCEEDED",
    502: "TEMPORARILY_UNAVAILABLE", 503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}


def error_response(error: GatewayError) -> JSONResponse:
    """``error`` as MLflow's REST API answers errors, so MLflow's client shows its message."""
    body = {"error_code": _ERROR_CODES.get(error.status, "INTERNAL_ERROR"), "message": str(error)}
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(body, status_code=error.status, headers=headers)


def mlflow_proxy_router(upstream: str, authenticate: Authenticate, *, timeout: float = 300.0) -> APIRouter:
    """A router forwarding every request under its prefix to the MLflow server at ``upstream`` (mount it with
    ``app.include_router(router, prefix="/mlflow")``) once ``authenticate`` has named the caller. Its HTTP
    client is made at the first request and closed when the app shuts down (the router's lifespan)."""
    base = upstream.rstrip("/")
    shown_upstream = strip_credentials(base)
    # One client per router: its connection pool is reused by every request.
    clients: list[httpx.AsyncClient] = []

    def client() -> httpx.AsyncClient:
        if not clients:
            # A short connect timeout: an unreachable server is reported at once, a slow download is not cut.
            clients.append(httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0))))
        return clients[0]

    @asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            while clients:
                await clients.pop().aclose()

    router = APIRouter(lifespan=lifespan)
    owners = RunOwners(base, client)

    @router.api_route("/{path:path}", methods=_METHODS, include_in_schema=False)
    async def forward(request: Request, path: str) -> Response:
        try:
            identity = await authenticate(request)
            return await _forward(request, path, identity)
        except GatewayError as exc:
            return error_response(exc)

    async def _forward(request: Request, path: str, identity: Identity) -> Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _not_forwarded(request)]
        content: bytes | AsyncIterator[bytes] | None = None
        normalized = _normalized(path)
        checked = _CHECKED.fullmatch(normalized)
        artifact = _ARTIFACT_RUN.fullmatch(normalized) if request.method in ("PUT", "DELETE", "POST") else None
        if artifact:
            await owners.check(artifact["run"], identity)
        if checked:
            raw = await read_limited(request, MAX_CHECKED_BODY)
            body = _checked_body(checked["endpoint"], raw, identity)
            await _check_access(checked["endpoint"], _parse(raw), identity, owners)
            content = raw if body is None else json.dumps(body).encode()
            # httpx counts the body it sends; the caller's Content-Length was for the body it sent.
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        elif "content-length" in request.headers or "transfer-encoding" in request.headers:
            content = request.stream()  # streamed: an artifact upload is never read into memory
        url = f"{base}/{_raw_path(request, path)}"
        if request.url.query:
            url = f"{url}?{request.url.query}"
        outgoing = client().build_request(request.method, url, headers=headers, content=content)
        try:
            answer = await client().send(outgoing, stream=True)
        except httpx.TimeoutException as exc:
            raise GatewayError(f"the MLflow server {shown_upstream} did not answer in time "
                               f"({type(exc).__name__})", 504) from exc
        except httpx.TransportError as exc:
            log.warning("MLflow server %s unreachable: %s", shown_upstream, strip_credentials(str(exc)))
            raise GatewayError(f"the MLflow server {shown_upstream} is unreachable from the gateway "
                               f"({type(exc).__name__}: {exc}); ask the gateway's operators", 502) from exc
        response = StreamingResponse(_relay(answer), status_code=answer.status_code,
                                     background=BackgroundTask(answer.aclose))
        # Raw pairs: a header the upstream sent twice is returned twice.
        response.raw_headers = [(k.lower(), v) for k, v in answer.headers.raw
                                if k.decode("latin-1").lower() not in _NOT_RETURNED]
        return response

    return router


def _not_forwarded(request: Request) -> frozenset[str]:
    """The request headers kept from the upstream: the fixed set and those the Connection header names."""
    named = {h.strip().lower() for h in request.headers.get("connection", "").split(",") if h.strip()}
    return _NOT_FORWARDED | named


def _normalized(path: str) -> str:
    """``path`` as the upstream routes it: the server merges repeated slashes (werkzeug's ``merge_slashes``)."""
    return re.sub(r"/+", "/", path).strip("/")


def _raw_path(request: Request, path: str) -> str:
    """The path after the prefix as the caller encoded it (``%2F`` and ``%20`` stay as sent), else ``path``."""
    raw = request.scope.get("raw_path")
    prefix = request.url.path[: len(request.url.path) - len(path)]
    if isinstance(raw, bytes) and raw.decode("latin-1").startswith(prefix):
        return raw.decode("latin-1")[len(prefix):]
    return path


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    # Raw bytes: a gzip-encoded answer stays encoded, so its Content-Length and Content-Encoding still hold.
    try:
        async for chunk in answer.aiter_raw():
            yield chunk
    finally:
        await answer.aclose()


def _checked_body(endpoint: str, raw: bytes, identity: Identity) -> dict[str, Any] | None:
    """The body to send instead of ``raw`` (None: send ``raw``), or Forbidden when it sets a protected tag."""
    body = _parse(raw)
    if endpoint == "runs/create":
        return _stamped(body, identity)
    key = body.get("key")
    if endpoint.endswith("-tag") and isinstance(key, str) and key in PROTECTED_TAGS:
        raise Forbidden(f"the tag {key!r} is set by the gateway from the caller's identity; "
                        f"it cannot be {'deleted' if 'delete' in endpoint else 'set'} by a client")
    for tag in _tags(body):
        if tag.get("key") in PROTECTED_TAGS:
            raise Forbidden(f"the tag {tag['key']!r} is set by the gateway from the caller's identity; "
                            "it cannot be set by a client")
    return None


def _parse(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
        # Older MLflow clients post their JSON double-encoded, as a string; the server decodes it twice too.
        if isinstance(body, str):
            body = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestRejected(f"the request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise RequestRejected("the request body is not a JSON object")
    return body


def _tags(body: dict[str, Any]) -> list[dict[str, Any]]:
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, dict) for tag in tags):
        raise RequestRejected("'tags' must be a list of {\"key\": ..., \"value\": ...} objects")
    return tags


def _stamped(body: dict[str, Any], identity: Identity) -> dict[str, Any]:
    """A ``runs/create`` body with the caller's identity in ``user_id`` and the identity tags."""
    stamped = {k: v for k, v in body.items() if k != "userId"}  # protobuf's JSON name of user_id: one spelling
    stamped["user_id"] = identity.user
    ours = {MLFLOW_USER: identity.user, TAG_USER: identity.user}
    if identity.submission is not None:
        ours[TAG_GATEWAY_SUBMISSION] = identity.submission
    kept = [tag for tag in _tags(body) if tag.get("key") not in PROTECTED_TAGS]
    stamped["tags"] = kept + [{"key": key, "value": value} for key, value in ours.items()]
    return stamped


class RunOwners:
    """Who owns each run (its ``mltf.user``, which only the proxy writes), read from the upstream once per run and
    remembered: an owner never changes."""

    def __init__(self, base: str, client: Callable[[], httpx.AsyncClient]) -> None:
        self.base = base
        self.client = client
        self._known: dict[str, str | None] = {}

    async def owner(self, run_id: str) -> str | None:
        if run_id not in self._known:
            answer = await self.client().get(f"{self.base}/api/2.0/mlflow/runs/get", params={"run_id": run_id})
            if answer.status_code != 200:
                return None  # no such run: the upstream answers the request itself
            tags = answer.json().get("run", {}).get("data", {}).get("tags", [])
            if len(self._known) > 100_000:
                self._known.clear()
            self._known[run_id] = next((t.get("value") for t in tags if t.get("key") == TAG_USER), None)
        return self._known[run_id]

    async def check(self, run_id: str, identity: Identity) -> None:
        """Forbidden unless ``identity`` may change the run: its owner, or an admin."""
        if identity.admin:
            return
        owner = await self.owner(run_id)
        if owner != identity.user:
            whose = f"{owner}'s" if owner else "a run made outside the gateway"
            raise Forbidden(f"run {run_id} is {whose}: only its owner (or an admin) may change it")


async def _check_access(endpoint: str, body: dict[str, Any], identity: Identity, owners: RunOwners) -> None:
    if endpoint in _ADMIN_ONLY and not identity.admin:
        raise Forbidden(f"{endpoint} changes an experiment every user shares: ask an admin of the gateway")
    if endpoint in _RUN_WRITES:
        run_id = body.get("run_id") or body.get("run_uuid")
        if isinstance(run_id, str) and run_id:
            await owners.check(run_id, identity)
