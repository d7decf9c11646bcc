"""A new run's artifact location, known from the run's creation instead of asked of the server again.

MLflow's client finds where a run's artifacts go with a ``runs/get`` on the run's first artifact upload, then
keeps it in a per-process cache keyed by run id. A run we just created already told us its ``artifact_uri``:
:func:`remember` puts it in that cache, which saves a request per run (every trial of a study is a new run).
The cache is MLflow's private state: where it is not what this expects, nothing is remembered and MLflow asks
the server as before.
"""

from __future__ import annotations

from collections import OrderedDict

#: MLflow's own bound on its cache (mlflow.tracking._tracking_service.client, _get_artifact_repo).
_MAX = 1024


def remember(run_id: str, artifact_uri: str, tracking_uri: str) -> None:
    """Let MLflow's client upload to run ``run_id`` at ``artifact_uri`` without looking the run up first."""
    try:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
        from mlflow.tracking._tracking_service import utils
        from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri
    except ImportError:  # another MLflow layout: it looks the run up itself
        return
    cache = getattr(utils, "_artifact_repos_cache", None)
    if not isinstance(cache, OrderedDict) or not artifact_uri:
        return
    # The same repository MLflow would make from the run's get (its _get_artifact_repo).
    try:
        uri = add_databricks_profile_info_to_artifact_uri(artifact_uri, tracking_uri)
        repo = get_artifact_repository(uri, tracking_uri=tracking_uri)
    except Exception:  # the first upload asks MLflow, which says what is wrong with the location then
        return
    if len(cache) > _MAX:
        cache.popitem(last=False)
    cache[run_id] = repo


__all__ = ["remember"]
