"""MLflow's tracking REST API over :mod:`urllib`, without importing mlflow (1-2 s a process).

The calls mltf_flow makes where ``import mlflow`` would cost more than the work: completeness checks
(:mod:`mltf_flow.run_index`), lease renewals (:mod:`mltf_flow.lease`), a schedule's fire record
(:mod:`mltf_flow.schedule.record`) and a ``mlflow run --backend mltf`` job's wrapper
(:mod:`mltf_flow.backend.run_writer`): ``experiments/get-by-name``, ``experiments/create``, ``runs/create``,
``runs/get``, ``runs/search``, ``runs/log-batch``, ``runs/update``, ``runs/delete-tag``, and an artifact
upload through the server's artifact proxy (``PUT /api/2.0/mlflow-artifacts/artifacts/...``).

Requests look like MLflow's client's (``mlflow.utils.rest_utils.http_request``):

* credentials: ``MLFLOW_TRACKING_USERNAME`` + ``MLFLOW_TRACKING_PASSWORD`` (or the ``[mlflow]`` section of
  ``~/.mlflow/credentials``, or user info in the URI) as ``Basic``, which wins over ``MLFLOW_TRACKING_TOKEN``
  (``Bearer``); read again for every request, as MLflow does;
* TLS: ``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH`` (a CA bundle),
  ``MLFLOW_TRACKING_CLIENT_CERT_PATH`` (a PEM with certificate and key);
* retries: a transient failure (no connection, 408, 429, 500, 502, 503, 504) is tried again with exponential
  backoff, up to ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` times (factor ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``),
  each request bounded by ``MLFLOW_HTTP_REQUEST_TIMEOUT``; callers that must answer fast pass
  ``max_retries=0``. Tenacity runs the retries and is imported only once a first try failed (its import
  pulls in tornado where installed: 0.2-0.4 s a job wrapper need not pay).

What plain HTTP cannot do is left to MLflow's client, and :func:`needs_mlflow_client` says when: a request
auth plugin (``MLFLOW_TRACKING_AUTH``) or AWS SigV4 signing. Every failure is a
:class:`~mltf_flow.errors.TrackingError` whose message never shows a password.
"""

from __future__ import annotations

import base64
import configparser
import json
import mimetypes
import os
import posixpath
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from mltf_flow.errors import TrackingError
from mltf_flow.redaction import split_userinfo, strip_credentials

API = "/api/2.0/mlflow/"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
#: HTTP codes MLflow's client retries (``mlflow.utils.request_utils._TRANSIENT_FAILURE_RESPONSE_CODES``).
TRANSIENT_CODES = frozenset({408, 429, 500, 502, 503, 504})
_TRUE = ("true", "1")


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def needs_mlflow_client() -> bool:
    """Whether this environment asks for request signing that only MLflow's client does (an auth plugin
    named by ``MLFLOW_TRACKING_AUTH``, or ``MLFLOW_TRACKING_AWS_SIGV4``)."""
    return bool(os.environ.get("MLFLOW_TRACKING_AUTH")) or (
        os.environ.get("MLFLOW_TRACKING_AWS_SIGV4", "").lower() in _TRUE)


class _Transient(Exception):
    """A failure worth another try (wraps the TrackingError to raise when tries run out)."""

    def __init__(self, error: TrackingError) -> None:
        super().__init__(str(error))
        self.error = error


def _file_credentials() -> tuple[str | None, str | None]:
    path = os.path.expanduser("~/.mlflow/credentials")
    if not os.path.exists(path):
        return None, None
    config = configparser.ConfigParser()
    config.read(path)
    if "mlflow" not in config:
        return None, None
    section = config["mlflow"]
    return section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")


