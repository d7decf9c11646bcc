"""`mltf-flow login`'s side of the gateway's auth (mltf_flow/gateway/login.py) against a real OpenID Connect
provider process (tests/oidc_provider.py, Authlib): the device flow approved or denied through the IdP's
verification form, tokens that verify with PyJWT against the IdP's JWKS, the 0600 token cache, renewal with
rotating refresh tokens, and MLFLOW_TRACKING_TOKEN from the environment."""

from __future__ import annotations

import io
import json
import re
import stat
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest

from mltf_flow.errors import AuthError
from mltf_flow.gateway.login import cache_path, current_token, device_login, login_main
from tests.helpers import wait_until

if TYPE_CHECKING:
    from tests.oidc_env import OidcProvider

pytest_plugins = ["tests.oidc_env"]

GATEWAY = "http://gateway.test:8443"
CODE = re.compile(r"enter the code ([A-Z]{4}-[A-Z]{4})")


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    return home


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="login") as executor:
        yield executor


def answer_in_browser(provider: OidcProvider, shown: Callable[[], str], user: str, *, deny: bool = False) -> str:
    """What the user does: read the code the CLI shows, submit it on the IdP's page. Returns the code."""
    match = wait_until(lambda: CODE.search(shown()), 30, "the login message with the user code")
    assert isinstance(match, re.Match)
    (provider.deny if deny else provider.approve)(match.group(1), user)
    return match.group(1)


def verify(provider: OidcProvider, token: str) -> dict[str, Any]:
    """The gateway's check: signature against the IdP's JWKS, issuer, audience, expiry."""
    key = jwt.PyJWKClient(provider.jwks_uri).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=["RS256"], audience="mltf-gateway",
                                        issuer=provider.issuer)
    return claims


def login(provider: OidcProvider, pool: ThreadPoolExecutor, user: str) -> tuple[int, str, str]:
    """`mltf-flow login` with the user approving in the browser: (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    future = pool.submit(login_main, GATEWAY, stdout=stdout, stderr=stderr, auth=provider.auth_config())
    answer_in_browser(provider, stderr.getvalue, user)
    return future.result(timeout=60), stdout.getvalue(), stderr.getvalue()


def test_device_flow_gives_a_token_the_gateway_can_verify(oidc_provider: OidcProvider,
                                                         pool: ThreadPoolExecutor) -> None:
    shown: list[str] = []
    future = pool.submit(device_login, oidc_provider.auth_config(), show=shown.append)
    code = answer_in_browser(oidc_provider, lambda: "\n".join(shown), "alice")
    tokens = future.result(timeout=60)

    assert f"{oidc_provider.issuer}/device?user_code={code}" in shown[0]  # the complete URI, to click
    claims = verify(oidc_provider, tokens.access_token)
    assert claims["preferred_username"] == "alice"
    assert claims["groups"] == ["physicists"]
    assert claims["client_id"] == "mltf-cli"
    assert "offline_access" in claims["scope"].split()
    assert tokens.refresh_token  # offline_access asked for: a refresh token comes with it
    assert abs(tokens.expires_at - claims["exp"]) < 5


def test_denied_login_is_a_clear_auth_error(oidc_provider: OidcProvider, pool: ThreadPoolExecutor) -> None:
    shown: list[str] = []
    future = pool.submit(device_login, oidc_provider.auth_config(), show=shown.append)
    code = answer_in_browser(oidc_provider, lambda: "\n".join(shown), "bob", deny=True)
    with pytest.raises(AuthError, match=f"denied .*code {code} was refused.*run `mltf-flow login` again"):
        future.result(timeout=60)


def token_of(out: str) -> str:
    """The token of `mltf-flow login`'s output (``export $(...)`` lines)."""
    return dict(line.split("=", 1) for line in out.splitlines())["MLFLOW_TRACKING_TOKEN"]


def test_minted_tokens_verify_only_when_valid(oidc_provider: OidcProvider) -> None:
    good = oidc_provider.mint(sub="carol", preferred_username="carol", groups=["mltf-admins"])
    assert verify(oidc_provider, good)["groups"] == ["mltf-admins"]
    expired = oidc_provider.mint(sub="carol", exp=int(time.time()) - 30)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(oidc_provider, expired)
    elsewhere = oidc_provider.mint(sub="carol", aud="another-service")
    with pytest.raises(jwt.InvalidAudienceError):
        verify(oidc_provider, elsewhere)


