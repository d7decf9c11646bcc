"""What counts as a secret, and how secrets are masked wherever values are shown or stored.

Two kinds of secret, one rule each:

- a parameter or variable whose *name* looks secret (``api_token``, ``db_password``: :func:`is_secret_name`)
  has its whole value masked (``***``) in MLflow params, logs, displayed commands, Luigi's task names, and
  it is left out of cache keys: a rotated token reaches the same results, so it must not rerun a pipeline;
- credentials inside a URL (``postgresql://u:PW@host/db``) are stripped from every value we write
  (params, tags, log lines, ``mltf/step.log``, rendered scripts, ``mltf-flow config``, error messages):
  :func:`strip_credentials` gives ``postgresql://u:***@host/db``; the key covers the URL without them.

A webhook URL (a value whose name says ``webhook``) carries its token in its path or query
(``https://hooks.slack.com/services/T0/B0/XXXX``): it is shown as its origin only, ``https://hooks.slack.com/***``
(:func:`url_origin`).

Both kinds reach a step's command through its environment, never its argv (:mod:`mltf_flow.secret_args`).
"""

from __future__ import annotations

import re
import shlex
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

_SECRET_WORDS = ("token", "password", "passwd", "secret", "api_key", "apikey", "credential")
#: ``scheme://user:password@`` (the password part is what is masked; ``scheme://user@`` has none).
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@'\"]*):(?P<pw>[^\s@/'\"]+)@")
MASK = "***"
#: Environment variables carrying secret values to a step's command (``MLTF_SECRET_API_TOKEN``).
SECRET_ENV_PREFIX = "MLTF_SECRET_"
_PLACEHOLDER = re.compile(r"@@MLTF_SECRET_[A-Z0-9_]+@@")


def is_secret_name(name: str) -> bool:
    """True for parameter/variable names that hold secrets; their values are never logged."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def has_credentials(text: str) -> bool:
    """True when ``text`` holds a URL with a password (``scheme://user:password@host``)."""
    return any(m.group("pw") != MASK for m in _URL_CREDENTIALS.finditer(text))


def strip_credentials(text: str) -> str:
    """``text`` with the password of every URL in it masked: ``scheme://user:***@host``. The one function
    for URL credentials, used wherever a value is written or shown."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group('head')}:{MASK}@", text)


def is_secret_param(name: str, value: Any) -> bool:
    """True for a parameter whose value must not appear in any argv: a secret name, or a URL with a password."""
    text = "" if value is None else str(value)
    return bool(text) and (is_secret_name(name) or has_credentials(text))


def shown_value(name: str, value: Any) -> str:
    """A parameter's (or setting's) value as it may be stored or shown."""
    if is_secret_name(name):
        return MASK
    if "webhook" in name.lower() and isinstance(value, str):
        return url_origin(value)
    return strip_credentials(str(value))


def url_origin(url: str) -> str:
    """``url`` without what may be a secret: no user info, and ``/***`` for any path or query
    (``https://hooks.example.org/***``). For URLs whose token is their path, as webhooks' are."""
    parts = urllib.parse.urlsplit(url.strip())
    host = parts.netloc.rpartition("@")[2]
    if not parts.scheme or not host:
        return MASK
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment
    return f"{parts.scheme}://{host}" + (f"/{MASK}" if hidden else "")


def redact(params: Mapping[str, Any]) -> dict[str, str]:
    """Parameters as strings, with secret-looking names masked and URL credentials stripped."""
    return {k: shown_value(k, v) for k, v in params.items()}


def mask_text(text: str, values: Iterable[str]) -> str:
    """``text`` with each of ``values`` (secret values) and argv placeholders replaced by ``***``, and URL
    credentials stripped."""
    text = _PLACEHOLDER.sub(MASK, text)
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        text = text.replace(value, MASK)
    return strip_credentials(text)


def display_command(command: str, params: Mapping[str, Any]) -> str:
    """``command`` with the values of secret-looking parameters masked, for logs."""
    shown = command
    for name, value in params.items():
        if is_secret_name(name) and str(value):
            shown = shown.replace(shlex.quote(str(value)), MASK).replace(str(value), MASK)
    return strip_credentials(_PLACEHOLDER.sub(MASK, shown))


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """(``uri`` without user info, user, password): urllib sends no credentials written into a URL."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, None, None
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    user = urllib.parse.unquote(parts.username or "")
    password = None if parts.password is None else urllib.parse.unquote(parts.password)
    return bare, user, password


def secret_env_name(param: str) -> str:
    """The environment variable that carries parameter ``param``'s value: ``MLTF_SECRET_<NAME>``."""
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", param).upper()


__all__ = ["MASK", "SECRET_ENV_PREFIX", "display_command", "has_credentials", "is_secret_name", "is_secret_param",
           "mask_text", "redact", "secret_env_name", "shown_value", "split_userinfo", "strip_credentials", "url_origin"]
