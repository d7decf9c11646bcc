"""Real receivers for notifications, on 127.0.0.1 and free ports: an SMTP server (aiosmtpd, with AUTH over
plain connections, as a local relay may offer it) and an HTTP receiver for webhook POSTs. Each keeps what it
received; one of each runs per test session (fixtures in tests/conftest.py clear them for every test)."""

from __future__ import annotations

import email
import email.message
import email.policy
import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from tests.helpers import free_port


@dataclass
class Mail:
    """One message the SMTP server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        assert part is not None
        return str(part.get_content())


@dataclass
class SmtpServer:
    """aiosmtpd's Controller (its own thread and event loop); ``logins`` are the (user, password) it was given."""

    host: str = "127.0.0.1"
    port: int = 0
    mails: list[Mail] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    controller: Any = None

    def start(self) -> SmtpServer:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        server = self

        class Handler:
            async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
                server.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content)))
                return "250 Message accepted for delivery"

        def authenticate(_server: Any, _session: Any, _envelope: Any, _mechanism: str, data: Any) -> AuthResult:
            server.logins.append((data.login.decode(), data.password.decode()))
            return AuthResult(success=True)

        self.port = free_port()
        self.controller = Controller(Handler(), hostname=self.host, port=self.port, authenticator=authenticate,
                                     auth_require_tls=False)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    def clear(self) -> None:
        self.mails.clear()
        self.logins.clear()

    def url(self, user: str | None = None) -> str:
        return f"smtp://{user + '@' if user else ''}{self.host}:{self.port}"


@dataclass
class Post:
    """One request the webhook receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP server in a thread that keeps every POST; it answers ``fail_next`` of them with 503 first."""

    posts: list[Post] = field(default_factory=list)
    fail_next: int = 0
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts.append(Post(self.path, dict(self.headers), body))
                status = 200
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    status = 503
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook-receiver").start()
        return self

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def clear(self) -> None:
        self.posts.clear()
        self.fail_next = 0
