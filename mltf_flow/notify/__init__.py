"""Telling people how an invocation ended: e-mail over SMTP and a webhook POST, as the settings configure them.

:func:`send` delivers one :class:`Message` through every configured channel (:mod:`.smtp`, :mod:`.webhook`).
A channel that fails says so once on the console, without a secret, and never raises: the invocation's exit
code is the pipeline's, not the mail server's. With nothing configured nothing is sent and nothing is said.
Which outcomes are sent (``notify_on``) is the caller's decision (:func:`mltf_flow.failure_report.report_outcome`).
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mltf_flow.config.notify import SMTP_PASSWORD_ENV
from mltf_flow.redaction import mask_text, url_origin

if TYPE_CHECKING:
    from mltf_flow.config import Settings

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One outcome, as each channel sends it (every text already redacted by whoever made it)."""

    #: The e-mail's subject.
    subject: str
    #: The e-mail's plain-text body.
    text: str
    #: The webhook's JSON body.
    payload: Mapping[str, Any] = field(default_factory=dict)


def configured(settings: Settings) -> list[str]:
    """The channels the settings configure (``email``, ``webhook``)."""
    return [name for name, on in (("email", bool(settings.notify_email)), ("webhook", bool(settings.notify_webhook)))
            if on]


def send(settings: Settings, message: Message) -> list[str]:
    """Send ``message`` through every configured channel; returns the warnings given (one per failed channel)."""
    password = os.environ.get(SMTP_PASSWORD_ENV) or None
    secrets = [v for v in (password, settings.notify_webhook, _path(settings.notify_webhook)) if v]
    warnings: list[str] = []
    for channel in configured(settings):
        try:
            if channel == "email":
                from mltf_flow.notify.smtp import send_email

                send_email(settings, message, password=password)
            else:
                from mltf_flow.notify.webhook import post_json

                assert settings.notify_webhook is not None
                post_json(settings.notify_webhook, message.payload)
        except Exception as exc:
            warning = mask_text(f"could not send the report {_where(settings, channel)}: {_reason(exc)} (the "
                                "invocation's exit code does not change)", secrets)
            _log.warning(f"warning: {warning}")
            warnings.append(warning)
    return warnings


def _path(url: str | None) -> str | None:
    """A webhook URL's path and query: its token, usually."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return rest if len(rest) > 1 else None


def _where(settings: Settings, channel: str) -> str:
    if channel == "email":
        from mltf_flow.config.notify import parse_smtp_url

        assert settings.smtp_url is not None  # notify_email needs it (checked with the settings)
        return (f"by e-mail to {len(settings.notify_email)} address(es) via "
                f"{parse_smtp_url(settings.smtp_url).shown()}")
    return f"to webhook {url_origin(settings.notify_webhook or '')}"


def _reason(exc: Exception) -> str:
    """What went wrong, in one line; the error's own words (they never hold the URL's path or a password:
    neither is passed to them), its class when it has none."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["Message", "configured", "send"]
