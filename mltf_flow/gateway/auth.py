"""Who a request comes from: OIDC bearer tokens checked by signature, and job credentials.

A user's token is a JWT the site's IdP signed. It is checked here, in the gateway, without calling the IdP
per request: the IdP's discovery document names its JWKS, whose keys PyJWT's :class:`jwt.PyJWKClient` keeps
(read again after ``jwks_lifespan``, or at once for a key id it has not seen: a rotation). Checked: the
signature (the algorithms configured, never ``none`` or HS* with a public key), ``iss``, ``aud``, ``exp``
and ``nbf`` with the configured clock skew. A rejected token gets a 401 whose message says which check
failed and what to do; the token itself is never logged or echoed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from mltf_flow.errors import AuthError, ConfigError
from mltf_flow.gateway.identity import Identity

if TYPE_CHECKING:
    import jwt

    from mltf_flow.gateway.job_credentials import JobCredentials
    from mltf_flow.gateway.settings import OidcSettings

_log = logging.getLogger(__name__)


def bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header."""
    if not authorization:
        raise AuthError("no bearer token: log in with `export $(mltf-flow login --gateway URL)` and send "
                        "MLFLOW_TRACKING_TOKEN as `Authorization: Bearer <token>`.")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(f"the Authorization header is not a bearer token (scheme {scheme!r}); send "
                        "`Authorization: Bearer <token>`.")
    return token.strip()


class TokenValidator:
    """Checks users' tokens (OIDC) and jobs' credentials; one per gateway."""

    def __init__(self, oidc: OidcSettings, jobs: JobCredentials, login_hint: str) -> None:
        self.oidc = oidc
        self.jobs = jobs
        self.login_hint = login_hint
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    def _keys(self) -> jwt.PyJWKClient:
        """The IdP's keys, located through its discovery document on first use (the IdP may start after us)."""
        import httpx
        import jwt

        with self._lock:
            if self._jwks is None:
                url = f"{self.oidc.issuer}/.well-known/openid-configuration"
                try:
                    answer = httpx.get(url, timeout=10)
                    answer.raise_for_status()
                    document = answer.json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise AuthError(f"the identity provider's discovery document ({url}) cannot be read: {exc}; "
                                    "tokens cannot be checked until it answers.", status=503) from None
                if document.get("issuer") != self.oidc.issuer:
                    raise ConfigError(f"the IdP at {url} calls itself {document.get('issuer')!r}, not the "
                                      f"configured oidc.issuer {self.oidc.issuer!r}: fix oidc.issuer.")
                self._jwks = jwt.PyJWKClient(str(document["jwks_uri"]), cache_keys=True,
                                             lifespan=int(self.oidc.jwks_lifespan), timeout=10)
            return self._jwks

    def identify(self, authorization: str | None) -> Identity:
        """The caller of a request with this ``Authorization`` header (AuthError when there is none)."""
        import jwt

        token = bearer(authorization)
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.DecodeError:
            raise AuthError("the bearer token is not a JWT: send the access token `mltf-flow login` printed.") \
                from None
        if self.jobs.is_ours(unverified.get("iss")):
            return self.jobs.check(token)
        return self._user(token, unverified)

    def _user(self, token: str, unverified: dict[str, Any]) -> Identity:
        import jwt

        oidc = self.oidc
        try:
            key = self._keys().get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=list(oidc.algorithms), audience=oidc.audience,
                                issuer=oidc.issuer, leeway=oidc.leeway, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            ago = time.time() - float(unverified.get("exp", 0))
            raise AuthError(f"the token expired {ago:.0f} s ago: renew it with {self.login_hint}.") from None
        except jwt.InvalidAudienceError:
            raise AuthError(f"the token is for audience {unverified.get('aud')!r}, this gateway accepts "
                            f"{oidc.audience!r}: get a token for the gateway with {self.login_hint}.") from None
        except jwt.InvalidIssuerError:
            raise AuthError(f"the token was issued by {unverified.get('iss')!r}, this gateway trusts "
                            f"{oidc.issuer!r}: log in with {self.login_hint}.") from None
        except jwt.PyJWKClientError as exc:
            raise AuthError(f"the token's signing key is not one of the IdP's ({oidc.issuer}): {exc}.") from None
        except jwt.InvalidSignatureError:
            raise AuthError(f"the token's signature does not verify with the keys of {oidc.issuer}: it was not "
                            "issued by the IdP, or was altered.") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"the token is not valid: {exc}.") from None
        user = claims.get(oidc.user_claim) or claims.get("sub")
        if not isinstance(user, str) or not user:
            raise AuthError(f"the token names no user (no {oidc.user_claim!r} or 'sub' claim).")
        return Identity(user=user, admin=self._is_admin(claims))

    def _is_admin(self, claims: dict[str, Any]) -> bool:
        wanted = self.oidc.admin_value
        if wanted is None:
            return False
        found = claims.get(self.oidc.admin_claim)
        if isinstance(found, list | tuple):
            return wanted in found or f"/{wanted}" in found  # Keycloak's group paths start with '/'
        return found == wanted
