"""A real OpenID Connect provider for the tests: a process built on Authlib's Flask authorization server.

    python tests/oidc_provider.py --host 127.0.0.1 --port 0 [--audience mltf-gateway] [--access-token-lifetime S]
        [--refresh-token-lifetime S] [--device-interval S] [--device-code-lifetime S] [--test-endpoints]

It serves, with everything in memory (a fresh RSA key and empty stores each start):

- discovery ``GET /.well-known/openid-configuration`` and the key set ``GET /jwks`` (one RS256 key with a kid);
- RFC 8628's device authorization grant (``POST /device_authorization``, then ``POST /token`` with
  ``grant_type=urn:ietf:params:oauth:grant-type:device_code``) for the public client ``mltf-cli``;
  access tokens are RFC 9068 JWTs (iss, aud, sub, preferred_username, groups, client_id, scope, iat, exp, jti)
  whose audience is ``--audience``;
- refresh tokens only when the granted scope holds ``offline_access`` (as Keycloak and INDIGO IAM do), rotated
  on every use (``grant_type=refresh_token``: the old one is refused afterwards);
- the verification page ``GET /device`` (a form: user code, user name, password) and ``POST /device`` that
  approves a pending user code for a user, or denies it with ``action=deny``. Fixed users: alice/alice-pw and
  bob/bob-pw (group physicists), carol/carol-pw (group mltf-admins);
- with ``--test-endpoints`` only: ``POST /test/mint`` ``{"claims": {...}, "lifetime": S, "kid": K}`` signs any
  claims with the real key (iss/iat/exp/jti filled in unless given; a claim given as null is left out; ``kid``
  replaces the header's kid), so a test can hold an expired token or one for another audience that the IdP
  really signed.

``--port 0`` binds a free port (no race between choosing and binding). Once it listens it prints one line
``READY <issuer>`` on stdout. Pytest fixtures: tests/oidc_env.py.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

# (users: name -> (password, groups))
USERS: dict[str, tuple[str, list[str]]] = {
    "alice": ("alice-pw", ["physicists"]),
    "bob": ("bob-pw", ["physicists"]),
    "carol": ("carol-pw", ["mltf-admins"]),
}
CLIENT_ID = "mltf-cli"
SCOPES = ["openid", "profile", "email", "offline_access", "mltf"]
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...]

    def get_user_id(self) -> str:
        return self.name


class PublicClient:
    """``mltf-cli``: no secret (auth method ``none``), device code and refresh token grants, any known scope."""

    client_id = CLIENT_ID

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        if not scope:
            return "openid"
        return " ".join(s for s in scope.split() if s in SCOPES)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (DEVICE_GRANT, "refresh_token")


@dataclass
class RefreshRecord:
    client_id: str
    scope: str
    user: User
    expires_at: float
    revoked: bool = False

    def check_client(self, client: PublicClient) -> bool:
        return client.get_client_id() == self.client_id

    def get_scope(self) -> str:
        return self.scope

    def is_expired(self) -> bool:
        return time.time() > self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked


@dataclass
class State:
    """Everything the provider remembers (guarded by ``lock``: the server is threaded)."""

    issuer: str = ""
    devices: dict[str, Any] = field(default_factory=dict)  # device_code -> DeviceCredentialDict
    grants: dict[str, tuple[User, bool]] = field(default_factory=dict)  # user_code -> (user, approved)
    last_poll: dict[str, float] = field(default_factory=dict)  # device_code -> monotonic time of the last poll
    refresh: dict[str, RefreshRecord] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def build_app(state: State, args: argparse.Namespace) -> Any:
    from authlib.common.security import generate_token
    from authlib.integrations.flask_oauth2 import AuthorizationServer
    from authlib.oauth2.rfc6749.grants import RefreshTokenGrant
    from authlib.oauth2.rfc8628 import DeviceAuthorizationEndpoint, DeviceCodeGrant, DeviceCredentialDict
    from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
    from flask import Flask, jsonify, request
    from joserfc import jwt
    from joserfc.jwk import KeySet, RSAKey

    key = RSAKey.generate_key(2048, parameters={"kid": f"test-{secrets.token_hex(4)}", "use": "sig", "alg": "RS256"},
                              private=True)
    keys = KeySet([key])
    client = PublicClient()
    app = Flask("oidc_provider")

    class TokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
        def get_jwks(self) -> KeySet:
            return keys

        def get_audiences(self, client: Any, user: Any, scope: Any) -> str:
            return str(args.audience)

        def get_extra_claims(self, client: Any, grant_type: Any, user: User | None, scope: Any) -> dict[str, Any]:
            if user is None:
                return {}
            return {"preferred_username": user.name, "groups": list(user.groups)}

    def save_token(token: dict[str, Any], req: Any) -> None:
        if "refresh_token" in token:
            with state.lock:
                state.refresh[token["refresh_token"]] = RefreshRecord(
                    client_id=req.client.get_client_id(), scope=token.get("scope", ""), user=req.user,
                    expires_at=time.time() + args.refresh_token_lifetime)

    server = AuthorizationServer(app, query_client=lambda cid: client if cid == CLIENT_ID else None,
                                 save_token=save_token)
    server.scopes_supported = SCOPES
    generator = TokenGenerator(issuer="", refresh_token_generator=lambda **_: generate_token(48),
                               expires_generator=lambda _client, _grant: int(args.access_token_lifetime))
    server.register_token_generator("default", generator)

    class DeviceEndpoint(DeviceAuthorizationEndpoint):  # type: ignore[misc]
        INTERVAL = int(args.device_interval)
        EXPIRES_IN = int(args.device_code_lifetime)

        def get_verification_uri(self) -> str:
            return f"{state.issuer}/device"

        def save_device_credential(self, client_id: str, scope: str, data: dict[str, Any]) -> None:
            with state.lock:
                state.devices[data["device_code"]] = DeviceCredentialDict(
                    client_id=client_id, scope=scope, expires_at=time.time() + data["expires_in"], **data)

    class DeviceGrant(DeviceCodeGrant):  # type: ignore[misc]
        def query_device_credential(self, device_code: str) -> Any:
            with state.lock:
                return state.devices.get(device_code)

        def query_user_grant(self, user_code: str) -> tuple[User, bool] | None:
            with state.lock:
                return state.grants.get(user_code)

        def should_slow_down(self, credential: Any) -> bool:
            # RFC 8628 3.5: a client that polls faster than the interval is told to slow down (and +5 s).
            now = time.monotonic()
            with state.lock:
                last = state.last_poll.get(credential["device_code"])
                state.last_poll[credential["device_code"]] = now
                if last is not None and now - last < credential["interval"]:
                    credential["interval"] += 5
                    return True
            return False

        def generate_token(self, user: Any = None, scope: Any = None, grant_type: Any = None,
                           expires_in: Any = None, include_refresh_token: bool = True) -> Any:
            offline = "offline_access" in (scope or "").split()
            token = super().generate_token(user=user, scope=scope, grant_type=grant_type, expires_in=expires_in,
                                           include_refresh_token=include_refresh_token and offline)
            with state.lock:  # a device code is good for one token response
                state.devices.pop(self.request.credential["device_code"], None)
            return token

    class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
        INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

        def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
            with state.lock:
                record = state.refresh.get(refresh_token)
            if record is None or record.is_revoked() or record.is_expired():
                return None
            return record

        def authenticate_user(self, credential: RefreshRecord) -> User:
            return credential.user

        def revoke_old_credential(self, credential: RefreshRecord) -> None:
            with state.lock:
                credential.revoked = True

    server.register_endpoint(DeviceEndpoint)
    server.register_grant(DeviceGrant)
    server.register_grant(RefreshGrant)

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Any:
        return jsonify({
            "issuer": state.issuer,
            "jwks_uri": f"{state.issuer}/jwks",
            "token_endpoint": f"{state.issuer}/token",
            "device_authorization_endpoint": f"{state.issuer}/device_authorization",
            "grant_types_supported": [DEVICE_GRANT, "refresh_token"],
            "response_types_supported": [],
            "scopes_supported": SCOPES,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["none"],
        })

    @app.get("/jwks")
    def jwks() -> Any:
        return jsonify(keys.as_dict(private=False))

    @app.post("/device_authorization")
    def device_authorization() -> Any:
        return server.create_endpoint_response("device_authorization")

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    @app.get("/device")
    def device_form() -> Any:
        return _page("Log in to the test IdP", request.args.get("user_code", ""))

    @app.post("/device")
    def device_submit() -> Any:
        user_code = _normalise(request.form.get("user_code", ""))
        name = request.form.get("username", "")
        password = request.form.get("password", "")
        approve = request.form.get("action", "approve") != "deny"
        if USERS.get(name, ("",))[0] != password or not password:
            return _page("Wrong user name or password.", user_code), 401
        with state.lock:
            pending = any(cred["user_code"] == user_code and not cred.is_expired() for cred in state.devices.values())
            if not pending or user_code in state.grants:
                return _page(f"No pending request with code {user_code}.", ""), 400
            state.grants[user_code] = (User(name, tuple(USERS[name][1])), approve)
        return _page(f"Device {'approved' if approve else 'denied'} for {name}.", "")

    if args.test_endpoints:
        @app.post("/test/mint")
        def mint() -> Any:
            body = request.get_json(force=True)
            now = int(time.time())
            claims: dict[str, Any] = {"iss": state.issuer, "iat": now, "exp": now + int(body.get("lifetime", 300)),
                                      "jti": generate_token(16)}
            claims.update(body.get("claims", {}))
            claims = {k: v for k, v in claims.items() if v is not None}
            header = {"alg": "RS256", "typ": "at+jwt", "kid": body.get("kid") or key.kid}
            return jsonify({"token": jwt.encode(header, claims, key)})

    app.config["_generator"] = generator
    return app


def _normalise(user_code: str) -> str:
    code = user_code.strip().upper().replace("-", "").replace(" ", "")
    return f"{code[:4]}-{code[4:]}" if len(code) == 8 else code


def _page(message: str, user_code: str) -> str:
    return (
        "<!doctype html><html><head><title>Test IdP</title></head><body>"
        f"<p>{html.escape(message)}</p>"
        '<form method="post" action="/device">'
        f'<label>Code <input name="user_code" value="{html.escape(user_code)}"></label>'
        '<label>User <input name="username"></label>'
        '<label>Password <input name="password" type="password"></label>'
        '<button name="action" value="approve">Allow</button>'
        '<button name="action" value="deny">Deny</button>'
        "</form></body></html>"
    )


def main(argv: list[str] | None = None) -> int:
    from werkzeug.serving import make_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--audience", default="mltf-gateway")
    parser.add_argument("--access-token-lifetime", type=int, default=300)
    parser.add_argument("--refresh-token-lifetime", type=int, default=86400)
    parser.add_argument("--device-interval", type=int, default=5)
    parser.add_argument("--device-code-lifetime", type=int, default=600)
    parser.add_argument("--test-endpoints", action="store_true")
    args = parser.parse_args(argv)

    state = State()
    app = build_app(state, args)
    httpd = make_server(args.host, args.port, app, threaded=True)
    state.issuer = f"http://{args.host}:{httpd.server_port}"
    app.config["_generator"].issuer = state.issuer  # known once bound (--port 0)
    print(f"READY {state.issuer}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C when run by hand; the fixtures send SIGTERM
        httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
