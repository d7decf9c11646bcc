"""The user's side of the gateway's REST API (httpx): upload, submit, follow, cancel, logs, secrets.

Used by ``mlflow run --backend mltf --backend-config '{"gateway": URL}'`` and by ``mltf-flow submit`` /
``submissions`` / ``secrets``. The token comes from :func:`mltf_flow.gateway.login.current_token`
(``MLFLOW_TRACKING_TOKEN``, or the cache ``mltf-flow login`` keeps, refreshed when it expires). The gateway's
answers come back as our errors with the gateway's own message: 401 :class:`AuthError` (with how to log in),
403 :class:`Forbidden`, 404 :class:`NotFound`, other 4xx :class:`RequestRejected`, the rest
:class:`GatewayError`.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mltf_flow.errors import AuthError, ConfigError, Forbidden, GatewayError, NotFound, RequestRejected

if TYPE_CHECKING:
    import httpx

#: The variable that names the gateway when no --gateway is given.
GATEWAY_VARIABLE = "MLTF_GATEWAY_URL"
ENDED = ("finished", "failed", "cancelled")


def gateway_url(given: str | None) -> str:
    url = given or os.environ.get(GATEWAY_VARIABLE)
    if not url:
        raise ConfigError(f"which gateway? Pass --gateway URL or set {GATEWAY_VARIABLE}.")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"gateway URL {url!r}: expected http(s)://HOST[:PORT].")
    return url.rstrip("/")


def _error(answer: httpx.Response, url: str) -> GatewayError:
    try:
        message = str(answer.json().get("error") or answer.text)
    except ValueError:
        message = answer.text.strip() or answer.reason_phrase
    text = f"gateway {url}: {message}"
    status = answer.status_code
    kinds: dict[int, type[GatewayError]] = {401: AuthError, 403: Forbidden, 404: NotFound}
    if status in kinds:
        return kinds[status](text)
    if 400 <= status < 500:
        return RequestRejected(text, status)
    return GatewayError(text, status)


class GatewayClient:
    """One gateway, one user (``token``: default the current one for this gateway)."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 120.0) -> None:
        import httpx

        from mltf_flow.gateway.login import current_token

        self.url = gateway_url(url)
        self._token = token
        if token is None:
            current_token(self.url)  # not logged in: said before anything is sent
        self._http = httpx.Client(base_url=f"{self.url}/api/v1", timeout=timeout, auth=self._bearer)

    def _bearer(self, request: httpx.Request) -> httpx.Request:
        """The token of each request, renewed from the saved login when it expires (a --wait outlives tokens)."""
        from mltf_flow.gateway.login import current_token

        request.headers["Authorization"] = f"Bearer {self._token or current_token(self.url)}"
        return request

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            answer = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot reach the gateway at {self.url}: {type(exc).__name__}: {exc}") from None
        if answer.status_code >= 400:
            raise _error(answer, self.url)
        return answer.json()

    # projects --------------------------------------------------------------------------------------------
    def upload(self, project_dir: Path, *, limit_bytes: int = 200 * 2**20) -> str:
        """Pack the project (:func:`mltf_flow.gateway.archive.pack`) and upload it; its digest."""
        from mltf_flow.gateway.archive import pack

        with tempfile.TemporaryDirectory() as tmp:
            packed = pack(project_dir, Path(tmp) / "project.tar.gz", limit_bytes=limit_bytes)
            with packed.path.open("rb") as f:
                answer = self._call("PUT", "/archives", content=f, headers={"Content-Type": "application/gzip"})
        return str(answer["digest"])

    def submit(self, request: Mapping[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """POST a submission; retried once on a connection failure with the same idempotency key, so a gateway
        that took it and died before answering does not get it twice."""
        key = idempotency_key or uuid.uuid4().hex
        for attempt in (1, 2):
            try:
                answer: dict[str, Any] = self._call("POST", "/submissions", json=dict(request),
                                                    headers={"Idempotency-Key": key})
                return answer
            except GatewayError as exc:
                if attempt == 2 or type(exc) is not GatewayError or exc.status != 500:
                    raise
        raise AssertionError("unreachable")

    def get(self, submission_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("GET", f"/submissions/{submission_id}")
        return answer

    def submissions(self, *, everyone: bool = False) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self._call("GET", "/submissions", params={"all": "true"} if everyone else {})
        return answer

    def cancel(self, submission_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._call("POST", f"/submissions/{submission_id}/cancel")
        return answer

    def logs(self, submission_id: str, *, follow: bool = False) -> Iterator[bytes]:
        import httpx

        params = {"follow": "true"} if follow else {}
        try:
            with self._http.stream("GET", f"/submissions/{submission_id}/logs", params=params,
                                   timeout=httpx.Timeout(30, read=None)) as answer:
                if answer.status_code >= 400:
                    answer.read()
                    raise _error(answer, self.url)
                yield from answer.iter_bytes()
        except httpx.HTTPError as exc:
            raise GatewayError(f"cannot read the log from {self.url}: {type(exc).__name__}: {exc}") from None

    def wait(self, submission_id: str, *, on_change: Callable[[dict[str, Any]], None] | None = None,
             interval: float = 2.0, max_interval: float = 30.0, seen: Mapping[str, Any] | None = None
             ) -> dict[str, Any]:
        """Poll until the submission ended (backing off while nothing changes); its last view. ``on_change`` is
        called with each new state or message (not for ``seen``, a view the caller showed already)."""
        last: tuple[str, str] | None = (str(seen["state"]), str(seen.get("message", ""))) if seen else None
        delay = interval
        while True:
            view = self.get(submission_id)
            now = (str(view["state"]), str(view.get("message", "")))
            if now != last:
                last, delay = now, interval
                if on_change is not None:
                    on_change(view)
            else:
                delay = min(delay * 1.5, max_interval)
            if view["state"] in ENDED:
                return view
            time.sleep(delay)

    # secrets ---------------------------------------------------------------------------------------------
    def put_secret(self, name: str, value: str) -> None:
        self._call("PUT", f"/secrets/{name}", json={"value": value})

    def secrets(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self._call("GET", "/secrets")
        return answer

    def delete_secret(self, name: str) -> None:
        self._call("DELETE", f"/secrets/{name}")


def describe(view: Mapping[str, Any]) -> str:
    """One line for the console: ``submission 1a2b3c (project main): running, SLURM job 42``."""
    what = view["request"].get("target") or view["request"].get("entry_point")
    line = f"submission {view['id']} ({view['kind']} {what}): {view['state']}"
    if view.get("message"):
        line += f", {view['message']}"
    if view.get("run_url"):
        line += f"\n  run: {view['run_url']}"
    elif view.get("run_urls"):
        whats = view.get("details", {}).get("runs", {})
        line += "".join(f"\n  {whats.get(run_id, 'run')}: {url}" for run_id, url in view["run_urls"].items())
    return line
