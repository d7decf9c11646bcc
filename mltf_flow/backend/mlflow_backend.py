"""``mlflow run --backend mltf``: the MLflow project backend that runs entry points as SLURM jobs.

Registered under MLflow's ``mlflow.project_backend`` entry point group as ``mltf``. MLflow imports this
module for ``mlflow run --backend mltf`` only, and it stays light: the work is in the rest of
:mod:`mltf_flow.backend` (:mod:`~mltf_flow.backend.submit` first), imported when a run is submitted.
Users of NCSA's mlflow-slurm switch by changing one word::

    mlflow run --backend mltf --backend-config slurm_config.json -e train pipelines/jet_tagging -P ...
    mlflow run --backend mltf --backend-config '{"profile": "mltf-a6000"}' -e train pipelines/jet_tagging

Errors of the request (config, parameters, SLURM's pre-flight rejection) reach MLflow as its own
``ExecutionException``, which the ``mlflow`` CLI prints as one line, with ours as the cause.
"""

from __future__ import annotations

from typing import Any

from mlflow.projects.backend.abstract_backend import AbstractBackend


class MltfBackend(AbstractBackend):
    """Submits an entry point as a SLURM batch job; returns a
    :class:`~mltf_flow.backend.submitted.SlurmSubmittedRun`."""

    def run(self, project_uri: str, entry_point: str, params: dict[str, Any] | None, version: str | None,
            backend_config: dict[str, Any] | None, tracking_uri: str, experiment_id: str) -> Any:
        from mlflow.exceptions import ExecutionException

        from mltf_flow.backend.submit import submit_project
        from mltf_flow.errors import MltfFlowError

        try:
            if backend_config and "gateway" in backend_config:
                from mltf_flow.backend.gateway_run import submit_through_gateway

                return submit_through_gateway(project_uri, entry_point, params, version, backend_config,
                                              tracking_uri, experiment_id)
            return submit_project(project_uri, entry_point, params, version, backend_config, tracking_uri,
                                  experiment_id)
        except MltfFlowError as exc:
            raise ExecutionException(f"mltf backend: {exc}") from exc


class MltfGatewayBackend(MltfBackend):
    """``mlflow run --backend mltf-gateway``: through the gateway in ``$MLTF_GATEWAY_URL`` (or the config's
    ``gateway``); see :mod:`mltf_flow.backend.gateway_run`."""

    def run(self, project_uri: str, entry_point: str, params: dict[str, Any] | None, version: str | None,
            backend_config: dict[str, Any] | None, tracking_uri: str, experiment_id: str) -> Any:
        from mltf_flow.backend.gateway_run import gateway_from_environment

        config = gateway_from_environment(backend_config)
        if "gateway" not in config:
            from mlflow.exceptions import ExecutionException

            raise ExecutionException("mltf-gateway backend: which gateway? Run `export $(mltf-flow login --gateway "
                                     "URL)` (it sets MLTF_GATEWAY_URL) or pass -c '{\"gateway\": \"URL\"}'.")
        return super().run(project_uri, entry_point, params, version, config, tracking_uri, experiment_id)


def builder() -> MltfBackend:
    """The zero-argument callable MLflow's backend loader calls."""
    return MltfBackend()


def gateway_builder() -> MltfGatewayBackend:
    return MltfGatewayBackend()
