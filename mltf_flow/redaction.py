"""What counts as a secret, and how secrets are masked wherever values are shown or stored.

A parameter or variable whose *name* looks secret (``api_token``, ``db_password``) has its value masked in
MLflow params, logs, displayed commands and cache keys.
"""

from __future__ import annotations

import shlex
import urllib.parse
from collections.abc import Mapping
from typing import Any

_SECRET_WORDS = ("token", "password", "passwd", "secret", "api_key", "apikey", "credential")


def is_secret_name(name: str) -> bool:
    """True for parameter/variable names that hold secrets; their values are never logged."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact(params: Mapping[str, Any]) -> dict[str, str]:
    """Parameters as strings, with secret-looking names masked."""
    return {k: "***" if is_secret_name(k) else str(v) for k, v in params.items()}


def display_command(command: str, params: Mapping[str, Any]) -> str:
    """``command`` with the values of secret-looking parameters masked, for logs."""
    shown = command
    for name, value in params.items():
        if is_secret_name(name) and str(value):
            shown = shown.replace(shlex.quote(str(value)), "***").replace(str(value), "***")
    return shown


def mask_uri(uri: str) -> str:
    """``uri`` with the password of its user info masked (``http://u:***@host:5000``), for messages."""
    try:
        parts = urllib.parse.urlsplit(uri)
        password, user = parts.password, parts.username
    except ValueError:  # an unparsable port or bracket: show nothing of the user info
        head, at, tail = uri.rpartition("@")
        return f"{head.partition('//')[0]}//***@{tail}" if at else uri
    if password is None and user is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    shown = f"{user}:***@" if password is not None else f"{user}@"
    return parts._replace(netloc=shown + host).geturl()


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """(``uri`` without user info, user, password): urllib sends no credentials written into a URL."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri, None, None
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    user = urllib.parse.unquote(parts.username or "")
    password = None if parts.password is None else urllib.parse.unquote(parts.password)
    return bare, user, password


__all__ = ["display_command", "is_secret_name", "mask_uri", "redact", "split_userinfo"]