def test_login_prints_only_the_export_line_and_keeps_a_private_cache(
    oidc_provider: OidcProvider, pool: ThreadPoolExecutor, config_home: Path,
) -> None:
    rc, out, err = login(oidc_provider, pool, "bob")
    assert rc == 0, err
    token = token_of(out)
    assert out == (f"MLFLOW_TRACKING_TOKEN={token}\nMLFLOW_TRACKING_AUTH=mltf-gateway\n"
                   f"MLFLOW_TRACKING_URI={GATEWAY}/mlflow\nMLTF_GATEWAY_URL={GATEWAY}\n")
    assert verify(oidc_provider, token)["preferred_username"] == "bob"
    assert token not in err
    path = cache_path(GATEWAY)
    assert path == config_home / "mltf_flow" / "tokens" / "gateway.test_8443.json"  # under XDG_CONFIG_HOME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cached = json.loads(path.read_text())
    assert cached["access_token"] == token
    assert current_token(GATEWAY) == token  # valid for 300 s: sent as it is

    # A second login renews with the saved refresh token (no code shown), which the IdP rotates.
    old_refresh = cached["refresh_token"]
    stdout, stderr = io.StringIO(), io.StringIO()
    assert login_main(GATEWAY, stdout=stdout, stderr=stderr, auth=oidc_provider.auth_config()) == 0
    assert not CODE.search(stderr.getvalue())
    assert "no browser needed" in stderr.getvalue()
    renewed = token_of(stdout.getvalue())
    assert renewed != token
    assert verify(oidc_provider, renewed)["preferred_username"] == "bob"
    assert json.loads(path.read_text())["refresh_token"] != old_refresh
    reuse = httpx.post(oidc_provider.token_endpoint, data={"grant_type": "refresh_token", "client_id": "mltf-cli",
                                                           "refresh_token": old_refresh})
    assert (reuse.status_code, reuse.json()["error"]) == (400, "invalid_grant")


def test_an_expired_token_is_renewed_without_a_new_login(
    oidc_provider_factory: Callable[..., OidcProvider], pool: ThreadPoolExecutor,
) -> None:
    provider = oidc_provider_factory(access_token_lifetime=2)
    rc, out, err = login(provider, pool, "alice")
    assert rc == 0, err
    first = token_of(out)
    first_exp = verify(provider, first)["exp"]
    wait_until(lambda: time.time() > first_exp, 10, "the first token's expiry")
    with pytest.raises(jwt.ExpiredSignatureError):
        verify(provider, first)

    second = current_token(GATEWAY)
    assert second != first
    assert verify(provider, second)["preferred_username"] == "alice"

    # The session ends at the IdP (here: its refresh token used elsewhere, so rotated away): the next renewal
    # fails with what to do.
    cached = json.loads(cache_path(GATEWAY).read_text())
    used = httpx.post(provider.token_endpoint, data={"grant_type": "refresh_token", "client_id": "mltf-cli",
                                                     "refresh_token": cached["refresh_token"]})
    assert used.status_code == 200, used.text
    second_exp = verify(provider, second)["exp"]
    wait_until(lambda: time.time() > second_exp, 10, "the second token's expiry")
    with pytest.raises(AuthError, match=re.escape(f"run `mltf-flow login --gateway {GATEWAY}`")):
        current_token(GATEWAY)
    rc, out, err = login(provider, pool, "alice")  # `mltf-flow login` then falls back to the device flow
    assert rc == 0, err
    assert "no browser needed" not in err
    assert verify(provider, token_of(out))["preferred_username"] == "alice"


def test_token_from_the_environment(oidc_provider: OidcProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    valid = oidc_provider.mint(sub="alice", preferred_username="alice")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", valid)
    assert current_token(GATEWAY) == valid  # no cache needed

    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", oidc_provider.mint(sub="alice", exp=int(time.time()) - 5))
    with pytest.raises(AuthError, match="expired at .*" +
                       re.escape(f"export $(mltf-flow login --gateway {GATEWAY})")):
        current_token(GATEWAY)


def test_not_logged_in(config_home: Path) -> None:
    with pytest.raises(AuthError, match=re.escape(f"not logged in to {GATEWAY}: run `mltf-flow login --gateway "
                                                  f"{GATEWAY}`")):
        current_token(GATEWAY)


def test_an_expired_exported_token_gives_way_to_the_saved_login(
    oidc_provider: OidcProvider, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`export $(mltf-flow login)` once, use it an hour later: the saved login renews what expired."""
    rc, out, err = login(oidc_provider, pool, "alice")
    assert rc == 0, err
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", oidc_provider.mint(sub="alice", exp=int(time.time()) - 5))
    assert current_token(GATEWAY) == token_of(out)
    # What MLflow's clients get with MLFLOW_TRACKING_AUTH=mltf-gateway (the provider MLflow loads by that name).
    from mlflow.tracking.request_auth.registry import fetch_auth

    monkeypatch.setenv("MLTF_GATEWAY_URL", GATEWAY)
    request = httpx.Request("GET", f"{GATEWAY}/mlflow/api/2.0/mlflow/experiments/search")
    fetch_auth("mltf-gateway")(request)
    assert request.headers["Authorization"] == f"Bearer {token_of(out)}"
