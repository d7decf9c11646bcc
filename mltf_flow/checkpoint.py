"""Training checkpoints kept as artifacts of the step's MLflow run, so that a retried step resumes.

::

    from mltf_flow import checkpoint

    start = 0
    found = checkpoint.load_latest()                # every rank; None in a fresh run
    if found is not None:
        model.load_state_dict(found.state["model"])
        optimiser.load_state_dict(found.state["optimiser"])
        start = found.epoch + 1                      # epochs already done are not repeated
    for epoch in range(start, epochs):
        ...
        mlflow.log_metrics(..., step=epoch)          # metrics continue at the right step
        checkpoint.save({"model": ..., "optimiser": ...}, epoch)   # rank 0 writes, other ranks skip
        checkpoint.stop_if_time_is_up()              # every rank: the job ends soon? exit, to continue

When a step fails (a rank raised, its SLURM job was cancelled, preempted or ran out of walltime), the
run is marked FAILED but keeps its checkpoints; running the step again (same cache key) reopens that
run instead of starting a new one (:mod:`mltf_flow.step_run`), and ``load_latest`` finds the last one.

A job that must end (SLURM's time limit is near) stops after a checkpoint with exit code 75, and the run
continues in a new job from it (:mod:`mltf_flow.time_limit`, :mod:`mltf_flow.continuation`).

A checkpoint is the artifact ``checkpoints/epoch-<N>.pt`` plus the run tags ``mltf.checkpoint.latest``,
``.epoch`` and ``.sha256``, written in one batch *after* the upload finished: the pointer never names a
half-written file, and the digest is checked before a checkpoint is loaded. Older checkpoints beyond
``keep`` are deleted where the artifact store allows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltf_flow import phases
from mltf_flow.ddp.rank import is_rank_zero
from mltf_flow.errors import TrackingError
from mltf_flow.tags import TAG_CHECKPOINT_EPOCH, TAG_CHECKPOINT_LATEST, TAG_CHECKPOINT_SHA256, TAG_CHECKPOINT_SHARDED
from mltf_flow.time_limit import EXIT_CONTINUE, stop_if_time_is_up, time_is_up, watch

# This module's names for them (in __all__; user scripts read them): see mltf_flow.tags.
TAG_LATEST = TAG_CHECKPOINT_LATEST
TAG_EPOCH = TAG_CHECKPOINT_EPOCH
TAG_SHA256 = TAG_CHECKPOINT_SHA256
_DIR = "checkpoints"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the epoch it was saved after, and the state that was saved."""

    epoch: int
    state: Any
    artifact_path: str


def _run_id(run_id: str | None) -> str:
    if run_id:
        return run_id
    if os.environ.get("MLFLOW_RUN_ID"):
        return os.environ["MLFLOW_RUN_ID"]
    import mlflow

    active = mlflow.active_run()
    if active is None:
        raise TrackingError("no MLflow run to keep checkpoints in: start one (mlflow.start_run) or run the "
                            "script as a pipeline step (MLFLOW_RUN_ID is set then).")
    return str(active.info.run_id)


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(state: Any, epoch: int, *, run_id: str | None = None, keep: int = 2) -> str | None:
    """Save ``state`` (anything ``torch.save`` takes) as the checkpoint after ``epoch``.

    Only rank 0 writes (the others return None at once). Returns the artifact path."""
    if not is_rank_zero():
        return None
    import torch
    from mlflow.entities import RunTag

    run = _run_id(run_id)
    client = _client()
    name = f"epoch-{epoch:06d}.pt"
    with tempfile.TemporaryDirectory(prefix="mltf-ckpt-") as tmp:
        path = Path(tmp) / name
        torch.save(state, path)
        digest = _sha256(path)
        client.log_artifact(run, str(path), _DIR)
    artifact = f"{_DIR}/{name}"
    client.log_batch(run, tags=[RunTag(TAG_LATEST, artifact), RunTag(TAG_EPOCH, str(epoch)),
                                RunTag(TAG_SHA256, digest)])
    phases.reached(phases.CHECKPOINT_SAVED)
    if keep > 0:
        _prune(client, run, keep)
    return artifact


def _prune(client: Any, run_id: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (best effort: not every store can delete)."""
    with contextlib.suppress(Exception):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        files = sorted(f.path for f in client.list_artifacts(run_id, _DIR) if not f.is_dir)
        old = files[:-keep]
        if old:
            repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
            for path in old:
                repo.delete_artifacts(path)


def latest_epoch(run_id: str | None = None) -> int | None:
    """The epoch of the run's last checkpoint, without downloading it."""
    tags = _client().get_run(_run_id(run_id)).data.tags
    return int(tags[TAG_EPOCH]) if TAG_EPOCH in tags else None


def load_latest(
    *, run_id: str | None = None, map_location: Any = "cpu", weights_only: bool = True
) -> Checkpoint | None:
    """The run's last checkpoint, or None when it has none. Every rank may call it."""
    import mlflow.artifacts
    import torch

    watch()  # from the start of the script: SLURM's SIGUSR1 warning must not kill it
    run = _run_id(run_id)
    tags = _client().get_run(run).data.tags
    if TAG_LATEST not in tags:
        return None
    artifact = tags[TAG_LATEST]
    if tags.get(TAG_CHECKPOINT_SHARDED) == artifact:
        raise TrackingError(f"checkpoint {artifact} of run {run} is sharded (sharded_checkpoint.save_sharded): "
                            "load it with mltf_flow.sharded_checkpoint.load_latest_sharded(state_dict).")
    with tempfile.TemporaryDirectory(prefix="mltf-ckpt-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run, artifact_path=artifact, dst_path=tmp))
        digest = _sha256(local)
        if digest != tags.get(TAG_SHA256):
            raise TrackingError(
                f"checkpoint {artifact} of run {run} has sha256 {digest}, but {tags.get(TAG_SHA256)} was recorded "
                "when it was saved: the artifact store holds a different file. Delete the tag "
                f"{TAG_LATEST} to start over."
            )
        state = torch.load(local, map_location=map_location, weights_only=weights_only)
    return Checkpoint(epoch=int(tags[TAG_EPOCH]), state=state, artifact_path=artifact)


__all__ = ["EXIT_CONTINUE", "TAG_EPOCH", "TAG_LATEST", "TAG_SHA256", "Checkpoint", "latest_epoch", "load_latest",
           "save", "stop_if_time_is_up", "time_is_up"]
