"""The job wrapper's writes to its MLflow run: over REST for a tracking server, MLflow's client otherwise.

A job's own cost beyond its command is what ``sbatch --wrap`` does not pay; ``import mlflow`` alone was
1.3 s of it, for six calls taking 0.12 s. So against an ``http(s)://`` server the wrapper speaks MLflow's
REST API itself (:class:`mltf_flow.tracking_rest.TrackingRest`: the client's credentials, TLS settings and
retries) and uploads the job's log through the server's artifact proxy. MLflow's client is imported only
where plain HTTP cannot do the job: a sqlite store, an auth plugin (``MLFLOW_TRACKING_AUTH``), or a run
whose artifacts the server does not proxy (the log upload alone then imports it).

Both writers offer the same few operations (:class:`RunWriter`), named after what the wrapper does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Protocol

# Imported here, in the wrapper's main thread: the thread that marks the run RUNNING must not be the first
# to import a module (two threads importing one module can see it half initialised).
from mltf_flow.tracking_rest import TrackingRest, is_server, needs_mlflow_client


class RunWriter(Protocol):
    def status_and_tags(self, run_id: str) -> tuple[str, dict[str, str]]: ...

    def delete_tag(self, run_id: str, key: str) -> None: ...

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def set_status(self, run_id: str, status: str) -> None: ...

    def terminate(self, run_id: str, status: str) -> None: ...

    def log_artifact(self, run_id: str, local_file: str, artifact_path: str) -> None: ...


def _bounded_retries() -> None:
    # A tracking server that is down must not keep the job past SLURM's KillWait (30 s by default).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def rest_writer(tracking_uri: str) -> RestWriter | None:
    """The REST writer for a server that plain HTTP can talk to; None where MLflow's client is needed."""
    if not is_server(tracking_uri) or needs_mlflow_client():
        return None
    return RestWriter(tracking_uri)


class RestWriter:
    """MLflow's REST API, without ``import mlflow`` (see the module docstring)."""

    def __init__(self, tracking_uri: str) -> None:
        _bounded_retries()
        self.tracking_uri = tracking_uri
        self.rest = TrackingRest(tracking_uri, check=False)
        self._artifact_uri: dict[str, str] = {}

    def status_and_tags(self, run_id: str) -> tuple[str, dict[str, str]]:
        run = self.rest.get_run(run_id)
        self._artifact_uri[run_id] = str(run["info"].get("artifact_uri", ""))
        return str(run["info"]["status"]), {t["key"]: t.get("value", "") for t in run.get("data", {}).get("tags", [])}

    def delete_tag(self, run_id: str, key: str) -> None:
        self.rest.delete_tag(run_id, key)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.rest.set_tags(run_id, tags)

    def set_status(self, run_id: str, status: str) -> None:
        self.rest.update_run(run_id, status)

    def terminate(self, run_id: str, status: str) -> None:
        self.rest.terminate(run_id, status)

    def log_artifact(self, run_id: str, local_file: str, artifact_path: str) -> None:
        if run_id not in self._artifact_uri:
            self.status_and_tags(run_id)
        if not self.rest.upload_artifact(self._artifact_uri[run_id], local_file, artifact_path):
            # Not proxied by this server (a shared filesystem, S3, ...): MLflow's artifact repositories know it.
            ClientWriter(self.tracking_uri).log_artifact(run_id, local_file, artifact_path)


class ClientWriter:
    """MLflow's client (imports mlflow: 1-2 s)."""

    def __init__(self, tracking_uri: str) -> None:
        _bounded_retries()
        from mlflow.tracking import MlflowClient

        self.client: Any = MlflowClient(tracking_uri=tracking_uri)

    def status_and_tags(self, run_id: str) -> tuple[str, dict[str, str]]:
        run = self.client.get_run(run_id)
        return str(run.info.status), dict(run.data.tags)

    def delete_tag(self, run_id: str, key: str) -> None:
        self.client.delete_tag(run_id, key)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def set_status(self, run_id: str, status: str) -> None:
        self.client.update_run(run_id, status=status)

    def terminate(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)

    def log_artifact(self, run_id: str, local_file: str, artifact_path: str) -> None:
        self.client.log_artifact(run_id, local_file, artifact_path)


__all__ = ["ClientWriter", "RestWriter", "RunWriter", "rest_writer"]
