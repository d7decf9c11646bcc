"""Whether an MLflow tracking server answers, asked once before a process first writes to it.

MLflow's own HTTP client retries a server that does not answer for about four minutes (7 retries with
backoff) and says nothing meanwhile, so a typo in the URI or a server that is down looked like a hang.
Here the server's ``/health`` is asked first, with a short timeout and a few retries (tenacity), one console
line per retry, then a :class:`~mltf_flow.errors.ServerUnreachable` that names the URI (credentials masked)
and what to check. Any HTTP answer counts as answering: authentication is MLflow's business. Later calls
keep MLflow's patient retries, so a short outage mid-training is ridden out rather than fatal.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from mltf_flow.errors import ServerUnreachable
from mltf_flow.redaction import split_userinfo, strip_credentials

_log = logging.getLogger(__name__)
#: Tries, and the timeout of each, before a server is declared unreachable (~20 s in all when nothing answers).
ATTEMPTS = 4
TIMEOUT_S = 3.0
_CHECKED: set[str] = set()


class _NoAnswer(Exception):
    pass


def check_server(tracking_uri: str, *, attempts: int = ATTEMPTS, timeout_s: float = TIMEOUT_S) -> None:
    """Return once the server at ``tracking_uri`` answers (once per process per URI); raise ServerUnreachable
    if it does not after ``attempts`` tries. Not for sqlite stores."""
    if tracking_uri in _CHECKED:
        return
    shown = strip_credentials(tracking_uri)

    def say(state: RetryCallState) -> None:
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        _log.warning(f"MLflow server {shown} does not answer ({_reason(state)}); try {state.attempt_number + 1} "
                     f"of {attempts} in {wait:.0f} s")

    retrying = Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=1, max=8),
                        retry=retry_if_exception_type(_NoAnswer), before_sleep=say, reraise=True)
    try:
        retrying(_ask, split_userinfo(tracking_uri)[0].rstrip("/") + "/health", timeout_s)
    except _NoAnswer as exc:
        raise ServerUnreachable(
            f"MLflow server {shown} does not answer ({exc}) after {attempts} tries. Start it, or point "
            "tracking_uri (MLTF_FLOW_TRACKING_URI or MLFLOW_TRACKING_URI) at a running server."
        ) from None
    _CHECKED.add(tracking_uri)


def silence(tracking_uri: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """Why the server at ``tracking_uri`` does not answer now (one try), or None when it answers: a cheap
    probe for a process that wants to *say* that the server is down, not to wait for it."""
    try:
        _ask(split_userinfo(tracking_uri)[0].rstrip("/") + "/health", timeout_s)
    except _NoAnswer as exc:
        return str(exc)
    return None


def _ask(url: str, timeout_s: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered (401, 404, ...): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _NoAnswer(str(reason) or type(exc).__name__) from None


def _reason(state: RetryCallState) -> str:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    return str(error) if error is not None else "no answer"
