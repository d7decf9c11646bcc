"""The credential a job acts with: scoped to its submission, expiring with it.

A user's own token never leaves the request that carried it: it is short-lived (minutes), and a job may wait
in the queue for hours. Instead the gateway gives each submission's jobs a credential of its own, a JWT
signed with the gateway's key (HS256), that says *user U, submission S*:

* the gateway's MLflow proxy accepts it (runs land in MLflow as U, tagged with S); the submission API does
  not (a job cannot submit, cancel or read secrets);
* it expires at the submission's time limit (capped by ``credential_lifetime``) and is revoked in the
  database the moment the submission ends, so it stops working when the job does, whatever its ``exp``;
* only its id (``jti``) and expiry are stored; the token reaches the job in ``sbatch``'s environment as
  ``MLFLOW_TRACKING_TOKEN``, never in the job script, a tag or a log.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mltf_flow.errors import AuthError
from mltf_flow.gateway.identity import Identity

if TYPE_CHECKING:
    from mltf_flow.gateway.store import Store

#: The audience of job credentials: no IdP token carries it, so neither kind passes for the other.
JOB_AUDIENCE = "mltf-gateway-job"


@dataclass(frozen=True)
class JobCredentials:
    """Mints and checks job credentials for the gateway at ``issuer`` (its public URL)."""

    key: bytes
    issuer: str
    store: Store

    def mint(self, submission_id: str, user: str, lifetime: float) -> str:
        import jwt

        jti = secrets.token_hex(16)
        now = int(time.time())
        expires = now + max(60, int(lifetime))
        self.store.add_credential(jti, submission_id, user, float(expires))
        claims = {"iss": self.issuer, "aud": JOB_AUDIENCE, "sub": user, "submission": submission_id, "jti": jti,
                  "iat": now, "exp": expires}
        return jwt.encode(claims, self.key, algorithm="HS256")

    def is_ours(self, unverified_issuer: str | None) -> bool:
        return unverified_issuer == self.issuer

    def check(self, token: str) -> Identity:
        """The job's identity; AuthError when the credential is forged, expired or its submission ended."""
        import jwt

        try:
            claims = jwt.decode(token, self.key, algorithms=["HS256"], audience=JOB_AUDIENCE, issuer=self.issuer,
                                options={"require": ["exp", "jti", "sub", "submission"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("this job credential has expired (its submission's time is over).") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"this job credential is not valid: {exc}.") from None
        if not self.store.credential_valid(str(claims["jti"]), str(claims["submission"])):
            raise AuthError(f"this job credential was revoked: submission {claims['submission']} has ended.")
        return Identity(user=str(claims["sub"]), submission=str(claims["submission"]))
