"""Checkpoints as artifacts of an MLflow run (real sqlite tracking store): only rank 0 writes, the pointer
tags follow the upload, old ones are pruned, and a corrupted file is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """One sqlite store for the module (creating one costs seconds): (uri, experiment id, artifact root)."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("ckpt-store")
    uri = f"sqlite:///{root}/mlflow.db"
    experiment = MlflowClient(uri).create_experiment("ckpt", artifact_location=str(root / "artifacts"))
    return uri, experiment, root / "artifacts"


@pytest.fixture
def run_id(store: tuple[str, str, Path], monkeypatch: pytest.MonkeyPatch) -> str:
    from mlflow import MlflowClient

    uri, experiment, _ = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rid = str(MlflowClient(uri).create_run(experiment).info.run_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", rid)
    monkeypatch.delenv("RANK", raising=False)
    return rid


def tags(run_id: str) -> dict[str, Any]:
    from mlflow import MlflowClient

    return dict(MlflowClient().get_run(run_id).data.tags)


def test_fresh_run_has_no_checkpoint(run_id: str) -> None:
    from mltf_flow import checkpoint

    assert checkpoint.load_latest() is None
    assert checkpoint.latest_epoch() is None


def test_save_load_and_prune(run_id: str) -> None:
    from mlflow import MlflowClient

    from mltf_flow import checkpoint

    for epoch in range(3):
        path = checkpoint.save({"w": torch.full((3,), float(epoch)), "epoch": epoch}, epoch, keep=2)
        assert path == f"checkpoints/epoch-{epoch:06d}.pt"
    assert tags(run_id)[checkpoint.TAG_LATEST] == "checkpoints/epoch-000002.pt"
    assert checkpoint.latest_epoch() == 2
    kept = sorted(a.path for a in MlflowClient().list_artifacts(run_id, "checkpoints"))
    assert kept == ["checkpoints/epoch-000001.pt", "checkpoints/epoch-000002.pt"]
    found = checkpoint.load_latest()
    assert found is not None and found.epoch == 2
    assert torch.equal(found.state["w"], torch.full((3,), 2.0)) and found.state["epoch"] == 2


def test_other_ranks_do_not_write(run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mltf_flow import checkpoint

    monkeypatch.setenv("RANK", "1")
    assert checkpoint.save({"w": torch.zeros(1)}, 0) is None
    assert checkpoint.TAG_LATEST not in tags(run_id)


def test_a_changed_checkpoint_file_is_refused(run_id: str, store: tuple[str, str, Path]) -> None:
    from mltf_flow import checkpoint
    from mltf_flow.errors import TrackingError

    checkpoint.save({"w": torch.ones(2)}, 0)
    (stored,) = (store[2] / run_id).rglob("epoch-000000.pt")
    torch.save({"w": torch.zeros(2)}, stored)  # someone replaced the file behind the recorded digest
    with pytest.raises(TrackingError, match="has sha256"):
        checkpoint.load_latest()


def test_without_a_run_the_error_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, store: tuple[str, str, Path]
) -> None:
    from mltf_flow import checkpoint
    from mltf_flow.errors import TrackingError

    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0])
    with pytest.raises(TrackingError, match="no MLflow run to keep checkpoints in"):
        checkpoint.save({"w": torch.ones(1)}, 0)
