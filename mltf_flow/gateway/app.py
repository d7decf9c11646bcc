"""The gateway's routes (the REST API of :mod:`mltf_flow.gateway`), its MLflow proxy, health and metrics.

Each route is small: it finds who calls (:mod:`.auth`), checks what they may do (their own submissions and
secrets; an admin sees all), and hands the work to :mod:`.intake` or :mod:`.lifecycle`. Errors of our tree
become JSON ``{"error": message}`` answers with the error's status; a job's credential is refused here
(it is for MLflow only). Bodies are read with a size limit before anything is parsed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from mltf_flow.errors import AuthError, Forbidden, GatewayError, NotFound, RequestRejected
from mltf_flow.gateway.request_body import read_limited

if TYPE_CHECKING:
    from mltf_flow.gateway.identity import Identity
    from mltf_flow.gateway.lifecycle import Lifecycle
    from mltf_flow.gateway.settings import GatewaySettings
    from mltf_flow.gateway.store import Submission

_log = logging.getLogger(__name__)


def derived_key(master: bytes, purpose: str) -> bytes:
    """One key per use of the gateway's key file (sealing secrets, signing job credentials)."""
    return hmac.new(master, purpose.encode(), hashlib.sha256).digest()


class Gateway:
    """The gateway's parts, built once from its settings (see :func:`create_app`)."""

    def __init__(self, settings: GatewaySettings) -> None:
        from mltf_flow.gateway.auth import TokenValidator
        from mltf_flow.gateway.hooks import load_hooks
        from mltf_flow.gateway.job_credentials import JobCredentials
        from mltf_flow.gateway.lifecycle import Lifecycle
        from mltf_flow.gateway.metrics import Metrics
        from mltf_flow.gateway.rate_limit import RateLimiter
        from mltf_flow.gateway.store import Store
        from mltf_flow.gateway.user_secrets import SecretBox, load_or_create_key

        self.settings = settings
        settings.state_path.mkdir(parents=True, exist_ok=True)
        settings.state_path.chmod(0o700)  # users' projects, scripts and logs: the service account's only
        (settings.state_path / "tmp").mkdir(exist_ok=True)
        master = load_or_create_key(settings.state_path / "gateway.key")
        self.store = Store(settings.database_url)
        credentials = JobCredentials(derived_key(master, "job-credentials"), settings.public_url, self.store)
        login = f"`export $(mltf-flow login --gateway {settings.public_url})`"
        self.validator = TokenValidator(settings.oidc, credentials, login)
        self.limiter = RateLimiter(settings.limits.requests_per_minute, settings.limits.burst)
        self.box = SecretBox(derived_key(master, "user-secrets"))
        self.lifecycle: Lifecycle = Lifecycle(settings, self.store, credentials, self.box, load_hooks(settings))
        self.metrics = Metrics(self.store)

    async def identify(self, request: Request) -> Identity:
        """Who calls (users and jobs); AuthError (401) when nobody acceptable does."""
        try:
            who: Identity = await run_in_threadpool(self.validator.identify, request.headers.get("authorization"))
        except AuthError:
            self.metrics.auth_failures.inc()
            raise
        return who

    async def user(self, request: Request) -> Identity:
        """A user (not a job's credential), within their rate."""
        who = await self.identify(request)
        if who.is_job:
            raise Forbidden("a job's credential works for MLflow only (/mlflow), not for the gateway's API.")
        self.limiter.check(who.user)
        return who

    def owned(self, who: Identity, submission_id: str) -> Submission:
        """The submission, if ``who`` may see it (another user's answers 404, as a missing one does)."""
        try:
            sub = self.store.get(submission_id)
        except NotFound:
            sub = None
        if sub is None or (sub.user != who.user and not who.admin):
            raise NotFound(f"no submission {submission_id!r} of yours.")
        return sub

    def view(self, sub: Submission) -> dict[str, Any]:
        shown = sub.public()
        ui = self.settings.mlflow_ui
        if ui and sub.run_id and sub.experiment_id:
            shown["run_url"] = f"{ui}/#/experiments/{sub.experiment_id}/runs/{sub.run_id}"
        if ui and sub.details.get("runs"):  # MLflow's UI finds a run by its id alone (#/runs/<id>)
            shown["run_urls"] = {run_id: f"{ui}/#/runs/{run_id}" for run_id in sub.details["runs"]}
        shown["url"] = f"{self.settings.public_url}/api/v1/submissions/{sub.id}"
        return shown

    def log_file(self, sub: Submission) -> Path | None:
        from mltf_flow.gateway.pipeline_jobs import log_path
        from mltf_flow.tags import TAG_SLURM_LOG

        if sub.kind == "pipeline":
            return log_path(self.settings, sub)
        if not sub.run_id:
            return None
        logged = self.lifecycle.mlflow.get_run(sub.run_id).data.tags.get(TAG_SLURM_LOG)
        return Path(logged) if logged else None


