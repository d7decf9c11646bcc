"""mltf_flow: multi-step MLflow projects as cached Luigi pipelines for ML training facilities.

Public names are imported lazily so ``import mltf_flow`` stays cheap (no luigi, mlflow or dask).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MLflowStep": "mltf_flow.step",
    "StageStep": "mltf_flow.staging.step",
    "MLflowRunTarget": "mltf_flow.targets.mlflow_run",
    "ManifestTarget": "mltf_flow.targets.manifest",
    "load_settings": "mltf_flow.config",
    "read_project": "mltf_flow.mlproject",
    "MltfFlowError": "mltf_flow.errors",
    "ConfigError": "mltf_flow.errors",
    "StepError": "mltf_flow.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mltf_flow' has no attribute {name!r}")
