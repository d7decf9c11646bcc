"""``MLFLOW_TRACKING_AUTH=mltf-gateway``: MLflow's clients ask here for the bearer token of each request.

Registered under MLflow's ``mlflow.request_auth_provider`` entry point group. An access token exported once
(``MLFLOW_TRACKING_TOKEN``) dies with its lifetime, often five minutes; this provider gives MLflow a token
that is valid now, renewed from the login ``mltf-flow login`` saved (:func:`mltf_flow.gateway.login.current_token`),
so ``mlflow run``, a notebook or a long script keep working. MLflow applies it after its own headers, so it
replaces an exported token that expired. The gateway is ``$MLTF_GATEWAY_URL``, else the tracking URI without its
``/mlflow``. MLflow imports this module when it starts: it imports nothing heavy.
"""

from __future__ import annotations

import os
from typing import Any

from mlflow.tracking.request_auth.abstract_request_auth_provider import RequestAuthProvider
from requests.auth import AuthBase


def gateway_of_tracking_uri() -> str:
    from mltf_flow.errors import ConfigError

    url = os.environ.get("MLTF_GATEWAY_URL") or os.environ.get("MLFLOW_TRACKING_URI", "").removesuffix("/mlflow")
    if not url.startswith(("http://", "https://")):
        raise ConfigError("MLFLOW_TRACKING_AUTH=mltf-gateway needs the gateway: `export $(mltf-flow login --gateway "
                          "URL)` sets MLTF_GATEWAY_URL and MLFLOW_TRACKING_URI.")
    return url.rstrip("/")


class _Bearer(AuthBase):
    def __call__(self, request: Any) -> Any:
        from mltf_flow.gateway.login import current_token

        request.headers["Authorization"] = f"Bearer {current_token(gateway_of_tracking_uri())}"
        return request


class GatewayAuthProvider(RequestAuthProvider):
    def get_name(self) -> str:
        return "mltf-gateway"

    def get_auth(self) -> AuthBase:
        return _Bearer()