def _error_response(exc: GatewayError) -> JSONResponse:
    headers = {}
    if isinstance(exc, AuthError) and exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(int(retry))
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)


def _api(gw: Gateway) -> APIRouter:
    api = APIRouter(prefix="/api/v1")
    oidc = gw.settings.oidc

    @api.get("/auth")
    async def auth_config() -> dict[str, Any]:
        return {"issuer": oidc.issuer, "client_id": oidc.client_id, "audience": oidc.audience,
                "scopes": list(oidc.scopes)}

    @api.put("/archives", status_code=201)
    async def upload(request: Request) -> dict[str, Any]:
        from mltf_flow.gateway.archive import Receiver

        who = await gw.user(request)
        receiver = Receiver(gw.settings.state_path / "archives", limit_bytes=gw.settings.limits.bytes("archive"))
        try:
            async for chunk in request.stream():
                receiver.feed(chunk)
            digest = await run_in_threadpool(receiver.finish)
        except BaseException:
            receiver.abort()
            raise
        _log.info(f"archive {digest} ({receiver.size} bytes) from {who.user}")
        return {"digest": digest, "bytes": receiver.size}

    @api.post("/submissions", status_code=202)
    async def submit(request: Request) -> JSONResponse:
        from pydantic import ValidationError

        from mltf_flow.gateway.intake import SubmissionRequest, accept

        who = await gw.user(request)
        body = await read_limited(request, gw.settings.limits.bytes("request"))
        try:
            wanted = SubmissionRequest.model_validate_json(body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors())
            raise RequestRejected(f"the submission is not valid: {problems}.", 422) from None
        sub, new = await run_in_threadpool(accept, gw.lifecycle, who, wanted, request.headers.get("idempotency-key"))
        if new:
            gw.metrics.submissions.labels(kind=sub.kind).inc()
        if sub.state == "failed":
            return JSONResponse({"error": sub.message, "submission": gw.view(sub)}, status_code=422)
        return JSONResponse(gw.view(sub), status_code=202 if new else 200)

    @api.get("/submissions")
    async def listing(request: Request, all: bool = False) -> list[dict[str, Any]]:
        who = await gw.user(request)
        if all and not who.admin:
            raise Forbidden("only an admin may list everyone's submissions (all=true).")
        rows = await run_in_threadpool(gw.store.submissions, None if all else who.user)
        return [gw.view(sub) for sub in rows]

    @api.get("/submissions/{submission_id}")
    async def show(request: Request, submission_id: str) -> dict[str, Any]:
        who = await gw.user(request)
        return gw.view(await run_in_threadpool(gw.owned, who, submission_id))

    @api.post("/submissions/{submission_id}/cancel")
    async def cancel(request: Request, submission_id: str) -> dict[str, Any]:
        who = await gw.user(request)
        sub = await run_in_threadpool(gw.owned, who, submission_id)
        return gw.view(await run_in_threadpool(gw.lifecycle.cancel, sub))

    @api.get("/submissions/{submission_id}/logs")
    async def logs(request: Request, submission_id: str, follow: bool = False, offset: int = 0) -> Response:
        who = await gw.user(request)
        sub = await run_in_threadpool(gw.owned, who, submission_id)
        return StreamingResponse(_log_stream(gw, sub, follow, offset), media_type="text/plain")

    _secret_routes(api, gw)
    return api


