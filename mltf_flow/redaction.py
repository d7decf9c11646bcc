"""What counts as a secret, and how secrets are masked wherever values are shown or stored.

A parameter or variable whose *name* looks secret (``api_token``, ``db_password``) has its value masked in
MLflow params, logs, displayed commands and cache keys.
"""

from __future__ import annotations

import shlex
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


__all__ = ["display_command", "is_secret_name", "redact"]
