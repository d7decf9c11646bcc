"""The user's side of the gateway's authentication: `mltf-flow login` (OAuth 2.0 device flow, RFC 8628) and the
bearer token every gateway client call sends.

The gateway says which identity provider it trusts (``GET /api/v1/auth``: issuer, client id, audience,
scopes). ``mltf-flow login --gateway URL`` runs the device flow against that IdP (the user opens a URL in any
browser and types a short code) and keeps the tokens in a per-gateway cache,
``$XDG_CONFIG_HOME/mltf_flow/tokens/<host>_<port>.json`` (``~/.config`` without XDG_CONFIG_HOME), mode 0600,
replaced atomically under a file lock. It prints only ``MLFLOW_TRACKING_TOKEN=<token>`` on stdout, so that
``export $(mltf-flow login --gateway URL)`` hands a token to MLflow's own client; everything else goes to
stderr, and a token is never printed or logged anywhere else.

:func:`current_token` is what a client call sends: ``MLFLOW_TRACKING_TOKEN`` when set (refused once expired),
else the cached access token, renewed with the refresh token (rotated by the IdP: the new one replaces it in
the cache) when it expires within :data:`REFRESH_MARGIN_S`.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mltf_flow.errors import EXIT_BAD_INPUT, AuthError, ConfigError

#: A cached access token that expires within this many seconds is renewed before it is sent.
REFRESH_MARGIN_S = 60
HTTP_TIMEOUT_S = 30
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOKEN_VARIABLE = "MLFLOW_TRACKING_TOKEN"


@dataclass(frozen=True)
class AuthConfig:
    """What the gateway announces at ``/api/v1/auth``: the IdP to log in at, as which client, for which audience."""

    issuer: str
    client_id: str
    audience: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class TokenSet:
    """Tokens from the IdP; ``expires_at`` is the access token's expiry (seconds since the epoch)."""

    access_token: str
    refresh_token: str | None
    expires_at: float


