"""Pytest fixtures for a real OpenID Connect provider: tests/oidc_provider.py (Authlib) as a process on
127.0.0.1 and a free port, with the device flow, rotating refresh tokens, a JWKS and a test-only minting endpoint.

Use them from a test module with

    pytest_plugins = ["tests.oidc_env"]

Fixtures and helpers (all defined below):
  oidc_provider        session  OidcProvider: access tokens of 300 s, device poll interval 1 s, /test/mint on
  oidc_provider_factory function a callable (**options) -> OidcProvider: a provider of this test's own
                                (short-lived tokens: access_token_lifetime=2), stopped by PID after the test;
                                options are start_oidc_provider's keywords
  start_oidc_provider(log_dir, **options)  the context manager under both (import it where no fixture fits)

OidcProvider: .issuer .audience ("mltf-gateway") .client_id ("mltf-cli") .pid .log_path .jwks_uri
  .token_endpoint, .approve(user_code, user, password=None) and .deny(...) post the verification form as a
  browser would (password None: the user's fixed one, "<user>-pw"), .mint(*, lifetime=300, kid=None, **claims)
  a token the IdP really signed (a claim given as None is left out), .auth_config(scopes=...) the
  mltf_flow.gateway.login.AuthConfig a gateway in front of this IdP would announce, .log_tail(lines=40).
Users: alice, bob (groups ["physicists"]), carol (["mltf-admins"]).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mltf_flow.gateway.login import AuthConfig

PROVIDER_PY = Path(__file__).resolve().parent / "oidc_provider.py"
AUDIENCE = "mltf-gateway"
CLIENT_ID = "mltf-cli"
DEFAULT_SCOPES = ("openid", "profile", "offline_access")


@dataclass
class OidcProvider:
    """A running tests/oidc_provider.py process."""

    issuer: str
    pid: int
    log_path: Path
    audience: str = AUDIENCE
    client_id: str = CLIENT_ID

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    def approve(self, user_code: str, user: str, password: str | None = None) -> None:
        """Allow a pending device request for ``user``, through the verification form (AssertionError if the
        page refuses: wrong password, unknown or already used code)."""
        self._verify(user_code, user, password, "approve")

    def deny(self, user_code: str, user: str, password: str | None = None) -> None:
        self._verify(user_code, user, password, "deny")

    def _verify(self, user_code: str, user: str, password: str | None, action: str) -> None:
        import httpx

        form = {"user_code": user_code, "username": user, "password": password or f"{user}-pw", "action": action}
        response = httpx.post(f"{self.issuer}/device", data=form, timeout=10)
        assert response.status_code == 200, f"{action} {user_code} for {user}: {response.status_code} {response.text}"

    def mint(self, *, lifetime: int = 300, kid: str | None = None, **claims: Any) -> str:
        """A JWT signed with the IdP's key: iss, iat, exp (now + lifetime), jti, aud (the gateway's) and
        client_id filled in unless given; pass ``exp=`` for an absolute expiry, ``aud="other"`` for another
        audience, ``aud=None`` for none; ``kid`` replaces the header's key id (an unknown key)."""
        import httpx

        body = {"claims": {"aud": self.audience, "client_id": self.client_id, **claims}, "lifetime": lifetime,
                "kid": kid}
        response = httpx.post(f"{self.issuer}/test/mint", json=body, timeout=10)
        response.raise_for_status()
        return str(response.json()["token"])

    def auth_config(self, scopes: tuple[str, ...] = DEFAULT_SCOPES) -> AuthConfig:
        from mltf_flow.gateway.login import AuthConfig

        return AuthConfig(issuer=self.issuer, client_id=self.client_id, audience=self.audience, scopes=scopes)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def start_oidc_provider(log_dir: Path, *, access_token_lifetime: int = 300, refresh_token_lifetime: int = 86400,
                        device_interval: int = 1, device_code_lifetime: int = 600, audience: str = AUDIENCE,
                        test_endpoints: bool = True) -> Iterator[OidcProvider]:
    """Start a provider (port 0: it binds a free one itself), wait for its READY line, stop it by PID on exit."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "oidc_provider.log"
    command = [sys.executable, str(PROVIDER_PY), "--host", "127.0.0.1", "--port", "0", "--audience", audience,
               "--access-token-lifetime", str(access_token_lifetime), "--refresh-token-lifetime",
               str(refresh_token_lifetime), "--device-interval", str(device_interval), "--device-code-lifetime",
               str(device_code_lifetime), *(["--test-endpoints"] if test_endpoints else [])]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:  # readiness poll on its READY line, not a sleep-as-synchronisation
            ready = re.search(r"^READY (\S+)$", log_path.read_text(errors="replace"), re.MULTILINE)
            if ready:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"oidc provider exited ({proc.returncode}): {log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"oidc provider not READY within 60 s: {log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield OidcProvider(issuer=ready.group(1), pid=proc.pid, log_path=log_path, audience=audience)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


# One provider per pytest process even if this module is collected twice (pytest_plugins in one module, an
# import in another): started by the first user, stopped by the last (as tests/integration/rucio_env.py).
_SHARED: dict[str, Any] = {}


@pytest.fixture
def oidc_provider_factory(tmp_path: Path) -> Iterator[Callable[..., OidcProvider]]:
    """Start providers with options of the test's own (see start_oidc_provider); all stopped after the test."""
    started = itertools.count()
    with contextlib.ExitStack() as stack:
        def start(**options: Any) -> OidcProvider:
            return stack.enter_context(start_oidc_provider(tmp_path / f"oidc-{next(started)}", **options))

        yield start


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """The session's IdP: tokens for audience mltf-gateway valid 300 s, device poll interval 1 s, /test/mint."""
    if not _SHARED:
        stack = contextlib.ExitStack()
        provider = stack.enter_context(start_oidc_provider(tmp_path_factory.mktemp("oidc")))
        _SHARED.update(provider=provider, stack=stack, users=0)
    _SHARED["users"] += 1
    shared_provider: OidcProvider = _SHARED["provider"]
    try:
        yield shared_provider
    finally:
        _SHARED["users"] -= 1
        if _SHARED["users"] == 0:
            stack = _SHARED["stack"]
            _SHARED.clear()
            stack.close()