class TrackingRest:
    """REST calls to the MLflow server at ``tracking_uri`` (``http(s)://[user:password@]host[:port][/path]``).

    ``check``: ask the server's ``/health`` once per process before the first call
    (:func:`mltf_flow.tracking_server.check_server`: a few short tries, then a message that names the URI).
    ``max_retries``/``timeout``: None reads MLflow's variables (see the module docstring).
    """

    def __init__(self, tracking_uri: str, *, check: bool = True, max_retries: int | None = None,
                 timeout: float | None = None) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self.check = check
        self.max_retries = (int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")) if max_retries is None
                            else max_retries)
        self.backoff_factor = float(os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2"))
        self.timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")) if timeout is None else timeout
        self.round_trips = 0
        # urllib would take "user:password@host" for the host name: the user info travels as Basic credentials.
        self.base, self._url_user, self._url_password = split_userinfo(self.tracking_uri)

    # -- the request ---------------------------------------------------------------------------------------
    def headers(self) -> dict[str, str]:
        """``Authorization`` as MLflow's client sends it (Basic wins over a bearer token)."""
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if not (user and password):
            file_user, file_password = _file_credentials()
            user, password = user or file_user, password or file_password
        if not (user and password) and self._url_user:
            user, password = self._url_user, self._url_password or ""
        token = os.environ.get("MLFLOW_TRACKING_TOKEN")
        if user and password:
            return {"Authorization": "Basic " + base64.standard_b64encode(f"{user}:{password}".encode()).decode()}
        if token:
            return {"Authorization": f"Bearer {token}"}
        return {}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings of MLflow's variables; None for plain http."""
        if not self.base.startswith("https://"):
            return None
        server_cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
        if server_cert:  # as requests' verify=PATH: a CA bundle (file) or a directory of CA certificates
            if os.path.isdir(server_cert):
                context = ssl.create_default_context(capath=server_cert)
            else:
                context = ssl.create_default_context(cafile=server_cert)
        else:
            context = ssl.create_default_context()
            if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() in _TRUE:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
        if client_cert:  # as requests' cert=PATH: one PEM file holding the certificate and its key
            context.load_cert_chain(client_cert)
        return context

    def request(self, method: str, url_path: str, data: bytes | None = None,
                content_type: str = "application/json") -> dict[str, Any] | None:
        """One request to ``url_path`` below the server's base URL, retried when transient; its JSON answer
        (``{}`` for an empty body), or None for 404."""
        if self.check:
            from mltf_flow.tracking_server import check_server

            check_server(self.tracking_uri)  # once per process: a server that does not answer fails fast, loudly
        try:
            return self._once(method, url_path, data, content_type)
        except _Transient as first:
            if self.max_retries <= 0:
                raise first.error from None
        return self._retry(method, url_path, data, content_type)

    def _retry(self, method: str, url_path: str, data: bytes | None, content_type: str) -> dict[str, Any] | None:
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        retrying = Retrying(stop=stop_after_attempt(self.max_retries), reraise=True,
                            wait=wait_exponential(multiplier=self.backoff_factor, max=120),
                            retry=retry_if_exception_type(_Transient))
        try:
            return retrying(self._once, method, url_path, data, content_type)
        except _Transient as last:
            raise last.error from None

    def _once(self, method: str, url_path: str, data: bytes | None, content_type: str) -> dict[str, Any] | None:
        headers = {**self.headers(), "Content-Type": content_type}
        request = urllib.request.Request(self.base + url_path, data=data, method=method, headers=headers)
        self.round_trips += 1
        what = f"{method} {url_path.split('?')[0]}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.ssl_context()) as response:
                body = response.read()
            return dict(json.loads(body)) if body.strip() else {}
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace")[:500]
            error = TrackingError(
                f"MLflow server {strip_credentials(self.tracking_uri)} answered {exc.code} to {what}: {detail}")
            if exc.code in TRANSIENT_CODES:
                raise _Transient(error) from None
            raise error from None
        except (urllib.error.URLError, OSError) as exc:
            error = TrackingError(
                f"cannot reach the MLflow server {strip_credentials(self.tracking_uri)} ({exc}). Is it running? "
                "Check tracking_uri / MLFLOW_TRACKING_URI.")
            raise _Transient(error) from None

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """One call of the tracking API (``path`` below ``/api/2.0/mlflow/``); None for 404."""
        data = json.dumps(body).encode() if body is not None else None
        return self.request(method, API + path, data)

    # -- the calls -------------------------------------------------------------------------------------------
    def experiment_by_name(self, name: str) -> dict[str, Any] | None:
        answer = self.call("GET", "experiments/get-by-name?" + urllib.parse.urlencode({"experiment_name": name}))
        return dict(answer["experiment"]) if answer else None

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run as MLflow's REST API gives it: ``{"info": {...}, "data": {"tags": [...], ...}}``."""
        answer = self.call("GET", "runs/get?" + urllib.parse.urlencode({"run_id": run_id}))
        if not answer:
            raise TrackingError(f"MLflow server {strip_credentials(self.tracking_uri)} has no run {run_id}")
        return dict(answer["run"])

    def search_runs(self, experiment_ids: list[str], filter_string: str, max_results: int,
                    order_by: list[str] | None = None, page_token: str | None = None,
                    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``runs/search``: the runs and the next page's token (None after the last)."""
        body: dict[str, Any] = {"experiment_ids": experiment_ids, "filter": filter_string, "max_results": max_results}
        if order_by:
            body["order_by"] = order_by
        if page_token:
            body["page_token"] = page_token
        answer = self.call("POST", "runs/search", body) or {}
        return list(answer.get("runs", [])), answer.get("next_page_token") or None

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.call("POST", "runs/log-batch", {"run_id": run_id, "tags": [{"key": k, "value": v}
                                                                         for k, v in tags.items()]})

    def delete_tag(self, run_id: str, key: str) -> None:
        self.call("POST", "runs/delete-tag", {"run_id": run_id, "key": key})

    def update_run(self, run_id: str, status: str, end_time: int | None = None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if end_time is not None:
            body["end_time"] = end_time
        self.call("POST", "runs/update", body)

    def terminate(self, run_id: str, status: str) -> None:
        """End the run (MLflow's ``set_terminated``: the status and the end time, now)."""
        self.update_run(run_id, status, int(time.time() * 1000))

    # -- artifacts --------------------------------------------------------------------------------------------
    def proxied_artifact_url(self, artifact_uri: str) -> str | None:
        """Where the server's artifact proxy takes a file of a run whose artifact root is ``artifact_uri``
        (as ``MlflowArtifactsRepository.resolve_uri``); None when the root is not ``mlflow-artifacts:`` on
        this server."""
        parts = urllib.parse.urlsplit(artifact_uri)
        tracking = urllib.parse.urlsplit(self.base)
        if parts.scheme != "mlflow-artifacts" or parts.netloc not in ("", tracking.netloc):
            return None  # not proxied, or proxied by another server (whose credentials MLflow's client knows)
        path = re.sub(r"//+", "/", f"{tracking.path}/{ARTIFACTS_API}/{parts.path}").rstrip("/")
        return urllib.parse.urlunsplit((tracking.scheme, parts.netloc or tracking.netloc, path, "", ""))

    def upload_artifact(self, artifact_uri: str, local_file: str, artifact_path: str | None = None) -> bool:
        """Upload ``local_file`` into the run's artifacts through the server's proxy (False when the run's
        artifacts are not proxied: the caller uses MLflow's client then)."""
        root = self.proxied_artifact_url(artifact_uri)
        if root is None:
            return False
        name = os.path.basename(local_file)
        url = posixpath.join(root, *((artifact_path, name) if artifact_path else (name,)))
        with open(local_file, "rb") as handle:
            data = handle.read()
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.request("PUT", url[len(self.base):], data, content_type)
        return True


__all__ = ["API", "ARTIFACTS_API", "TRANSIENT_CODES", "TrackingRest", "is_server", "needs_mlflow_client"]
