"""E-mail over SMTP (stdlib ``smtplib``): one message to every address of ``notify_email``.

``smtp_url`` says how to connect (:mod:`mltf_flow.config.notify`): plain, STARTTLS or TLS from the start,
with the system's certificate authorities. A user in the URL logs in with ``$MLTF_FLOW_SMTP_PASSWORD``;
over a plain connection only when the server offers AUTH there (a local relay), as ``smtplib`` does.
"""

from __future__ import annotations

import getpass
import smtplib
import socket
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING

from mltf_flow.config.notify import SMTP_PASSWORD_ENV, parse_smtp_url
from mltf_flow.errors import ConfigError

if TYPE_CHECKING:
    from mltf_flow.config import Settings
    from mltf_flow.notify import Message

#: Seconds to connect and for each reply of the server.
TIMEOUT_S = 20.0


def default_sender() -> str:
    """``<user>@<this host>``: the sender when ``notify_from`` is not set."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def compose(settings: Settings, message: Message) -> EmailMessage:
    """The e-mail for ``message``."""
    mail = EmailMessage()
    mail["From"] = settings.notify_from or default_sender()
    mail["To"] = ", ".join(settings.notify_email)
    mail["Subject"] = message.subject
    mail["Date"] = formatdate(localtime=True)
    mail["Message-ID"] = make_msgid(domain=socket.gethostname())
    mail["X-Mailer"] = "mltf-flow"
    mail.set_content(message.text)
    return mail


def send_email(settings: Settings, message: Message, *, password: str | None, timeout: float = TIMEOUT_S) -> None:
    """Send ``message`` to ``notify_email`` through ``smtp_url``; raises what the connection raised."""
    if settings.smtp_url is None:
        raise ConfigError("notify_email is set but smtp_url is not.")
    server = parse_smtp_url(settings.smtp_url)
    if server.user and password is None:
        raise ConfigError(f"smtp_url names user {server.user!r}, but ${SMTP_PASSWORD_ENV} is not set: set it "
                          "in the environment of the command, or leave the user out of smtp_url.")
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if server.security == "ssl":
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=timeout)
    with client:
        if server.security == "starttls":
            client.starttls(context=context)
        if server.user and password is not None:
            client.login(server.user, password)
        client.send_message(compose(settings, message))


__all__ = ["TIMEOUT_S", "compose", "default_sender", "send_email"]
