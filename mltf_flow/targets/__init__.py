"""Luigi targets of mltf_flow: an MLflow run found by cache key, and a dataset manifest."""

from mltf_flow.targets.manifest import ManifestTarget
from mltf_flow.targets.mlflow_run import MLflowRunTarget

__all__ = ["MLflowRunTarget", "ManifestTarget"]
