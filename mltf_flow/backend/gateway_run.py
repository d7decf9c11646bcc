"""``mlflow run --backend mltf-gateway`` (or ``--backend mltf -c '{"gateway": URL}'``): an entry point submitted
through a gateway (:mod:`mltf_flow.gateway`), for users without an account on the facility's cluster.

The project (any URI MLflow can fetch) is packed and uploaded, the entry point submitted with the rest of the
backend config as the job's SLURM settings, and the run comes back at once: the gateway creates it in the
facility's MLflow, which the user reaches through the gateway (``MLFLOW_TRACKING_URI=<gateway>/mlflow``,
as ``export $(mltf-flow login --gateway URL)`` sets). MLflow tags and follows that run, so the tracking URI
must be the gateway's: a run in another store would not be found.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.projects.submitted_run import SubmittedRun

from mltf_flow.config.backend import MLFLOW_KEYS
from mltf_flow.errors import ConfigError

_log = logging.getLogger(__name__)

#: Gateway states as MLflow run statuses.
_STATUS = {"accepted": "SCHEDULED", "staging": "SCHEDULED", "submitting": "SCHEDULED", "queued": "SCHEDULED",
           "running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}


class GatewaySubmittedRun(SubmittedRun):
    """A submission of one entry point, followed through the gateway's API."""

    def __init__(self, client: Any, view: Mapping[str, Any]) -> None:
        super().__init__()
        self.client = client
        self.submission_id = str(view["id"])
        self._view = dict(view)

    @property
    def run_id(self) -> str:
        return str(self._view["run_id"])

    def get_status(self) -> str:
        if self._view["state"] not in ("finished", "failed", "cancelled"):
            self._view = self.client.get(self.submission_id)
        return _STATUS[str(self._view["state"])]

    def wait(self) -> bool:
        from mltf_flow.gateway.client import describe

        self._view = self.client.wait(self.submission_id,
                                      on_change=lambda v: _log.info(describe(v)))
        return bool(self._view["state"] == "finished")

    def cancel(self) -> None:
        self.client.cancel(self.submission_id)
        self._view = self.client.wait(self.submission_id)


def _project_dir(project_uri: str, version: str | None, entry_point: str, params: Mapping[str, Any]) -> Path:
    from mlflow.exceptions import MlflowException
    from mlflow.projects.utils import _is_local_uri, fetch_and_validate_project

    local = Path(project_uri)
    if _is_local_uri(project_uri) and local.is_dir() and not (local / "MLproject").is_file() \
            and not (local / entry_point).is_file():  # MLflow also runs a script of a directory without MLproject
        raise ConfigError(f"{local.resolve()} has no MLproject, and no script {entry_point!r}: run from your "
                          "project's directory, or name a .py/.sh file of it with -e.")
    try:
        return Path(fetch_and_validate_project(project_uri, version, entry_point, dict(params)))
    except MlflowException as exc:
        raise ConfigError(f"project {project_uri}: {exc.message}") from exc


def submit_through_gateway(project_uri: str, entry_point: str, params: Mapping[str, Any] | None,
                           version: str | None, backend_config: Mapping[str, Any] | None, tracking_uri: str,
                           experiment_id: str) -> GatewaySubmittedRun:
    from mltf_flow.console import use_console
    from mltf_flow.gateway.client import GatewayClient, describe, gateway_url

    use_console()
    config = dict(backend_config or {})
    url = gateway_url(config.pop("gateway", None))
    if tracking_uri.rstrip("/") != f"{url}/mlflow":
        raise ConfigError(
            f"the run will live in the facility's MLflow behind the gateway, but MLFLOW_TRACKING_URI is "
            f"{tracking_uri!r}: export MLFLOW_TRACKING_URI={url}/mlflow (`export $(mltf-flow login --gateway "
            f"{url})` sets it).")
    env_manager = config.pop("ENV_MANAGER", None)
    for key in MLFLOW_KEYS:
        config.pop(key, None)
    client = GatewayClient(url)
    digest = client.upload(_project_dir(project_uri, version, entry_point, params or {}))
    view = client.submit({"kind": "project", "source": {"archive": digest}, "entry_point": entry_point,
                          "params": dict(params or {}), "backend_config": config, "env_manager": env_manager,
                          "experiment_id": experiment_id})
    _log.info(f"{describe(view)}\n  follow it: mltf-flow submissions show {view['id']} --wait --gateway {url}   "
              f"cancel it: mltf-flow submissions cancel {view['id']} --gateway {url}")
    return GatewaySubmittedRun(client, view)


def gateway_from_environment(backend_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config of the ``mltf-gateway`` backend: ``gateway`` from ``$MLTF_GATEWAY_URL`` unless given."""
    config = dict(backend_config or {})
    if "gateway" not in config and os.environ.get("MLTF_GATEWAY_URL"):
        config["gateway"] = os.environ["MLTF_GATEWAY_URL"]
    return config
