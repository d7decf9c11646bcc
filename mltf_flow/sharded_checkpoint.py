"""Sharded training checkpoints (``torch.distributed.checkpoint``, DCP) kept as artifacts of the step's MLflow run.

For models sharded across ranks (FSDP2 ``fully_shard``), where no rank holds the whole state. Every rank calls
both functions (they are collectives)::

    import torch.distributed.checkpoint.state_dict as sd
    from mltf_flow import checkpoint, sharded_checkpoint

    model_state, optim_state = sd.get_state_dict(model, optimiser)
    state = {"model": model_state, "optim": optim_state}
    done = sharded_checkpoint.load_latest_sharded(state)        # in place; None in a fresh run
    if done is not None:
        sd.set_state_dict(model, optimiser, model_state_dict=state["model"], optim_state_dict=state["optim"])
    for epoch in range(0 if done is None else done + 1, epochs):
        ...
        model_state, optim_state = sd.get_state_dict(model, optimiser)
        sharded_checkpoint.save_sharded({"model": model_state, "optim": optim_state}, epoch)

A checkpoint is the artifact directory ``checkpoints/epoch-<N>/``: the DCP files (``.metadata`` and one
``__<rank>_0.distcp`` per rank) and ``MANIFEST``, the sha256 of each of them in ``sha256sum`` format. Each
rank writes its shard to a temporary directory of its own and uploads it itself, so the ranks need no shared
file system, only the tracking store they already log to. After every rank's upload, rank 0 uploads the
manifest and only then writes the run tags ``mltf.checkpoint.latest``, ``.epoch`` and ``.sha256`` (the
manifest's digest) and ``mltf.checkpoint.sharded`` (the same path as ``.latest``: the latest checkpoint is
sharded when the two agree), the same pointer :mod:`mltf_flow.checkpoint` keeps, so a retried step is resumed
the same way (:mod:`mltf_flow.step_run`) and a checkpoint never half-written is marked latest. Loading
downloads the directory on every rank, checks the manifest against the tag and each file against the
manifest, and lets DCP read the shards it needs: the world size may differ from the one that saved (DCP
reshards, 2 ranks -> 1 -> 2). Older checkpoint directories beyond ``keep`` are deleted where the store allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mltf_flow import phases
from mltf_flow.checkpoint import _DIR, _client, _run_id, _sha256
from mltf_flow.ddp.rank import is_rank_zero
from mltf_flow.errors import TrackingError
from mltf_flow.tags import (
    TAG_CHECKPOINT_EPOCH,
    TAG_CHECKPOINT_LATEST,
    TAG_CHECKPOINT_SHA256,
    TAG_CHECKPOINT_SHARDED,
)

MANIFEST = "MANIFEST"
_EPOCH_DIR = re.compile(r"epoch-\d+")


def manifest_text(files: Mapping[str, str]) -> str:
    """``sha256sum``-format lines (``<sha256>  <path>``) for ``{relative path: sha256}``, sorted by path: the
    same files give the same text whichever rank wrote which."""
    return "".join(f"{files[name]}  {name}\n" for name in sorted(files))


def digest_files(directory: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory`` except the manifest."""
    return {p.relative_to(directory).as_posix(): _sha256(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST}


def parse_manifest(text: str) -> dict[str, str]:
    """The inverse of :func:`manifest_text`."""
    files = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        files[name] = digest
    return files


def verify(directory: Path, expected_sha256: str, where: str) -> None:
    """Raise TrackingError unless ``directory``'s manifest has ``expected_sha256`` and every file it lists is
    there with its digest (files it does not list, e.g. left by a save that was killed, are ignored)."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise TrackingError(f"checkpoint {where} has no {MANIFEST}: it was not written by save_sharded. Delete "
                            f"the tag {TAG_CHECKPOINT_LATEST} of the run to start over.")
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    if digest != expected_sha256:
        raise TrackingError(f"checkpoint {where} has a {MANIFEST} with sha256 {digest}, but {expected_sha256} was "
                            f"recorded when it was saved. Delete the tag {TAG_CHECKPOINT_LATEST} to start over.")
    for name, want in parse_manifest(manifest.read_text()).items():
        path = directory / name
        got = _sha256(path) if path.is_file() else "missing"
        if got != want:
            raise TrackingError(f"checkpoint {where}: file {name} is {got}, its {MANIFEST} says {want}. Delete "
                                f"the tag {TAG_CHECKPOINT_LATEST} to start over.")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def _one_process_is_fine() -> Iterator[None]:
    """Without a process group DCP saves and loads as one process, which is what a script without one means:
    its warning saying so is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _from_rank_zero(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (rank 0 alone resolves the run: other ranks may have no active run)."""
    if not _distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def save_sharded(state_dict: dict[str, Any], epoch: int, *, run_id: str | None = None, keep: int = 2) -> str:
    """Save ``state_dict`` (a DCP state dict, e.g. from ``get_state_dict(model, optimiser)``) as the
    checkpoint after ``epoch``. Every rank calls it; it returns on every rank once the checkpoint is the
    run's latest. Returns the artifact path."""
    import torch.distributed as dist
    from mlflow.entities import RunTag
    from torch.distributed.checkpoint import state_dict_saver

    run = _from_rank_zero(_run_id(run_id) if is_rank_zero() or run_id else None)
    client = _client()
    artifact = f"{_DIR}/epoch-{epoch:06d}"
    local = Path(tempfile.mkdtemp(prefix="mltf-sharded-"))
    try:
        with _one_process_is_fine():
            state_dict_saver.save(state_dict, checkpoint_id=str(local))
        mine = digest_files(local)
        if mine:  # every rank uploads what it wrote: no shared file system needed
            client.log_artifacts(run, str(local), artifact)
        everyone: list[Any] = [None] * dist.get_world_size() if _distributed() else [mine]
        if _distributed():
            dist.all_gather_object(everyone, mine)  # also: every rank's upload is complete
        if is_rank_zero():
            files: dict[str, str] = {}
            for part in everyone:
                files.update(part)
            if ".metadata" not in files:
                raise TrackingError(f"checkpoint {artifact}: torch.distributed.checkpoint wrote no .metadata")
            (local / MANIFEST).write_text(manifest_text(files))
            client.log_artifact(run, str(local / MANIFEST), artifact)
            digest = _sha256(local / MANIFEST)
            # The pointer last, in one batch: a save killed before this line leaves the previous checkpoint latest.
            client.log_batch(run, tags=[RunTag(TAG_CHECKPOINT_LATEST, artifact), RunTag(TAG_CHECKPOINT_EPOCH,
                             str(epoch)), RunTag(TAG_CHECKPOINT_SHA256, digest), RunTag(TAG_CHECKPOINT_SHARDED,
                             artifact)])
            phases.reached(phases.CHECKPOINT_SAVED)
            if keep > 0:
                _prune(client, run, keep, epoch)
        if _distributed():
            dist.barrier()  # no rank goes on (or exits) before the checkpoint is the latest
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return artifact


def _prune(client: Any, run_id: str, keep: int, epoch: int) -> None:
    """Delete all but the newest ``keep`` sharded checkpoints up to ``epoch`` (best effort: not every store can
    delete). Directories of later epochs are left: a save of them was interrupted, and is overwritten."""
    with contextlib.suppress(Exception):
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        dirs = sorted(f.path for f in client.list_artifacts(run_id, _DIR)
                      if f.is_dir and _EPOCH_DIR.fullmatch(f.path.rsplit("/", 1)[-1])
                      and int(f.path.rsplit("-", 1)[-1]) <= epoch)
        old = dirs[:-keep]
        if old:
            repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
            for path in old:
                repo.delete_artifacts(path)


def load_latest_sharded(state_dict: dict[str, Any], *, run_id: str | None = None) -> int | None:
    """Load the run's latest sharded checkpoint into ``state_dict`` in place (every rank calls it, with any
    world size); return its epoch, or None when the run has no checkpoint yet."""
    import mlflow.artifacts
    from torch.distributed.checkpoint import state_dict_loader

    found = None
    if is_rank_zero():
        run = _run_id(run_id)
        tags = _client().get_run(run).data.tags
        found = (run, tags.get(TAG_CHECKPOINT_LATEST), tags.get(TAG_CHECKPOINT_EPOCH),
                 tags.get(TAG_CHECKPOINT_SHA256), tags.get(TAG_CHECKPOINT_SHARDED))
    run, artifact, epoch, digest, sharded = _from_rank_zero(found)
    if artifact is None:
        return None
    if sharded != artifact:
        raise TrackingError(f"checkpoint {artifact} of run {run} is not sharded: load it with "
                            "mltf_flow.checkpoint.load_latest, or delete the tag "
                            f"{TAG_CHECKPOINT_LATEST} to start over.")
    local = Path(tempfile.mkdtemp(prefix="mltf-sharded-"))
    try:
        path = Path(mlflow.artifacts.download_artifacts(run_id=run, artifact_path=artifact, dst_path=str(local)))
        verify(path, digest, f"{artifact} of run {run}")
        with _one_process_is_fine():
            state_dict_loader.load(state_dict, checkpoint_id=str(path))
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return int(epoch)


__all__ = ["MANIFEST", "digest_files", "load_latest_sharded", "manifest_text", "parse_manifest", "save_sharded",
           "verify"]
