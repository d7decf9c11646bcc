"""Read-side helpers for integration tests: what the tracking store holds after a pipeline ran."""

from __future__ import annotations

from typing import Any


def client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs(uri: str, experiment: str = "jet_tagging") -> list[Any]:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return list(c.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"]))


def step_runs(uri: str, step: str, experiment: str = "jet_tagging") -> list[Any]:
    return [r for r in runs(uri, experiment) if r.data.tags.get("mltf.step") == step]


def parents(uri: str, experiment: str = "jet_tagging") -> list[Any]:
    return [r for r in runs(uri, experiment) if r.data.tags.get("mltf.role") == "pipeline"]


def sqlite_uri(work_dir: Any) -> str:
    return f"sqlite:///{work_dir}/mlflow.db"