def fetch_auth_config(gateway_url: str) -> AuthConfig:
    """The gateway's ``GET /api/v1/auth``, which needs no token."""
    import httpx

    url = f"{_base(gateway_url)}/api/v1/auth"
    try:
        response = httpx.get(url, timeout=HTTP_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise AuthError(f"cannot reach the gateway at {gateway_url} ({exc}): check --gateway URL") from None
    if response.status_code != 200:
        raise AuthError(f"the gateway at {gateway_url} answered {response.status_code} to {url}: is it an mltf "
                        "gateway? Check --gateway URL")
    try:
        data = response.json()
        scopes = data.get("scopes", ["openid"])
        return AuthConfig(issuer=str(data["issuer"]).rstrip("/"), client_id=str(data["client_id"]),
                          audience=str(data["audience"]),
                          scopes=tuple(scopes.split() if isinstance(scopes, str) else map(str, scopes)))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuthError(f"the gateway at {gateway_url} answered {url} without issuer/client_id/audience ({exc!r}): "
                        "is it an mltf gateway? Check --gateway URL") from None


def device_login(auth: AuthConfig, *, show: Callable[[str], None]) -> TokenSet:
    """The device flow: ask the IdP for a user code, ``show`` the user where to enter it, then poll the token
    endpoint (honouring ``interval`` and ``slow_down``) until the user allowed or denied it, or it expired."""
    endpoints = _discover(auth.issuer)
    started = time.time()
    status, data = _post(endpoints["device_authorization_endpoint"],
                         {"client_id": auth.client_id, "scope": " ".join(auth.scopes)})
    if status != 200 or "device_code" not in data or "user_code" not in data:
        raise AuthError(f"the identity provider {auth.issuer} refused the login request: {_describe(data, status)}")
    user_code = str(data["user_code"])
    uri = str(data.get("verification_uri") or data.get("verification_url") or "")
    complete = data.get("verification_uri_complete")
    lifetime = int(data.get("expires_in", 600))
    if complete:
        show(f"To log in, open {complete}\n  (or open {uri} and enter the code {user_code}); "
             f"waiting up to {lifetime // 60} min.")
    else:
        show(f"To log in, open {uri} and enter the code {user_code}; waiting up to {lifetime // 60} min.")
    interval = max(1, int(data.get("interval", 5)))
    deadline = time.monotonic() + lifetime
    form = {"grant_type": DEVICE_GRANT, "device_code": str(data["device_code"]), "client_id": auth.client_id}
    while True:
        # RFC 8628 3.5: the client waits `interval` seconds between token requests (the protocol's pace).
        time.sleep(interval)
        asked = time.time()
        status, answer = _post(endpoints["token_endpoint"], form)
        if status == 200:
            return _token_set(answer, asked, previous_refresh=None)
        error = answer.get("error")
        if error == "authorization_pending":
            pass
        elif error == "slow_down":
            interval += 5
        elif error == "access_denied":
            raise AuthError(f"the login was denied at {auth.issuer} (code {user_code} was refused in the browser): "
                            "run `mltf-flow login` again and allow the request")
        elif error == "expired_token":
            raise _expired_code(user_code, time.time() - started)
        else:
            raise AuthError(f"the identity provider {auth.issuer} refused the login: {_describe(answer, status)}")
        if time.monotonic() > deadline:
            raise _expired_code(user_code, time.time() - started)


def refresh_tokens(auth: AuthConfig, refresh_token: str) -> TokenSet:
    """New tokens for a refresh token (``grant_type=refresh_token``). The IdP may rotate it: the answer's
    refresh token replaces the old one, which keeps working only where the IdP does not rotate."""
    endpoints = _discover(auth.issuer)
    asked = time.time()
    status, answer = _post(endpoints["token_endpoint"], {"grant_type": "refresh_token", "refresh_token": refresh_token,
                                                          "client_id": auth.client_id})
    if status != 200:
        raise AuthError(f"the saved login session was refused by {auth.issuer} ({_describe(answer, status)})")
    return _token_set(answer, asked, previous_refresh=refresh_token)


def cache_path(gateway_url: str) -> Path:
    """``$XDG_CONFIG_HOME/mltf_flow/tokens/<host>_<port>.json`` (``~/.config`` without XDG_CONFIG_HOME)."""
    parts = urllib.parse.urlsplit(_base(gateway_url))
    host = (parts.hostname or "").replace(":", "-")  # an IPv6 literal: no colons in a file name
    port = parts.port or (443 if parts.scheme == "https" else 80)
    root = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return root / "mltf_flow" / "tokens" / f"{host}_{port}.json"


def current_token(gateway_url: str, *, auth: AuthConfig | None = None) -> str:
    """The bearer token for a call to ``gateway_url``: ``MLFLOW_TRACKING_TOKEN`` if set, else the cached one,
    renewed when it expires within :data:`REFRESH_MARGIN_S`. ``auth``, when given, must be the cache's IdP and
    client (a gateway that moved to another IdP needs a new login)."""
    login = f"mltf-flow login --gateway {gateway_url}"
    path = cache_path(gateway_url)
    cached = _read_cache(path, login)
    from_env = os.environ.get(TOKEN_VARIABLE)
    if from_env:
        expires = _unverified_exp(from_env)
        if expires is None or expires - time.time() > REFRESH_MARGIN_S:
            return from_env
        if cached is None:  # the exported token is all there is
            if expires > time.time():
                return from_env
            raise AuthError(f"{TOKEN_VARIABLE} holds a token that expired at {_when(expires)}: renew it with "
                            f"`export $({login})`")
        # An exported token about to expire: the saved login (the one it came from) renews it.
    if cached is None or (auth is not None and cached[0] != auth):
        raise AuthError(f"not logged in to {gateway_url}: run `{login}`")
    if cached[1].expires_at - time.time() > REFRESH_MARGIN_S:
        return cached[1].access_token
    with _lock(path):
        # Re-read under the lock: another process may have renewed it (and the IdP rotated the refresh token).
        cached = _read_cache(path, login)
        if cached is None:
            raise AuthError(f"not logged in to {gateway_url}: run `{login}`")
        config, tokens = cached
        if tokens.expires_at - time.time() > REFRESH_MARGIN_S:
            return tokens.access_token
        if tokens.refresh_token is None:
            raise AuthError(f"your token for {gateway_url} expired at {_when(tokens.expires_at)} and the login "
                            f"holds no refresh token: run `{login}`")
        try:
            renewed = refresh_tokens(config, tokens.refresh_token)
        except AuthError as exc:
            raise AuthError(f"your login to {gateway_url} has expired ({exc}): run `{login}`") from None
        _write_cache(path, config, renewed)
        return renewed.access_token


def login_main(gateway_url: str, *, stdout: TextIO, stderr: TextIO, auth: AuthConfig | None = None) -> int:
    """`mltf-flow login --gateway URL`: renew with the cached refresh token if it still works, else the device
    flow; save the tokens and print ``MLFLOW_TRACKING_TOKEN=<token>`` (only that) on stdout. ``auth``: the
    gateway's auth configuration when already known (else ``GET /api/v1/auth``). Returns the exit code."""
    login = f"mltf-flow login --gateway {gateway_url}"
    try:
        path = cache_path(gateway_url)
        config = auth if auth is not None else fetch_auth_config(gateway_url)
        tokens = _renew_cached(path, config, login)
        if tokens is not None:
            print(f"Renewed the saved login to {gateway_url} at {config.issuer} (no browser needed).", file=stderr)
        else:
            tokens = device_login(config, show=lambda message: print(message, file=stderr, flush=True))
            with _lock(path):
                _write_cache(path, config, tokens)
            renewed = ", renewed by MLflow and mltf-flow from this login" if tokens.refresh_token else ""
            print(f"Logged in to {gateway_url}; token valid until {_when(tokens.expires_at)}{renewed} "
                  f"(saved in {path}).", file=stderr)
    except (AuthError, ConfigError) as exc:
        print(f"mltf-flow login: error: {exc}", file=stderr)
        return EXIT_BAD_INPUT
    # `export $(mltf-flow login --gateway URL)`: the token, MLflow through the gateway, and the gateway itself
    # (the `mltf-gateway` backend and `mltf-flow submit` read it).
    # MLFLOW_TRACKING_AUTH: MLflow asks mltf_flow.gateway.mlflow_auth for the header of every request, which
    # renews the token from the saved login (an exported token alone dies with its lifetime, often minutes).
    print(f"{TOKEN_VARIABLE}={tokens.access_token}\nMLFLOW_TRACKING_AUTH=mltf-gateway\n"
          f"MLFLOW_TRACKING_URI={gateway_url}/mlflow\nMLTF_GATEWAY_URL={gateway_url}", file=stdout, flush=True)
    return 0


def _renew_cached(path: Path, config: AuthConfig, login: str) -> TokenSet | None:
    """New tokens from the cached refresh token (saved), or None where there is none or the IdP refuses it."""
    with _lock(path):
        try:
            cached = _read_cache(path, login)
        except AuthError:
            return None  # unreadable: the device flow writes a new one
        if cached is None or cached[0] != config or cached[1].refresh_token is None:
            return None
        try:
            tokens = refresh_tokens(config, cached[1].refresh_token)
        except AuthError:
            return None  # expired or revoked session: log in again
        _write_cache(path, config, tokens)
        return tokens


def _read_cache(path: Path, login: str) -> tuple[AuthConfig, TokenSet] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthError(f"token cache {path} is unreadable ({exc}): run `{login}`") from None
    try:
        config = AuthConfig(issuer=str(data["issuer"]), client_id=str(data["client_id"]),
                            audience=str(data["audience"]), scopes=tuple(str(s) for s in data["scopes"]))
        refresh = data.get("refresh_token")
        tokens = TokenSet(access_token=str(data["access_token"]),
                          refresh_token=str(refresh) if refresh is not None else None,
                          expires_at=float(data["expires_at"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AuthError(f"token cache {path} lacks key {exc}: run `{login}`") from None
    return config, tokens


def _write_cache(path: Path, config: AuthConfig, tokens: TokenSet) -> None:
    from mltf_flow.atomic import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"issuer": config.issuer, "client_id": config.client_id, "audience": config.audience,
            "scopes": list(config.scopes), "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token, "expires_at": tokens.expires_at}
    # write_atomic's temporary file comes from mkstemp, created 0600 before a byte is written; os.replace keeps
    # that mode, so the tokens are never readable by others, not even for a moment.
    write_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def _lock(path: Path) -> Any:
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return FileLock(f"{path}.lock", timeout=120)


def _discover(issuer: str) -> dict[str, str]:
    import httpx

    url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
    try:
        response = httpx.get(url, timeout=HTTP_TIMEOUT_S)
        data = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        raise AuthError(f"cannot reach the identity provider {issuer} ({exc}): is it up, and reachable from "
                        "here?") from None
    if not isinstance(data, dict):
        raise AuthError(f"the identity provider {issuer} answered {response.status_code} to {url}, not its "
                        "OpenID configuration")
    if str(data.get("issuer", "")).rstrip("/") != issuer.rstrip("/"):
        raise AuthError(f"{url} names issuer {data.get('issuer')!r}, not {issuer!r}: the gateway's issuer setting "
                        "and the IdP disagree")
    for key in ("token_endpoint", "device_authorization_endpoint"):
        if not isinstance(data.get(key), str):
            raise AuthError(f"the identity provider {issuer} has no {key} (no device flow): ask its admins to "
                            "enable the device authorization grant for this client")
    return {k: str(v) for k, v in data.items() if isinstance(v, str)}


def _post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    import httpx

    try:
        response = httpx.post(url, data=form, headers={"Accept": "application/json"}, timeout=HTTP_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise AuthError(f"cannot reach the identity provider at {url} ({exc})") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise AuthError(f"the identity provider answered {response.status_code} to {url} without a JSON object")
    return response.status_code, data


def _token_set(answer: dict[str, Any], asked: float, previous_refresh: str | None) -> TokenSet:
    access = answer.get("access_token")
    if not isinstance(access, str) or not access:
        raise AuthError("the identity provider's token answer has no access_token")
    if "expires_in" in answer:
        expires_at = asked + float(answer["expires_in"])  # from before the request: never later than the IdP's
    else:
        expires_at = float(_unverified_exp(access) or asked + REFRESH_MARGIN_S)
    refresh = answer.get("refresh_token")
    return TokenSet(access_token=access, refresh_token=str(refresh) if refresh else previous_refresh,
                    expires_at=expires_at)


def _unverified_exp(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without checking its signature (the gateway checks that); None for a
    token that is not a JWT or has no exp."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return float(payload["exp"]) if isinstance(payload, dict) and "exp" in payload else None
    except (ValueError, TypeError):
        return None


def _describe(answer: dict[str, Any], status: int) -> str:
    error = answer.get("error", f"HTTP {status}")
    description = answer.get("error_description")
    return f"{error}: {description}" if description else str(error)


def _expired_code(user_code: str, waited: float) -> AuthError:
    return AuthError(f"the login code {user_code} expired after {waited / 60:.0f} min before it was approved: run "
                     "`mltf-flow login` again and approve the new code in time")


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def _base(gateway_url: str) -> str:
    parts = urllib.parse.urlsplit(gateway_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--gateway {gateway_url!r}: not an http(s) URL (e.g. --gateway https://gateway.example.org)")
    return gateway_url.strip().rstrip("/")


__all__ = ["AuthConfig", "TokenSet", "cache_path", "current_token", "device_login", "fetch_auth_config",
           "login_main", "refresh_tokens"]
