"""A webhook: the outcome as one JSON POST (``notify_webhook``), retried briefly when the receiver is away.

The body has a ``text`` (what Slack, Mattermost and similar incoming webhooks show) next to the whole report.
Connection errors, time-outs, 429 and 5xx answers are tried again (3 tries, a few seconds in all); any other
answer is final. User info in the URL (``https://user:pw@host/...``) is sent as basic authentication, which
``urllib`` would not do by itself.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from mltf_flow.redaction import split_userinfo

#: Seconds per try; tries in all.
TIMEOUT_S = 10.0
ATTEMPTS = 3


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    return isinstance(exc, urllib.error.URLError | TimeoutError | ConnectionError)


def post_json(url: str, payload: Mapping[str, Any], *, timeout: float = TIMEOUT_S, attempts: int = ATTEMPTS) -> int:
    """POST ``payload`` as JSON to ``url``; returns the HTTP status, raises the last error after ``attempts``."""
    bare, user, password = split_userinfo(url)
    headers = {"Content-Type": "application/json", "User-Agent": "mltf-flow"}
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    body = json.dumps(payload, sort_keys=True).encode()

    def once() -> int:
        request = urllib.request.Request(bare, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)

    retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.5, max=4),
                        retry=retry_if_exception(_transient), reraise=True)
    status: int = retrying(once)
    return status


__all__ = ["ATTEMPTS", "TIMEOUT_S", "post_json"]