def _secret_routes(api: APIRouter, gw: Gateway) -> None:
    """Users' secrets: stored sealed, listed without their values, given to their own jobs only."""

    @api.put("/secrets/{name}", status_code=201)
    async def put_secret(request: Request, name: str) -> dict[str, Any]:
        from mltf_flow.gateway.user_secrets import MAX_VALUE_BYTES, check_name, check_value

        who = await gw.user(request)
        body = await read_limited(request, 2 * MAX_VALUE_BYTES)  # JSON escapes may double it
        try:
            value = json.loads(body)["value"]
        except (ValueError, KeyError, TypeError):
            raise RequestRejected('the body must be JSON {"value": "..."}.', 422) from None
        if not isinstance(value, str) or not value:
            raise RequestRejected("the secret's value must be a non-empty string.", 422)
        name = check_name(name)
        check_value(name, value)
        await run_in_threadpool(gw.store.put_secret, who.user, name, gw.box.seal(who.user, name, value))
        return {"name": name}

    @api.get("/secrets")
    async def list_secrets(request: Request) -> list[dict[str, Any]]:
        who = await gw.user(request)
        held = await run_in_threadpool(gw.store.secrets_of, who.user)
        return [{"name": name, "created": created} for name, (_, created) in held.items()]

    @api.delete("/secrets/{name}")
    async def delete_secret(request: Request, name: str) -> dict[str, Any]:
        who = await gw.user(request)
        await run_in_threadpool(gw.store.delete_secret, who.user, name)
        return {"deleted": name}


async def _log_stream(gw: Gateway, sub: Submission, follow: bool, offset: int) -> AsyncIterator[bytes]:
    """The job's log from ``offset``; with ``follow``, until the submission ended and the log was read out."""
    while True:
        path = await run_in_threadpool(gw.log_file, sub)
        if path is not None and path.is_file():
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
            offset += len(data)
            if data:
                yield data
        if not follow or sub.ended:
            return
        await asyncio.sleep(gw.settings.poll_interval)  # the log grows in the job; this is a poll, not a sync
        sub = await run_in_threadpool(gw.store.get, sub.id)


def _warm_up() -> None:
    import mlflow.tracking  # noqa: F401

    import mltf_flow.backend.submit  # noqa: F401


def _route(path: str) -> str:
    """A request's route for the metrics, without ids (few label values): ``submissions``, ``mlflow``..."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["mlflow"]:
        return "mlflow"
    if parts[:2] == ["api", "v1"] and len(parts) > 2:
        return parts[2]
    return parts[0] if parts else "/"


async def _reachable(urls: dict[str, str]) -> list[str]:
    """A problem for each service that does not answer 200 at its URL within 5 s."""
    import httpx

    problems = []
    async with httpx.AsyncClient(timeout=5) as http:
        for what, url in urls.items():
            try:
                status = (await http.get(url)).status_code
            except httpx.HTTPError as exc:
                problems.append(f"{what} unreachable ({url}: {type(exc).__name__})")
                continue
            if status != 200:
                problems.append(f"{what} answers {status} at {url}")
    return problems


def create_app(settings: GatewaySettings, *, run_lifecycle: bool = True) -> FastAPI:
    """The ASGI app: ``uvicorn.run(create_app(settings))``. The lifecycle thread starts with the app."""
    from mltf_flow.gateway.mlflow_proxy import mlflow_proxy_router

    gw = Gateway(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Imported now, not by the first submission (MLflow and the backend: seconds on a login node).
        await run_in_threadpool(_warm_up)
        if run_lifecycle:
            gw.lifecycle.start()
        try:
            yield
        finally:
            gw.lifecycle.stop()
            gw.store.close()

    app = FastAPI(title="mltf_flow gateway", lifespan=lifespan, docs_url="/api/docs", redoc_url=None,
                  openapi_url="/api/openapi.json")
    app.state.gateway = gw

    @app.exception_handler(GatewayError)
    async def gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return _error_response(exc)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.monotonic()
        response = await call_next(request)
        gw.metrics.requests.labels(route=_route(request.url.path), status=str(response.status_code)).inc()
        gw.metrics.latency.observe(time.monotonic() - start)
        return response

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        problems = []
        try:
            await run_in_threadpool(gw.store.ping)
        except Exception as exc:
            problems.append(f"database: {type(exc).__name__}")
        problems += await _reachable({"identity provider": f"{settings.oidc.issuer}/.well-known/openid-configuration",
                                      "MLflow server": f"{settings.mlflow_upstream}/health"})
        if run_lifecycle and not gw.lifecycle.alive:
            problems.append("lifecycle thread stopped")
        status = 503 if problems else 200
        return JSONResponse({"status": "ok" if not problems else "unhealthy", "problems": problems},
                            status_code=status)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text, content_type = await run_in_threadpool(gw.metrics.render)
        return PlainTextResponse(text, media_type=content_type)

    app.include_router(_api(gw))
    app.include_router(mlflow_proxy_router(settings.mlflow_upstream, gw.identify), prefix="/mlflow")
    return app
