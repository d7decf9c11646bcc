"""The token cache's place and reading (mltf_flow/gateway/login.py), and MLFLOW_TRACKING_TOKEN's expiry check,
without an IdP: the device flow and renewal are in tests/integration/test_login.py."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest

from mltf_flow.errors import AuthError, ConfigError
from mltf_flow.gateway.login import AuthConfig, cache_path, current_token

AUTH = AuthConfig(issuer="http://idp.test", client_id="mltf-cli", audience="mltf-gateway", scopes=("openid",))


def unsigned_jwt(claims: dict[str, object]) -> str:
    """A JWT-shaped token: the client reads exp without checking the signature (the gateway checks that)."""
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def write_cache(path: Path, *, expires_at: float, issuer: str = AUTH.issuer) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"issuer": issuer, "client_id": AUTH.client_id, "audience": AUTH.audience,
                                "scopes": list(AUTH.scopes), "access_token": "cached-token", "refresh_token": None,
                                "expires_at": expires_at}))


@pytest.fixture(autouse=True)
def _no_env_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)


def test_cache_path_per_gateway_under_xdg_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert cache_path("https://gw.example.org/") == tmp_path / "xdg/mltf_flow/tokens/gw.example.org_443.json"
    assert cache_path("http://gw.example.org") == tmp_path / "xdg/mltf_flow/tokens/gw.example.org_80.json"
    assert cache_path("http://[::1]:8000").name == "--1_8000.json"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_path("http://gw:9000") == tmp_path / "home/.config/mltf_flow/tokens/gw_9000.json"


def test_a_gateway_url_that_is_not_http_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("--gateway 'gw.example.org': not an http(s) URL")):
        cache_path("gw.example.org")


def test_valid_cached_token_is_sent_and_a_cache_for_another_idp_is_not(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    write_cache(cache_path("http://gw:1"), expires_at=time.time() + 600)
    assert current_token("http://gw:1") == "cached-token"
    assert current_token("http://gw:1", auth=AUTH) == "cached-token"
    moved = AuthConfig(issuer="http://other-idp.test", client_id="mltf-cli", audience="mltf-gateway",
                       scopes=("openid",))
    with pytest.raises(AuthError, match=re.escape("not logged in to http://gw:1: run `mltf-flow login --gateway")):
        current_token("http://gw:1", auth=moved)


def test_expired_cached_token_without_refresh_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    write_cache(cache_path("http://gw:1"), expires_at=time.time() + 30)  # within the renewal margin
    with pytest.raises(AuthError, match=r"expired at .* no refresh token: run `mltf-flow login --gateway http://gw:1`"):
        current_token("http://gw:1")


def test_unreadable_cache_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    path = cache_path("http://gw:1")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(AuthError, match=re.escape(f"token cache {path} is unreadable")):
        current_token("http://gw:1")


def test_environment_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "opaque-token")  # not a JWT: sent as it is
    assert current_token("http://gw:1") == "opaque-token"
    fresh = unsigned_jwt({"sub": "alice", "exp": int(time.time()) + 300})
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", fresh)
    assert current_token("http://gw:1") == fresh
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", unsigned_jwt({"sub": "alice", "exp": int(time.time()) - 1}))
    with pytest.raises(AuthError, match=re.escape("export $(mltf-flow login --gateway http://gw:1)")):
        current_token("http://gw:1")
