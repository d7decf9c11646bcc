"""The notification settings: when an invocation's outcome is sent, and the forms of the addresses it goes to.

Checked when settings are read (:mod:`mltf_flow.config.settings`), so a typo fails every command at once with
the file and key, not the first failing fire at night:

* ``notify_on``: ``failure`` (default), ``always`` (successes too) or ``never``;
* ``notify_email``: addresses; needs ``smtp_url``;
* ``smtp_url``: ``smtp://[user@]host[:port]`` (plain, port 25), ``smtp+starttls://...`` (STARTTLS before
  anything is sent, port 587) or ``smtps://...`` (TLS from the first byte, port 465). A user in the URL logs
  in with the password in ``$MLTF_FLOW_SMTP_PASSWORD``: a password is never part of a setting, so it is never
  in a file, ``mltf-flow config`` or the remembered configuration (:mod:`mltf_flow.config.memo`);
* ``notify_webhook``: an ``http(s)://`` URL that receives a JSON POST. Its path or query is often the token
  (Slack, Mattermost, Teams): it is only ever shown as its origin (:func:`mltf_flow.redaction.shown_value`).

The messages here never repeat a URL's password or a webhook's path.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from mltf_flow.redaction import strip_credentials, url_origin

NOTIFY_ON = ("failure", "always", "never")
#: The variable holding the SMTP password of the user named in ``smtp_url``.
SMTP_PASSWORD_ENV = "MLTF_FLOW_SMTP_PASSWORD"
#: scheme -> (how the connection is secured, default port).
SMTP_SCHEMES = {"smtp": ("plain", 25), "smtp+starttls": ("starttls", 587), "smtps": ("ssl", 465)}
SMTP_FORM = "smtp://[user@]host[:port], smtp+starttls://[user@]host[:port] or smtps://[user@]host[:port]"


@dataclass(frozen=True)
class SmtpServer:
    """Where e-mail goes: ``smtp_url`` taken apart."""

    host: str
    port: int
    #: ``plain``, ``starttls`` or ``ssl``.
    security: str
    user: str | None = None

    def shown(self) -> str:
        """For messages: ``smtp+starttls://alice@mail.example.org:587``."""
        scheme = {security: name for name, (security, _) in SMTP_SCHEMES.items()}[self.security]
        user = f"{self.user}@" if self.user else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpServer:
    """``smtp_url`` as a :class:`SmtpServer`; ValueError (a message without the password) when it is not one."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in SMTP_SCHEMES:
        raise ValueError(f"expected {SMTP_FORM}, found {strip_credentials(url)!r}.")
    if parts.password is not None:
        raise ValueError(f"{strip_credentials(url)!r} holds a password: leave it out of the URL and set "
                         f"${SMTP_PASSWORD_ENV} in the environment of the command instead.")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url!r}: the port is not a number (expected {SMTP_FORM}).") from None
    if not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"expected {SMTP_FORM} (a host, no path), found {url!r}.")
    security, default_port = SMTP_SCHEMES[parts.scheme]
    user = urllib.parse.unquote(parts.username) if parts.username else None
    return SmtpServer(parts.hostname, port or default_port, security, user)


def check_smtp_url(value: Any) -> Any:
    """Setting ``smtp_url`` (a schema validator: a non-string is left to the type check)."""
    if isinstance(value, str):
        parse_smtp_url(value)
    return value


def check_webhook(value: Any) -> Any:
    """Setting ``notify_webhook``: an http(s) URL with a host."""
    if isinstance(value, str):
        parts = urllib.parse.urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http:// or https:// URL, found one starting {url_origin(value)!r}.")
    return value


def check_addresses(value: Any) -> Any:
    """Setting ``notify_email``: a list of addresses, or one string of them separated by commas."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        for address in value:
            if isinstance(address, str) and ("@" not in address or any(c.isspace() for c in address.strip())):
                raise ValueError(f"{address!r} is not an e-mail address (expected user@host).")
    return value


__all__ = ["NOTIFY_ON", "SMTP_FORM", "SMTP_PASSWORD_ENV", "SMTP_SCHEMES", "SmtpServer", "check_addresses",
           "check_smtp_url", "check_webhook", "parse_smtp_url"]
